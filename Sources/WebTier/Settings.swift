import Configuration
import Foundation
import DataTier
import Engines
import Imaging
import SystemPackage
import Logging
import MillionsCore

/// Every configuration key of a web server, read once at start-up: the web tier's own
/// (`http.*`, `auth.*`, `limits.*`) and, through `engines`, each tier's.
///
/// Precedence (highest first): command-line flags, `MILLIONS_*` environment variables,
/// the JSON config file, then these defaults. The README's configuration table lists
/// the same keys; `Settings.documentedKeys` keeps the two honest in a test.
@dynamicMemberLookup
public struct Settings: Sendable {
    public var http: HTTPSettings
    public var auth: AuthSettings
    public var limits: LimitSettings
    /// The tiers a worker or a command needs too: `settings.cache`, `settings.data`, …
    public var engines: EngineSettings

    public subscript<T>(dynamicMember path: WritableKeyPath<EngineSettings, T>) -> T {
        get { engines[keyPath: path] }
        set { engines[keyPath: path] = newValue }
    }

    public init(_ config: ConfigReader) throws {
        engines = try EngineSettings(config)
        http = try HTTPSettings(config.scoped(to: "http"))
        auth = try AuthSettings(config.scoped(to: "auth"))
        limits = try LimitSettings(config.scoped(to: "limits"))
    }

    /// Every key `Settings` reads, with its default, in README order.
    public static let documentedKeys: [String] = [
        "http.host", "http.port", "http.maxBodyBytes", "http.trustedProxies", "http.metricsAllow", "http.drainSeconds", "http.idleTimeoutSeconds",
        "http.headerTimeoutSeconds", "http.bodyTimeoutSeconds", "http.maxConnections", "http.maxConnectionsPerAddress", "http.cachedReadFastPath", "http.uncachedReadFastPath", "http.uncachedReadBatch", "data.directory", "data.engine", "data.postgres.nodes", "data.postgres.remoteNodes",
        "data.postgres.user", "data.postgres.password", "data.postgres.database", "data.postgres.connectionsPerNode",
        "data.postgres.timeoutMs", "data.postgres.discoveryMs", "data.postgres.maxLagBytes",
        "data.postgres.maxLagSeconds", "data.shards.clusters", "data.shards.gatherMs", "log.level",
        "session.ttlSeconds", "session.cookieName", "session.secureCookies", "session.sweepSeconds",
        "session.store", "redis.address", "redis.password", "redis.database", "redis.protocol", "redis.connections",
        "redis.timeoutMs", "redis.sentinels", "redis.masterName", "redis.waitReplicas", "redis.waitTimeoutMs",
        "auth.bcryptCost", "auth.freeFailedLogins", "auth.baseLockSeconds", "auth.maxLockSeconds",
        "auth.forgetFailedLoginsAfterSeconds",
        "cache.backend", "cache.policy", "cache.maxEntries", "cache.maxBytes", "cache.ttlSeconds", "cache.negativeTtlSeconds",
        "cache.stampedeProtection", "cache.leaseWaitMs", "cache.nearTtlMs", "cache.hotKeyShare", "cache.memcached.nodes", "cache.memcached.gutter",
        "cache.memcached.connectionsPerNode", "cache.memcached.timeoutMs", "cache.memcached.failureThreshold",
        "cache.memcached.retrySeconds", "cache.memcached.password", "cache.memcached.leaseSeconds", "cache.memcached.fallbackTtlSeconds",
        "queue.engine", "queue.inProcessWorkers", "queue.leaseSeconds", "queue.graceSeconds", "queue.maxAttempts", "queue.backoffBaseSeconds",
        "photos.directory", "photos.store", "photos.maxBytes", "photos.maxPixels", "photos.threads", "photos.purgeEdges", "photos.replacedGraceSeconds", "queue.touchDirectory",
        "limits.logInPerAddress", "limits.logInPerAccount", "limits.signUpPerAddress", "limits.uploadsPerAccount",
        "limits.editsPerAccount", "limits.exempt", "auth.maxPendingPasswordChecks",
    ]

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
