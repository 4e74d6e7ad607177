import DataTier
import Engines
import Foundation
import GRDB
import Logging
import MillionsCore
import MillionsTesting
import SessionTier
import Observability
import Testing

enum Engine: String, CaseIterable, Sendable { case sqlite, postgres }

/// Runs `body` with the user and session stores of `engine`, inside a read-your-writes
/// scope (so a PostgreSQL read after a write sees it, as a request would).
func withStores(
    _ engine: Engine, now: @escaping @Sendable () -> Double = { Clock.secondsSince1970() },
    _ body: @escaping @Sendable (any UserStore, any SessionStore) async throws -> Void
) async throws {
    try await ReadYourWrites.$current.withValue(ReadYourWrites()) {
        switch engine {
        case .sqlite:
            try await SQLiteStoreTests.withDatabase { db in
                try await body(SQLiteUserStore(database: db), SQLiteSessionStore(database: db, now: now))
            }
        case .postgres:
            try await withSharedReplicaSet { set in
                try await body(PostgresUserStore(replicaSet: set), PostgresSessionStore(replicaSet: set, now: now))
            }
        }
    }
}

/// The user store's engines: the two of `Engine`, and PostgreSQL sharded over two clusters.
enum UserStoreEngine: String, CaseIterable, Sendable { case sqlite, postgres, sharded }

/// Runs `body` with the user store of `engine`, inside a read-your-writes scope.
func withUserStore(_ engine: UserStoreEngine, _ body: @escaping @Sendable (any UserStore) async throws -> Void) async throws {
    switch engine {
    case .sqlite: try await withStores(.sqlite) { users, _ in try await body(users) }
    case .postgres: try await withStores(.postgres) { users, _ in try await body(users) }
    case .sharded:
        try await ReadYourWrites.$current.withValue(ReadYourWrites()) {
            try await withShardedClusters { store, _ in try await body(store) }
        }
    }
}

/// Runs `body` with a running, migrated replica set on the shared test topology.
func withSharedReplicaSet(_ body: @escaping @Sendable (ReplicaSet) async throws -> Void) async throws {
    let topology = try PostgresTopology.shared()
    var settings = PostgresSettings(nodes: topology.addresses)
    settings.discoveryInterval = .milliseconds(200)
    // The shared topology serves every suite at once: a busy machine is not a dead node.
    settings.queryTimeout = .seconds(10)
    let set = try ReplicaSet(settings: settings, metrics: AppMetrics(), logger: quietLogger)
    try await set.withRunning {
        try await PostgresEngine.migrate(set)
        try await body(set)
    }
}

/// Test logger that keeps the pools' connection chatter (info) out of the output.
let quietLogger: Logger = {
    var l = Logger(label: "test")
    l.logLevel = .warning
    return l
}()

/// A unique email, so tests can share a database across runs.
func uniqueEmail(_ name: String) -> String { "\(name)-\(UUID().uuidString.prefix(8).lowercased())@example.com" }

@Suite(.serialized) struct StoreSuite {
    static func account(_ email: String, id: UserID = UserIDGenerator().next()) -> NewAccount {
        NewAccount(
            id: id, email: email, passwordHash: "hash",
            profile: Profile(
                firstName: "Ann", lastName: "Lee", address: Address(city: "Oslo", postalCode: "0150"),
                phoneNumbers: ["+47 22 00 00 00", "+47 22 00 00 01"]))
    }

    @Test(arguments: UserStoreEngine.allCases) func userLifecycle(engine: UserStoreEngine) async throws {
        try await withUserStore(engine) { store in
            let created = try await store.create(Self.account(uniqueEmail("ann")))
            #expect(try await store.user(id: created.id) == created)
            #expect(created.address.postalCode == "0150")
            let updated = try await store.update(id: created.id, patch: ProfilePatch(city: "Bergen", phoneNumbers: []))
            #expect(updated?.address.city == "Bergen")
            #expect(updated?.address.postalCode == "0150")
            #expect(try await store.user(id: created.id) == updated)
            #expect(try await store.delete(id: created.id) == DeletedUser(photoSource: nil, photo: nil))
            #expect(try await store.user(id: created.id) == nil)
            #expect(try await store.delete(id: created.id) == nil)
            #expect(try await store.update(id: created.id, patch: ProfilePatch(city: "x")) == nil)
        }
    }

