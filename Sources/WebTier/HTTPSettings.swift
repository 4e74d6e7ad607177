import Configuration
import MillionsCore

/// The web server's keys (`http.*`).
public struct HTTPSettings: Sendable {
    public var host: String
    public var port: Int
    public var maxBodyBytes: Int
    /// How long to drain at SIGTERM before stopping (see `DrainService`).
    public var drain: Duration
    /// How long a kept-alive connection may sit idle before the server closes it (nil:
    /// never). Longer than any proxy's idle timeout in front, so the proxy closes first.
    public var idleTimeout: Duration?
    /// From a request's first byte to the end of its head (a slow head gets 408).
    public var headerTimeout: Duration
    /// From a request's head to the end of its body (then the connection closes).
    public var bodyTimeout: Duration
    /// Open connections the server accepts at once; more wait in the listen backlog.
    public var maxConnections: Int
    /// Open connections one client address may hold (trusted proxies are exempt; 0: no cap).
    public var maxConnectionsPerAddress: Int
    /// Answer cached `GET /users/{id}` on the event loop, before the router (`CachedReadPath`).
    public var cachedReadFastPath: Bool
    /// With PostgreSQL and no cache tier: read `GET /users/{id}` from the database on the
    /// event loop, before the router (`LoopReads`).
    public var uncachedReadFastPath: Bool
    /// Those reads that arrive together go as one query of at most this many (1: a query each).
    public var uncachedReadBatch: Int
    /// Peers whose `X-Forwarded-For` / `X-Forwarded-Proto` are believed (the load balancer).
    public var trustedProxies: [String]
    /// Client addresses (CIDR ranges) allowed to read `/metrics`; everyone else gets 404.
    /// A request from a trusted proxy is judged by the client it forwards for.
    public var metricsAllow: String

    /// `config` is scoped to `http`.
    public init(_ config: ConfigReader) throws {
        host = config.string(forKey: "host", default: "127.0.0.1")
        port = config.int(forKey: "port", default: 8080)
        maxBodyBytes = config.int(forKey: "maxBodyBytes", default: 64 * 1024)
        let drainSeconds = config.double(forKey: "drainSeconds", default: 0)
        let idleSeconds = config.double(forKey: "idleTimeoutSeconds", default: 75)
        let headerSeconds = config.double(forKey: "headerTimeoutSeconds", default: 10)
        let bodySeconds = config.double(forKey: "bodyTimeoutSeconds", default: 120)
        maxConnections = config.int(forKey: "maxConnections", default: 4096)
        maxConnectionsPerAddress = config.int(forKey: "maxConnectionsPerAddress", default: 256)
        cachedReadFastPath = config.bool(forKey: "cachedReadFastPath", default: true)
        uncachedReadFastPath = config.bool(forKey: "uncachedReadFastPath", default: true)
        uncachedReadBatch = config.int(forKey: "uncachedReadBatch", default: 32)
        metricsAllow = config.string(forKey: "metricsAllow", default: "127.0.0.0/8,::1")
        trustedProxies = config.string(forKey: "trustedProxies", default: "127.0.0.1,::1").commaSeparated

        try checkSetting(port >= 0 && port <= 65535, "http.port must be 0...65535")
        try checkSetting(uncachedReadBatch >= 1 && uncachedReadBatch <= 1000, "http.uncachedReadBatch must be 1...1000")
        try checkSetting(drainSeconds >= 0 && drainSeconds <= 300, "http.drainSeconds must be 0...300")
        try checkSetting(idleSeconds >= 0 && idleSeconds <= 3600, "http.idleTimeoutSeconds must be 0...3600")
        try checkSetting(headerSeconds > 0 && headerSeconds <= 600, "http.headerTimeoutSeconds must be in (0, 600]")
        try checkSetting(bodySeconds > 0 && bodySeconds <= 3600, "http.bodyTimeoutSeconds must be in (0, 3600]")
        try checkSetting(maxConnections >= 1, "http.maxConnections must be positive")
        try checkSetting(maxConnectionsPerAddress >= 0, "http.maxConnectionsPerAddress must be 0 (no cap) or more")
        try checkSetting(maxBodyBytes >= 1024 && maxBodyBytes <= 16 * 1024 * 1024, "http.maxBodyBytes must be 1 KiB...16 MiB")
        _ = try AddressRange.list(metricsAllow)
        drain = .seconds(drainSeconds)
        idleTimeout = idleSeconds > 0 ? .seconds(idleSeconds) : nil
        headerTimeout = .seconds(headerSeconds)
        bodyTimeout = .seconds(bodySeconds)
    }
}

