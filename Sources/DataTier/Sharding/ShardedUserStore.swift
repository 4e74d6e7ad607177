import Logging
import MillionsCore
import Observability
import PostgresNIO
import Prometheus
import Synchronization

/// `UserStore` over several PostgreSQL clusters (each a primary and its replicas), by the
/// logical shard in each user id and the shard map (`ShardDirectory`).
///
/// - A user's row lives on the cluster that owns its id's logical shard.
/// - Emails are unique across clusters through the email directory: an entry per email on
///   the cluster that owns the email's logical shard, reserved before the user is made and
///   settled after (`reserve`, `settle`, `resolve`).
/// - A cluster refuses rows of shards it does not own (the fence in `ShardSchema`); a
///   read that finds nothing asks whether the cluster still owns the shard. Either way the
///   store reads the map again and retries, waiting up to `fenceWait` while a shard moves.
public struct ShardedUserStore: UserStore {
    let clusters: [String: ReplicaSet]
    let stores: [String: PostgresUserStore]
    public let directory: ShardDirectory
    /// How long a call waits for a moving shard's new home before it fails with 503.
    let fenceWait: Duration
    /// How long a cross-shard read waits for each cluster before leaving it out.
    let gatherDeadline: Duration
    /// A reservation older than this whose user was never made is an orphan.
    let staleReservationSeconds: Double
    /// Where the people of a city are read from (`CityDirectory.swift`).
    let cityLookup: CityLookup
    let metrics: AppMetrics
    let logger: Logger

    public init(
        clusters: [String: ReplicaSet], directory: ShardDirectory, metrics: AppMetrics, logger: Logger,
        fenceWait: Duration = .seconds(5), gatherDeadline: Duration = .milliseconds(500), staleReservationSeconds: Double = 30,
        cityLookup: CityLookup = .directory
    ) {
        self.cityLookup = cityLookup
        self.clusters = clusters
        self.stores = clusters.mapValues { PostgresUserStore(replicaSet: $0) }
        self.directory = directory
        self.metrics = metrics
        self.logger = logger
        self.fenceWait = fenceWait
        self.gatherDeadline = gatherDeadline
        self.staleReservationSeconds = staleReservationSeconds
    }

    // MARK: Routing

    func cluster(_ name: String) throws -> (store: PostgresUserStore, set: ReplicaSet) {
        guard let store = stores[name], let set = clusters[name] else {
            throw MillionsError(.unavailable, "the shard map names cluster \(name), which this process is not configured for")
        }
        return (store, set)
    }

    static func isWrongShard(_ error: any Error) -> Bool {
        if error is WrongShardError { return true }
        if let e = error as? PSQLError, e.serverInfo?[.sqlState] == ShardSchema.wrongShardState { return true }
        return false
    }

    /// Runs `body` with the name of the cluster that owns `logical`. When that cluster
    /// refuses the shard, reads the map again and retries; while the map has not moved on
    /// (a shard behind a move's fence) it waits, up to `fenceWait`.
    func routed<T: Sendable>(_ logical: Int, _ body: (String) async throws -> T) async throws -> T {
        let deadline = ContinuousClock.now + fenceWait
        var map = try await directory.current()
        while true {
            do {
                return try await body(map.owner(of: logical))
            } catch let error where Self.isWrongShard(error) {
                metrics.cachedCounter(
                    "shard_refusals", "Calls a cluster refused because it does not own the shard (a stale map, or a move's fence)",
                    [("cluster", map.owner(of: logical))]
                ).increment()
                guard ContinuousClock.now < deadline else {
                    throw MillionsError(.unavailable, "logical shard \(logical) is moving; try again", retryAfter: 1)
                }
                let fresh = try await directory.refresh()
                metrics.cachedGauge("shard_map_version", "The newest shard map version this process has read", []).set(Double(fresh.version))
                if fresh.version == map.version { try await Task.sleep(for: .milliseconds(20)) }
                map = fresh
            }
        }
    }

    /// `value`, unless it is nil because the cluster no longer owns the shard (a stale map).
    func unlessMoved<T>(_ value: T?, _ logical: Int, on name: String) async throws -> T? {
        if value != nil { return value }
        guard try await ShardDirectory.owns(logical, on: try cluster(name).set) else {
            throw WrongShardError(logical: logical, cluster: name)
        }
        return nil
    }

