import DataTier
import GRDB
import MillionsCore

/// `JobQueue` in the embedded SQLite file. SQLite has one writer at a time, so a claim
/// (one `UPDATE … RETURNING` in a write transaction) can never hand a job to two workers.
/// Idle workers poll (every `pollSeconds`); another process's enqueue is seen at the next poll.
public struct SQLiteJobQueue: JobQueue {
    let database: SQLiteDatabase
    let pollSeconds: Double
    let now: @Sendable () -> Double

    public init(database: SQLiteDatabase, pollSeconds: Double = 0.05, now: @escaping @Sendable () -> Double = { Clock.secondsSince1970() }) {
        self.database = database
        self.pollSeconds = pollSeconds
        self.now = now
    }

    static func job(_ row: Row) -> Job {
        Job(
            id: row["id"], queue: row["queue"], payload: row["payload"], state: Job.State(rawValue: row["state"]) ?? .dead,
            attempts: row["attempts"], maxAttempts: row["max_attempts"], runAt: row["run_at"], leaseUntil: row["lease_until"],
            worker: row["worker"], lastError: row["last_error"], createdAt: row["created_at"],
            resultPositions: ReadYourWrites.positions(cookie: row["result_positions"] ?? ""))
    }

    public func enqueue(queue: String, payload: String, maxAttempts: Int, delaySeconds: Double) async throws -> Int64 {
        let now = now()
        return try await database.write { db in
            try Self.enqueue(db, queue: queue, payload: payload, maxAttempts: maxAttempts, runAt: now + delaySeconds, now: now)
        }
    }

    /// Enqueues inside a transaction the caller already holds, so the job commits (or not)
    /// with the write that causes it.
    public static func enqueue(_ db: Database, queue: String, payload: String, maxAttempts: Int, runAt: Double, now: Double) throws -> Int64 {
        try db.execute(
            sql: "INSERT INTO jobs (queue, payload, state, attempts, max_attempts, run_at, created_at) VALUES (?, ?, 'ready', 0, ?, ?, ?)",
            arguments: [queue, payload, maxAttempts, runAt, now])
        return db.lastInsertedRowID
    }

    public func claim(queues: [String], worker: String, leaseSeconds: Double) async throws -> Job? {
        let now = now()
        return try await database.write { db in
            let marks = Array(repeating: "?", count: queues.count).joined(separator: ",")
            // A lease that ran out on the last attempt: the job dies instead of running again.
            try db.execute(
                sql: """
                    UPDATE jobs SET state = 'dead', last_error = 'lease expired on the last attempt', worker = NULL, lease_until = NULL
                    WHERE state = 'running' AND lease_until < ? AND attempts >= max_attempts AND queue IN (\(marks))
                    """, arguments: StatementArguments([now as any DatabaseValueConvertible] + queues.map { $0 as any DatabaseValueConvertible }))
            // Two index lookups rather than one OR (which would scan every row, done ones
            // included): first a job whose worker's lease ran out, else the oldest due one.
            let queueArgs = queues.map { $0 as any DatabaseValueConvertible }
            let candidate =
                try Int64.fetchOne(
                    db,
                    sql: "SELECT id FROM jobs WHERE state = 'running' AND lease_until < ? AND queue IN (\(marks)) ORDER BY lease_until LIMIT 1",
                    arguments: StatementArguments([now as any DatabaseValueConvertible] + queueArgs))
                ?? Int64.fetchOne(
                    db,
                    sql: "SELECT id FROM jobs WHERE state = 'ready' AND queue IN (\(marks)) AND run_at <= ? ORDER BY run_at, id LIMIT 1",
                    arguments: StatementArguments(queueArgs + [now]))
            guard let candidate else { return nil }
            let row = try Row.fetchOne(
                db,
                sql: "UPDATE jobs SET state = 'running', attempts = attempts + 1, worker = ?, lease_until = ? WHERE id = ? RETURNING *",
                arguments: [worker, now + leaseSeconds, candidate])
            return row.map(Self.job)
        }
    }

