import GRDB
import Logging
import MillionsCore
import ServiceLifecycle

/// The embedded default database: one SQLite file in WAL mode, through a GRDB pool
/// (one writer, several concurrent readers).
///
/// It is a `Service` so that the process closes the pool only after the web server has
/// drained its in-flight requests.
public final class SQLiteDatabase: Service, Sendable {
    public let pool: DatabasePool
    public let path: String
    private let logger: Logger

    /// Opens (creating if needed) the database at `path` and applies pending migrations.
    public init(path: String, logger: Logger) throws {
        var config = Configuration()
        // Several processes may share the file (serve, seed, migrate): wait for locks.
        config.busyMode = .timeout(5)
        config.prepareDatabase { db in
            try db.execute(sql: "PRAGMA synchronous = NORMAL")
        }
        self.pool = try DatabasePool(path: path, configuration: config)
        self.path = path
        self.logger = logger
        try Self.migrator.migrate(pool)
    }

    /// Versioned schema. Never edit a shipped migration; add the next one.
    static var migrator: DatabaseMigrator {
        var m = DatabaseMigrator()
        m.registerMigration("1-users-and-sessions") { db in
            try db.execute(
                sql: """
                    CREATE TABLE users (
                        id INTEGER PRIMARY KEY,
                        email TEXT NOT NULL UNIQUE,
                        password_hash TEXT NOT NULL,
                        first_name TEXT NOT NULL,
                        last_name TEXT NOT NULL,
                        street_address TEXT NOT NULL DEFAULT '',
                        city TEXT NOT NULL DEFAULT '',
                        state TEXT NOT NULL DEFAULT '',
                        postal_code TEXT NOT NULL DEFAULT '',
                        phone_numbers TEXT NOT NULL DEFAULT '[]',
                        failed_logins INTEGER NOT NULL DEFAULT 0,
                        locked_until REAL,
                        created_at REAL NOT NULL,
                        updated_at REAL NOT NULL
                    );
                    CREATE TABLE sessions (
                        id_hash TEXT PRIMARY KEY,
                        user_id INTEGER NOT NULL,
                        csrf_token TEXT NOT NULL,
                        created_at REAL NOT NULL,
                        expires_at REAL NOT NULL
                    );
                    CREATE INDEX sessions_by_user ON sessions(user_id);
                    CREATE INDEX sessions_by_expiry ON sessions(expires_at);
                    """)
        }
        m.registerMigration("2-jobs") { db in
            try db.execute(
                sql: """
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
                    );
                    CREATE INDEX jobs_due ON jobs(state, queue, run_at);
                    CREATE INDEX jobs_leases ON jobs(state, lease_until);
                    """)
        }
        // The current photo's public variants; the newest uploaded original (what edits
        // apply to); the last version handed to a job and the version shown, so a job that
        // finishes late never replaces a newer photo.
        m.registerMigration("3-photos") { db in
            try db.execute(
                sql: """
                    ALTER TABLE users ADD COLUMN photo TEXT;
                    ALTER TABLE users ADD COLUMN photo_source TEXT;
                    ALTER TABLE users ADD COLUMN photo_version INTEGER NOT NULL DEFAULT 0;
                    ALTER TABLE users ADD COLUMN photo_applied INTEGER NOT NULL DEFAULT 0;
                    """)
        }
        // Where a job's result was committed, so a client told "done" reads it (always 0
        // on SQLite, which has no replicas; kept so every engine stores the same job).
        m.registerMigration("4-job-result-position") { db in
            try db.execute(sql: "ALTER TABLE jobs ADD COLUMN result_lsn INTEGER NOT NULL DEFAULT 0")
        }
        // Failed log-ins by email and client address, known email or not (LoginThrottle);
        // the columns on users they replace are no longer read.
        m.registerMigration("5-login-failures") { db in
            try db.execute(
                sql: """
                    CREATE TABLE login_failures (
                        key TEXT PRIMARY KEY,
                        failures INTEGER NOT NULL,
                        locked_until REAL,
                        last_failure_at REAL NOT NULL
                    );
                    CREATE INDEX login_failures_by_time ON login_failures(last_failure_at);
                    """)
        }
        return m
    }

    /// Names of the migrations applied, oldest first.
    public func appliedMigrations() throws -> [String] {
        try pool.read { db in try Self.migrator.appliedMigrations(db) }
    }

    /// Closes the pool (for commands that do not run as a service).
    public func close() throws { try pool.close() }

    public func ping() async throws {
        _ = try await pool.read { db in try Int.fetchOne(db, sql: "SELECT 1") }
    }

    public func run() async throws {
        // Stay up until the group shuts down; the web tier stops before this service.
        try? await gracefulShutdown()
        try pool.close()
        logger.info("database closed", metadata: ["path": "\(path)"])
    }
}

extension DatabaseError {
    var isUniqueViolation: Bool {
        extendedResultCode == .SQLITE_CONSTRAINT_UNIQUE || extendedResultCode == .SQLITE_CONSTRAINT_PRIMARYKEY
    }
}
