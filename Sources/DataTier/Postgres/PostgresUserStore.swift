import Logging
import MillionsCore
import PostgresNIO

/// `UserStore` on PostgreSQL: writes on the primary, reads through the replica set.
public struct PostgresUserStore: UserStore {
    let set: ReplicaSet
    var logger: Logger { self.set.logger }

    public init(replicaSet: ReplicaSet) { self.set = replicaSet }

    typealias Row = (Int64, String, String, String, String, String, String, [String], String?)

    static func user(_ r: Row) -> User {
        User(
            id: UserID(rawValue: r.0)!, firstName: r.1, lastName: r.2,
            address: Address(streetAddress: r.3, city: r.4, state: r.5, postalCode: r.6), phoneNumbers: r.7,
            photo: Photo.parse(r.8))
    }

    public func create(_ account: NewAccount) async throws -> User {
        let now = Clock.secondsSince1970()
        let p = account.profile
        let logger = self.logger
        do {
            try await set.write("create_user") { c in
                try await c.query(
                    """
                    INSERT INTO users (id, email, password_hash, first_name, last_name, street_address, city, state,
                        postal_code, phone_numbers, created_at, updated_at)
                    VALUES (\(account.id.rawValue), \(account.email), \(account.passwordHash), \(p.firstName), \(p.lastName),
                        \(p.address.streetAddress), \(p.address.city), \(p.address.state), \(p.address.postalCode),
                        \(p.phoneNumbers), \(now), \(now))
                    """, logger: logger)
            }
        } catch let e as PSQLError where e.serverInfo?[.sqlState] == "23505" {
            if e.serverInfo?[.constraintName] == "users_email_key" {
                throw MillionsError(.conflict, "an account with this email already exists")
            }
            throw DuplicateIDError()
        }
        return User(id: account.id, profile: p)
    }

    public func user(id: UserID) async throws -> User? {
        try await set.read("get_user") { client in
            for try await row in try await client.execute(GetUser(id: id.rawValue)) { return Self.user(row) }
            return nil
        }
    }

    /// The hottest read, prepared once per connection: each call sends only Bind and Execute,
    /// and the server skips parsing and planning.
    struct GetUser: PostgresPreparedStatement {
        static let name = "millions_get_user"
        static let sql = """
            SELECT id, first_name, last_name, street_address, city, state, postal_code, phone_numbers, photo
            FROM users WHERE id = $1
            """
        static let bindingDataTypes: [PostgresDataType] = [.int8]
        /// Several users in one query (`LoopReads` sends the reads that arrive together so).
        static let manySQL = """
            SELECT id, first_name, last_name, street_address, city, state, postal_code, phone_numbers, photo
            FROM users WHERE id = ANY($1)
            """
        typealias Row = PostgresUserStore.Row
        var id: Int64

        func makeBindings() throws -> PostgresBindings {
            var bindings = PostgresBindings(capacity: 1)
            bindings.append(id)
            return bindings
        }

        func decodeRow(_ row: PostgresRow) throws -> Row { try PostgresUserStore.decodeRow(row) }
    }

    /// A users row, cell by cell with concrete types: `row.decode(Row.self)` goes through
    /// parameter packs and looks up tuple metadata at run time on every row.
    /// `binary`: the cells are in binary whatever the row says (`PreparedQuery` in
    /// postgres-nio 1.33 keeps the statement's description, which names text, while its Bind
    /// asks for binary results).
    static func decodeRow(_ row: PostgresRow, binary: Bool = false) throws -> Row {
        var cells = row.makeIterator()
        func next() throws -> PostgresCell {
            guard var cell = cells.next() else { throw MillionsError(.internalError, "users row is short") }
            if binary { cell.format = .binary }
            return cell
        }
        return (
            try next().decode(Int64.self), try next().decode(String.self), try next().decode(String.self),
            try next().decode(String.self), try next().decode(String.self), try next().decode(String.self),
            try next().decode(String.self), try next().decode([String].self), try next().decode(String?.self)
        )
    }

    public func usersIn(city: String, limit: Int) async throws -> CityPage {
        try await set.read("users_in_city") { client in
            let rows = try await client.query(
                "SELECT id, first_name, last_name FROM users WHERE city = \(city) ORDER BY id DESC LIMIT \(limit)")
            return CityPage(users: try await Self.summaries(rows))
        }
    }

    static func summaries(_ rows: PostgresRowSequence) async throws -> [UserSummary] {
        var out: [UserSummary] = []
        for try await (id, first, last) in rows.decode((Int64, String, String).self) {
            if let id = UserID(rawValue: id) { out.append(UserSummary(id: id, firstName: first, lastName: last)) }
        }
        return out
    }