    /// A call on one user's cluster; nil answers are checked against a stale map.
    func onUser<T: Sendable>(_ id: UserID, _ body: @escaping (PostgresUserStore) async throws -> T?) async throws -> T? {
        try await routed(id.logicalShard) { name in
            try await unlessMoved(try await body(try cluster(name).store), id.logicalShard, on: name)
        }
    }

    /// Runs `body` on the cluster that owns `id`'s shard (its name and replica set), routed
    /// as every call of this store: a refused shard re-reads the map and retries, and so
    /// does a nil answer from a cluster that no longer owns the shard. For writes that must
    /// share a transaction with the user's row (a photo version and its job).
    public func onOwner<T: Sendable>(of id: UserID, _ body: @escaping (String, ReplicaSet) async throws -> T?) async throws -> T? {
        try await onShard(id.logicalShard, body)
    }

    /// `onOwner` for rows of a logical shard that are not users (sessions).
    public func onShard<T: Sendable>(_ logical: Int, _ body: @escaping (String, ReplicaSet) async throws -> T?) async throws -> T? {
        try await routed(logical) { name in
            try await unlessMoved(try await body(name, try cluster(name).set), logical, on: name)
        }
    }

    // MARK: Users

    public func create(_ account: NewAccount) async throws -> User {
        let emailShard = ShardMap.logicalShard(ofKey: account.email)
        try await reserve(account.email, for: account.id, logical: emailShard)
        let user: User
        do {
            user = try await routed(account.id.logicalShard) { name in try await cluster(name).store.create(account) }
        } catch {
            // Give the email back unless the user was made after all (a lost answer).
            _ = try? await resolve(account.email, holder: account.id.rawValue, logical: emailShard)
            throw error
        }
        // Made. If settling fails, the entry stays reserved for a user that exists: log-in
        // works (`credentials`) and the next `resolve` of it settles it.
        do {
            try await settle(account.email, for: account.id, logical: emailShard)
        } catch {
            logger.warning("email reservation not settled", metadata: ["user_id": "\(account.id)", "error": "\(error)"])
        }
        await keepCityDirectory(cityEntries(before: nil, after: user, version: 0))
        return user
    }

    public func user(id: UserID) async throws -> User? {
        try await onUser(id) { try await $0.user(id: id) }
    }

    /// Row versions only matter to the city directory; the update itself is the store's.
    struct Updated: Sendable {
        var before: User
        var after: User
        var version: Int64
    }

    public func update(id: UserID, patch: ProfilePatch) async throws -> User? {
        let updated = try await onOwner(of: id) { _, set in
            try await set.write("update_user") { c -> Updated? in
                guard let (before, after) = try await PostgresUserStore.update(c, id: id, patch: patch) else { return nil }
                var version: Int64 = 0
                for try await v in try await c.query("SELECT row_version FROM users WHERE id = \(id.rawValue)", logger: c.logger)
                    .decode(Int64.self)
                { version = v }
                return Updated(before: before, after: after, version: version)
            }
        }
        guard let updated else { return nil }
        await keepCityDirectory(cityEntries(before: updated.before, after: updated.after, version: updated.version))
        return updated.after
    }

    /// What a deletion returns besides the store's answer: the email to free, and the city
    /// to leave, at the version after the row's last.
    struct Deleted: Sendable {
        var user: DeletedUser
        var email: String
        var gone: User
        var version: Int64
    }

