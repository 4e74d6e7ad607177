import DataTier
import Logging
import MillionsCore
import PostgresNIO

/// `JobQueue` on the PostgreSQL primary. Claims take the first due row with
/// `FOR UPDATE SKIP LOCKED`, so concurrent workers never wait on, or take, the same job;
/// every enqueue sends `NOTIFY millions_jobs`, which wakes idle workers at once.
public struct PostgresJobQueue: JobQueue {
    let set: ReplicaSet
    let now: @Sendable () -> Double
    static let channel = "millions_jobs"

    public init(replicaSet: ReplicaSet, now: @escaping @Sendable () -> Double = { Clock.secondsSince1970() }) {
        self.set = replicaSet
        self.now = now
    }

    typealias JobRow = (Int64, String, String, String, Int32, Int32, Double, Double?, String?, String?, Double, Int64)
    static let columns =
        "id, queue, payload, state, attempts, max_attempts, run_at, lease_until, worker, last_error, created_at, result_lsn"

    /// Claims, heartbeats and outcomes skip the commit's fsync: lost in a crash, they only
    /// make a job run again, which at-least-once delivery allows. Enqueues keep it.
    static func relaxed(_ c: PostgresConnection) async throws {
        try await c.query("SET LOCAL synchronous_commit TO off", logger: Logger(label: "millions.queue"))
    }

    static func job(_ r: JobRow) -> Job {
        Job(
            id: r.0, queue: r.1, payload: r.2, state: Job.State(rawValue: r.3) ?? .dead, attempts: Int(r.4),
            maxAttempts: Int(r.5), runAt: r.6, leaseUntil: r.7, worker: r.8, lastError: r.9, createdAt: r.10,
            resultPosition: UInt64(bitPattern: r.11))
    }

    static func jobs(_ rows: PostgresRowSequence) async throws -> [Job] {
        var out: [Job] = []
        for try await r in rows.decode(JobRow.self) { out.append(job(r)) }
        return out
    }

    public func enqueue(queue: String, payload: String, maxAttempts: Int, delaySeconds: Double) async throws -> Int64 {
        let now = now()
        return try await set.write("job_enqueue") { c in
            try await Self.enqueue(c, queue: queue, payload: payload, maxAttempts: maxAttempts, runAt: now + delaySeconds, now: now)
        }
    }

    /// Enqueues inside the caller's transaction, so the job commits with the write that
    /// causes it; the notification is delivered at commit.
    public static func enqueue(
        _ c: PostgresConnection, queue: String, payload: String, maxAttempts: Int, runAt: Double, now: Double
    ) async throws -> Int64 {
        let logger = Logger(label: "millions.queue")
        let rows = try await c.query(
            """
            INSERT INTO jobs (queue, payload, state, attempts, max_attempts, run_at, created_at)
            VALUES (\(queue), \(payload), 'ready', 0, \(Int32(maxAttempts)), \(runAt), \(now)) RETURNING id
            """, logger: logger)
        var id: Int64 = 0
        for try await v in rows.decode(Int64.self) { id = v }
        try await c.query(PostgresQuery(unsafeSQL: "NOTIFY \(channel)"), logger: logger)
        return id
    }

    public func claim(queues: [String], worker: String, leaseSeconds: Double) async throws -> Job? {
        let now = now()
        return try await set.write("job_claim") { c in
            let logger = Logger(label: "millions.queue")
            try await Self.relaxed(c)
            try await c.query(
                """
                UPDATE jobs SET state = 'dead', last_error = 'lease expired on the last attempt', worker = NULL, lease_until = NULL
                WHERE state = 'running' AND lease_until < \(now) AND attempts >= max_attempts AND queue = ANY(\(queues))
                """, logger: logger)
            // An expired lease first, else the oldest due job: two index scans that skip the
            // rows other workers hold (one OR would scan every row, done ones included).
            var candidate: Int64? = nil
            for sql: PostgresQuery in [
                "SELECT id FROM jobs WHERE state = 'running' AND lease_until < \(now) AND queue = ANY(\(queues)) ORDER BY lease_until LIMIT 1 FOR UPDATE SKIP LOCKED",
                "SELECT id FROM jobs WHERE state = 'ready' AND queue = ANY(\(queues)) AND run_at <= \(now) ORDER BY run_at, id LIMIT 1 FOR UPDATE SKIP LOCKED",
            ] where candidate == nil {
                for try await id in try await c.query(sql, logger: logger).decode(Int64.self) { candidate = id }
            }
            guard let candidate else { return nil }
            let rows = try await c.query(
                """
                UPDATE jobs SET state = 'running', attempts = attempts + 1, worker = \(worker), lease_until = \(now + leaseSeconds)
                WHERE id = \(candidate) RETURNING \(unescaped: Self.columns)
                """, logger: logger)
            return try await Self.jobs(rows).first
        }
    }

    public func heartbeat(id: Int64, worker: String, leaseSeconds: Double) async throws -> Bool {
        let until = now() + leaseSeconds
        return try await set.write("job_heartbeat") { c in
            try await Self.relaxed(c)
            let rows = try await c.query(
                "UPDATE jobs SET lease_until = \(until) WHERE id = \(id) AND worker = \(worker) AND state = 'running' RETURNING id",
                logger: Logger(label: "millions.queue"))
            var found = false
            for try await _ in rows.decode(Int64.self) { found = true }
            return found
        }
    }

    public func complete(id: Int64, worker: String, resultPosition: UInt64) async throws {
        let now = now()
        let position = Int64(bitPattern: resultPosition)
        try await set.write("job_complete") { c in
            try await Self.relaxed(c)
            try await c.query(
                """
                UPDATE jobs SET state = 'done', lease_until = NULL, finished_at = \(now), result_lsn = \(position)
                WHERE id = \(id) AND worker = \(worker) AND state = 'running'
                """,
                logger: Logger(label: "millions.queue"))
        }
    }

    public func fail(id: Int64, worker: String, error: String, retryAt: Double?) async throws {
        let message = String(error.prefix(2000))
        try await set.write("job_fail") { c in
            try await Self.relaxed(c)
            let logger = Logger(label: "millions.queue")
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
                """, logger: Logger(label: "millions.queue"))
            try await c.query(PostgresQuery(unsafeSQL: "NOTIFY \(Self.channel)"), logger: Logger(label: "millions.queue"))
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
                logger: Logger(label: "millions.queue"))
            var found = false
            for try await _ in rows.decode(Int64.self) { found = true }
            if found { try await c.query(PostgresQuery(unsafeSQL: "NOTIFY \(Self.channel)"), logger: Logger(label: "millions.queue")) }
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
                        let notifications = try await connection.listen(Self.channel)
                        for try await _ in notifications { return }
                    }
                    group.addTask { try await Task.sleep(for: .milliseconds(Int(timeoutSeconds * 1000))) }
                    _ = try await group.next()
                    group.cancelAll()
                }
            }
        }
    }
}
