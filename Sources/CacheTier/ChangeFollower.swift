import Logging
import Observability
import Prometheus
import ServiceLifecycle

/// Where committed writes come from, in commit order (the data tier's change feed).
public protocol CommittedChanges: Sendable {
    /// Prepares the source (e.g. creates its slot); called again after failures. Returns a
    /// position when the source starts over there (changes before it may have been missed).
    func prepare() async throws -> UInt64?
    /// The next commits after the acknowledged position: each commit's position and the ids
    /// it changed, and the position read through. Nil when nothing is new.
    func next(limit: Int) async throws -> (commits: [(position: UInt64, ids: [Int64])], through: UInt64)?
    /// Whether every replica this site reads from has replayed `position`.
    func replayed(through position: UInt64) async -> Bool
    func acknowledge(through position: UInt64) async throws
}

/// Drops cached values when the writes that changed them become visible on the site's own
/// replicas: the invalidation a site's cache needs when the write happened elsewhere (the
/// other data center) or when a reader could refill from a replica that lags. The web
/// server that wrote also deletes at once; this second delete, after replay, is what keeps
/// a lagging replica's old value out of the cache. At least once: a crash repeats deletes.
public final class ChangeFollower<Value: Codable & Sendable>: Service {
    let changes: any CommittedChanges
    let cache: ReadThrough<Value>
    let logger: Logger
    let poll: Duration
    let followed, deleted, failures, restarts: Prometheus.Counter
    let replayWait: DurationHistogram

    public init(changes: any CommittedChanges, cache: ReadThrough<Value>, metrics: AppMetrics, logger: Logger, poll: Duration = .milliseconds(50)) {
        self.changes = changes
        self.cache = cache
        self.logger = logger
        self.poll = poll
        let l = [("kind", cache.kind)]
        followed = metrics.counter("cache_followed_commits", "Commits followed from the change feed", l)
        deleted = metrics.counter("cache_followed_deletes", "Keys deleted after the site's replicas replayed their write", l)
        failures = metrics.counter("cache_follow_failures", "Change feed calls that failed (retried)", l)
        restarts = metrics.counter("cache_follow_restarts", "Times the change feed started over and the cache was emptied", l)
        replayWait = metrics.latency("cache_follow_replay_wait", "Time from reading a batch of commits to the site's replicas having them", l)
    }

    public func run() async throws {
        await cancelWhenGracefulShutdown {
            var prepared = false
            while !Task.isCancelled {
                do {
                    if !prepared {
                        if let start = try await self.changes.prepare() { try await self.startOver(at: start) }
                        prepared = true
                    }
                    if try await !self.step() { try await Task.sleep(for: self.poll) }
                } catch is CancellationError {
                    return
                } catch {
                    // The primary moved (no slot there yet), or is down: try again soon.
                    prepared = false
                    self.failures.increment()
                    self.logger.warning("change feed failed", metadata: ["error": "\(error)"])
                    try? await Task.sleep(for: .seconds(1))
                }
            }
        }
    }

    /// The feed starts at `position` and what came before is unknown (the primary was
    /// replaced, or the slot is new): empty the cache once the site's replicas have
    /// everything before it, so no refill can bring back a change the feed never showed.
    func startOver(at position: UInt64) async throws {
        while await !changes.replayed(through: position) {
            try await Task.sleep(for: .milliseconds(5))
        }
        try await cache.invalidateAll()
        restarts.increment()
        logger.notice("change feed started over; cache emptied", metadata: ["position": "\(position)"])
    }

    /// One batch: wait until the site's replicas have it, delete, acknowledge. Returns
    /// whether there was anything.
    func step() async throws -> Bool {
        guard let batch = try await changes.next(limit: 1000) else { return false }
        if let last = batch.commits.last {
            let start = ContinuousClock.now
            while await !changes.replayed(through: last.position) {
                try await Task.sleep(for: .milliseconds(5))
            }
            replayWait.record(ContinuousClock.now - start)
            let ids = Set(batch.commits.flatMap(\.ids))
            for id in ids { await cache.invalidate(id) }
            followed.increment(by: Int64(batch.commits.count))
            deleted.increment(by: Int64(ids.count))
        }
        try await changes.acknowledge(through: batch.through)
        return true
    }
}
