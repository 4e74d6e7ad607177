import DataTier

/// The `sessions` table (`session.store=sql`). Databases made before each tier owned its
/// schema got it from "1-users-and-sessions": hence `IF NOT EXISTS`.
public enum SessionSchema {
    public static let sqlite: [Migration] = [
        Migration(
            "sessions-1-table",
            [
                """
                CREATE TABLE IF NOT EXISTS sessions (
                    id_hash TEXT PRIMARY KEY,
                    user_id INTEGER NOT NULL,
                    csrf_token TEXT NOT NULL,
                    created_at REAL NOT NULL,
                    expires_at REAL NOT NULL
                )
                """,
                "CREATE INDEX IF NOT EXISTS sessions_by_user ON sessions(user_id)",
                "CREATE INDEX IF NOT EXISTS sessions_by_expiry ON sessions(expires_at)",
            ])
    ]

    public static let postgres: [Migration] = [
        Migration(
            "sessions-1-table",
            [
                """
                CREATE TABLE IF NOT EXISTS sessions (
                    id_hash text PRIMARY KEY,
                    user_id bigint NOT NULL,
                    csrf_token text NOT NULL,
                    created_at double precision NOT NULL,
                    expires_at double precision NOT NULL
                )
                """,
                "CREATE INDEX IF NOT EXISTS sessions_by_user ON sessions (user_id)",
                "CREATE INDEX IF NOT EXISTS sessions_by_expiry ON sessions (expires_at)",
            ])
    ]
}
