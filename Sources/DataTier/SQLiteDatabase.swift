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
    /// Internal: other tiers' SQL stores read and write through `read` and `write`, and
    /// only this type opens and closes the pool.
    let pool: DatabasePool
    public let path: String
    private let logger: Logger
    private let migrator: DatabaseMigrator

    /// Opens (creating if needed) the database at `path` and applies what `migrations`
    /// (every tier's steps that keep state here, in order) has not applied yet.
    public init(path: String, migrations: [Migration], logger: Logger) throws {
        var config = Configuration()
        // Several processes may share the file (serve, seed, migrate): wait for locks.
        config.busyMode = .timeout(5)
        config.prepareDatabase { db in
            try db.execute(sql: "PRAGMA synchronous = NORMAL")
        }
        self.pool = try DatabasePool(path: path, configuration: config)
        self.path = path
        self.logger = logger
        migrator = Self.migrator(migrations)
        try migrator.migrate(pool)
    }

    /// The tiers' steps in order (GRDB records what it applied in `grdb_migrations`).
    static func migrator(_ migrations: [Migration]) -> DatabaseMigrator {
        var m = DatabaseMigrator()
        for migration in migrations {
            m.registerMigration(migration.name) { db in
                for statement in migration.statements { try db.execute(sql: statement) }
            }
        }
        return m
    }

    /// Names of the migrations applied, oldest first.
    public func appliedMigrations() throws -> [String] {
        try pool.read { [migrator] db in try migrator.appliedMigrations(db) }
    }

    /// Runs `body` in a snapshot on one of the pool's reader connections.
    public func read<T: Sendable>(_ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        try await pool.read(body)
    }

    /// Runs `body` in one transaction on the single writer.
    public func write<T: Sendable>(_ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        try await pool.write(body)
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