    public func delete(id: UserID) async throws -> DeletedUser? {
        let found = try await onOwner(of: id) { _, set in
            try await set.write("delete_user") { c -> Deleted? in
                let rows = try await c.query(
                    """
                    DELETE FROM users WHERE id = \(id.rawValue)
                    RETURNING photo_source, photo, email, first_name, last_name, city, row_version
                    """, logger: c.logger)
                for try await (source, photo, email, first, last, city, version) in rows.decode(
                    (String?, String?, String, String, String, String, Int64).self)
                {
                    let gone = User(
                        id: id, profile: Profile(firstName: first, lastName: last, address: Address(city: city), phoneNumbers: []))
                    return Deleted(
                        user: DeletedUser(photoSource: source, photo: Photo.parse(photo)), email: email, gone: gone, version: version + 1)
                }
                return nil
            }
        }
        guard let found else { return nil }
        let (deleted, email) = (found.user, found.email)
        await keepCityDirectory(cityEntries(before: found.gone, after: nil, version: found.version))
        // The email is free again. If this fails, the entry names a user that is gone, and
        // the next sign-up with the email resolves it.
        do {
            try await routed(ShardMap.logicalShard(ofKey: email)) { name in
                let set = try cluster(name).set
                let logger = set.logger
                try await set.write("release_email") { c in
                    try await c.query("DELETE FROM email_directory WHERE email = \(email) AND user_id = \(id.rawValue)", logger: logger)
                }
            }
        } catch {
            logger.warning("email not released", metadata: ["user_id": "\(id)", "error": "\(error)"])
        }
        return deleted
    }

    public func recentUsers(limit: Int) async throws -> [User] { try await recentPage(limit: limit).users }

    /// Newest first, from every cluster at once. A cluster that fails or does not answer
    /// within `gatherDeadline` is left out of the page and counted, not an error.
    public func recentPage(limit: Int) async throws -> RecentUsers {
        let (users, missing) = await gather("recent users", limit: limit, id: \.id) { try await $0.recentUsers(limit: limit) }
        return RecentUsers(users: users, missingClusters: missing)
    }

    /// Asks every cluster at once, each given `gatherDeadline`; merges the answers newest
    /// first (by id), one row per id (a shard being moved is on two clusters for a while),
    /// at most `limit`. A cluster that fails or is late is left out, counted and returned
    /// as missing: a partial answer, not an error.
    func gather<Row: Sendable>(
        _ what: String, limit: Int, id: @escaping @Sendable (Row) -> UserID,
        _ ask: @escaping @Sendable (PostgresUserStore) async throws -> [Row]
    ) async -> (rows: [Row], missing: Int) {
        let deadline = gatherDeadline
        let pages = await withTaskGroup(of: [Row]?.self) { group in
            for store in stores.values { group.addTask { try? await withTimeout(deadline) { try await ask(store) } } }
            return await group.reduce(into: [[Row]?]()) { $0.append($1) }
        }
        let missing = pages.filter { $0 == nil }.count
        if missing > 0 {
            logger.warning("\(what) without some clusters", metadata: ["missing": "\(missing)"])
            metrics.cachedCounter("shard_partial_reads", "Cross-shard reads answered without some clusters", []).increment()
        }
        var seen = Set<UserID>()
        let rows = pages.compactMap { $0 }.joined().sorted { id($0) > id($1) }.filter { seen.insert(id($0)).inserted }
        return (Array(rows.prefix(limit)), missing)
    }

    public func credentials(email: String) async throws -> Credentials? {
        let emailShard = ShardMap.logicalShard(ofKey: email)
        let holder: Int64? = try await routed(emailShard) { name in
            let set = try cluster(name).set
            let logger = set.logger
            let found = try await set.readPrimary("email_directory") { client -> Int64? in
                let rows = try await client.query("SELECT user_id FROM email_directory WHERE email = \(email)", logger: logger)
                for try await id in rows.decode(Int64.self) { return id }
                return nil
            }
            return try await unlessMoved(found, emailShard, on: name)
        }
        guard let holder, let id = UserID(rawValue: holder) else { return nil }
        // A reserved entry whose user exists (a sign-up that finished but did not settle)
        // logs in too: the user row decides.
        return try await onUser(id) { try await $0.credentials(email: email) }
    }

