import PostgresNIO

/// What a log line may say about a PostgreSQL error: its kind, the server's SQLSTATE and
/// message, and the statement's text. `PSQLError`'s own description hides all of it, and its
/// reflection prints the bind values too (emails, password hashes), which logs must not hold.
public func postgresErrorDetail(_ error: any Error) -> String? {
    guard let e = error as? PSQLError else { return nil }
    var parts = ["PSQLError \(e.code)"]
    if let info = e.serverInfo {
        if let state = info[.sqlState] { parts.append("sqlState \(state)") }
        if let message = info[.message] { parts.append(message) }
        if let detail = info[.detail] { parts.append(detail) }
    }
    if let sql = e.query?.sql { parts.append("query: \(sql)") }
    if let underlying = e.underlying { parts.append("underlying: \(String(describing: underlying))") }
    return parts.joined(separator: "; ")
}
