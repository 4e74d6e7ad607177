import Configuration
import MillionsCore
import NIOCore

extension RedisClient.Configuration {
    /// The client's keys (`redis.*`); `config` is scoped to `redis`.
    public init(_ config: ConfigReader) throws {
        let address = config.string(forKey: "address", default: "127.0.0.1:6379")
        do { try self.init(address: address) } catch { throw SettingsError("redis.address must be host:port, not \(address)") }
        password = config.string(forKey: "password", isSecret: true)
        database = config.int(forKey: "database", default: 0)
        protocolVersion = config.int(forKey: "protocol", default: 3)
        connections = config.int(forKey: "connections", default: 4)
        let timeoutMs = config.int(forKey: "timeoutMs", default: 500)
        timeout = .milliseconds(Int64(timeoutMs))
        connectTimeout = timeout
        sentinels = config.string(forKey: "sentinels", default: "").commaSeparated
        masterName = config.string(forKey: "masterName", default: "millions")
        waitReplicas = config.int(forKey: "waitReplicas", default: 0)
        let waitMs = config.int(forKey: "waitTimeoutMs", default: 250)
        waitTimeout = .milliseconds(Int64(waitMs))
        try checkSetting(protocolVersion == 2 || protocolVersion == 3, "redis.protocol must be 2 or 3")
        try checkSetting(database >= 0 && connections >= 1 && connections <= 64, "redis.database ≥ 0, redis.connections 1...64")
        try checkSetting(timeoutMs >= 1, "redis.timeoutMs must be positive")
        try checkSetting(waitReplicas >= 0 && waitMs >= 1, "redis.waitReplicas ≥ 0, redis.waitTimeoutMs positive")
    }
}
