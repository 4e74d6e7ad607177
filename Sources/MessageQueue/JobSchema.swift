import DataTier

/// The `jobs` table (`queue.engine=sql`).
public enum JobSchema {
    public static let sqlite: [Migration] = [
        Migration(
            "2-jobs",
            [
                """
                CREATE TABLE jobs (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    queue TEXT NOT NULL,
                    payload TEXT NOT NULL,
                    state TEXT NOT NULL,
                    attempts INTEGER NOT NULL DEFAULT 0,
                    max_attempts INTEGER NOT NULL,
                    run_at REAL NOT NULL,
                    lease_until REAL,
                    worker TEXT,
                    last_error TEXT,
                    created_at REAL NOT NULL,
                    finished_at REAL
                )
                """,
                "CREATE INDEX jobs_due ON jobs(state, queue, run_at)",
                "CREATE INDEX jobs_leases ON jobs(state, lease_until)",
            ]),
        // Where a job's result was committed, so a client told "done" reads it (always 0
        // on SQLite, which has no replicas; kept so every engine stores the same job).
        Migration("4-job-result-position", ["ALTER TABLE jobs ADD COLUMN result_lsn INTEGER NOT NULL DEFAULT 0"]),
        // The result's positions by cluster (as `ReadYourWrites.text`); replaces result_lsn,
        // which names no cluster and so cannot serve a sharded tier.
        Migration("8-job-result-positions", ["ALTER TABLE jobs ADD COLUMN result_positions TEXT NOT NULL DEFAULT ''"]),
    ]

    public static let postgres: [Migration] = [
        Migration(
            "2-jobs",
            [
                """
                CREATE TABLE jobs (
                    id bigserial PRIMARY KEY,
                    queue text NOT NULL,
                    payload text NOT NULL,
                    state text NOT NULL,
                    attempts integer NOT NULL DEFAULT 0,
                    max_attempts integer NOT NULL,
                    run_at double precision NOT NULL,
                    lease_until double precision,
                    worker text,
                    last_error text,
                    created_at double precision NOT NULL,
                    finished_at double precision
                )
                """,
                "CREATE INDEX jobs_due ON jobs (state, queue, run_at)",
                "CREATE INDEX jobs_leases ON jobs (state, lease_until)",
            ]),
        // The WAL position of a job's result: a client told "done" reads from there on.
        Migration("4-job-result-position", ["ALTER TABLE jobs ADD COLUMN result_lsn bigint NOT NULL DEFAULT 0"]),
        // Claims walk indexes of ready and of running rows only (PostgresJobQueue.claim):
        // the done rows of a busy queue no longer sit in the index a claim scans.
        Migration(
            "7-job-claim-indexes",
            [
                "CREATE INDEX jobs_ready ON jobs (run_at, id) WHERE state = 'ready'",
                "CREATE INDEX jobs_running ON jobs (lease_until) WHERE state = 'running'",
                "DROP INDEX jobs_due",
                "DROP INDEX jobs_leases",
            ]),
        // The result's positions by cluster (as `ReadYourWrites.text`); replaces result_lsn,
        // which names no cluster and so cannot serve a sharded tier.
        Migration("8-job-result-positions", ["ALTER TABLE jobs ADD COLUMN result_positions text NOT NULL DEFAULT ''"]),
    ]
}