    /// Seeding: the users, then their settled email entries, then their city entries, each
    /// one statement per cluster (`perCluster`: a shard that moves meanwhile goes again).
    public func insertMany(_ accounts: [NewAccount]) async throws -> Int {
        let inserted = Mutex(Set<Int64>())
        try await perCluster(accounts, logical: \.id.logicalShard) { name, group in
            let ids = try await cluster(name).store.inserting(group)
            inserted.withLock { $0.formUnion(ids) }
        }
        let now = Clock.secondsSince1970()
        try await perCluster(accounts, logical: { ShardMap.logicalShard(ofKey: $0.email) }) { name, group in
            let set = try cluster(name).set
            let logger = set.logger
            let emails = group.map(\.email), ids = group.map(\.id.rawValue)
            let shards = group.map { Int32(ShardMap.logicalShard(ofKey: $0.email)) }
            try await set.write("insert_many_emails") { c in
                try await c.query(
                    """
                    INSERT INTO email_directory (email, logical, user_id, state, reserved_at)
                    SELECT e, l, i, 'committed', \(now) FROM unnest(\(emails)::text[], \(shards)::int[], \(ids)::bigint[]) AS t(e, l, i)
                    ON CONFLICT (email) DO NOTHING
                    """, logger: logger)
            }
        }
        // New rows, at version 0.
        let made = inserted.withLock { $0 }
        try await writeCityEntries(
            accounts.filter { made.contains($0.id.rawValue) }.flatMap { a in
                cityEntries(before: nil, after: User(id: a.id, profile: a.profile), version: 0)
            })
        return made.count
    }

    /// Runs `body` once per cluster with the items whose logical shard it owns. A group a
    /// cluster refuses (its shard moved, or is behind a move's fence) goes again on a fresh
    /// map, waiting up to `fenceWait` while the map has not moved on. `body` must be all or
    /// nothing for its group (one statement), and idempotent.
    func perCluster<Item: Sendable>(
        _ items: [Item], logical: (Item) -> Int, _ body: (String, [Item]) async throws -> Void
    ) async throws {
        var pending = items
        let deadline = ContinuousClock.now + fenceWait
        while !pending.isEmpty {
            let map = try await directory.current()
            var refused: [Item] = []
            for (name, group) in Dictionary(grouping: pending, by: { map.owner(of: logical($0)) }) {
                do {
                    try await body(name, group)
                } catch let error where Self.isWrongShard(error) {
                    refused += group
                }
            }
            pending = refused
            guard !pending.isEmpty else { return }
            guard ContinuousClock.now < deadline else {
                throw MillionsError(.unavailable, "shards are moving; try again", retryAfter: 1)
            }
            if try await directory.refresh().version == map.version { try await Task.sleep(for: .milliseconds(20)) }
        }
    }

    // MARK: The email directory

    /// Reserves `email` for `id`, or throws a conflict if an account (or a sign-up in
    /// flight) has it. An entry that names a user who was never made, or who is gone, is
    /// resolved and the reservation tried once more.
    func reserve(_ email: String, for id: UserID, logical: Int) async throws {
        var attempt = 0
        while true {
            attempt += 1
            let now = Clock.secondsSince1970()
            let holder: (Int64, String, Double)? = try await routed(logical) { name in
                let set = try cluster(name).set
                let logger = set.logger
                return try await set.write("reserve_email") { c -> (Int64, String, Double)? in
                    let made = try await c.query(
                        """
                        INSERT INTO email_directory (email, logical, user_id, state, reserved_at)
                        VALUES (\(email), \(Int32(logical)), \(id.rawValue), 'reserved', \(now))
                        ON CONFLICT (email) DO NOTHING RETURNING user_id
                        """, logger: logger)
                    for try await _ in made { return nil }
                    let rows = try await c.query(
                        "SELECT user_id, state, reserved_at FROM email_directory WHERE email = \(email)", logger: logger)
                    for try await row in rows.decode((Int64, String, Double).self) { return row }
                    // Taken, then gone before we looked (resolved or deleted): try again.
                    return (0, "gone", 0)
                }
            }
            guard let (holderID, state, reservedAt) = holder, holderID != id.rawValue else { return }
            if state == "gone", attempt < 5 { continue }
            let settledOrStale = state == "committed" || reservedAt < now - staleReservationSeconds
            guard attempt == 1, settledOrStale, try await resolve(email, holder: holderID, logical: logical) == .released else {
                throw MillionsError(.conflict, "an account with this email already exists")
            }
        }
    }

    enum Resolution { case settled, released }