    public func recentUsers(limit: Int) async throws -> [User] {
        try await set.read("recent_users") { client in
            let rows = try await client.query(
                """
                SELECT id, first_name, last_name, street_address, city, state, postal_code, phone_numbers, photo
                FROM users ORDER BY id DESC LIMIT \(limit)
                """)
            var out: [User] = []
            for try await row in rows.decode(Row.self) { out.append(Self.user(row)) }
            return out
        }
    }

    public func update(id: UserID, patch: ProfilePatch) async throws -> User? {
        try await set.write("update_user") { c in try await Self.update(c, id: id, patch: patch)?.after }
    }

    /// The update in the caller's transaction: the user before and after; nil if no such user.
    static func update(_ c: PostgresConnection, id: UserID, patch: ProfilePatch) async throws -> (before: User, after: User)? {
        let logger = c.logger
        let rows = try await c.query(
            """
            SELECT id, first_name, last_name, street_address, city, state, postal_code, phone_numbers, photo
            FROM users WHERE id = \(id.rawValue) FOR UPDATE
            """, logger: logger)
        var current: User? = nil
        for try await row in rows.decode(Row.self) { current = Self.user(row) }
        guard let current else { return nil }
        let p = patch.applied(to: current.profile)
        try await c.query(
            """
            UPDATE users SET first_name = \(p.firstName), last_name = \(p.lastName),
                street_address = \(p.address.streetAddress), city = \(p.address.city), state = \(p.address.state),
                postal_code = \(p.address.postalCode), phone_numbers = \(p.phoneNumbers),
                updated_at = \(Clock.secondsSince1970())
            WHERE id = \(id.rawValue)
            """, logger: logger)
        return (current, User(id: id, profile: p, photo: current.photo))
    }

    public func delete(id: UserID) async throws -> DeletedUser? {
        let logger = self.logger
        return try await set.write("delete_user") { c in
            let rows = try await c.query(
                "DELETE FROM users WHERE id = \(id.rawValue) RETURNING photo_source, photo", logger: logger)
            for try await (source, photo) in rows.decode((String?, String?).self) {
                return DeletedUser(photoSource: source, photo: Photo.parse(photo))
            }
            return nil
        }
    }

    public func credentials(email: String) async throws -> Credentials? {
        // Log-ins read the primary: a just-created account must be found.
        try await set.readPrimary("credentials") { client in
            let rows = try await client.query("SELECT id, email, password_hash FROM users WHERE email = \(email)")
            for try await (id, email, hash) in rows.decode((Int64, String, String).self) {
                return Credentials(userID: UserID(rawValue: id)!, email: email, passwordHash: hash)
            }
            return nil
        }
    }

    public func reserveLoginAttempt(key: String, now: Double, throttle: LoginThrottle) async throws -> LoginAttempt {
        let logger = self.logger
        return try await set.write("login_attempt") { c in
            // The row exists before it is locked, so parallel first attempts at a key queue
            // on one row lock instead of racing to insert (LoginThrottle decides in Swift).
            try await c.query(
                "INSERT INTO login_failures (key, failures, last_failure_at) VALUES (\(key), 0, 0) ON CONFLICT DO NOTHING",
                logger: logger)
            var stored = (failures: 0, lockedUntil: Double?.none, lastFailureAt: 0.0)
            let rows = try await c.query(
                "SELECT failures, locked_until, last_failure_at FROM login_failures WHERE key = \(key) FOR UPDATE",
                logger: logger)
            for try await (f, l, t) in rows.decode((Int32, Double?, Double).self) { stored = (Int(f), l, t) }
            switch throttle.attempt(failures: stored.failures, lockedUntil: stored.lockedUntil, lastFailureAt: stored.lastFailureAt, now: now) {
            case .failure(let locked): return .locked(until: locked.until)
            case .success(let next):
                try await c.query(
                    """
                    UPDATE login_failures SET failures = \(Int32(clamping: next.failures)), locked_until = \(next.lockedUntil),
                        last_failure_at = \(now) WHERE key = \(key)
                    """,
                    logger: logger)
                return .granted
            }
        }
    }

    public func recordSuccessfulLogin(key: String) async throws {
        let logger = self.logger
        try await set.write("login_reset") { c in
            try await c.query("DELETE FROM login_failures WHERE key = \(key)", logger: logger)
        }
    }

    public func forgetLoginFailures(before: Double) async throws -> Int {
        let logger = self.logger
        return try await set.write("login_forget") { c in
            var n = 0
            let rows = try await c.query(
                """
                DELETE FROM login_failures WHERE last_failure_at < \(before) AND (locked_until IS NULL OR locked_until < \(before))
                RETURNING 1
                """,
                logger: logger)
            for try await _ in rows { n += 1 }
            return n
        }
    }

