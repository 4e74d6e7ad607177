import Configuration
import MillionsCore
import NIOCore

/// Where cached profiles live: in this process, in a memcached tier, or nowhere.
public enum CacheBackend: String, Sendable, CaseIterable {
    case memory, memcached, none
}

/// The in-process cache's policy.
public enum CachePolicy: String, Sendable, CaseIterable {
    /// W-TinyLFU admission (`TinyLFUCache`): near the oracle on skewed reads, scan-resistant.
    case tinylfu
    case lru
}

/// The cache tier's keys (`cache.*`).
public struct CacheSettings: Sendable {
    public var backend: CacheBackend
    public var policy: CachePolicy
    public var maxEntries: Int
    public var maxBytes: Int
    public var ttl: Duration
    /// How long "no such user" is remembered.
    public var negativeTTL: Duration
    public var stampedeProtection: Bool
    /// How long a reader waits for another process's lease before reading the database.
    public var leaseWait: Duration
    /// With PostgreSQL and a shared cache: the logical replication slot whose changes a
    /// worker follows to delete cached profiles (one per site; empty: off).
    public var followSlot: String
    public var memcachedNodes: [String]
    public var memcachedGutter: [String]
    public var memcached: MemcachedCache.Options
    /// With a shared cache: how long a hot key's value is kept in this process (nil: no
    /// near copies; hot keys are still counted and shown on `/metrics`).
    public var nearTTL: Duration?
    /// The share of reads that makes a key hot.
    public var hotKeyShare: Double

    /// `config` is scoped to `cache`.
    public init(_ config: ConfigReader) throws {
        backend = try settingChoice(config.string(forKey: "backend", default: "memory"), key: "cache.backend")
        policy = try settingChoice(config.string(forKey: "policy", default: "tinylfu"), key: "cache.policy")
        stampedeProtection = config.bool(forKey: "stampedeProtection", default: true)
        let leaseWaitMs = config.int(forKey: "leaseWaitMs", default: 500)
        leaseWait = .milliseconds(leaseWaitMs)
        maxEntries = config.int(forKey: "maxEntries", default: 100_000)
        maxBytes = config.int(forKey: "maxBytes", default: 64 * 1024 * 1024)
        let ttlSeconds = config.int(forKey: "ttlSeconds", default: 300)
        ttl = .seconds(ttlSeconds)
        let negativeSeconds = config.int(forKey: "negativeTtlSeconds", default: 5)
        negativeTTL = .seconds(negativeSeconds)
        followSlot = config.string(forKey: "followSlot", default: "")
        memcachedNodes = config.string(forKey: "memcached.nodes", default: "").commaSeparated
        memcachedGutter = config.string(forKey: "memcached.gutter", default: "").commaSeparated
        memcached = MemcachedCache.Options()
        memcached.connectionsPerNode = config.int(forKey: "memcached.connectionsPerNode", default: 2)
        let timeoutMs = config.int(forKey: "memcached.timeoutMs", default: 250)
        memcached.timeout = .milliseconds(Int64(timeoutMs))
        memcached.failureThreshold = config.int(forKey: "memcached.failureThreshold", default: 3)
        memcached.retrySeconds = config.double(forKey: "memcached.retrySeconds", default: 2)
        memcached.password = config.string(forKey: "memcached.password", isSecret: true)
        memcached.leaseSeconds = config.int(forKey: "memcached.leaseSeconds", default: 5)
        memcached.fallbackTTLSeconds = config.int(forKey: "memcached.fallbackTtlSeconds", default: 10)

        let nearMs = config.int(forKey: "nearTtlMs", default: 0)
        nearTTL = nearMs > 0 ? .milliseconds(nearMs) : nil
        hotKeyShare = config.double(forKey: "hotKeyShare", default: 0.01)
        try checkSetting(nearMs >= 0 && nearMs <= 60_000, "cache.nearTtlMs must be 0...60000")
        try checkSetting(hotKeyShare > 0 && hotKeyShare <= 1, "cache.hotKeyShare must be in (0, 1]")
        try checkSetting(maxEntries >= 1 && maxBytes >= 4096, "cache.maxEntries ≥ 1 and cache.maxBytes ≥ 4096")
        try checkSetting(ttlSeconds >= 1 && negativeSeconds >= 0, "cache TTLs must be positive")
        try checkSetting(
            backend != .memcached || !memcachedNodes.isEmpty,
            "cache.memcached.nodes must list host:port pairs when cache.backend is memcached")
        try checkSetting(
            memcached.connectionsPerNode >= 1 && memcached.connectionsPerNode <= 64, "cache.memcached.connectionsPerNode must be 1...64")
        try checkSetting(leaseWaitMs >= 0 && leaseWaitMs <= 60_000, "cache.leaseWaitMs must be 0...60000")
        try checkSetting(timeoutMs >= 1, "cache.memcached.timeoutMs must be positive")
        try checkSetting(
            memcached.failureThreshold >= 1 && memcached.retrySeconds > 0, "memcached circuit breaker settings must be positive")
        try checkSetting(
            memcached.leaseSeconds >= 1 && memcached.fallbackTTLSeconds >= 1, "memcached lease and fallback TTLs must be positive")
    }
}
