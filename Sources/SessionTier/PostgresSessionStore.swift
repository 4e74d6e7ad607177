import DataTier
import MillionsCore

/// `SessionStore` on PostgreSQL (the `sessions` table on the primary, read through the
/// replica set with read-your-writes; on a sharded tier, on each session's user's cluster).
public struct PostgresSessionStore: SessionStore {
    let rows: any SessionRows
    let now: @Sendable () -> Double

    public init(rows: any SessionRows, now: @escaping @Sendable () -> Double = { Clock.secondsSince1970() }) {
        self.rows = rows
        self.now = now
    }

    public init(replicaSet: ReplicaSet, now: @escaping @Sendable () -> Double = { Clock.secondsSince1970() }) {
        self.init(rows: PostgresSessionRows(replicaSet: replicaSet), now: now)
    }

    public func create(userID: UserID, ttl: Double) async throws -> Session {
        let created = now()
        let session = Session(
            id: rows.newToken(for: userID), userID: userID, csrfToken: Token.random(bytes: 16), expiresAt: created + ttl)
        try await rows.insert(
            token: session.id, idHash: Session.hash(session.id), userID: userID, csrf: session.csrfToken, created: created,
            expires: session.expiresAt)
        return session
    }

    public func session(id: String, ttl: Double) async throws -> Session? {
        guard Session.isWellFormed(id) else { return nil }
        let hash = Session.hash(id)
        let now = now()
        guard let (user, csrf, expiresAt) = try await rows.find(token: id, idHash: hash) else { return nil }
        guard expiresAt > now, let userID = UserID(rawValue: user) else {
            try await rows.delete(token: id, idHash: hash)
            return nil
        }
        var session = Session(id: id, userID: userID, csrfToken: csrf, expiresAt: expiresAt)
        if expiresAt - now < ttl / 2 {
            session.expiresAt = now + ttl
            try await rows.extend(token: id, idHash: hash, to: session.expiresAt)
        }
        return session
    }

    public func delete(id: String) async throws {
        guard Session.isWellFormed(id) else { return }
        try await rows.delete(token: id, idHash: Session.hash(id))
    }

    public func deleteAll(userID: UserID) async throws { try await rows.deleteAll(userID: userID) }
    public func purgeExpired() async throws -> Int { try await rows.purge(before: now()) }
    public func ping() async throws { try await rows.ping() }
}
