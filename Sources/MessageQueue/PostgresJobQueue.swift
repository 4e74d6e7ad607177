import DataTier
import Logging
import MillionsCore
import PostgresNIO
import Synchronization

/// `JobQueue` on the PostgreSQL primary. Claims take the first due rows with
/// `FOR UPDATE SKIP LOCKED`, so concurrent workers never wait on, or take, the same job.
///
/// Concurrent enqueues, claims and completions of one process go to the database in
/// batches (`Batcher`, group commit without a timer): one multi-row `INSERT` and one
/// `NOTIFY millions_jobs` for every enqueue that arrived meanwhile, one claim statement for
/// every idle worker slot, one `UPDATE` for every finished job. Each caller still gets its
/// answer only after its batch commits, so nothing is acknowledged that was not written.
public struct PostgresJobQueue: JobQueue {
    let set: ReplicaSet
    let now: @Sendable () -> Double
    static let channel = "millions_jobs"
    private let batches: Batches

    /// Statements per batch are bounded: a batch holds its rows' locks until it commits.
    static let maxBatch = 64

    public init(replicaSet: ReplicaSet, now: @escaping @Sendable () -> Double = { Clock.secondsSince1970() }) {
        self.set = replicaSet
        self.now = now
        self.batches = Batches(set: replicaSet, now: now)
    }

    typealias JobRow = (Int64, String, String, String, Int32, Int32, Double, Double?, String?, String?, Double, String)
    static let columns =
        "id, queue, payload, state, attempts, max_attempts, run_at, lease_until, worker, last_error, created_at, result_positions"

    /// Claims, heartbeats and outcomes skip the commit's fsync: lost in a crash, they only
    /// make a job run again, which at-least-once delivery allows. Enqueues keep it.
    static func relaxed(_ c: PostgresConnection) async throws {
        try await c.query("SET LOCAL synchronous_commit TO off", logger: c.logger)
    }

    static func job(_ r: JobRow) -> Job {
        Job(
            id: r.0, queue: r.1, payload: r.2, state: Job.State(rawValue: r.3) ?? .dead, attempts: Int(r.4),
            maxAttempts: Int(r.5), runAt: r.6, leaseUntil: r.7, worker: r.8, lastError: r.9, createdAt: r.10,
            resultPositions: ReadYourWrites.positions(cookie: r.11))
    }

    static func jobs(_ rows: PostgresRowSequence) async throws -> [Job] {
        var out: [Job] = []
        for try await r in rows.decode(JobRow.self) { out.append(job(r)) }
        return out
    }

    struct NewJob: Sendable {
        var queue: String
        var payload: String
        var maxAttempts: Int
        var runAt: Double
    }

    struct ClaimRequest: Sendable {
        var queues: [String]
        var worker: String
        var leaseSeconds: Double
    }

    struct Completion: Sendable {
        var id: Int64
        var worker: String
        var positions: String
    }

    final class Batches: Sendable {
        let enqueues: Batcher<NewJob, Int64>
        let notifies: Notifier
        let claims: Batcher<ClaimRequest, Job?>
        let completions: Batcher<Completion, Void>

