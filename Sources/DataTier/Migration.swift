/// One step of a tier's schema: a name, recorded once applied and never edited once
/// shipped, and the statements that make it. Each tier declares its own steps for each
/// engine (`UserSchema`, `SessionSchema`, `JobSchema`, `PhotoSchema`); the data engine
/// applies them in order.
public struct Migration: Sendable {
    public let name: String
    public let statements: [String]

    public init(_ name: String, _ statements: [String]) {
        self.name = name
        self.statements = statements
    }
}

/// The users' tables.
public enum UserSchema {
    public static let sqlite: [Migration] = [
        // Shipped as "users and sessions"; the sessions table is SessionSchema's now.
        Migration(
            "1-users-and-sessions",
            [
                """
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
                )
                """
            ]),
        // Failed log-ins by email and client address, known email or not (LoginThrottle);
        // the columns on users they replace are no longer read.
        Migration(
            "5-login-failures",
            [
                """
                CREATE TABLE login_failures (
                    key TEXT PRIMARY KEY,
                    failures INTEGER NOT NULL,
                    locked_until REAL,
                    last_failure_at REAL NOT NULL
                )
                """,
                "CREATE INDEX login_failures_by_time ON login_failures(last_failure_at)",
            ]),
        // The people of a city, newest first (`usersIn(city:limit:)`).
        Migration("9-users-by-city", ["CREATE INDEX users_by_city ON users(city, id DESC)"]),
    ]

    public static let postgres: [Migration] = [
        Migration(
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
                """
            ]),
        Migration(
            "6-login-failures",
            [
                """
                CREATE TABLE login_failures (
                    key text PRIMARY KEY, failures integer NOT NULL, locked_until double precision,
                    last_failure_at double precision NOT NULL
                )
                """,
                "CREATE INDEX login_failures_by_time ON login_failures (last_failure_at)",
            ]),
        Migration("9-users-by-city", ["CREATE INDEX users_by_city ON users (city, id DESC)"]),
    ]
}