    public func heartbeat(id: Int64, worker: String, leaseSeconds: Double) async throws -> Bool {
        let until = now() + leaseSeconds
        return try await database.write { db in
            try db.execute(
                sql: "UPDATE jobs SET lease_until = ? WHERE id = ? AND worker = ? AND state = 'running'",
                arguments: [until, id, worker])
            return db.changesCount == 1
        }
    }

    public func complete(id: Int64, worker: String, resultPositions: [String: UInt64]) async throws {
        let now = now()
        try await database.write { db in
            try db.execute(
                sql: "UPDATE jobs SET state = 'done', lease_until = NULL, finished_at = ?, result_positions = ? WHERE id = ? AND worker = ? AND state = 'running'",
                arguments: [now, ReadYourWrites.text(resultPositions), id, worker])
        }
    }

    public func fail(id: Int64, worker: String, error: String, retryAt: Double?) async throws {
        try await database.write { db in
            if let retryAt {
                try db.execute(
                    sql: """
                        UPDATE jobs SET state = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'ready' END,
                            run_at = ?, last_error = ?, lease_until = NULL, worker = NULL
                        WHERE id = ? AND worker = ? AND state = 'running'
                        """, arguments: [retryAt, String(error.prefix(2000)), id, worker])
            } else {
                try db.execute(
                    sql: "UPDATE jobs SET state = 'dead', last_error = ?, lease_until = NULL, worker = NULL WHERE id = ? AND worker = ? AND state = 'running'",
                    arguments: [String(error.prefix(2000)), id, worker])
            }
        }
    }

    public func release(id: Int64, worker: String) async throws {
        let now = now()
        try await database.write { db in
            try db.execute(
                sql: """
                    UPDATE jobs SET state = 'ready', attempts = max(attempts - 1, 0), run_at = ?, lease_until = NULL, worker = NULL
                    WHERE id = ? AND worker = ? AND state = 'running'
                    """, arguments: [now, id, worker])
        }
    }

    public func job(id: Int64) async throws -> Job? {
        try await database.read { db in try Row.fetchOne(db, sql: "SELECT * FROM jobs WHERE id = ?", arguments: [id]).map(Self.job) }
    }

    public func stats() async throws -> [QueueStats] {
        let now = now()
        return try await database.read { db in
            try Row.fetchAll(
                db,
                sql: """
                    SELECT queue,
                        sum(state = 'ready') AS ready, sum(state = 'running') AS running,
                        sum(state = 'dead') AS dead, sum(state = 'done') AS done,
                        min(CASE WHEN state = 'ready' AND run_at <= ? THEN run_at END) AS oldest
                    FROM jobs GROUP BY queue ORDER BY queue
                    """, arguments: [now]
            ).map { row in
                let oldest: Double? = row["oldest"]
                return QueueStats(
                    queue: row["queue"], ready: row["ready"], running: row["running"], dead: row["dead"], done: row["done"],
                    oldestReadyAgeSeconds: oldest.map { max(0, now - $0) } ?? 0)
            }
        }
    }

    public func deadJobs(limit: Int) async throws -> [Job] {
        try await database.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM jobs WHERE state = 'dead' ORDER BY id DESC LIMIT ?", arguments: [limit]).map(Self.job)
        }
    }

    public func retryDead(id: Int64) async throws -> Bool {
        let now = now()
        return try await database.write { db in
            try db.execute(
                sql: "UPDATE jobs SET state = 'ready', attempts = 0, run_at = ?, last_error = NULL WHERE id = ? AND state = 'dead'",
                arguments: [now, id])
            return db.changesCount == 1
        }
    }

    public func waitForWork(timeoutSeconds: Double) async throws {
        try await Task.sleep(for: .milliseconds(Int(min(pollSeconds, timeoutSeconds) * 1000)))
    }
}
