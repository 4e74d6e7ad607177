import DataTier
import Logging
import MillionsCore
import Synchronization

/// `JobQueue` over the `jobs` tables of every cluster of a sharded data tier, so no one
/// cluster carries the whole queue.
///
/// A job stays on the cluster it was enqueued on: it is work, not user data, and does not
/// move with shards (its handler finds the user through the shard map when it runs). Its
/// id names that cluster: the cluster's number (`ShardDirectory.number`, 0 for the first)
/// times 2^48, plus the id in that cluster's table. The first cluster's ids are its table's
/// own, so jobs of a tier that was not sharded keep theirs; ids stay below 2^53 for up to
/// 32 clusters, so JSON clients read them exactly.
///
/// A photo job is enqueued on its user's cluster in the photo's own transaction
/// (`ShardedPhotoRequests`); other jobs go to the clusters in turn, skipping one that fails.
/// Claims go round the clusters too, so FIFO holds per cluster, not across them.
public struct ShardedJobQueue: JobQueue {
    public static let localBits = 48
    static let localMask: Int64 = (1 << 48) - 1

    let queues: [String: PostgresJobQueue]
    let order: [String]
    let directory: ShardDirectory
    let logger: Logger
    private let turn = Turn()

    final class Turn: Sendable {
        private let value = Atomic<Int>(0)
        func next() -> Int { value.add(1, ordering: .relaxed).oldValue }
    }

    /// `clusters` in `order`; the directory numbers them (`ShardedEngine.prepare` numbers
    /// every configured cluster before anything is enqueued).
    public init(
        clusters: [String: ReplicaSet], order: [String], directory: ShardDirectory, logger: Logger,
        now: @escaping @Sendable () -> Double = { Clock.secondsSince1970() }
    ) {
        self.queues = clusters.mapValues { PostgresJobQueue(replicaSet: $0, now: now) }
        self.order = order.filter { clusters[$0] != nil }
        self.directory = directory
        self.logger = logger
    }

    // MARK: Ids

    /// The public id of job `local` on cluster `name`.
    public func id(local: Int64, on name: String) async throws -> Int64 {
        var numbers = try await directory.clusterNumbers()
        if numbers[name] == nil { numbers = try await directory.clusterNumbers(refresh: true) }
        guard let number = numbers[name] else {
            throw MillionsError(.unavailable, "cluster \(name) has no number yet (it is numbered when a server starts with it)")
        }
        return Int64(number) << Self.localBits | local
    }

    /// The cluster and local id a public id names; nil for an id no cluster could have
    /// made. A cluster this process is not configured for is an error (retry elsewhere).
    func route(_ id: Int64) async throws -> (name: String, queue: PostgresJobQueue, local: Int64)? {
        guard id > 0 else { return nil }
        let number = Int(id >> Self.localBits), local = id & Self.localMask
        var numbers = try await directory.clusterNumbers()
        if !numbers.values.contains(number) { numbers = try await directory.clusterNumbers(refresh: true) }
        guard let name = numbers.first(where: { $0.value == number })?.key else { return nil }
        guard let queue = queues[name] else {
            throw MillionsError(.unavailable, "job \(id) is on cluster \(name), which this process is not configured for", retryAfter: 1)
        }
        return (name, queue, local)
    }

    func withPublicID(_ job: Job, on name: String) async throws -> Job {
        var job = job
        job.id = try await id(local: job.id, on: name)
        return job
    }

    /// The clusters starting from the next in turn.
    func rotation() -> [String] {
        guard !order.isEmpty else { return [] }
        let start = turn.next() % order.count
        return Array(order[start...] + order[..<start])
    }

    // MARK: JobQueue

    public func enqueue(queue: String, payload: String, maxAttempts: Int, delaySeconds: Double) async throws -> Int64 {
        var firstError: (any Error)?
        for name in rotation() {
            guard let q = queues[name] else { continue }
            do {
                let local = try await q.enqueue(queue: queue, payload: payload, maxAttempts: maxAttempts, delaySeconds: delaySeconds)
                return try await id(local: local, on: name)
            } catch {
                // A job may run twice (at-least-once) but is never refused while a cluster takes writes.
                logger.warning("enqueue failed on a cluster; trying the next", metadata: ["cluster": "\(name)", "error": "\(error)"])
                firstError = firstError ?? error
            }
        }
        throw firstError ?? MillionsError(.unavailable, "no cluster to enqueue on")
    }

