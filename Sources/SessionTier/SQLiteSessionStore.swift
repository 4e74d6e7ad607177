import DataTier
import GRDB
import MillionsCore

/// `SessionStore` in the embedded SQLite database (the `sessions` table).
public struct SQLiteSessionStore: SessionStore {
    let db: SQLiteDatabase
    let now: @Sendable () -> Double

    public init(database: SQLiteDatabase, now: @escaping @Sendable () -> Double = { Clock.secondsSince1970() }) {
        self.db = database
        self.now = now
    }

    public func create(userID: UserID, ttl: Double) async throws -> Session {
        let session = Session(
            id: Session.newID(), userID: userID, csrfToken: Token.random(bytes: 16), expiresAt: now() + ttl)
        let arguments: StatementArguments = [
            Session.hash(session.id), userID.rawValue, session.csrfToken, now(), session.expiresAt,
        ]
        try await db.write { db in
            try db.execute(
                sql: "INSERT INTO sessions (id_hash, user_id, csrf_token, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
                arguments: arguments)
        }
        return session
    }

    public func session(id: String, ttl: Double) async throws -> Session? {
        guard Session.isWellFormed(id) else { return nil }
        let hash = Session.hash(id)
        let now = now()
        let found = try await db.read { db -> (userID: Int64, csrf: String, expiresAt: Double)? in
            try Row.fetchOne(
                db, sql: "SELECT user_id, csrf_token, expires_at FROM sessions WHERE id_hash = ?", arguments: [hash]
            ).map { ($0["user_id"], $0["csrf_token"], $0["expires_at"]) }
        }
        guard let found else { return nil }
        let expiresAt = found.expiresAt
        guard expiresAt > now, let userID = UserID(rawValue: found.userID) else {
            try await delete(id: id)
            return nil
        }
        var session = Session(id: id, userID: userID, csrfToken: found.csrf, expiresAt: expiresAt)
        if expiresAt - now < ttl / 2 {
            session.expiresAt = now + ttl
            try await db.write { [session] db in
                try db.execute(
                    sql: "UPDATE sessions SET expires_at = ? WHERE id_hash = ?", arguments: [session.expiresAt, hash])
            }
        }
        return session
    }

    public func delete(id: String) async throws {
        guard Session.isWellFormed(id) else { return }
        let hash = Session.hash(id)
        try await db.write { db in
            try db.execute(sql: "DELETE FROM sessions WHERE id_hash = ?", arguments: [hash])
        }
    }

    public func deleteAll(userID: UserID) async throws {
        try await db.write { db in
            try db.execute(sql: "DELETE FROM sessions WHERE user_id = ?", arguments: [userID.rawValue])
        }
    }

    public func purgeExpired() async throws -> Int {
        let now = now()
        return try await db.write { db in
            try db.execute(sql: "DELETE FROM sessions WHERE expires_at <= ?", arguments: [now])
            return db.changesCount
        }
    }

    public func ping() async throws { try await db.ping() }
}