    /// Decides an entry by whether its user exists with this email: settles it if so, else
    /// deletes it. (An id can exist with another email: a sign-up that lost an id race.)
    func resolve(_ email: String, holder: Int64, logical: Int) async throws -> Resolution {
        var found = false
        if let id = UserID(rawValue: holder) {
            found = try await onUser(id) { try await $0.credentials(email: email) }?.userID == id
        }
        let exists = found
        try await routed(logical) { name in
            let set = try cluster(name).set
            let logger = set.logger
            try await set.write(exists ? "settle_email" : "drop_email") { c in
                if exists {
                    try await c.query(
                        "UPDATE email_directory SET state = 'committed' WHERE email = \(email) AND user_id = \(holder)", logger: logger)
                } else {
                    try await c.query("DELETE FROM email_directory WHERE email = \(email) AND user_id = \(holder)", logger: logger)
                }
            }
        }
        return exists ? .settled : .released
    }

    func settle(_ email: String, for id: UserID, logical: Int) async throws {
        try await routed(logical) { name in
            let set = try cluster(name).set
            let logger = set.logger
            try await set.write("settle_email") { c in
                try await c.query(
                    "UPDATE email_directory SET state = 'committed' WHERE email = \(email) AND user_id = \(id.rawValue)", logger: logger)
            }
        }
    }

    // MARK: Log-in throttle (by the key's logical shard; not fenced: a moved key starts afresh)

    public func reserveLoginAttempt(key: String, now: Double, throttle: LoginThrottle) async throws -> LoginAttempt {
        let map = try await directory.current()
        return try await cluster(map.owner(of: ShardMap.logicalShard(ofKey: key))).store
            .reserveLoginAttempt(key: key, now: now, throttle: throttle)
    }

    public func recordSuccessfulLogin(key: String) async throws {
        let map = try await directory.current()
        try await cluster(map.owner(of: ShardMap.logicalShard(ofKey: key))).store.recordSuccessfulLogin(key: key)
    }

    public func forgetLoginFailures(before: Double) async throws -> Int {
        var total = 0
        for name in stores.keys.sorted() { total += try await cluster(name).store.forgetLoginFailures(before: before) }
        return total
    }

    // MARK: Photos

    public func beginPhoto(id: UserID, source: String?) async throws -> PhotoTicket? {
        try await onUser(id) { try await $0.beginPhoto(id: id, source: source) }
    }

    public func setPhoto(id: UserID, photo: Photo, version: Int64) async throws -> PhotoSwap {
        try await routed(id.logicalShard) { name in
            let (store, set) = try cluster(name)
            let swap = try await store.setPhoto(id: id, photo: photo, version: version)
            // Not shown: a newer version is, or the row is not here any more.
            if swap == .notShown, try await !ShardDirectory.owns(id.logicalShard, on: set) {
                throw WrongShardError(logical: id.logicalShard, cluster: name)
            }
            return swap
        }
    }

    public func photoSource(id: UserID) async throws -> String? {
        try await onUser(id) { try await $0.photoSource(id: id) }
    }

    public func newestPhoto(id: UserID) async throws -> PhotoTicket? {
        try await onUser(id) { try await $0.newestPhoto(id: id) }
    }

    /// What one cluster holds, for `millions shards status`.
    public struct ClusterStatus: Sendable {
        public let cluster: String
        public let shards: Int
        public let users: Int
        public let emails: Int
    }

    /// The newest map's version, and what each of `order`'s clusters holds (read on primaries).
    public func status(order: [String]) async throws -> (version: Int64, clusters: [ClusterStatus]) {
        let map = try await directory.refresh()
        var out: [ClusterStatus] = []
        for name in order {
            let set = try cluster(name).set
            let logger = set.logger
            let (shards, users, emails) = try await set.readPrimary("shard_status") { client in
                let q: PostgresQuery = """
                    SELECT (SELECT count(*) FROM shard_ownership), (SELECT count(*) FROM users),
                        (SELECT count(*) FROM email_directory)
                    """
                for try await row in try await client.query(q, logger: logger).decode((Int, Int, Int).self) { return row }
                return (0, 0, 0)
            }
            out.append(ClusterStatus(cluster: name, shards: shards, users: users, emails: emails))
        }
        return (map.version, out)
    }

    public func ping() async throws {
        _ = try await directory.current()
        for name in stores.keys.sorted() { try await cluster(name).store.ping() }
    }
}
