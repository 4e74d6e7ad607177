import Configuration
import MillionsCore

/// Where jobs live: a `jobs` table in the data engine, or Redis Streams.
public enum QueueEngine: String, Sendable, CaseIterable {
    case sql, redis
}

/// The queue tier's keys (`queue.*`).
public struct QueueSettings: Sendable {
    public var engine: QueueEngine
    /// Worker slots inside `millions serve`.
    public var inProcessWorkers: Int
    public var lease: Duration
    /// How long a stopping worker lets running jobs finish.
    public var grace: Duration
    public var maxAttempts: Int
    public var backoffBase: Duration
    /// The folder the diagnostic `touch` job may write in (empty: it may not run here).
    public var touchDirectory: String

    /// `config` is scoped to `queue`; `defaultInProcessWorkers` depends on the data engine.
    public init(_ config: ConfigReader, defaultInProcessWorkers: Int) throws {
        engine = try settingChoice(config.string(forKey: "engine", default: "sql"), key: "queue.engine")
        inProcessWorkers = config.int(forKey: "inProcessWorkers", default: defaultInProcessWorkers)
        let leaseSeconds = config.double(forKey: "leaseSeconds", default: 30)
        let graceSeconds = config.double(forKey: "graceSeconds", default: 10)
        let backoffSeconds = config.double(forKey: "backoffBaseSeconds", default: 1)
        maxAttempts = config.int(forKey: "maxAttempts", default: 5)
        touchDirectory = config.string(forKey: "touchDirectory", default: "")
        try checkSetting(inProcessWorkers >= 0 && inProcessWorkers <= 256, "queue.inProcessWorkers must be 0...256")
        try checkSetting(leaseSeconds >= 0.5 && graceSeconds >= 0, "queue.leaseSeconds ≥ 0.5, queue.graceSeconds ≥ 0")
        try checkSetting(maxAttempts >= 1 && backoffSeconds > 0, "queue.maxAttempts ≥ 1, queue.backoffBaseSeconds > 0")
        lease = .seconds(leaseSeconds)
        grace = .seconds(graceSeconds)
        backoffBase = .seconds(backoffSeconds)
    }

    /// A worker's options with `concurrency` slots.
    public func workerOptions(concurrency: Int) -> Worker.Options {
        var options = Worker.Options()
        options.concurrency = concurrency
        options.leaseSeconds = lease.inSeconds
        options.graceSeconds = grace.inSeconds
        options.backoff = Backoff(baseSeconds: backoffBase.inSeconds)
        return options
    }
}