    public func claim(queues names: [String], worker: String, leaseSeconds: Double) async throws -> Job? {
        var failures: [any Error] = []
        let clusters = rotation()
        for name in clusters {
            guard let q = queues[name] else { continue }
            do {
                if let job = try await q.claim(queues: names, worker: worker, leaseSeconds: leaseSeconds) {
                    return try await withPublicID(job, on: name)
                }
            } catch {
                // One cluster down must not stop the work queued on the others.
                failures.append(error)
            }
        }
        if failures.count == clusters.count, let first = failures.first { throw first }
        return nil
    }

    public func heartbeat(id: Int64, worker: String, leaseSeconds: Double) async throws -> Bool {
        guard let (_, q, local) = try await route(id) else { return false }
        return try await q.heartbeat(id: local, worker: worker, leaseSeconds: leaseSeconds)
    }

    public func complete(id: Int64, worker: String, resultPositions: [String: UInt64]) async throws {
        guard let (_, q, local) = try await route(id) else { return }
        try await q.complete(id: local, worker: worker, resultPositions: resultPositions)
    }

    public func fail(id: Int64, worker: String, error: String, retryAt: Double?) async throws {
        guard let (_, q, local) = try await route(id) else { return }
        try await q.fail(id: local, worker: worker, error: error, retryAt: retryAt)
    }

    public func release(id: Int64, worker: String) async throws {
        guard let (_, q, local) = try await route(id) else { return }
        try await q.release(id: local, worker: worker)
    }

    public func job(id: Int64) async throws -> Job? {
        guard let (name, q, local) = try await route(id), let job = try await q.job(id: local) else { return nil }
        return try await withPublicID(job, on: name)
    }

    /// Per queue, summed over the clusters; the oldest ready job's age is the oldest anywhere.
    public func stats() async throws -> [QueueStats] {
        var merged: [String: QueueStats] = [:]
        for name in order {
            guard let q = queues[name] else { continue }
            for s in try await q.stats() {
                guard var m = merged[s.queue] else {
                    merged[s.queue] = s
                    continue
                }
                m.ready += s.ready
                m.running += s.running
                m.dead += s.dead
                m.done += s.done
                m.oldestReadyAgeSeconds = max(m.oldestReadyAgeSeconds, s.oldestReadyAgeSeconds)
                merged[s.queue] = m
            }
        }
        return merged.values.sorted { $0.queue < $1.queue }
    }

    /// The newest dead jobs over every cluster.
    public func deadJobs(limit: Int) async throws -> [Job] {
        var all: [Job] = []
        for name in order {
            guard let q = queues[name] else { continue }
            for job in try await q.deadJobs(limit: limit) { all.append(try await withPublicID(job, on: name)) }
        }
        return Array(all.sorted { ($0.createdAt, $0.id) > ($1.createdAt, $1.id) }.prefix(limit))
    }

    public func retryDead(id: Int64) async throws -> Bool {
        guard let (_, q, local) = try await route(id) else { return false }
        return try await q.retryDead(id: local)
    }

    /// Listens on every cluster at once; returns at the first notification or the timeout.
    /// A cluster that cannot listen waits out the timeout instead of waking the worker at once.
    public func waitForWork(timeoutSeconds: Double) async throws {
        let queues = order.compactMap { self.queues[$0] }
        await withTaskGroup(of: Void.self) { group in
            for q in queues {
                group.addTask {
                    do {
                        try await q.waitForWork(timeoutSeconds: timeoutSeconds)
                    } catch {
                        try? await Task.sleep(for: .milliseconds(Int(timeoutSeconds * 1000)))
                    }
                }
            }
            _ = await group.next()
            group.cancelAll()
        }
    }
}