    @Test(arguments: UserStoreEngine.allCases) func conflicts(engine: UserStoreEngine) async throws {
        try await withUserStore(engine) { store in
            let email = uniqueEmail("dup")
            let first = try await store.create(Self.account(email))
            await #expect(throws: MillionsError.self) { try await store.create(Self.account(email.uppercased().lowercased())) }
            await #expect(throws: DuplicateIDError.self) {
                try await store.create(Self.account(uniqueEmail("other"), id: first.id))
            }
        }
    }

    /// Failed log-ins by key (email and address, known or not): the throttle's locks, a
    /// reset on success, failures forgotten after a quiet spell, and the sweep.
    @Test(arguments: UserStoreEngine.allCases) func failedLoginsLockWithTheThrottle(engine: UserStoreEngine) async throws {
        try await withUserStore(engine) { store in
            let key = uniqueEmail("lock") + "\n203.0.113.9"
            let throttle = LoginThrottle(freeAttempts: 2, baseLockSeconds: 1, maxLockSeconds: 60, forgetAfterSeconds: 1000)
            func attempt(_ now: Double, _ key: String = key) async throws -> LoginAttempt {
                try await store.reserveLoginAttempt(key: key, now: now, throttle: throttle)
            }
            #expect(try await attempt(100) == .granted)
            #expect(try await attempt(100) == .granted)  // the second counted attempt locks for 1 s
            #expect(try await attempt(100) == .locked(until: 101))
            #expect(try await attempt(100.5) == .locked(until: 101))
            #expect(try await attempt(100.5, key + "x") == .granted)  // another key is not locked
            #expect(try await attempt(101) == .granted)  // the third: 2 s
            #expect(try await attempt(102) == .locked(until: 103))
            // A quiet spell as long as forgetAfterSeconds: the count starts again.
            #expect(try await attempt(1101) == .granted)
            #expect(try await attempt(1101) == .granted)
            #expect(try await attempt(1101) == .locked(until: 1102))
            // A right password forgets at once.
            try await store.recordSuccessfulLogin(key: key)
            #expect(try await attempt(1101) == .granted)
            // The sweep deletes failures counted before its time whose lock has ended.
            #expect(try await store.forgetLoginFailures(before: 1101) >= 1)  // key + "x"
            #expect(try await store.forgetLoginFailures(before: 1101) == 0)
            #expect(try await store.forgetLoginFailures(before: 1102) >= 1)  // key
            #expect(try await attempt(1101.5) == .granted)
            #expect(try await attempt(1101.5) == .granted)  // counted from zero again: locks now
            #expect(try await attempt(1101.5) == .locked(until: 1102.5))
        }
    }

    @Test(arguments: Engine.allCases) func sessionLifecycle(engine: Engine) async throws {
        let clock = FakeClock()
        try await withStores(engine, now: { clock.now }) { _, sessions in
            let user = UserIDGenerator().next()
            let s = try await sessions.create(userID: user, ttl: 100)
            #expect(try await sessions.session(id: s.id, ttl: 100)?.userID == user)
            clock.advance(60)
            #expect(try await sessions.session(id: s.id, ttl: 100)?.expiresAt == clock.now + 100)
            clock.advance(101)
            #expect(try await sessions.session(id: s.id, ttl: 100) == nil)
            let a = try await sessions.create(userID: user, ttl: 100)
            let b = try await sessions.create(userID: user, ttl: 100)
            try await sessions.delete(id: a.id)
            #expect(try await sessions.session(id: a.id, ttl: 100) == nil)
            #expect(try await sessions.session(id: b.id, ttl: 100) != nil)
            try await sessions.deleteAll(userID: user)
            #expect(try await sessions.session(id: b.id, ttl: 100) == nil)
        }
    }

    @Test(arguments: UserStoreEngine.allCases) func bulkInsertSkipsExisting(engine: UserStoreEngine) async throws {
        try await withUserStore(engine) { store in
            let seeder = Seeder(passwordHash: "x", startSeconds: Int64(Clock.secondsSince1970()) - Int64.random(in: 0..<10_000_000))
            let accounts = (0..<300).map { i in
                var a = seeder.account(i)
                a.email = uniqueEmail("bulk\(i)")
                return a
            }
            let inserted = try await store.insertMany(accounts)
            let again = try await store.insertMany(Array(accounts.prefix(10)))
            let one = try await store.user(id: accounts[123].id)
            #expect(inserted == 300)
            #expect(again == 0)
            #expect(one?.phoneNumbers == accounts[123].profile.phoneNumbers)
        }
    }
}

@Suite struct SQLiteStoreTests {
    static func withDatabase(_ body: (SQLiteDatabase) async throws -> Void) async throws {
        try await TestApp.withTemporaryDirectory { dir in
            let db = try SQLiteDatabase(path: dir + "/test.sqlite", migrations: Schema.sqlite, logger: Logger(label: "test"))
            try await body(db)
            try db.close()
        }
    }

    static func account(_ email: String, id: Int64 = 0) -> NewAccount {
        NewAccount(
            id: id == 0 ? UserIDGenerator().next() : UserID(rawValue: id)!, email: email, passwordHash: "hash",
            profile: Profile(
                firstName: "Ann", lastName: "Lee", address: Address(city: "Oslo", postalCode: "0150"),
                phoneNumbers: ["+47 22 00 00 00"]))
    }

