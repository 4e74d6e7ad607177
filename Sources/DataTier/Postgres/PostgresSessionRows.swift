import Logging
import MillionsCore
import PostgresNIO

/// Where a PostgreSQL session store keeps its rows: one cluster (`PostgresSessionRows`), or
/// each session on its user's cluster on a sharded tier (`ShardedSessionRows`). Calls carry
/// the token as well as its hash, so the sharded form can route by it.
public protocol SessionRows: Sendable {
    /// A new session token (64 lowercase hex digits) for `user`.
    func newToken(for user: UserID) -> String
    func insert(token: String, idHash: String, userID: UserID, csrf: String, created: Double, expires: Double) async throws
    /// (user id, csrf token, expiry) for a session.
    func find(token: String, idHash: String) async throws -> (Int64, String, Double)?
    func extend(token: String, idHash: String, to expires: Double) async throws
    func delete(token: String, idHash: String) async throws
    func deleteAll(userID: UserID) async throws
    func purge(before now: Double) async throws -> Int
    func ping() async throws
}

/// Session rows in PostgreSQL. The embedded default keeps them in SQLite; this store is
/// what several web servers share when the data tier is PostgreSQL (Redis comes later).
/// The store itself lives in DataTier so that SessionTier's protocol stays engine-free;
/// `SessionTier.PostgresSessions` adapts it.
public struct PostgresSessionRows: SessionRows {
    let set: ReplicaSet
    var logger: Logger { self.set.logger }

    public init(replicaSet: ReplicaSet) { self.set = replicaSet }

    public func newToken(for user: UserID) -> String { Token.random(bytes: 32) }

    public func insert(token: String, idHash: String, userID: UserID, csrf: String, created: Double, expires: Double) async throws {
        try await insert(idHash: idHash, userID: userID.rawValue, csrf: csrf, created: created, expires: expires)
    }
    public func find(token: String, idHash: String) async throws -> (Int64, String, Double)? { try await find(idHash: idHash) }
    public func extend(token: String, idHash: String, to expires: Double) async throws { _ = try await extend(idHash: idHash, to: expires) }
    public func delete(token: String, idHash: String) async throws { _ = try await delete(idHash: idHash) }
    public func deleteAll(userID: UserID) async throws { _ = try await deleteAll(userID: userID.rawValue) }
    public func ping() async throws { _ = try await find(idHash: "ping") }

    public func insert(idHash: String, userID: Int64, csrf: String, created: Double, expires: Double) async throws {
        let logger = self.logger
        try await set.write("create_session") { c in
            try await c.query(
                """
                INSERT INTO sessions (id_hash, user_id, csrf_token, created_at, expires_at)
                VALUES (\(idHash), \(userID), \(csrf), \(created), \(expires))
                """, logger: logger)
        }
    }

    /// (user id, csrf token, expiry) for a session hash. Read through replicas with
    /// read-your-writes, so a session created by this client is found at once.
    public func find(idHash: String) async throws -> (Int64, String, Double)? {
        try await set.read("get_session") { client in
            let rows = try await client.query(
                "SELECT user_id, csrf_token, expires_at FROM sessions WHERE id_hash = \(idHash)")
            for try await row in rows.decode((Int64, String, Double).self) { return row }
            return nil
        }
    }

    /// Rows changed by each write below: a sharded caller tells "none" from "moved away".
    public func extend(idHash: String, to expires: Double) async throws -> Int {
        try await changing("extend_session", "UPDATE sessions SET expires_at = \(expires) WHERE id_hash = \(idHash) RETURNING 1")
    }

    public func delete(idHash: String) async throws -> Int {
        try await changing("delete_session", "DELETE FROM sessions WHERE id_hash = \(idHash) RETURNING 1")
    }

    public func deleteAll(userID: Int64) async throws -> Int {
        try await changing("delete_sessions", "DELETE FROM sessions WHERE user_id = \(userID) RETURNING 1")
    }

    func changing(_ name: String, _ query: PostgresQuery) async throws -> Int {
        let logger = self.logger
        return try await set.write(name) { c in
            var n = 0
            for try await _ in try await c.query(query, logger: logger) { n += 1 }
            return n
        }
    }

    public func purge(before now: Double) async throws -> Int {
        let logger = self.logger
        return try await set.write("purge_sessions") { c in
            let rows = try await c.query("DELETE FROM sessions WHERE expires_at <= \(now) RETURNING 1", logger: logger)
            var n = 0
            for try await _ in rows.decode(Int32.self) { n += 1 }
            return n
        }
    }
}
