/// A job as the queue stores it.
public struct Job: Sendable, Equatable {
    public enum State: String, Sendable, Codable {
        case ready, running, done, dead
    }
    public var id: Int64
    public var queue: String
    /// The handler's input, JSON text.
    public var payload: String
    public var state: State
    /// Times it has been handed to a worker (including the current run).
    public var attempts: Int
    public var maxAttempts: Int
    /// Not to be handed out before this (seconds since 1970): backoff after a failure.
    public var runAt: Double
    /// While running: the worker's lease; past it, another worker may take the job.
    public var leaseUntil: Double?
    public var worker: String?
    public var lastError: String?
    public var createdAt: Double
    /// Where the job's result was committed: the write position (`ReadYourWrites`) of the
    /// database writes its handler made, by cluster scope ("" on an unsharded tier; one
    /// per cluster written on a sharded one); empty when none, or on an engine without
    /// replicas. A client that learns the job is done must read from there on.
    public var resultPositions: [String: UInt64]

    public init(
        id: Int64, queue: String, payload: String, state: State, attempts: Int, maxAttempts: Int, runAt: Double,
        leaseUntil: Double?, worker: String?, lastError: String?, createdAt: Double, resultPositions: [String: UInt64] = [:]
    ) {
        self.id = id
        self.queue = queue
        self.payload = payload
        self.state = state
        self.attempts = attempts
        self.maxAttempts = maxAttempts
        self.runAt = runAt
        self.leaseUntil = leaseUntil
        self.worker = worker
        self.lastError = lastError
        self.createdAt = createdAt
        self.resultPositions = resultPositions
    }
}

/// Per queue: how many jobs wait, run and are dead, and how long the oldest ready one has waited.
public struct QueueStats: Sendable, Equatable {
    public var queue: String
    public var ready: Int
    public var running: Int
    public var dead: Int
    public var done: Int
    public var oldestReadyAgeSeconds: Double
}

/// A durable queue with leases: at-least-once delivery.
///
/// A worker `claim`s a job, which puts it under a lease; `heartbeat` extends the lease
/// while the job runs; `complete` or `fail` ends the run. A job whose lease runs out (its
/// worker died) is handed to the next `claim` again, so a killed worker loses no job and
/// handlers must be idempotent. A failure schedules a retry at `retryAt`, or, with
/// `retryAt` nil or no attempts left, moves the job to the dead-letter state, from which
/// `retryDead` brings it back.
public protocol JobQueue: Sendable {
    /// Adds a job; returns its id.
    @discardableResult
    func enqueue(queue: String, payload: String, maxAttempts: Int, delaySeconds: Double) async throws -> Int64
    /// The next due job of `queues`, leased to `worker` for `leaseSeconds`; nil if none.
    func claim(queues: [String], worker: String, leaseSeconds: Double) async throws -> Job?
    /// Extends the lease; false if the job is no longer this worker's (lease lost).
    func heartbeat(id: Int64, worker: String, leaseSeconds: Double) async throws -> Bool
    /// Marks the job done, with the commit positions of its result (see `Job.resultPositions`).
    func complete(id: Int64, worker: String, resultPositions: [String: UInt64]) async throws
    /// Records a failed run: retried at `retryAt`, or dead when nil.
    func fail(id: Int64, worker: String, error: String, retryAt: Double?) async throws
    /// Gives a job back without counting the run (graceful shutdown).
    func release(id: Int64, worker: String) async throws
    func job(id: Int64) async throws -> Job?
    func stats() async throws -> [QueueStats]
    func deadJobs(limit: Int) async throws -> [Job]
    /// Puts a dead job back in its queue with fresh attempts; false if it is not dead.
    func retryDead(id: Int64) async throws -> Bool
    /// Returns when new work may be there, or after `timeoutSeconds`.
    func waitForWork(timeoutSeconds: Double) async throws
}

extension JobQueue {
    /// Marks the job done; its handler wrote nothing a replica could lag behind on.
    public func complete(id: Int64, worker: String) async throws {
        try await complete(id: id, worker: worker, resultPositions: [:])
    }

    @discardableResult
    public func enqueue(queue: String, payload: String) async throws -> Int64 {
        try await enqueue(queue: queue, payload: payload, maxAttempts: 5, delaySeconds: 0)
    }
}

/// Exponential backoff with full jitter: attempt n waits a random time up to
/// `base · 2^(n-1)`, capped, so retries of many failed jobs do not arrive together.
public struct Backoff: Sendable {
    public var baseSeconds: Double
    public var maxSeconds: Double

    public init(baseSeconds: Double = 1, maxSeconds: Double = 300) {
        self.baseSeconds = baseSeconds
        self.maxSeconds = maxSeconds
    }

    /// Seconds to wait after the `attempt`-th failure (1-based); `random` in 0...1.
    public func delay(afterAttempt attempt: Int, random: Double) -> Double {
        let ceiling = min(maxSeconds, baseSeconds * pow2(max(0, attempt - 1)))
        return max(0.05, ceiling * random)
    }

    private func pow2(_ n: Int) -> Double { n >= 62 ? .infinity : Double(1 << n) }
}
