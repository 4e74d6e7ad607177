import Configuration
import MillionsCore

/// Where sessions live: the data engine's `sessions` table, or Redis.
public enum SessionEngine: String, Sendable, CaseIterable {
    case sql, redis
}

/// The session tier's keys (`session.*`).
public struct SessionSettings: Sendable {
    public var store: SessionEngine
    public var ttl: Duration
    public var cookieName: String
    public var secureCookies: Bool
    /// How often expired SQL sessions are deleted (Redis expires its own).
    public var sweepInterval: Duration

    /// `config` is scoped to `session`.
    public init(_ config: ConfigReader) throws {
        store = try settingChoice(config.string(forKey: "store", default: "sql"), key: "session.store")
        let ttlSeconds = config.double(forKey: "ttlSeconds", default: 14 * 24 * 3600)
        ttl = .seconds(ttlSeconds)
        cookieName = config.string(forKey: "cookieName", default: "millions_session")
        secureCookies = config.bool(forKey: "secureCookies", default: false)
        let sweepSeconds = config.int(forKey: "sweepSeconds", default: 600)
        sweepInterval = .seconds(sweepSeconds)
        try checkSetting(ttlSeconds >= 60, "session.ttlSeconds must be at least 60")
        try checkSetting(Self.isCookieName(cookieName), "session.cookieName must be a cookie token")
        try checkSetting(sweepSeconds >= 1, "session.sweepSeconds must be at least 1")
    }

    /// Letters, digits, `_` and `-`: a name no browser or proxy mangles.
    static func isCookieName(_ s: String) -> Bool {
        !s.isEmpty
            && s.utf8.allSatisfy {
                ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5a) || ($0 >= 0x61 && $0 <= 0x7a) || $0 == 0x5f || $0 == 0x2d
            }
    }
}
