import MillionsCore
import RedisClient
import Synchronization

/// A token bucket's shape: `capacity` requests at once, refilled at `capacity / seconds`
/// per second. Written `N/S` in settings (`30/60`: 30 at once, 30 a minute after that).
public struct Rate: Sendable, Equatable {
    public var capacity: Double
    public var perSecond: Double

    public init?(_ text: String) {
        let parts = text.split(separator: "/")
        guard parts.count == 2, let n = Double(parts[0]), let s = Double(parts[1]), n >= 1, s > 0 else { return nil }
        capacity = n
        perSecond = n / s
    }
}

/// Token buckets by key: in this process, or in Redis so every web server shares them.
public protocol TokenBuckets: Sendable {
    /// Takes a token from `key`'s bucket; nil when there was one, else the seconds until
    /// there will be.
    func take(_ key: String, _ rate: Rate) async throws -> Double?
}

/// Buckets in this process (the embedded default; each web server alone when there is no
/// Redis). Bounded: past `maxKeys` the buckets that have refilled are dropped first.
public final class MemoryBuckets: TokenBuckets {
    private struct Bucket {
        var tokens: Double
        var at: Double
    }
    private let buckets = Mutex<[String: Bucket]>([:])
    private let maxKeys: Int
    private let now: @Sendable () -> Double

    public init(maxKeys: Int = 100_000, now: @escaping @Sendable () -> Double = { Clock.secondsSince1970() }) {
        self.maxKeys = maxKeys
        self.now = now
    }

    public func take(_ key: String, _ rate: Rate) async throws -> Double? {
        let t = now()
        return buckets.withLock { buckets in
            var b = buckets[key] ?? Bucket(tokens: rate.capacity, at: t)
            b.tokens = min(rate.capacity, b.tokens + max(0, t - b.at) * rate.perSecond)
            b.at = t
            var wait: Double? = nil
            if b.tokens >= 1 { b.tokens -= 1 } else { wait = (1 - b.tokens) / rate.perSecond }
            if buckets.count >= maxKeys, buckets[key] == nil { Self.prune(&buckets, now: t, keep: maxKeys / 2) }
            buckets[key] = b
            return wait
        }
    }

    /// Drops the least recently used buckets: an unused bucket refills, so forgetting it
    /// only forgives what time would have.
    private static func prune(_ buckets: inout [String: Bucket], now: Double, keep: Int) {
        let newest = buckets.sorted { $0.value.at > $1.value.at }.prefix(keep)
        buckets = Dictionary(uniqueKeysWithValues: newest.map { ($0.key, $0.value) })
    }
}

/// Buckets in Redis: one hash per key (tokens, time), updated by a script with Redis's
/// own clock, so every web server draws from the same bucket; it expires once refilled.
public struct RedisBuckets: TokenBuckets {
    let redis: RedisClient
    let prefix: String

    public init(redis: RedisClient, prefix: String = "millions:rate:") {
        self.redis = redis
        self.prefix = prefix
    }

    public func take(_ key: String, _ rate: Rate) async throws -> Double? {
        let reply = try await redis.send(
            RedisCommand("EVAL", Self.script, "1", prefix + key, String(rate.capacity), String(rate.perSecond)))
        guard let text = reply.string, let wait = Double(text) else { throw RedisError(.protocolError, "rate script answered \(reply)") }
        return wait > 0 ? wait : nil
    }

    static let script = """
        local capacity = tonumber(ARGV[1])
        local rate = tonumber(ARGV[2])
        local t = redis.call('TIME')
        local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
        local b = redis.call('HMGET', KEYS[1], 't', 'a')
        local tokens = tonumber(b[1]) or capacity
        local at = tonumber(b[2]) or now
        tokens = math.min(capacity, tokens + math.max(0, now - at) * rate)
        local wait = 0
        if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
        redis.call('HSET', KEYS[1], 't', tostring(tokens), 'a', tostring(now))
        redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / rate * 1000) + 1000)
        return tostring(wait)
        """
}

/// The limits on what one client address or one account may do per unit of time
/// (`limits.*`): `429 Too Many Requests` with `Retry-After` past them.
struct RateLimits: Sendable {
    let buckets: any TokenBuckets
    let logInPerAddress: Rate
    let logInPerAccount: Rate
    let signUpPerAddress: Rate
    let uploadsPerAccount: Rate
    let editsPerAccount: Rate
    /// Addresses no limit applies to (this machine's own tools: benchmarks log in to the
    /// same accounts over and over).
    let exempt: [AddressRange]

    enum Action: String {
        case logIn = "log-in", signUp = "sign-up", upload, edit
    }

    /// Throws 429 when `address` or `account` is past its limit for `action`.
    func check(_ action: Action, address: String, account: String? = nil) async throws {
        if exempt.contains(where: { $0.contains(address) }) { return }
        var checks: [(String, Rate)] = []
        switch action {
        case .logIn:
            checks.append(("login:ip:" + address, logInPerAddress))
            if let account { checks.append(("login:account:" + account, logInPerAccount)) }
        case .signUp:
            checks.append(("signup:ip:" + address, signUpPerAddress))
        case .upload:
            if let account { checks.append(("upload:account:" + account, uploadsPerAccount)) }
        case .edit:
            if let account { checks.append(("edit:account:" + account, editsPerAccount)) }
        }
        for (key, rate) in checks {
            if let wait = try await buckets.take(key, rate) {
                throw MillionsError(
                    .tooManyRequests, "too many \(action.rawValue) requests; try again later", retryAfter: max(1, Int(wait.rounded(.up))))
            }
        }
    }
}
