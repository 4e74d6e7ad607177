import Logging
import ServiceLifecycle

/// Every `interval`, deletes what has expired (sessions in SQL, old failed log-ins), so
/// no table grows without bound.
public struct Sweeper: Service {
    public struct Sweep: Sendable {
        public var name: String
        /// Deletes what has expired; how many rows.
        public var run: @Sendable () async throws -> Int

        public init(_ name: String, run: @escaping @Sendable () async throws -> Int) {
            self.name = name
            self.run = run
        }
    }

    let sweeps: [Sweep]
    let interval: Duration
    let logger: Logger

    public init(_ sweeps: [Sweep], interval: Duration, logger: Logger) {
        self.sweeps = sweeps
        self.interval = interval
        self.logger = logger
    }

    public func run() async throws {
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            do {
                try await cancelWhenGracefulShutdown { try await Task.sleep(for: interval) }
            } catch { return }
            for sweep in sweeps {
                do {
                    let removed = try await sweep.run()
                    if removed > 0 { logger.info("expired rows removed", metadata: ["what": "\(sweep.name)", "count": "\(removed)"]) }
                } catch {
                    logger.warning("sweep failed", metadata: ["what": "\(sweep.name)", "error": "\(error)"])
                }
            }
        }
    }
}
