import Configuration
import Foundation
import DataTier
import Imaging
import SystemPackage
import Logging
import MillionsCore

/// Every configuration key of the web tier, read once at start-up.
///
/// Precedence (highest first): command-line flags, `MILLIONS_*` environment variables,
/// the JSON config file, then these defaults. The README's configuration table lists
/// the same keys; `Settings.documentedKeys` keeps the two honest in a test.
public struct Settings: Sendable {
    public var host: String
    public var port: Int
    public var maxBodyBytes: Int
    /// Seconds to drain at SIGTERM before stopping (see `DrainService`).
    public var drainSeconds: Double
    /// Seconds a kept-alive connection may sit idle before the server closes it (0: never).
    /// Longer than any proxy's idle timeout in front, so the proxy is the one that closes.
    public var idleTimeoutSeconds: Double
    /// Seconds from a request's first byte to the end of its head (a slow head gets 408).
    public var headerTimeoutSeconds: Double
    /// Seconds from a request's head to the end of its body (then the connection closes).
    public var bodyTimeoutSeconds: Double
    /// Open connections the server accepts at once; more wait in the listen backlog.
    public var maxConnections: Int
    /// Open connections one client address may hold (trusted proxies are exempt; 0: no cap).
    public var maxConnectionsPerAddress: Int
    /// Answer cached `GET /users/{id}` on the event loop, before the router (`CachedReadPath`).
    public var cachedReadFastPath: Bool
    public var dataDirectory: String
    /// `sqlite` (embedded) or `postgres`.
    public var dataEngine: String
    public var postgres: PostgresSettings
    public var logLevel: Logger.Level

    public var sessionTTLSeconds: Double
    public var sessionCookieName: String
    public var secureCookies: Bool
    public var sessionSweepSeconds: Int
    /// `sql` (the data engine's sessions table) or `redis`.
    public var sessionStore: String
    public var redisAddress: String
    public var redisPassword: String?
    public var redisDatabase: Int
    public var redisProtocol: Int
    public var redisConnections: Int
    public var redisTimeoutMS: Int
    /// Sentinels naming the master (`host:port,…`); empty: `redis.address` is the server.
    public var redisSentinels: [String]
    public var redisMasterName: String
    /// Writes wait (`WAIT`) until this many replicas have them, else fail (0: no wait).
    public var redisWaitReplicas: Int
    public var redisWaitTimeoutMS: Int
    /// Peers whose `X-Forwarded-For` / `X-Forwarded-Proto` are believed (the load balancer).
    public var trustedProxies: [String]
    /// Client addresses (CIDR ranges) allowed to read `/metrics`; everyone else gets 404.
    /// A request from a trusted proxy is judged by the client it forwards for.
    public var metricsAllow: String

    public var bcryptCost: Int
    public var loginThrottle: LoginThrottle
    /// Token buckets (`N/S`: N at once, N per S seconds after that); see `RateLimits`.
    public var logInPerAddress: Rate
    public var logInPerAccount: Rate
    public var signUpPerAddress: Rate
    public var uploadsPerAccount: Rate
    public var editsPerAccount: Rate
    /// Client addresses (CIDR) no rate limit applies to.
    public var limitsExempt: String
    /// bcrypt checks waiting or running at once; past it a log-in or sign-up gets 503.
    public var maxPendingPasswordChecks: Int

    /// `memory` (in-process), `memcached`, or `none`.
    public var cacheBackend: String
    /// The in-process cache's policy: `tinylfu` (W-TinyLFU admission) or `lru`.
    public var cachePolicy: String
    public var stampedeProtection: Bool
    public var leaseWaitMS: Int
    public var memcachedNodes: [String]
    public var memcachedGutter: [String]
    public var memcachedConnectionsPerNode: Int
    public var memcachedTimeoutMS: Int
    public var memcachedFailureThreshold: Int
    public var memcachedRetrySeconds: Double
    /// memcached's ASCII authentication (`-Y`), user `millions`; nil: none.
    public var memcachedPassword: String?
    public var memcachedLeaseSeconds: Int
    public var memcachedFallbackTTLSeconds: Int
    public var cacheMaxEntries: Int
    public var cacheMaxBytes: Int
    public var cacheTTLSeconds: Int
    /// With PostgreSQL and a shared cache: the logical replication slot whose changes a
    /// worker follows to delete cached profiles once this site's replicas have replayed
    /// them (one slot per site; empty: off).
    public var cacheFollowSlot: String
    public var cacheNegativeTTLSeconds: Int

