import Logging
import PostgresNIO

/// Versioned schema for PostgreSQL, applied on the primary under an advisory lock so
/// several processes starting at once apply each migration exactly once.
public enum PostgresMigrations {
    /// Ordered; never edit a shipped one, add the next.
    static let all: [(name: String, statements: [String])] = [
        (
            "1-users-and-sessions",
            [
                """
                CREATE TABLE users (
                    id bigint PRIMARY KEY,
                    email text NOT NULL UNIQUE,
                    password_hash text NOT NULL,
                    first_name text NOT NULL,
                    last_name text NOT NULL,
                    street_address text NOT NULL DEFAULT '',
                    city text NOT NULL DEFAULT '',
                    state text NOT NULL DEFAULT '',
                    postal_code text NOT NULL DEFAULT '',
                    phone_numbers text[] NOT NULL DEFAULT '{}',
                    failed_logins integer NOT NULL DEFAULT 0,
                    locked_until double precision,
                    created_at double precision NOT NULL,
                    updated_at double precision NOT NULL
                )
                """,
                """
                CREATE TABLE sessions (
                    id_hash text PRIMARY KEY,
                    user_id bigint NOT NULL,
                    csrf_token text NOT NULL,
                    created_at double precision NOT NULL,
                    expires_at double precision NOT NULL
                )
                """,
                "CREATE INDEX sessions_by_user ON sessions (user_id)",
                "CREATE INDEX sessions_by_expiry ON sessions (expires_at)",
            ]
        ),
        (
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
            ]
        ),
        (
            "3-photos",
            [
                """
                ALTER TABLE users ADD COLUMN photo text, ADD COLUMN photo_source text,
                    ADD COLUMN photo_version bigint NOT NULL DEFAULT 0, ADD COLUMN photo_applied bigint NOT NULL DEFAULT 0
                """
            ]
        ),
        // The WAL position of a job's result: a client told "done" reads from there on.
        ("4-job-result-position", ["ALTER TABLE jobs ADD COLUMN result_lsn bigint NOT NULL DEFAULT 0"]),
        // Photo files as large objects (`photos.store=postgres`): see PostgresPhotoStore.
        (
            "5-photo-files",
            [
                """
                CREATE TABLE photo_files (
                    kind text NOT NULL, name text NOT NULL, object oid NOT NULL, bytes bigint NOT NULL,
                    created_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (kind, name)
                )
                """
            ]
        ),
        // Failed log-ins by email and client address, known email or not (LoginThrottle);
        // the columns on users they replace are no longer read.
        (
            "6-login-failures",
            [
                """
                CREATE TABLE login_failures (
                    key text PRIMARY KEY, failures integer NOT NULL, locked_until double precision,
                    last_failure_at double precision NOT NULL
                )
                """,
                "CREATE INDEX login_failures_by_time ON login_failures (last_failure_at)",
            ]
        ),
        // Claims walk indexes of ready and of running rows only (PostgresJobQueue.claim):
        // the done rows of a busy queue no longer sit in the index a claim scans.
        (
            "7-job-claim-indexes",
            [
                "CREATE INDEX jobs_ready ON jobs (run_at, id) WHERE state = 'ready'",
                "CREATE INDEX jobs_running ON jobs (lease_until) WHERE state = 'running'",
                "DROP INDEX jobs_due",
                "DROP INDEX jobs_leases",
            ]
        ),
    ]

    /// Applies what is missing; returns every applied migration's name.
    @discardableResult
    public static func migrate(_ set: ReplicaSet) async throws -> [String] {
        // Not the query timeout: several processes starting at once wait for each other's
        // advisory lock, and ALTER TABLE waits for its lock; a timeout here is no node failure.
        try await set.write("migrate", timeout: .seconds(300)) { connection in
            let logger = Logger(label: "millions.migrate")
            try await connection.query("SELECT pg_advisory_xact_lock(727274)", logger: logger)
            try await connection.query(
                "CREATE TABLE IF NOT EXISTS schema_migrations (name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
                logger: logger)
            var applied: [String] = []
            for try await name in try await connection.query("SELECT name FROM schema_migrations ORDER BY name", logger: logger)
                .decode(String.self)
            {
                applied.append(name)
            }
            for migration in all where !applied.contains(migration.name) {
                for statement in migration.statements {
                    try await connection.query(PostgresQuery(unsafeSQL: statement), logger: logger)
                }
                try await connection.query("INSERT INTO schema_migrations (name) VALUES (\(migration.name))", logger: logger)
                applied.append(migration.name)
            }
            return applied
        }
    }
}