/// Log-in and sign-up keys (`auth.*`).
public struct AuthSettings: Sendable {
    public var bcryptCost: Int
    public var loginThrottle: LoginThrottle
    /// bcrypt checks waiting or running at once; past it a log-in or sign-up gets 503.
    public var maxPendingPasswordChecks: Int

    /// `config` is scoped to `auth`.
    public init(_ config: ConfigReader) throws {
        bcryptCost = config.int(forKey: "bcryptCost", default: 10)
        maxPendingPasswordChecks = config.int(forKey: "maxPendingPasswordChecks", default: 64)
        loginThrottle = LoginThrottle(
            freeAttempts: config.int(forKey: "freeFailedLogins", default: 5),
            baseLockSeconds: config.double(forKey: "baseLockSeconds", default: 1),
            maxLockSeconds: config.double(forKey: "maxLockSeconds", default: 900),
            forgetAfterSeconds: config.double(forKey: "forgetFailedLoginsAfterSeconds", default: 3600))
        try checkSetting(bcryptCost >= 4 && bcryptCost <= 16, "auth.bcryptCost must be 4...16")
        try checkSetting(maxPendingPasswordChecks >= 1, "auth.maxPendingPasswordChecks must be positive")
        try checkSetting(loginThrottle.freeAttempts >= 1, "auth.freeFailedLogins must be at least 1")
        try checkSetting(
            loginThrottle.baseLockSeconds > 0 && loginThrottle.maxLockSeconds >= loginThrottle.baseLockSeconds,
            "auth.baseLockSeconds must be positive and at most auth.maxLockSeconds")
        // Failures forgotten sooner than the longest lock would never reach it.
        try checkSetting(
            loginThrottle.forgetAfterSeconds > loginThrottle.maxLockSeconds,
            "auth.forgetFailedLoginsAfterSeconds must be longer than auth.maxLockSeconds")
    }
}

/// Rate limit keys (`limits.*`): token buckets written `N/S` (N at once, N per S seconds
/// after that); see `RateLimits`.
public struct LimitSettings: Sendable {
    public var logInPerAddress: Rate
    public var logInPerAccount: Rate
    public var signUpPerAddress: Rate
    public var uploadsPerAccount: Rate
    public var editsPerAccount: Rate
    /// Client addresses (CIDR) no rate limit applies to.
    public var exempt: String

    /// `config` is scoped to `limits`.
    public init(_ config: ConfigReader) throws {
        func rate(_ key: ConfigKey, _ fallback: String) throws -> Rate {
            let text = config.string(forKey: key, default: fallback)
            guard let rate = Rate(text) else {
                throw SettingsError("limits.\(key.components.joined(separator: ".")) must be N/S (N requests at once, N per S seconds after), not \(text)")
            }
            return rate
        }
        logInPerAddress = try rate("logInPerAddress", "60/60")
        logInPerAccount = try rate("logInPerAccount", "30/600")
        signUpPerAddress = try rate("signUpPerAddress", "30/3600")
        uploadsPerAccount = try rate("uploadsPerAccount", "30/3600")
        editsPerAccount = try rate("editsPerAccount", "120/3600")
        exempt = config.string(forKey: "exempt", default: "127.0.0.0/8,::1")
        _ = try AddressRange.list(exempt)
    }
}