    @Test func databaseIsInWALModeAndMigrated() async throws {
        try await Self.withDatabase { db in
            let mode = try await db.read { try String.fetchOne($0, sql: "PRAGMA journal_mode") }
            #expect(mode == "wal")
            #expect(try db.appliedMigrations() == Schema.sqlite.map(\.name))
        }
    }

    /// A database made when "1-users-and-sessions" still made the sessions table too
    /// (before each tier owned its schema) takes every tier's steps, and its sessions work.
    @Test func aDatabaseFromBeforeTheTiersOwnedTheirSchemaMigrates() async throws {
        try await TestApp.withTemporaryDirectory { dir in
            let path = dir + "/old.sqlite"
            let old = Migration("1-users-and-sessions", UserSchema.sqlite[0].statements + SessionSchema.sqlite[0].statements)
            try SQLiteDatabase(path: path, migrations: [old], logger: Logger(label: "test")).close()
            let db = try SQLiteDatabase(path: path, migrations: Schema.sqlite, logger: Logger(label: "test"))
            #expect(try db.appliedMigrations() == Schema.sqlite.map(\.name))
            let sessions = SQLiteSessionStore(database: db)
            let user = UserIDGenerator().next()
            let created = try await sessions.create(userID: user, ttl: 3600)
            #expect(try await sessions.session(id: created.id, ttl: 3600)?.userID == user)
            try db.close()
        }
    }
}

@Suite struct SQLiteSessionStoreTests {
    @Test func lifecycleExpiryAndRevocation() async throws {
        try await SQLiteStoreTests.withDatabase { db in
            let clock = FakeClock()
            let store = SQLiteSessionStore(database: db, now: { clock.now })
            let user = UserID(rawValue: 42)!
            let s = try await store.create(userID: user, ttl: 100)
            #expect(Session.isWellFormed(s.id))
            #expect(try await store.session(id: s.id, ttl: 100)?.userID == user)

            // Only the hash is stored.
            let stored = try await db.read { try String.fetchAll($0, sql: "SELECT id_hash FROM sessions") }
            #expect(stored == [SHA256.hex(s.id)])

            // Sliding expiry: past half the ttl a read extends it.
            clock.advance(60)
            let slid = try #require(try await store.session(id: s.id, ttl: 100))
            #expect(slid.expiresAt == clock.now + 100)
            clock.advance(99)
            #expect(try await store.session(id: s.id, ttl: 100) != nil)
            clock.advance(101)
            #expect(try await store.session(id: s.id, ttl: 100) == nil)

            let a = try await store.create(userID: user, ttl: 100)
            let b = try await store.create(userID: user, ttl: 100)
            let other = try await store.create(userID: UserID(rawValue: 43)!, ttl: 100)
            try await store.delete(id: a.id)
            #expect(try await store.session(id: a.id, ttl: 100) == nil)
            #expect(try await store.session(id: b.id, ttl: 100) != nil)
            try await store.deleteAll(userID: user)
            #expect(try await store.session(id: b.id, ttl: 100) == nil)
            #expect(try await store.session(id: other.id, ttl: 100) != nil)

            #expect(try await store.session(id: "not-a-session", ttl: 100) == nil)
            clock.advance(1000)
            #expect(try await store.purgeExpired() == 1)
        }
    }
}

@Suite struct SeederTests {
    @Test func seedsDistinctValidUsersInBatches() async throws {
        try await SQLiteStoreTests.withDatabase { db in
            let store = SQLiteUserStore(database: db)
            let seeder = Seeder(passwordHash: "x", startSeconds: UserID.epoch + 10_000)
            let ids = try await seeder.seed(0..<2500, into: store, batch: 1000)
            #expect(Set(ids).count == 2500)
            #expect(Set(ids.map(\.logicalShard)).count == 1024)
            let user = try #require(try await store.user(id: ids[1234]))
            var errors: [FieldError] = []
            Validate.profile(user.profile, into: &errors)
            #expect(errors.isEmpty)
            // Seeding again skips what exists.
            #expect(try await store.insertMany((0..<10).map(seeder.account)) == 0)
            #expect(try await store.recentUsers(limit: 5000).count == 2500)
            // A second run (new ids, the same emails) inserts and returns only the new users.
            let again = Seeder(passwordHash: "x", startSeconds: UserID.epoch + 20_000)
            let more = try await again.seed(2400..<2600, into: store, batch: 150)
            #expect(more == (2500..<2600).map { again.account($0).id })
            #expect(try await store.recentUsers(limit: 5000).count == 2600)
        }
    }
}