    /// `sql` (a jobs table in the data engine) or `redis` (Redis Streams, at `redis.address`).
    public var queueEngine: String
    /// Worker slots inside `millions serve` (default 2 on SQLite, 0 on PostgreSQL).
    public var queueInProcessWorkers: Int
    public var queueLeaseSeconds: Double
    public var queueGraceSeconds: Double
    public var queueMaxAttempts: Int
    public var queueBackoffBaseSeconds: Double

    /// Folder of photo originals and variants; one shared folder for a whole cluster.
    public var photosDirectory: String
    /// Where photo files live: `folder` (photos.directory) or `postgres` (large objects,
    /// replicated with the data: the multi-dc stage).
    public var photosStore: String
    /// Largest upload accepted, in bytes (the rest of the API keeps `http.maxBodyBytes`).
    public var photosMaxBytes: Int
    /// Largest image accepted, in pixels, judged from its header before decoding.
    public var photosMaxPixels: Int
    /// Threads for image work in this process (bounds its CPU and memory use).
    public var photosThreads: Int
    /// The folder the diagnostic `touch` job may write in (empty: it may not run here).
    public var queueTouchDirectory: String
    /// `host:port` of every edge cache a deleted photo is purged from (`PURGE /photos/NAME`).
    public var photosPurgeEdges: [String]
    /// How long a replaced photo's variants stay servable before they are deleted.
    public var photosReplacedGraceSeconds: Double