        init(set: ReplicaSet, now: @escaping @Sendable () -> Double) {
            // The INSERT commits on its own (no BEGIN/COMMIT round trips) and without a
            // NOTIFY: PostgreSQL holds its notification lock from a notifying commit's start
            // to its end, flush included, so notifying enqueues would commit one at a time.
            // Four pipelines: a few concurrent enqueues commit side by side (sharing
            // PostgreSQL's group commit) instead of queueing behind one statement.
            enqueues = Batcher(maxBatch: PostgresJobQueue.maxBatch, pipelines: 4) { jobs in
                try await set.write("job_enqueue", transaction: false) { c in
                    try await PostgresJobQueue.enqueue(c, jobs, now: now(), notify: false)
                }
            }
            // One notification for all enqueues that committed meanwhile, committed without
            // waiting for its flush (a lost one only delays a pickup until the next poll).
            notifies = Notifier {
                try await set.write("job_notify", transaction: false) { c -> Void in
                    _ = try await c.query(
                        "SELECT set_config('synchronous_commit', 'off', true), pg_notify(\(PostgresJobQueue.channel), '')",
                        logger: c.logger)
                }
            }
            claims = Batcher(maxBatch: PostgresJobQueue.maxBatch, pipelines: 4) { requests in
                // One statement per kind of request; a worker process sends one kind.
                var answers = [Job?](repeating: nil, count: requests.count)
                var kinds: [String: [Int]] = [:]
                for (i, r) in requests.enumerated() { kinds["\(r.queues)|\(r.worker)|\(r.leaseSeconds)", default: []].append(i) }
                for positions in kinds.values {
                    let r = requests[positions[0]]
                    let jobs = try await set.write("job_claim") { c in
                        try await PostgresJobQueue.claim(c, r, limit: positions.count, now: now())
                    }
                    for (position, job) in zip(positions, jobs) { answers[position] = job }
                }
                return answers
            }
            completions = Batcher(maxBatch: PostgresJobQueue.maxBatch, pipelines: 4) { done in
                let finishedAt = now()
                try await set.write("job_complete") { c in
                    try await PostgresJobQueue.relaxed(c)
                    try await c.query(
                        """
                        UPDATE jobs SET state = 'done', lease_until = NULL, finished_at = \(finishedAt), result_positions = d.positions
                        FROM unnest(\(done.map(\.id)), \(done.map(\.worker)), \(done.map(\.positions))) AS d(id, worker, positions)
                        WHERE jobs.id = d.id AND jobs.worker = d.worker AND jobs.state = 'running'
                        """, logger: c.logger)
                }
                return done.map { _ in () }
            }
        }
    }

    public func enqueue(queue: String, payload: String, maxAttempts: Int, delaySeconds: Double) async throws -> Int64 {
        let id = try await batches.enqueues.submit(
            NewJob(queue: queue, payload: payload, maxAttempts: maxAttempts, runAt: now() + delaySeconds))
        // After the commit, so a woken worker finds the job; the caller does not wait for it
        // (that was a second round trip per enqueue). A lost wake-up costs only latency:
        // idle workers poll too.
        batches.notifies.ring()
        return id
    }

    /// Enqueues inside the caller's transaction, so the job commits with the write that
    /// causes it; the notification is delivered at commit.
    public static func enqueue(
        _ c: PostgresConnection, queue: String, payload: String, maxAttempts: Int, runAt: Double, now: Double
    ) async throws -> Int64 {
        try await enqueue(c, [NewJob(queue: queue, payload: payload, maxAttempts: maxAttempts, runAt: runAt)], now: now)[0]
    }

    /// One `INSERT` for all of `jobs`, then (with `notify`, inside a transaction) one
    /// `NOTIFY`, delivered at commit; ids in the order given.
    static func enqueue(_ c: PostgresConnection, _ jobs: [NewJob], now: Double, notify: Bool = true) async throws -> [Int64] {
        let logger = c.logger
        let rows = try await c.query(
            """
            INSERT INTO jobs (queue, payload, state, attempts, max_attempts, run_at, created_at)
            SELECT q, p, 'ready', 0, m, r, \(now)
            FROM unnest(\(jobs.map(\.queue)), \(jobs.map(\.payload)), \(jobs.map { Int32($0.maxAttempts) }), \(jobs.map(\.runAt)))
                WITH ORDINALITY AS j(q, p, m, r, n)
            ORDER BY n
            RETURNING id
            """, logger: logger)
        var ids: [Int64] = []
        for try await v in rows.decode(Int64.self) { ids.append(v) }
        if notify { try await c.query(PostgresQuery(unsafeSQL: "NOTIFY \(channel)"), logger: logger) }
        // Ids come from one sequence in insertion order, which follows ORDER BY n.
        return ids.sorted()
    }

    public func claim(queues: [String], worker: String, leaseSeconds: Double) async throws -> Job? {
        try await batches.claims.submit(ClaimRequest(queues: queues, worker: worker, leaseSeconds: leaseSeconds))
    }