    public func insertMany(_ accounts: [NewAccount]) async throws -> Int { try await inserting(accounts).count }

    /// `insertMany`, answering the ids it inserted.
    func inserting(_ accounts: [NewAccount]) async throws -> Set<Int64> {
        let now = Clock.secondsSince1970()
        let logger = self.logger
        let ids = accounts.map(\.id.rawValue), emails = accounts.map(\.email), hashes = accounts.map(\.passwordHash)
        let first = accounts.map(\.profile.firstName), last = accounts.map(\.profile.lastName)
        let streets = accounts.map(\.profile.address.streetAddress), cities = accounts.map(\.profile.address.city)
        let states = accounts.map(\.profile.address.state), codes = accounts.map(\.profile.address.postalCode)
        // text[][] cannot be unnested row by row, so phone numbers travel as one JSON array each.
        let phones = accounts.map { a in "[" + a.profile.phoneNumbers.map { "\"\($0)\"" }.joined(separator: ",") + "]" }
        return try await set.write("insert_many") { c in
            let rows = try await c.query(
                """
                INSERT INTO users (id, email, password_hash, first_name, last_name, street_address, city, state,
                    postal_code, phone_numbers, created_at, updated_at)
                SELECT i, e, h, f, l, s, c, st, pc, ARRAY(SELECT jsonb_array_elements_text(p::jsonb)), \(now), \(now)
                FROM unnest(\(ids)::bigint[], \(emails)::text[], \(hashes)::text[], \(first)::text[], \(last)::text[],
                    \(streets)::text[], \(cities)::text[], \(states)::text[], \(codes)::text[], \(phones)::text[])
                    AS t(i, e, h, f, l, s, c, st, pc, p)
                ON CONFLICT DO NOTHING
                RETURNING id
                """, logger: logger)
            var inserted = Set<Int64>()
            for try await id in rows.decode(Int64.self) { inserted.insert(id) }
            return inserted
        }
    }

    public func beginPhoto(id: UserID, source: String?) async throws -> PhotoTicket? {
        let logger = self.logger
        return try await set.write("begin_photo") { c in try await Self.beginPhoto(c, id: id, source: source, logger: logger) }
    }

    /// `beginPhoto` inside a transaction the caller holds (to enqueue the job with it).
    public static func beginPhoto(_ c: PostgresConnection, id: UserID, source: String?, logger: Logger) async throws -> PhotoTicket? {
        // The row locked and read in the same statement: `o` is the row before the update.
        let rows = try await c.query(
            """
            UPDATE users u SET photo_version = u.photo_version + 1, photo_source = COALESCE(\(source), u.photo_source)
            FROM (SELECT id, photo_source FROM users WHERE id = \(id.rawValue) FOR UPDATE) o
            WHERE u.id = o.id AND COALESCE(\(source), u.photo_source) IS NOT NULL
            RETURNING u.photo_version, u.photo_source, o.photo_source
            """, logger: logger)
        for try await (version, now, before) in rows.decode((Int64, String, String?).self) {
            return PhotoTicket(version: version, source: now, replaced: source != nil && before != now ? before : nil)
        }
        return nil
    }

    public func photoSource(id: UserID) async throws -> String? {
        try await set.readPrimary("photo_source") { client in
            let rows = try await client.query("SELECT photo_source FROM users WHERE id = \(id.rawValue)")
            for try await source in rows.decode(String?.self) { return source }
            return nil
        }
    }

    public func newestPhoto(id: UserID) async throws -> PhotoTicket? {
        try await set.readPrimary("newest_photo") { client in
            let rows = try await client.query("SELECT photo_version, photo_source FROM users WHERE id = \(id.rawValue)")
            for try await (version, source) in rows.decode((Int64, String?).self) {
                return source.map { PhotoTicket(version: version, source: $0) }
            }
            return nil
        }
    }

    public func setPhoto(id: UserID, photo: Photo, version: Int64) async throws -> PhotoSwap {
        let logger = self.logger
        return try await set.write("set_photo") { c in
            let rows = try await c.query(
                """
                UPDATE users u SET photo = \(photo.jsonText), photo_applied = \(version), updated_at = \(Clock.secondsSince1970())
                FROM (SELECT id, photo FROM users WHERE id = \(id.rawValue) FOR UPDATE) o
                WHERE u.id = o.id AND u.photo_applied <= \(version)
                RETURNING o.photo
                """, logger: logger)
            for try await before in rows.decode(String?.self) { return .shown(replaced: Photo.parse(before)) }
            return .notShown
        }
    }

    public func ping() async throws {
        _ = try await set.read("ping") { client in
            for try await one in try await client.query("SELECT 1").decode(Int32.self) { return one }
            return 0
        }
    }
}
