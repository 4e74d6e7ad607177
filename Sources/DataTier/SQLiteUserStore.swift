import Foundation
import GRDB
import MillionsCore

/// `UserStore` on the embedded SQLite database.
public struct SQLiteUserStore: UserStore {
    let db: SQLiteDatabase

    public init(database: SQLiteDatabase) {
        self.db = database
    }

    static let columns =
        "id, first_name, last_name, street_address, city, state, postal_code, phone_numbers, photo"

    public func create(_ account: NewAccount) async throws -> User {
        let now = Clock.secondsSince1970()
        let p = account.profile
        let phones = try Self.encodePhones(p.phoneNumbers)
        do {
            try await db.pool.write { db in
                try db.execute(
                    sql: """
                        INSERT INTO users (id, email, password_hash, first_name, last_name, street_address, city,
                            state, postal_code, phone_numbers, created_at, updated_at)
                        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                        """,
                    arguments: [
                        account.id.rawValue, account.email, account.passwordHash, p.firstName, p.lastName,
                        p.address.streetAddress, p.address.city, p.address.state, p.address.postalCode, phones, now,
                        now,
                    ])
            }
        } catch let error as DatabaseError where error.isUniqueViolation {
            if (error.message ?? "").contains("users.email") {
                throw MillionsError(.conflict, "an account with this email already exists")
            }
            throw DuplicateIDError()
        }
        return User(id: account.id, profile: p)
    }

    public func user(id: UserID) async throws -> User? {
        try await db.pool.read { db in
            try Row.fetchOne(db, sql: "SELECT \(Self.columns) FROM users WHERE id = ?", arguments: [id.rawValue])
                .map(Self.user(from:))
        }
    }

    public func recentUsers(limit: Int) async throws -> [User] {
        try await db.pool.read { db in
            try Row.fetchAll(
                db, sql: "SELECT \(Self.columns) FROM users ORDER BY id DESC LIMIT ?", arguments: [limit]
            ).map(Self.user(from:))
        }
    }

    public func usersIn(city: String, limit: Int) async throws -> CityPage {
        try await db.pool.read { db in
            let rows = try Row.fetchAll(
                db, sql: "SELECT id, first_name, last_name FROM users WHERE city = ? ORDER BY id DESC LIMIT ?", arguments: [city, limit])
            return CityPage(users: rows.compactMap { row in
                UserID(rawValue: row["id"]).map { UserSummary(id: $0, firstName: row["first_name"], lastName: row["last_name"]) }
            })
        }
    }

    public func update(id: UserID, patch: ProfilePatch) async throws -> User? {
        try await db.pool.write { db in
            guard
                let current = try Row.fetchOne(
                    db, sql: "SELECT \(Self.columns) FROM users WHERE id = ?", arguments: [id.rawValue]
                ).map(Self.user(from:))
            else { return nil }
            let p = patch.applied(to: current.profile)
            try db.execute(
                sql: """
                    UPDATE users SET first_name = ?, last_name = ?, street_address = ?, city = ?, state = ?,
                        postal_code = ?, phone_numbers = ?, updated_at = ?
                    WHERE id = ?
                    """,
                arguments: [
                    p.firstName, p.lastName, p.address.streetAddress, p.address.city, p.address.state,
                    p.address.postalCode, try Self.encodePhones(p.phoneNumbers), Clock.secondsSince1970(),
                    id.rawValue,
                ])
            return User(id: id, profile: p, photo: current.photo)
        }
    }

    public func delete(id: UserID) async throws -> DeletedUser? {
        try await db.pool.write { db in
            try Row.fetchOne(db, sql: "DELETE FROM users WHERE id = ? RETURNING photo_source, photo", arguments: [id.rawValue])
                .map { DeletedUser(photoSource: $0["photo_source"], photo: Photo.parse($0["photo"])) }
        }
    }

    public func credentials(email: String) async throws -> Credentials? {
        try await db.pool.read { db in
            try Row.fetchOne(
                db,
                sql: "SELECT id, email, password_hash FROM users WHERE email = ?",
                arguments: [email]
            ).map { row in
                Credentials(
                    userID: UserID(rawValue: row["id"])!, email: row["email"], passwordHash: row["password_hash"])
            }
        }
    }

    public func reserveLoginAttempt(key: String, now: Double, throttle: LoginThrottle) async throws -> LoginAttempt {
        // One write transaction: SQLite has one writer at a time, so the read and the
        // write are atomic.
        try await db.pool.write { db in
            let row = try Row.fetchOne(
                db, sql: "SELECT failures, locked_until, last_failure_at FROM login_failures WHERE key = ?", arguments: [key])
            let next = throttle.attempt(
                failures: row?["failures"] ?? 0, lockedUntil: row?["locked_until"], lastFailureAt: row?["last_failure_at"] ?? 0,
                now: now)
            switch next {
            case .failure(let locked): return .locked(until: locked.until)
            case .success(let state):
                try db.execute(
                    sql: """
                        INSERT INTO login_failures (key, failures, locked_until, last_failure_at) VALUES (?, ?, ?, ?)
                        ON CONFLICT (key) DO UPDATE SET failures = excluded.failures, locked_until = excluded.locked_until,
                            last_failure_at = excluded.last_failure_at
                        """,
                    arguments: [key, state.failures, state.lockedUntil, now])
                return .granted
            }
        }
    }

