import Logging
import MillionsCore
import PostgresNIO

/// Session rows in PostgreSQL. The embedded default keeps them in SQLite; this store is
/// what several web servers share when the data tier is PostgreSQL (Redis comes later).
/// The store itself lives in DataTier so that SessionTier's protocol stays engine-free;
/// `SessionTier.PostgresSessions` adapts it.
public struct PostgresSessionRows: Sendable {
    let set: ReplicaSet
    var logger: Logger { self.set.logger }

    public init(replicaSet: ReplicaSet) { self.set = replicaSet }

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

    public func extend(idHash: String, to expires: Double) async throws {
        let logger = self.logger
        try await set.write("extend_session") { c in
            try await c.query("UPDATE sessions SET expires_at = \(expires) WHERE id_hash = \(idHash)", logger: logger)
        }
    }

    public func delete(idHash: String) async throws {
        let logger = self.logger
        try await set.write("delete_session") { c in
            try await c.query("DELETE FROM sessions WHERE id_hash = \(idHash)", logger: logger)
        }
    }

    public func deleteAll(userID: Int64) async throws {
        let logger = self.logger
        try await set.write("delete_sessions") { c in
            try await c.query("DELETE FROM sessions WHERE user_id = \(userID)", logger: logger)
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
