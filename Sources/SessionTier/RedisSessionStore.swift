import MillionsCore
import NIOCore
import RedisClient

/// `SessionStore` on Redis: one key per session holding `userID:csrf`, expiring by
/// itself after `ttl` seconds of inactivity (every use refreshes the expiry with
/// `GETEX … EX`), plus a set per user of that user's session keys, for log-out-everywhere.
/// A use pushes the set's expiry back too (never forward), so the set outlives every live
/// session and "delete all" finds them all.
public struct RedisSessionStore: SessionStore {
    let redis: RedisClient
    let prefix: String
    let now: @Sendable () -> Double

    public init(redis: RedisClient, prefix: String = "millions:", now: @escaping @Sendable () -> Double = { Clock.secondsSince1970() }) {
        self.redis = redis
        self.prefix = prefix
        self.now = now
    }

    func key(_ hash: String) -> String { prefix + "session:" + hash }
    func userKey(_ user: UserID) -> String { prefix + "user-sessions:" + String(user.rawValue) }

    public func create(userID: UserID, ttl: Double) async throws -> Session {
        let session = Session(
            id: Session.newID(), userID: userID, csrfToken: Token.random(bytes: 16), expiresAt: now() + ttl)
        let hash = Session.hash(session.id)
        let seconds = String(Int(ttl.rounded(.up)))
        let replies = try await redis.pipeline([
            RedisCommand("MULTI"),
            RedisCommand("SET", key(hash), "\(userID.rawValue):\(session.csrfToken)", "EX", seconds),
            RedisCommand("SADD", userKey(userID), hash),
            RedisCommand("EXPIRE", userKey(userID), seconds),
            RedisCommand("EXEC"),
        ], durable: true)
        try Self.check(replies)
        return session
    }

    public func session(id: String, ttl: Double) async throws -> Session? {
        guard Session.isWellFormed(id) else { return nil }
        let reply = try await redis.send(
            RedisCommand("EVAL", Self.touch, "1", key(Session.hash(id)), String(Int(ttl.rounded(.up))), prefix + "user-sessions:"))
        guard let value = reply.string, let colon = value.firstIndex(of: ":"),
            let raw = Int64(value[..<colon]), let userID = UserID(rawValue: raw)
        else { return nil }
        return Session(id: id, userID: userID, csrfToken: String(value[value.index(after: colon)...]), expiresAt: now() + ttl)
    }

    public func delete(id: String) async throws {
        guard Session.isWellFormed(id) else { return }
        let hash = Session.hash(id)
        let value = try await redis.send(RedisCommand("GETDEL", key(hash)))
        if let text = value.string, let colon = text.firstIndex(of: ":"), let raw = Int64(text[..<colon]),
            let user = UserID(rawValue: raw)
        {
            try await redis.send(RedisCommand("SREM", userKey(user), hash))
        }
    }

    public func deleteAll(userID: UserID) async throws {
        let members = try await redis.send(RedisCommand("SMEMBERS", userKey(userID))).elements ?? []
        let keys = members.compactMap(\.string).map(key) + [userKey(userID)]
        try await redis.delete(keys)
    }

    /// Redis expires sessions by itself; there is nothing to sweep.
    public func purgeExpired() async throws -> Int { 0 }

    public func ping() async throws { try await redis.ping() }

    /// Refreshes a session and its user's set in one round trip: `GETEX` the session, then
    /// `EXPIRE … GT` the set named by the user id before the colon in its value.
    static let touch = """
        local v = redis.call('GETEX', KEYS[1], 'EX', ARGV[1])
        if v then
          local colon = string.find(v, ':', 1, true)
          if colon then redis.call('EXPIRE', ARGV[2] .. string.sub(v, 1, colon - 1), ARGV[1], 'GT') end
        end
        return v
        """

    /// A transaction answers OK, QUEUED…, then EXEC's array (nil if it was aborted).
    static func check(_ replies: [RESPValue]) throws {
        for reply in replies {
            if case .error(let message) = reply { throw RedisError(.server, message) }
        }
        if replies.last?.isNull == true { throw RedisError(.server, "transaction aborted") }
    }
}
