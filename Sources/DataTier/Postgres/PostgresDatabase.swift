import Logging
import PostgresNIO

/// Versioned schema for PostgreSQL, applied on the primary under an advisory lock so
/// several processes starting at once apply each migration exactly once.
public enum PostgresMigrations {
    /// Applies what `migrations` (every tier's steps that keep state here, in order) has
    /// not applied yet; returns every applied migration's name.
    @discardableResult
    public static func migrate(_ set: ReplicaSet, _ migrations: [Migration]) async throws -> [String] {
        // Not the query timeout: several processes starting at once wait for each other's
        // advisory lock, and ALTER TABLE waits for its lock; a timeout here is no node failure.
        try await set.write("migrate", timeout: .seconds(300)) { connection in
            let logger = connection.logger
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
            for migration in migrations where !applied.contains(migration.name) {
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