    public init(_ config: ConfigReader) throws {
        host = config.string(forKey: "http.host", default: "127.0.0.1")
        port = config.int(forKey: "http.port", default: 8080)
        maxBodyBytes = config.int(forKey: "http.maxBodyBytes", default: 64 * 1024)
        drainSeconds = config.double(forKey: "http.drainSeconds", default: 0)
        idleTimeoutSeconds = config.double(forKey: "http.idleTimeoutSeconds", default: 75)
        headerTimeoutSeconds = config.double(forKey: "http.headerTimeoutSeconds", default: 10)
        bodyTimeoutSeconds = config.double(forKey: "http.bodyTimeoutSeconds", default: 120)
        maxConnections = config.int(forKey: "http.maxConnections", default: 4096)
        maxConnectionsPerAddress = config.int(forKey: "http.maxConnectionsPerAddress", default: 256)
        cachedReadFastPath = config.bool(forKey: "http.cachedReadFastPath", default: true)
        dataDirectory = config.string(forKey: "data.directory", default: "./data")
        dataEngine = config.string(forKey: "data.engine", default: "sqlite")
        postgres = PostgresSettings(
            nodes: config.string(forKey: "data.postgres.nodes", default: "").split(separator: ",").map { String($0).trimmed }
                .filter { !$0.isEmpty })
        postgres.user = config.string(forKey: "data.postgres.user", default: "postgres")
        postgres.password = config.string(forKey: "data.postgres.password", isSecret: true)
        postgres.database = config.string(forKey: "data.postgres.database", default: "millions")
        postgres.connectionsPerNode = config.int(forKey: "data.postgres.connectionsPerNode", default: 10)
        postgres.queryTimeout = .milliseconds(config.int(forKey: "data.postgres.timeoutMs", default: 2000))
        postgres.discoveryInterval = .milliseconds(config.int(forKey: "data.postgres.discoveryMs", default: 500))
        postgres.maxLagBytes = UInt64(max(0, config.int(forKey: "data.postgres.maxLagBytes", default: 16 * 1024 * 1024)))
        postgres.maxLagSeconds = config.double(forKey: "data.postgres.maxLagSeconds", default: 10)
        let level = config.string(forKey: "log.level", default: "info")
        guard let logLevel = Logger.Level(rawValue: level) else {
            throw SettingsError("log.level must be one of trace, debug, info, notice, warning, error, critical")
        }
        self.logLevel = logLevel

        sessionTTLSeconds = config.double(forKey: "session.ttlSeconds", default: 14 * 24 * 3600)
        sessionCookieName = config.string(forKey: "session.cookieName", default: "millions_session")
        secureCookies = config.bool(forKey: "session.secureCookies", default: false)
        sessionSweepSeconds = config.int(forKey: "session.sweepSeconds", default: 600)
        sessionStore = config.string(forKey: "session.store", default: "sql")
        redisAddress = config.string(forKey: "redis.address", default: "127.0.0.1:6379")
        redisPassword = config.string(forKey: "redis.password", isSecret: true)
        redisDatabase = config.int(forKey: "redis.database", default: 0)
        redisProtocol = config.int(forKey: "redis.protocol", default: 3)
        redisConnections = config.int(forKey: "redis.connections", default: 4)
        redisTimeoutMS = config.int(forKey: "redis.timeoutMs", default: 500)
        redisSentinels = config.string(forKey: "redis.sentinels", default: "").split(separator: ",").map { String($0).trimmed }.filter { !$0.isEmpty }
        redisMasterName = config.string(forKey: "redis.masterName", default: "millions")
        redisWaitReplicas = config.int(forKey: "redis.waitReplicas", default: 0)
        redisWaitTimeoutMS = config.int(forKey: "redis.waitTimeoutMs", default: 250)
        metricsAllow = config.string(forKey: "http.metricsAllow", default: "127.0.0.0/8,::1")
        trustedProxies = config.string(forKey: "http.trustedProxies", default: "127.0.0.1,::1").split(separator: ",")
            .map { String($0).trimmed }.filter { !$0.isEmpty }

        bcryptCost = config.int(forKey: "auth.bcryptCost", default: 10)
        func rate(_ key: String, _ fallback: String) throws -> Rate {
            let text = config.string(forKey: ConfigKey(key), default: fallback)
            guard let rate = Rate(text) else { throw SettingsError("\(key) must be N/S (N requests at once, N per S seconds after), not \(text)") }
            return rate
        }
        logInPerAddress = try rate("limits.logInPerAddress", "60/60")
        logInPerAccount = try rate("limits.logInPerAccount", "30/600")
        signUpPerAddress = try rate("limits.signUpPerAddress", "30/3600")
        uploadsPerAccount = try rate("limits.uploadsPerAccount", "30/3600")
        editsPerAccount = try rate("limits.editsPerAccount", "120/3600")
        limitsExempt = config.string(forKey: "limits.exempt", default: "127.0.0.0/8,::1")
        maxPendingPasswordChecks = config.int(forKey: "auth.maxPendingPasswordChecks", default: 64)
        loginThrottle = LoginThrottle(
            freeAttempts: config.int(forKey: "auth.freeFailedLogins", default: 5),
            baseLockSeconds: config.double(forKey: "auth.baseLockSeconds", default: 1),
            maxLockSeconds: config.double(forKey: "auth.maxLockSeconds", default: 900),
            forgetAfterSeconds: config.double(forKey: "auth.forgetFailedLoginsAfterSeconds", default: 3600))

        cacheBackend = config.string(forKey: "cache.backend", default: "memory")
        cachePolicy = config.string(forKey: "cache.policy", default: "tinylfu")
        stampedeProtection = config.bool(forKey: "cache.stampedeProtection", default: true)
        leaseWaitMS = config.int(forKey: "cache.leaseWaitMs", default: 500)
        func list(_ key: String) -> [String] {
            config.string(forKey: ConfigKey(key.split(separator: ".").map(String.init)), default: "").split(separator: ",").map { String($0).trimmed }.filter { !$0.isEmpty }
        }
        memcachedNodes = list("cache.memcached.nodes")
        memcachedGutter = list("cache.memcached.gutter")
        memcachedConnectionsPerNode = config.int(forKey: "cache.memcached.connectionsPerNode", default: 2)
        memcachedTimeoutMS = config.int(forKey: "cache.memcached.timeoutMs", default: 250)
        memcachedFailureThreshold = config.int(forKey: "cache.memcached.failureThreshold", default: 3)
        memcachedRetrySeconds = config.double(forKey: "cache.memcached.retrySeconds", default: 2)
        memcachedPassword = config.string(forKey: "cache.memcached.password", isSecret: true)
        memcachedLeaseSeconds = config.int(forKey: "cache.memcached.leaseSeconds", default: 5)
        memcachedFallbackTTLSeconds = config.int(forKey: "cache.memcached.fallbackTtlSeconds", default: 10)
        cacheMaxEntries = config.int(forKey: "cache.maxEntries", default: 100_000)
        cacheMaxBytes = config.int(forKey: "cache.maxBytes", default: 64 * 1024 * 1024)
        cacheTTLSeconds = config.int(forKey: "cache.ttlSeconds", default: 300)
        cacheFollowSlot = config.string(forKey: "cache.followSlot", default: "")
        cacheNegativeTTLSeconds = config.int(forKey: "cache.negativeTtlSeconds", default: 5)

        queueEngine = config.string(forKey: "queue.engine", default: "sql")
        queueInProcessWorkers = config.int(forKey: "queue.inProcessWorkers", default: dataEngine == "sqlite" ? 2 : 0)
        queueLeaseSeconds = config.double(forKey: "queue.leaseSeconds", default: 30)
        queueGraceSeconds = config.double(forKey: "queue.graceSeconds", default: 10)
        queueMaxAttempts = config.int(forKey: "queue.maxAttempts", default: 5)
        queueBackoffBaseSeconds = config.double(forKey: "queue.backoffBaseSeconds", default: 1)

        photosDirectory = config.string(forKey: "photos.directory", default: dataDirectory + "/photos")
        photosStore = config.string(forKey: "photos.store", default: "folder")
        photosMaxBytes = config.int(forKey: "photos.maxBytes", default: 10 * 1024 * 1024)
        queueTouchDirectory = config.string(forKey: "queue.touchDirectory", default: "")
        photosReplacedGraceSeconds = config.double(forKey: "photos.replacedGraceSeconds", default: 60)
        photosPurgeEdges = config.string(forKey: "photos.purgeEdges", default: "").split(separator: ",").map { String($0).trimmed }
            .filter { !$0.isEmpty }
        photosMaxPixels = config.int(forKey: "photos.maxPixels", default: 40_000_000)
        photosThreads = config.int(forKey: "photos.threads", default: ProcessInfo.processInfo.activeProcessorCount)

        try check(photosReplacedGraceSeconds >= 0, "photos.replacedGraceSeconds must not be negative")
        try check(photosMaxBytes >= 1024 && photosMaxBytes <= 64 * 1024 * 1024, "photos.maxBytes must be 1 KiB...64 MiB")
        try check(photosMaxPixels >= 1 && photosMaxPixels <= 200_000_000, "photos.maxPixels must be 1...200000000")
        try check(photosThreads >= 1 && photosThreads <= 64, "photos.threads must be 1...64")
        try check(["folder", "postgres"].contains(photosStore), "photos.store must be folder or postgres")
        try check(photosStore == "folder" || dataEngine == "postgres", "photos.store=postgres needs data.engine=postgres")
        try check(port >= 0 && port <= 65535, "http.port must be 0...65535")
        try check(["sql", "redis"].contains(queueEngine), "queue.engine must be sql or redis")
        try check(queueInProcessWorkers >= 0 && queueInProcessWorkers <= 256, "queue.inProcessWorkers must be 0...256")
        try check(queueLeaseSeconds >= 0.5 && queueGraceSeconds >= 0, "queue.leaseSeconds ≥ 0.5, queue.graceSeconds ≥ 0")
        try check(queueMaxAttempts >= 1 && queueBackoffBaseSeconds > 0, "queue.maxAttempts ≥ 1, queue.backoffBaseSeconds > 0")
        try check(drainSeconds >= 0 && drainSeconds <= 300, "http.drainSeconds must be 0...300")
        try check(idleTimeoutSeconds >= 0 && idleTimeoutSeconds <= 3600, "http.idleTimeoutSeconds must be 0...3600")
        try check(headerTimeoutSeconds > 0 && headerTimeoutSeconds <= 600, "http.headerTimeoutSeconds must be in (0, 600]")
        try check(bodyTimeoutSeconds > 0 && bodyTimeoutSeconds <= 3600, "http.bodyTimeoutSeconds must be in (0, 3600]")
        try check(maxConnections >= 1, "http.maxConnections must be positive")
        _ = try AddressRange.list(metricsAllow)
        _ = try AddressRange.list(limitsExempt)
        try check(maxPendingPasswordChecks >= 1, "auth.maxPendingPasswordChecks must be positive")
        try check(maxConnectionsPerAddress >= 0, "http.maxConnectionsPerAddress must be 0 (no cap) or more")
        try check(["sqlite", "postgres"].contains(dataEngine), "data.engine must be sqlite or postgres")
        try check(dataEngine != "postgres" || !postgres.nodes.isEmpty, "data.postgres.nodes must list host:port pairs")
        try check(postgres.connectionsPerNode >= 1, "data.postgres.connectionsPerNode must be positive")
        try check(maxBodyBytes >= 1024 && maxBodyBytes <= 16 * 1024 * 1024, "http.maxBodyBytes must be 1 KiB...16 MiB")
        try check(sessionTTLSeconds >= 60, "session.ttlSeconds must be at least 60")
        try check(CookieName.isValid(sessionCookieName), "session.cookieName must be a cookie token")
        try check(sessionSweepSeconds >= 1, "session.sweepSeconds must be at least 1")
        try check(["sql", "redis"].contains(sessionStore), "session.store must be sql or redis")
        try check(redisProtocol == 2 || redisProtocol == 3, "redis.protocol must be 2 or 3")
        try check(redisDatabase >= 0 && redisConnections >= 1 && redisConnections <= 64, "redis.database ≥ 0, redis.connections 1...64")
        try check(redisTimeoutMS >= 1, "redis.timeoutMs must be positive")
        try check(redisWaitReplicas >= 0 && redisWaitTimeoutMS >= 1, "redis.waitReplicas ≥ 0, redis.waitTimeoutMs positive")
        try check(bcryptCost >= 4 && bcryptCost <= 16, "auth.bcryptCost must be 4...16")
        try check(loginThrottle.freeAttempts >= 1, "auth.freeFailedLogins must be at least 1")
        try check(
            loginThrottle.baseLockSeconds > 0 && loginThrottle.maxLockSeconds >= loginThrottle.baseLockSeconds,
            "auth.baseLockSeconds must be positive and at most auth.maxLockSeconds")
        // Failures forgotten sooner than the longest lock would never reach it.
        try check(
            loginThrottle.forgetAfterSeconds > loginThrottle.maxLockSeconds,
            "auth.forgetFailedLoginsAfterSeconds must be longer than auth.maxLockSeconds")
        try check(cacheMaxEntries >= 1 && cacheMaxBytes >= 4096, "cache.maxEntries ≥ 1 and cache.maxBytes ≥ 4096")
        try check(cacheTTLSeconds >= 1 && cacheNegativeTTLSeconds >= 0, "cache TTLs must be positive")
        try check(["memory", "memcached", "none"].contains(cacheBackend), "cache.backend must be memory, memcached or none")
        try check(["tinylfu", "lru"].contains(cachePolicy), "cache.policy must be tinylfu or lru")
        try check(
            cacheBackend != "memcached" || !memcachedNodes.isEmpty,
            "cache.memcached.nodes must list host:port pairs when cache.backend is memcached")
        try check(memcachedConnectionsPerNode >= 1 && memcachedConnectionsPerNode <= 64, "cache.memcached.connectionsPerNode must be 1...64")
        try check(leaseWaitMS >= 0 && leaseWaitMS <= 60_000, "cache.leaseWaitMs must be 0...60000")
        try check(memcachedTimeoutMS >= 1, "cache.memcached.timeoutMs must be positive")
        try check(memcachedFailureThreshold >= 1 && memcachedRetrySeconds > 0, "memcached circuit breaker settings must be positive")
        try check(memcachedLeaseSeconds >= 1 && memcachedFallbackTTLSeconds >= 1, "memcached lease and fallback TTLs must be positive")
    }

