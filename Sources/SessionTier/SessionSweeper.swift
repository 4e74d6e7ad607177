import Logging
import ServiceLifecycle

/// Removes expired sessions every `interval`, so the store does not grow without bound.
public struct SessionSweeper: Service {
    let store: any SessionStore
    let interval: Duration
    let logger: Logger

    public init(store: any SessionStore, interval: Duration, logger: Logger) {
        self.store = store
        self.interval = interval
        self.logger = logger
    }

    public func run() async throws {
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            do {
                try await cancelWhenGracefulShutdown { try await Task.sleep(for: interval) }
            } catch { return }
            do {
                let removed = try await store.purgeExpired()
                if removed > 0 { logger.info("expired sessions removed", metadata: ["count": "\(removed)"]) }
            } catch {
                logger.warning("session sweep failed", metadata: ["error": "\(error)"])
            }
        }
    }
}
