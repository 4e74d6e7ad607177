import MillionsCore
import NIOCore
import NIOPosix
import Synchronization

/// bcrypt, on threads of its own: a flood of log-ins queues here, not on the thread pool
/// that photo files and image probes use, and past `maxPending` checks waiting or running
/// a log-in or sign-up is refused at once (503, `Retry-After: 1`) instead of queueing for
/// seconds. The per-address and per-account limits come first (`RateLimits`); this bounds
/// what gets past them.
final class PasswordChecks: Sendable {
    /// One thread per core: bcrypt is all CPU.
    static let pool: NIOThreadPool = {
        let pool = NIOThreadPool(numberOfThreads: System.coreCount)
        pool.start()
        return pool
    }()

    let maxPending: Int
    private let pending = Atomic<Int>(0)

    init(maxPending: Int) {
        self.maxPending = maxPending
    }

    func run<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
        let n = pending.add(1, ordering: .relaxed).newValue
        defer { pending.subtract(1, ordering: .relaxed) }
        guard n <= maxPending else {
            throw MillionsError(.unavailable, "too many log-ins being checked; try again in a moment", retryAfter: 1)
        }
        return try await Self.pool.runIfActive(work)
    }
}