    /// Every key `Settings` reads, with its default, in README order.
    public static let documentedKeys: [String] = [
        "http.host", "http.port", "http.maxBodyBytes", "http.trustedProxies", "http.metricsAllow", "http.drainSeconds", "http.idleTimeoutSeconds",
        "http.headerTimeoutSeconds", "http.bodyTimeoutSeconds", "http.maxConnections", "http.maxConnectionsPerAddress", "http.cachedReadFastPath", "data.directory", "data.engine", "data.postgres.nodes",
        "data.postgres.user", "data.postgres.password", "data.postgres.database", "data.postgres.connectionsPerNode",
        "data.postgres.timeoutMs", "data.postgres.discoveryMs", "data.postgres.maxLagBytes",
        "data.postgres.maxLagSeconds", "log.level",
        "session.ttlSeconds", "session.cookieName", "session.secureCookies", "session.sweepSeconds",
        "session.store", "redis.address", "redis.password", "redis.database", "redis.protocol", "redis.connections",
        "redis.timeoutMs", "redis.sentinels", "redis.masterName", "redis.waitReplicas", "redis.waitTimeoutMs",
        "auth.bcryptCost", "auth.freeFailedLogins", "auth.baseLockSeconds", "auth.maxLockSeconds",
        "auth.forgetFailedLoginsAfterSeconds",
        "cache.backend", "cache.policy", "cache.maxEntries", "cache.maxBytes", "cache.ttlSeconds", "cache.negativeTtlSeconds",
        "cache.stampedeProtection", "cache.leaseWaitMs", "cache.memcached.nodes", "cache.memcached.gutter",
        "cache.memcached.connectionsPerNode", "cache.memcached.timeoutMs", "cache.memcached.failureThreshold",
        "cache.memcached.retrySeconds", "cache.memcached.password", "cache.memcached.leaseSeconds", "cache.memcached.fallbackTtlSeconds",
        "queue.engine", "queue.inProcessWorkers", "queue.leaseSeconds", "queue.graceSeconds", "queue.maxAttempts", "queue.backoffBaseSeconds",
        "photos.directory", "photos.store", "photos.maxBytes", "photos.maxPixels", "photos.threads", "photos.purgeEdges", "photos.replacedGraceSeconds", "queue.touchDirectory",
        "limits.logInPerAddress", "limits.logInPerAccount", "limits.signUpPerAddress", "limits.uploadsPerAccount",
        "limits.editsPerAccount", "limits.exempt", "auth.maxPendingPasswordChecks",
    ]

