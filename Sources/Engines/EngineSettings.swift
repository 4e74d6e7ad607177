import CacheTier
import Configuration
import DataTier
import Logging
import MessageQueue
import MillionsCore
import Photos
import RedisClient
import SessionTier

/// The keys of every tier below the web tier, each read by its own tier from its own
/// scope: what a worker, `seed`, `migrate` or `jobs` needs, and a web server too.
public struct EngineSettings: Sendable {
    public var data: DataSettings
    public var session: SessionSettings
    public var redis: RedisClient.Configuration
    public var cache: CacheSettings
    public var queue: QueueSettings
    public var photos: PhotoSettings
    public var logLevel: Logger.Level

    public init(_ config: ConfigReader) throws {
        let level = config.string(forKey: "log.level", default: "info")
        guard let logLevel = Logger.Level(rawValue: level) else {
            throw SettingsError("log.level must be one of trace, debug, info, notice, warning, error, critical")
        }
        self.logLevel = logLevel
        data = try DataSettings(config.scoped(to: "data"))
        session = try SessionSettings(config.scoped(to: "session"))
        redis = try RedisClient.Configuration(config.scoped(to: "redis"))
        cache = try CacheSettings(config.scoped(to: "cache"))
        // Embedded, the web server runs the jobs; with PostgreSQL, workers do.
        queue = try QueueSettings(config.scoped(to: "queue"), defaultInProcessWorkers: data.engine == .sqlite ? 2 : 0)
        photos = try PhotoSettings(config.scoped(to: "photos"), data: data)
    }

    /// Whether any tier keeps its state in Redis.
    public var usesRedis: Bool { session.store == .redis || queue.engine == .redis }
}