    /// Leases up to `limit` jobs in one statement: expired leases first (a job whose worker
    /// died; on its last attempt it goes dead instead), then the oldest due jobs. Each
    /// lookup walks a partial index that holds only rows in that state, so the done and dead
    /// rows of a long-lived queue are never scanned.
    static func claim(_ c: PostgresConnection, _ r: ClaimRequest, limit: Int, now: Double) async throws -> [Job] {
        // Relaxed commit, as for every outcome; and no sort: a queue filled faster than
        // autovacuum analyzes it is estimated at a few rows, and the planner would read
        // every ready row and sort them (7 ms a claim at 20,000 ready) instead of walking
        // the index in order and stopping at the limit (0.4 ms).
        try await c.query(
            "SELECT set_config('synchronous_commit', 'off', true), set_config('enable_sort', 'off', true)",
            logger: c.logger)
        let n = Int64(limit)
        let returning = columns.split(separator: ", ").map { "jobs." + $0 }.joined(separator: ", ")
        let rows = try await c.query(
            """
            WITH dead AS (
                UPDATE jobs SET state = 'dead', last_error = 'lease expired on the last attempt', worker = NULL, lease_until = NULL
                WHERE state = 'running' AND lease_until < \(now) AND attempts >= max_attempts AND queue = ANY(\(r.queues))
                RETURNING id
            ), expired AS (
                SELECT id FROM jobs
                WHERE state = 'running' AND lease_until < \(now) AND attempts < max_attempts AND queue = ANY(\(r.queues))
                ORDER BY lease_until LIMIT \(n) FOR UPDATE SKIP LOCKED
            ), due AS (
                SELECT id FROM jobs
                WHERE state = 'ready' AND run_at <= \(now) AND queue = ANY(\(r.queues))
                ORDER BY run_at, id LIMIT \(n) FOR UPDATE SKIP LOCKED
            ), picked AS (
                SELECT id FROM expired UNION ALL SELECT id FROM due LIMIT \(n)
            )
            UPDATE jobs SET state = 'running', attempts = attempts + 1, worker = \(r.worker), lease_until = \(now + r.leaseSeconds)
            FROM picked WHERE jobs.id = picked.id
            RETURNING \(unescaped: returning)
            """, logger: c.logger)
        return try await jobs(rows).sorted { ($0.runAt, $0.id) < ($1.runAt, $1.id) }
    }

    public func heartbeat(id: Int64, worker: String, leaseSeconds: Double) async throws -> Bool {
        let until = now() + leaseSeconds
        return try await set.write("job_heartbeat") { c in
            try await Self.relaxed(c)
            let rows = try await c.query(
                "UPDATE jobs SET lease_until = \(until) WHERE id = \(id) AND worker = \(worker) AND state = 'running' RETURNING id",
                logger: c.logger)
            var found = false
            for try await _ in rows.decode(Int64.self) { found = true }
            return found
        }
    }

    public func complete(id: Int64, worker: String, resultPositions: [String: UInt64]) async throws {
        try await batches.completions.submit(Completion(id: id, worker: worker, positions: ReadYourWrites.text(resultPositions)))
    }

    public func fail(id: Int64, worker: String, error: String, retryAt: Double?) async throws {
        let message = String(error.prefix(2000))
        try await set.write("job_fail") { c in
            try await Self.relaxed(c)
            let logger = c.logger
            if let retryAt {
                try await c.query(
                    """
                    UPDATE jobs SET state = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'ready' END,
                        run_at = \(retryAt), last_error = \(message), lease_until = NULL, worker = NULL
                    WHERE id = \(id) AND worker = \(worker) AND state = 'running'
                    """, logger: logger)
            } else {
                try await c.query(
                    "UPDATE jobs SET state = 'dead', last_error = \(message), lease_until = NULL, worker = NULL WHERE id = \(id) AND worker = \(worker) AND state = 'running'",
                    logger: logger)
            }
        }
    }

