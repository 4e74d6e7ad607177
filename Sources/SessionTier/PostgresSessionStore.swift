import DataTier
import MillionsCore

/// `SessionStore` on PostgreSQL (the `sessions` table on the primary, read through the
/// replica set with read-your-writes).
public struct PostgresSessionStore: SessionStore {
    let rows: PostgresSessionRows
    let now: @Sendable () -> Double

    public init(replicaSet: ReplicaSet, now: @escaping @Sendable () -> Double = { Clock.secondsSince1970() }) {
        self.rows = PostgresSessionRows(replicaSet: replicaSet)
        self.now = now
    }

    public func create(userID: UserID, ttl: Double) async throws -> Session {
        let created = now()
        let session = Session(
            id: Session.newID(), userID: userID, csrfToken: Token.random(bytes: 16), expiresAt: created + ttl)
        try await rows.insert(
            idHash: Session.hash(session.id), userID: userID.rawValue, csrf: session.csrfToken, created: created,
            expires: session.expiresAt)
        return session
    }

    public func session(id: String, ttl: Double) async throws -> Session? {
        guard Session.isWellFormed(id) else { return nil }
        let hash = Session.hash(id)
        let now = now()
        guard let (user, csrf, expiresAt) = try await rows.find(idHash: hash) else { return nil }
        guard expiresAt > now, let userID = UserID(rawValue: user) else {
            try await rows.delete(idHash: hash)
            return nil
        }
        var session = Session(id: id, userID: userID, csrfToken: csrf, expiresAt: expiresAt)
        if expiresAt - now < ttl / 2 {
            session.expiresAt = now + ttl
            try await rows.extend(idHash: hash, to: session.expiresAt)
        }
        return session
    }

    public func delete(id: String) async throws {
        guard Session.isWellFormed(id) else { return }
        try await rows.delete(idHash: Session.hash(id))
    }

    public func deleteAll(userID: UserID) async throws { try await rows.deleteAll(userID: userID.rawValue) }
    public func purgeExpired() async throws -> Int { try await rows.purge(before: now()) }
    public func ping() async throws { _ = try await rows.find(idHash: "ping") }
}