    public var databasePath: String { dataDirectory + "/millions.sqlite" }

    /// Bounds on uploaded images.
    public var imageLimits: ImageLimits {
        var limits = ImageLimits()
        limits.maxBytes = photosMaxBytes
        limits.maxPixels = photosMaxPixels
        return limits
    }
}

/// A configuration value that cannot work.
public struct SettingsError: Error, CustomStringConvertible {
    public let description: String
    init(_ message: String) { description = message }
}

private func check(_ ok: Bool, _ message: String) throws {
    if !ok { throw SettingsError(message) }
}

enum CookieName {
    static func isValid(_ s: String) -> Bool {
        !s.isEmpty && s.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5a) || ($0 >= 0x61 && $0 <= 0x7a) || $0 == 0x5f || $0 == 0x2d }
    }
}

/// Where configuration comes from, highest precedence first: command-line flags (given
/// here already in environment-variable form), `MILLIONS_*` environment variables, an
/// optional JSON file, then the defaults in `Settings`.
public enum ConfigSources {
    public static func reader(
        flags: [String: String], environment: [String: String]? = nil, configFile: String?
    ) async throws -> ConfigReader {
        var providers: [any ConfigProvider] = [
            EnvironmentVariablesProvider(environmentVariables: flags),
            (environment.map { EnvironmentVariablesProvider(environmentVariables: $0) } ?? EnvironmentVariablesProvider())
                .prefixKeys(with: "millions"),
        ]
        if let configFile {
            providers.append(try await FileProvider<JSONSnapshot>(filePath: FilePath(configFile)))
        }
        return ConfigReader(providers: providers)
    }

    /// `cache.ttlSeconds` → `CACHE_TTL_SECONDS`, the way the environment provider names keys.
    public static func environmentName(_ key: String) -> String {
        var out = ""
        var previous: Character? = nil
        for c in key {
            if let p = previous, p.isLowercase, c.isUppercase { out.append("_") }
            out.append(c.isLetter || c.isNumber ? Character(c.uppercased()) : "_")
            previous = c
        }
        return out
    }
}