    public func release(id: Int64, worker: String) async throws {
        let now = now()
        try await set.write("job_release") { c in
            try await Self.relaxed(c)
            try await c.query(
                """
                UPDATE jobs SET state = 'ready', attempts = greatest(attempts - 1, 0), run_at = \(now), lease_until = NULL, worker = NULL
                WHERE id = \(id) AND worker = \(worker) AND state = 'running'
                """, logger: c.logger)
            try await c.query(PostgresQuery(unsafeSQL: "NOTIFY \(Self.channel)"), logger: c.logger)
        }
    }

    public func job(id: Int64) async throws -> Job? {
        try await set.readPrimary("job_get") { client in
            try await Self.jobs(try await client.query("SELECT \(unescaped: Self.columns) FROM jobs WHERE id = \(id)")).first
        }
    }

    public func stats() async throws -> [QueueStats] {
        let now = now()
        return try await set.readPrimary("job_stats") { client in
            let rows = try await client.query(
                """
                SELECT queue, count(*) FILTER (WHERE state = 'ready'), count(*) FILTER (WHERE state = 'running'),
                    count(*) FILTER (WHERE state = 'dead'), count(*) FILTER (WHERE state = 'done'),
                    min(run_at) FILTER (WHERE state = 'ready' AND run_at <= \(now))
                FROM jobs GROUP BY queue ORDER BY queue
                """)
            var out: [QueueStats] = []
            for try await (q, ready, running, dead, done, oldest) in rows.decode((String, Int64, Int64, Int64, Int64, Double?).self) {
                out.append(
                    QueueStats(
                        queue: q, ready: Int(ready), running: Int(running), dead: Int(dead), done: Int(done),
                        oldestReadyAgeSeconds: oldest.map { max(0, now - $0) } ?? 0))
            }
            return out
        }
    }

    public func deadJobs(limit: Int) async throws -> [Job] {
        try await set.readPrimary("job_dead") { client in
            try await Self.jobs(
                try await client.query("SELECT \(unescaped: Self.columns) FROM jobs WHERE state = 'dead' ORDER BY id DESC LIMIT \(Int64(limit))"))
        }
    }

    public func retryDead(id: Int64) async throws -> Bool {
        let now = now()
        return try await set.write("job_retry") { c in
            let rows = try await c.query(
                "UPDATE jobs SET state = 'ready', attempts = 0, run_at = \(now), last_error = NULL WHERE id = \(id) AND state = 'dead' RETURNING id",
                logger: c.logger)
            var found = false
            for try await _ in rows.decode(Int64.self) { found = true }
            if found { try await c.query(PostgresQuery(unsafeSQL: "NOTIFY \(Self.channel)"), logger: c.logger) }
            return found
        }
    }

    /// LISTENs on a pooled connection until a notification or the timeout. A job enqueued
    /// between the worker's empty claim and the LISTEN waits for the timeout (bounded).
    public func waitForWork(timeoutSeconds: Double) async throws {
        try await set.readPrimary("job_wait") { client in
            try await client.withConnection { connection in
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask {
                        // UNLISTEN on the way out: the connection goes back to the pool.
                        try await connection.listen(on: Self.channel) { notifications in
                            for try await _ in notifications { return }
                        }
                    }
                    group.addTask { try await Task.sleep(for: .milliseconds(Int(timeoutSeconds * 1000))) }
                    _ = try await group.next()
                    group.cancelAll()
                }
            }
        }
    }
}

/// Sends a notification for every ring since the last one sent, one at a time, without
/// making anyone wait: rings that arrive while one is being sent are covered by one more.
final class Notifier: Sendable {
    private let state = Mutex((pending: false, running: false))
    private let send: @Sendable () async throws -> Void

    init(send: @escaping @Sendable () async throws -> Void) { self.send = send }

    func ring() {
        let starts = state.withLock { s -> Bool in
            s.pending = true
            if s.running { return false }
            s.running = true
            return true
        }
        // Detached, as a batch: not the ringing caller's cancellation or task-locals.
        if starts { Task.detached { await self.drain() } }
    }

    private func drain() async {
        while state.withLock({ s -> Bool in
            if !s.pending { s.running = false; return false }
            s.pending = false
            return true
        }) {
            try? await send()
        }
    }
}