    public func recordSuccessfulLogin(key: String) async throws {
        try await db.pool.write { db in
            try db.execute(sql: "DELETE FROM login_failures WHERE key = ?", arguments: [key])
        }
    }

    public func forgetLoginFailures(before: Double) async throws -> Int {
        try await db.pool.write { db in
            try db.execute(
                sql: "DELETE FROM login_failures WHERE last_failure_at < ? AND (locked_until IS NULL OR locked_until < ?)",
                arguments: [before, before])
            return db.changesCount
        }
    }

    public func insertMany(_ accounts: [NewAccount]) async throws -> Int {
        let now = Clock.secondsSince1970()
        let rows: [StatementArguments] = try accounts.map { a in
            let p = a.profile
            return [
                a.id.rawValue, a.email, a.passwordHash, p.firstName, p.lastName, p.address.streetAddress, p.address.city,
                p.address.state, p.address.postalCode, try Self.encodePhones(p.phoneNumbers), now, now,
            ]
        }
        return try await db.pool.write { db in
            let statement = try db.makeStatement(
                sql: """
                    INSERT OR IGNORE INTO users (id, email, password_hash, first_name, last_name, street_address, city,
                        state, postal_code, phone_numbers, created_at, updated_at)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """)
            var inserted = 0
            for row in rows {
                try statement.execute(arguments: row)
                inserted += db.changesCount
            }
            return inserted
        }
    }

    public func beginPhoto(id: UserID, source: String?) async throws -> PhotoTicket? {
        try await db.pool.write { db in try Self.beginPhoto(db, id: id, source: source) }
    }

    /// `beginPhoto` inside a transaction the caller holds (to enqueue the job with it).
    public static func beginPhoto(_ db: Database, id: UserID, source: String?) throws -> PhotoTicket? {
        // Inside a write transaction (one writer): the row read is the row updated.
        let before = try String.fetchOne(db, sql: "SELECT photo_source FROM users WHERE id = ?", arguments: [id.rawValue])
        return try Row.fetchOne(
            db,
            sql: """
                UPDATE users SET photo_version = photo_version + 1, photo_source = COALESCE(?, photo_source)
                WHERE id = ? AND COALESCE(?, photo_source) IS NOT NULL
                RETURNING photo_version, photo_source
                """,
            arguments: [source, id.rawValue, source]
        ).map { row in
            let now: String = row["photo_source"]
            return PhotoTicket(version: row["photo_version"], source: now, replaced: source != nil && before != now ? before : nil)
        }
    }

    public func photoSource(id: UserID) async throws -> String? {
        try await db.pool.read { db in
            try String.fetchOne(db, sql: "SELECT photo_source FROM users WHERE id = ?", arguments: [id.rawValue])
        }
    }

    public func newestPhoto(id: UserID) async throws -> PhotoTicket? {
        try await db.pool.read { db in
            try Row.fetchOne(db, sql: "SELECT photo_version, photo_source FROM users WHERE id = ?", arguments: [id.rawValue])
                .flatMap { row in (row["photo_source"] as String?).map { PhotoTicket(version: row["photo_version"], source: $0) } }
        }
    }

    public func setPhoto(id: UserID, photo: Photo, version: Int64) async throws -> PhotoSwap {
        try await db.pool.write { db in
            let before = try Row.fetchOne(
                db, sql: "SELECT photo FROM users WHERE id = ? AND photo_applied <= ?", arguments: [id.rawValue, version])
            guard let before else { return .notShown }
            try db.execute(
                sql: "UPDATE users SET photo = ?, photo_applied = ?, updated_at = ? WHERE id = ?",
                arguments: [photo.jsonText, version, Clock.secondsSince1970(), id.rawValue])
            return .shown(replaced: Photo.parse(before["photo"]))
        }
    }

    public func ping() async throws { try await db.ping() }

    static func user(from row: Row) throws -> User {
        let phones: String = row["phone_numbers"]
        return User(
            id: UserID(rawValue: row["id"])!,
            firstName: row["first_name"],
            lastName: row["last_name"],
            address: Address(
                streetAddress: row["street_address"], city: row["city"], state: row["state"],
                postalCode: row["postal_code"]),
            phoneNumbers: try JSONDecoder().decode([String].self, from: Data(phones.utf8)),
            photo: Photo.parse(row["photo"]))
    }

    static func encodePhones(_ phones: [String]) throws -> String {
        String(decoding: try JSONEncoder().encode(phones), as: UTF8.self)
    }
}
