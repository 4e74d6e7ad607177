@testable import DataTier
import Engines
@testable import MessageQueue
import Photos
import Foundation
import Hummingbird
import HummingbirdTesting
import Logging
import MillionsCore
import MillionsTesting
import Observability
import PostgresNIO
import SessionTier
import Synchronization
import Testing
import WebTier

/// Two clusters (a primary each) on their own ports, shared by the sharding tests that do
/// not move shards: the fence their users tables get would refuse other tests' writes on
/// the shared topology. Map version 1: shards 0–511 on "a" (the directory), 512–1023 on "b".
func withShardedClusters(
    fresh: Bool = false, _ body: @escaping @Sendable (ShardedUserStore, [String: ReplicaSet]) async throws -> Void
) async throws {
    if fresh {
        try await PostgresTopology.withFresh(replicas: 0) { a in
            try await PostgresTopology.withFresh(replicas: 0) { b in try await runSharded(a, b, body) }
        }
    } else {
        let a = try PostgresTopology.start(directory: "/tmp/millions-pg-tests-shard-a", basePort: 15532, replicas: 0)
        let b = try PostgresTopology.start(directory: "/tmp/millions-pg-tests-shard-b", basePort: 15542, replicas: 0)
        try await runSharded(a, b, body)
    }
}

private func runSharded(
    _ a: PostgresTopology, _ b: PostgresTopology, _ body: @escaping @Sendable (ShardedUserStore, [String: ReplicaSet]) async throws -> Void
) async throws {
    try await runSharded([("a", a), ("b", b)], mapped: ["a", "b"], body)
}

/// Runs `body` with clusters named as given (the first is the directory), migrated, and
/// map version 1 over `mapped`.
func runSharded(
    _ topologies: [(String, PostgresTopology)], mapped: [String],
    _ body: @escaping @Sendable (ShardedUserStore, [String: ReplicaSet]) async throws -> Void
) async throws {
    var clusters: [String: ReplicaSet] = [:]
    for (name, t) in topologies {
        var s = PostgresSettings(nodes: t.addresses)
        s.discoveryInterval = .milliseconds(200)
        s.queryTimeout = .seconds(10)
        clusters[name] = try ReplicaSet(settings: s, metrics: AppMetrics(), logger: quietLogger, scope: name)
    }
    let directoryName = topologies[0].0
    let all = clusters
    let pools = Task {
        await withDiscardingTaskGroup { group in for set in all.values { group.addTask { await set.runClients() } } }
    }
    do {
        for (name, set) in clusters {
            try await set.waitUntilDiscovered()
            try await PostgresMigrations.migrate(set, Schema.shardedCluster(directory: name == directoryName))
        }
        // No periodic reread: these tests drive rereads through refusals, and on a slow
        // machine a reread every 2 s would take that path away (it did, under load, in CI).
        let directory = ShardDirectory(set: clusters[directoryName]!, maxAge: .seconds(3600))
        try await directory.initialize(clusters: clusters, order: mapped)
        try await directory.number(topologies.map(\.0))
        // Generous: a machine busy with the whole suite must not fail a fenced write.
        let store = ShardedUserStore(
            clusters: clusters, directory: directory, metrics: AppMetrics(), logger: quietLogger, fenceWait: .seconds(60),
            gatherDeadline: .seconds(60))
        try await body(store, clusters)
    } catch {
        pools.cancel()
        await pools.value
        throw error
    }
    pools.cancel()
    await pools.value
}

/// Rows in `table` on `set` matching `condition` (read on the primary).
func count(_ set: ReplicaSet, _ sql: String) async throws -> Int {
    try await set.readPrimary("count") { client in
        var n = 0
        for try await c in try await client.query(PostgresQuery(unsafeSQL: sql), logger: quietLogger).decode(Int.self) { n = c }
        return n
    }
}

/// Sequences for test accounts: unique within a second in this process, where random ones
/// collided (40 users on two shards in one second: a duplicate id in about one run in ten).
let accountSequence = Atomic<Int>(0)

func account(_ email: String, shard: Int) -> NewAccount {
    NewAccount(
        id: UserID(
            seconds: Int64(Clock.secondsSince1970()), shard: shard,
            sequence: accountSequence.add(1, ordering: .relaxed).newValue % 4096), email: email,
        passwordHash: "hash", profile: Profile(firstName: "Ann", lastName: "Lee", address: Address(city: "Oslo"), phoneNumbers: []))
}

extension ShardedUserStore {
    /// `shard_refusals_total` of `cluster`, from the metrics page.
    func refusals(on cluster: String) -> Int {
        let page = String(decoding: metrics.exposition(), as: UTF8.self)
        let line = page.split(separator: "\n").first { $0.hasPrefix("shard_refusals_total{cluster=\"\(cluster)\"}") }
        return line.flatMap { Double($0.split(separator: " ").last ?? "") }.map { Int($0) } ?? 0
    }
}

@Suite struct ShardMapTests {
    @Test func versionOneSplitsTheShardsEvenlyInRanges() throws {
        let map = try ShardMap.even(["a", "b", "c"])
        #expect(map.version == 1)
        #expect(map.owner(of: 0) == "a" && map.owner(of: 341) == "a" && map.owner(of: 342) == "b" && map.owner(of: 1023) == "c")
        #expect(map.shards(of: "a").count + map.shards(of: "b").count + map.shards(of: "c").count == 1024)
        let moved = try map.moving([5, 6], to: "c")
        #expect(moved.version == 2 && moved.owner(of: 5) == "c" && moved.owner(of: 7) == "a")
        #expect(throws: MillionsError.self) { try ShardMap(version: 1, owners: ["a"]) }
    }

    @Test func keysHaveAStableShard() {
        // FNV-1a: the same in every process and every release (the directory depends on it).
        #expect(ShardMap.logicalShard(ofKey: "") == Int(UInt64(0xcbf2_9ce4_8422_2325) % 1024))
        #expect(ShardMap.logicalShard(ofKey: "ann@example.com") == ShardMap.logicalShard(ofKey: "ann@example.com"))
        let spread = Set((0..<2000).map { ShardMap.logicalShard(ofKey: "user\($0)@example.com") })
        #expect(spread.count > 800)
    }
}

@Suite struct ShardedStoreTests {
    @Test func usersLiveOnTheClusterThatOwnsTheirShard() async throws {
        try await withShardedClusters { store, clusters in
            let onA = try await store.create(account(uniqueEmail("a"), shard: 3))
            let onB = try await store.create(account(uniqueEmail("b"), shard: 700))
            #expect(try await count(clusters["a"]!, "SELECT count(*) FROM users WHERE id = \(onA.id.rawValue)") == 1)
            #expect(try await count(clusters["b"]!, "SELECT count(*) FROM users WHERE id = \(onA.id.rawValue)") == 0)
            #expect(try await count(clusters["b"]!, "SELECT count(*) FROM users WHERE id = \(onB.id.rawValue)") == 1)
            #expect(try await store.user(id: onA.id) == onA)
            #expect(try await store.user(id: onB.id) == onB)
            let recent = try await store.recentUsers(limit: 1000).map(\.id)
            #expect(recent.contains(onA.id) && recent.contains(onB.id))
            #expect(recent == recent.sorted(by: >))
        }
    }

    /// The fence is in the database: a row of a shard the cluster does not own is refused
    /// whoever writes it.
    @Test func aClusterRefusesRowsOfShardsItDoesNotOwn() async throws {
        try await withShardedClusters { _, clusters in
            let id = UserID(seconds: Int64(Clock.secondsSince1970()), shard: 3, sequence: 1).rawValue
            let b = clusters["b"]!
            await #expect {
                try await b.write("insert") { c in
                    try await c.query(
                        """
                        INSERT INTO users (id, email, password_hash, first_name, last_name, created_at, updated_at)
                        VALUES (\(id), \(uniqueEmail("x")), 'h', 'A', 'B', 0, 0)
                        """, logger: quietLogger)
                }
            } throws: { ($0 as? PSQLError)?.serverInfo?[.sqlState] == ShardSchema.wrongShardState }
        }
    }

    /// An email is unique across clusters: of sign-ups racing for one email, on shards of
    /// both clusters, exactly one makes an account, and log-in by email finds it.
    @Test func racingSignUpsOfOneEmailMakeOneAccount() async throws {
        try await withShardedClusters { store, clusters in
            let email = uniqueEmail("race")
            let outcomes = try await withThrowingTaskGroup(of: Bool.self) { group in
                for i in 0..<8 {
                    group.addTask {
                        do {
                            _ = try await store.create(account(email, shard: i % 2 == 0 ? 10 + i : 600 + i))
                            return true
                        } catch let e as MillionsError where e.code == .conflict { return false }
                    }
                }
                return try await group.reduce(into: [Bool]()) { $0.append($1) }
            }
            #expect(outcomes.filter { $0 }.count == 1)
            var rows = 0
            for set in clusters.values { rows += try await count(set, "SELECT count(*) FROM users WHERE email = '\(email)'") }
            #expect(rows == 1)
            let credentials = try #require(try await store.credentials(email: email))
            #expect(try await store.user(id: credentials.userID) != nil)
            #expect(try await store.credentials(email: uniqueEmail("nobody")) == nil)
        }
    }

    /// A reservation whose sign-up died, and an entry whose user was deleted behind the
    /// directory's back, do not keep an email from a new account.
    @Test func orphanedEmailEntriesAreResolved() async throws {
        try await withShardedClusters { store, clusters in
            for state in ["reserved", "committed"] {
                let email = uniqueEmail("orphan-\(state)")
                let logical = ShardMap.logicalShard(ofKey: email)
                let home = clusters[try await store.directory.current().owner(of: logical)]!
                let ghost = UserID(seconds: Int64(Clock.secondsSince1970()), shard: 5, sequence: 9).rawValue
                try await home.write("orphan") { c in
                    try await c.query(
                        """
                        INSERT INTO email_directory (email, logical, user_id, state, reserved_at)
                        VALUES (\(email), \(Int32(logical)), \(ghost), \(state), 0)
                        """, logger: quietLogger)
                }
                let user = try await store.create(account(email, shard: 800))
                #expect(try await store.credentials(email: email)?.userID == user.id)
                // Deleting the account frees the email for the next one.
                #expect(try await store.delete(id: user.id) != nil)
                #expect(try await store.credentials(email: email) == nil)
                _ = try await store.create(account(email, shard: 20))
            }
        }
    }
}

@Suite struct ShardMoveTests {
    /// The first step of moving `logical` off "a": the fence. From here "a" refuses the
    /// shard's rows (writes wait in the store until the map moves on).
    static func fence(_ logical: Int, _ clusters: [String: ReplicaSet]) async throws {
        try await clusters["a"]!.write("fence") { c in
            try await c.query("DELETE FROM shard_ownership WHERE logical = \(Int32(logical))", logger: quietLogger)
        }
    }

    /// The rest of the move to "b", in a move's order: the new owner, the rows copied, the
    /// map published, the old copy cleaned. Through a directory of its own, so the store's
    /// cached map stays stale.
    static func finishMove(_ logical: Int, _ clusters: [String: ReplicaSet]) async throws {
        let (a, b) = (clusters["a"]!, clusters["b"]!)
        let directory = ShardDirectory(set: a)
        let next = try await directory.refresh().moving([logical], to: "b")
        try await ShardDirectory.own([logical], version: next.version, on: b)
        let rows = try await a.readPrimary("copy") { client in
            var out: [(Int64, String, String, String, String, String)] = []
            let q = "SELECT id, email, password_hash, first_name, last_name, city FROM users WHERE (id >> 12) & 1023 = \(logical)"
            for try await r in try await client.query(PostgresQuery(unsafeSQL: q), logger: quietLogger)
                .decode((Int64, String, String, String, String, String).self)
            { out.append(r) }
            return out
        }
        try await b.write("copy") { c in
            for r in rows {
                try await c.query(
                    """
                    INSERT INTO users (id, email, password_hash, first_name, last_name, city, created_at, updated_at)
                    VALUES (\(r.0), \(r.1), \(r.2), \(r.3), \(r.4), \(r.5), 0, 0)
                    """, logger: quietLogger)
            }
        }
        try await directory.publish(next)
        try await a.write("clean") { c in
            // The fence refuses this too: cleaning bypasses triggers, as replication does.
            try await c.query("SET LOCAL session_replication_role = replica", logger: quietLogger)
            try await c.query(PostgresQuery(unsafeSQL: "DELETE FROM users WHERE (id >> 12) & 1023 = \(logical)"), logger: quietLogger)
        }
    }

    /// A process whose map is stale finds a moved user anyway: the old cluster answers
    /// "not mine", the store reads the map again, and reads and writes land on the new one.
    @Test func aStaleMapIsRefreshedWhenAShardHasMoved() async throws {
        try await withShardedClusters(fresh: true) { store, clusters in
            let user = try await store.create(account(uniqueEmail("mover"), shard: 42))
            #expect(try await store.directory.current().version == 1)
            // A process that rereads the map on every call (maxAge zero) sees the move
            // without any refusal.
            let periodic = ShardDirectory(set: clusters["a"]!, maxAge: .zero)
            #expect(try await periodic.current().version == 1)
            try await Self.fence(42, clusters)
            try await Self.finishMove(42, clusters)
            #expect(try await store.user(id: user.id)?.id == user.id)
            #expect(store.refusals(on: "a") == 1)  // the old cluster said "not mine" once
            #expect(try await periodic.current().version == 2)
            #expect(try await store.directory.current().version == 2)
            let updated = try await store.update(id: user.id, patch: ProfilePatch(city: "Bergen"))
            #expect(updated?.address.city == "Bergen")
            #expect(try await count(clusters["b"]!, "SELECT count(*) FROM users WHERE city = 'Bergen' AND id = \(user.id.rawValue)") == 1)
            #expect(try await count(clusters["a"]!, "SELECT count(*) FROM users WHERE id = \(user.id.rawValue)") == 0)
        }
    }

    /// A write to a shard behind a move's fence waits for the new owner and lands there; it
    /// does not fail and is not lost.
    @Test func aWriteBehindAMovesFenceWaitsAndLands() async throws {
        try await withShardedClusters(fresh: true) { store, clusters in
            let user = try await store.create(account(uniqueEmail("fenced"), shard: 77))
            try await Self.fence(77, clusters)
            let write = Task { try await store.update(id: user.id, patch: ProfilePatch(city: "Tromsø")) }
            // The move goes on only once the fence has refused the write (which then waits).
            while store.refusals(on: "a") == 0 { try await Task.sleep(for: .milliseconds(10)) }
            try await Self.finishMove(77, clusters)
            #expect(try await write.value?.address.city == "Tromsø")
            #expect(try await count(clusters["b"]!, "SELECT count(*) FROM users WHERE city = 'Tromsø' AND id = \(user.id.rawValue)") == 1)
        }
    }
}

@Suite struct ShardedGatherTests {
    /// The home page's newest users come from every cluster. With one cluster down the page
    /// still comes, from the others, and says it may be missing people.
    @Test func aClusterDownGivesAPartialPageNotAnError() async throws {
        try await PostgresTopology.withFresh(replicas: 0) { a in
            try await PostgresTopology.withFresh(replicas: 0) { b in
                try await TestApp.withTemporaryDirectory { dir in
                    let clusters = "a=\(a.addresses.joined(separator: ","));b=\(b.addresses.joined(separator: ","))"
                    let c = try await TestApp.components(
                        try TestApp.settings(
                            dataDirectory: dir,
                            [
                                "data.engine": "sharded", "data.shards.clusters": clusters, "data.postgres.timeoutMs": "10000",
                                // The killed cluster fails at once; the live one must never be late.
                                "data.shards.gatherMs": "60000",
                            ]))
                    try await buildApplication(c).test(.router) { client in
                        try await c.engines.prepare()
                        let onA = try await c.users.create(account(uniqueEmail("ga"), shard: 1))
                        let onB = try await c.users.create(account(uniqueEmail("gb"), shard: 1000))
                        let whole = try await c.users.recentPage(limit: 10)
                        #expect(whole.missingClusters == 0 && Set(whole.users.map(\.id)) == [onA.id, onB.id])
                        #expect(try await client.send(.get, "/").text.contains("/people/\(onB.id)"))
                        try b.kill("primary")
                        let partial = try await c.users.recentPage(limit: 10)
                        #expect(partial.missingClusters == 1)
                        #expect(partial.users.map(\.id) == [onA.id])
                        let page = try await client.send(.get, "/")
                        #expect(page.status == .ok)
                        #expect(page.text.contains("may be missing people") && page.text.contains("/people/\(onA.id)"))
                    }
                }
            }
        }
    }
}

@Suite struct ShardedReadYourWritesTests {
    /// A request's write positions are kept per cluster: positions of different primaries
    /// do not compare, so a write on one cluster must not hold back reads on another.
    @Test func writePositionsAreKeptPerCluster() async throws {
        try await withShardedClusters { store, _ in
            let ryw = ReadYourWrites()
            try await ReadYourWrites.$current.withValue(ryw) {
                _ = try await store.create(account(uniqueEmail("ryw-a"), shard: 8))
            }
            // The sign-up wrote the user on "a", and its email entry on the email's cluster.
            #expect(ryw.position(for: "a") > 0)
            #expect(ryw.position(for: "") == 0)
            let before = ryw.positions
            try await ReadYourWrites.$current.withValue(ryw) {
                _ = try await store.create(account(uniqueEmail("ryw-b"), shard: 900))
            }
            #expect(ryw.position(for: "b") > 0)
            #expect(Set(ryw.positions.keys) == ["a", "b"])
            #expect(ryw.position(for: "a") >= before["a"] ?? 0)
        }
    }

    @Test func positionsTravelInOneCookie() {
        let ryw = ReadYourWrites(positions: ["": 0x1F, "a": 0x20, "shard-b": 0xABC])
        #expect(ryw.cookieValue == "1f~a.20~shard-b.abc")
        #expect(ReadYourWrites.positions(cookie: ryw.cookieValue) == ["": 0x1F, "a": 0x20, "shard-b": 0xABC])
        // The unsharded cookie of before reads as it did.
        #expect(ReadYourWrites.positions(cookie: "3F00") == ["": 0x3F00])
        #expect(ReadYourWrites(positions: ["": 0x3F00]).cookieValue == "3f00")
        // Garbage is left out, not an error.
        #expect(ReadYourWrites.positions(cookie: "zz~a.~.5~b.12") == ["b": 0x12])
    }
}

/// The whole site on `data.engine=sharded` (two clusters): sign-up, log-in by email, reads,
/// a second sign-up with a taken email, updates and the newest users, through the HTTP API.
@Suite struct ShardedSiteTests {
    @Test func theSiteWorksOnShardedUsers() async throws {
        _ = try PostgresTopology.start(directory: "/tmp/millions-pg-tests-shard-a", basePort: 15532, replicas: 0)
        _ = try PostgresTopology.start(directory: "/tmp/millions-pg-tests-shard-b", basePort: 15542, replicas: 0)
        try await TestApp.withTemporaryDirectory { dir in
            let settings = try TestApp.settings(
                dataDirectory: dir,
                [
                    "data.engine": "sharded", "data.shards.clusters": "a=127.0.0.1:15532;b=127.0.0.1:15542",
                    "data.postgres.timeoutMs": "10000", "data.postgres.discoveryMs": "200", "data.shards.gatherMs": "60000",
                ])
            let c = try await TestApp.components(settings)
            try await buildApplication(c).test(.router) { client in
                try await c.engines.prepare()
                var ids: [String] = []
                for i in 0..<6 {
                    let email = uniqueEmail("site\(i)")
                    let (id, session) = try await signUpJohn(client, email: email)
                    ids.append(id)
                    #expect(try await client.send(.get, "/users/\(id)").object["lastName"] as? String == "Smith")
                    let login = try await client.send(
                        .post, "/sessions", json: #"{"email":"\#(email)","password":"correct horse"}"#)
                    #expect(login.status == .created || login.status == .ok, "\(login.status)")
                    let again = try await client.send(.post, "/users", json: john.replacingOccurrences(of: "john@example.com", with: email))
                    #expect(again.status == .conflict)
                    let patch = try await client.send(
                        .patch, "/users/\(id)", json: #"{"lastName":"Smythe"}"#, cookies: ["millions_session": session])
                    #expect(patch.status == .ok)
                    #expect(try await client.send(.get, "/users/\(id)").object["lastName"] as? String == "Smythe")
                }
                let home = try await client.send(.get, "/")
                #expect(home.status == .ok)
                #expect(try await client.send(.get, "/readyz").status == .ok)
            }
        }
    }
}

/// What the load of a move test shares between its tasks.
final class LoadState: Sendable {
    private let done = Atomic<Bool>(false)
    private let failed = Atomic<Int>(0)
    private let slowestWrite = Mutex<Duration>(.zero)

    var isDone: Bool { done.load(ordering: .relaxed) }
    func finish() { done.store(true, ordering: .relaxed) }
    func fail() { failed.add(1, ordering: .relaxed) }
    var failures: Int { failed.load(ordering: .relaxed) }
    func wrote(in took: Duration) { slowestWrite.withLock { $0 = max($0, took) } }
    var slowest: Duration { slowestWrite.withLock { $0 } }
}

@Suite(.serialized) struct ShardMoverTests {
    /// Two shards move while writers update their users and readers read them: every
    /// acknowledged write is on the new cluster, every user is there exactly once, and no
    /// read or write failed (writes to a fenced shard waited).
    @Test func aMoveUnderLoadLosesNothingAndDuplicatesNothing() async throws {
        try await withShardedClusters(fresh: true) { store, clusters in
            let shards = [100, 101]
            var made: [UserID] = []
            for i in 0..<40 { made.append(try await store.create(account(uniqueEmail("load\(i)"), shard: shards[i % 2])).id) }
            let users = made
            let load = LoadState()
            // Each writer owns a quarter of the users, so a user's writes are in order.
            let writers = (0..<4).map { w in
                Task { () -> [UserID: Int] in
                    var acknowledged: [UserID: Int] = [:]
                    var n = 0
                    while !load.isDone || n < 20 {
                        n += 1
                        let id = users[(w + 4 * n) % users.count]
                        let start = ContinuousClock.now
                        do {
                            if try await store.update(id: id, patch: ProfilePatch(city: "w\(w)-\(n)")) != nil { acknowledged[id] = n }
                            else { load.fail() }
                        } catch { load.fail() }
                        load.wrote(in: ContinuousClock.now - start)
                    }
                    return acknowledged.mapValues { $0 }
                }
            }
            let readers = (0..<2).map { r in
                Task {
                    var n = 0
                    while !load.isDone {
                        n += 1
                        do { if try await store.user(id: users[(r + n) % users.count]) == nil { load.fail() } }
                        catch { load.fail() }
                    }
                }
            }
            let mover = ShardMover(clusters: clusters, directory: ShardDirectory(set: clusters["a"]!), logger: quietLogger)
            var fenced: [Duration] = []
            for shard in shards { fenced.append(try #require(try await mover.move(shard, to: "b")).fenced) }
            load.finish()
            var last: [UserID: (writer: Int, n: Int)] = [:]
            for (w, task) in writers.enumerated() { for (id, n) in await task.value { last[id] = (w, n) } }
            for task in readers { await task.value }
            print("shard moves under load: fenced \(fenced), slowest write \(load.slowest)")
            #expect(load.failures == 0)
            for id in users {
                #expect(try await count(clusters["a"]!, "SELECT count(*) FROM users WHERE id = \(id.rawValue)") == 0)
                #expect(try await count(clusters["b"]!, "SELECT count(*) FROM users WHERE id = \(id.rawValue)") == 1)
                if let (w, n) = last[id] { #expect(try await store.user(id: id)?.address.city == "w\(w)-\(n)") }
            }
            #expect(try await store.directory.refresh().version == 3)
        }
    }

    /// A third cluster joins: rebalancing gives it its share of the shards, taken from the
    /// others, and every user is still found, once.
    /// A move whose clean failed leaves the shard's rows on the source (made here by putting
    /// them back, past the fence). `clean` counts them in a dry run, then removes exactly
    /// those: the users live on once, on the cluster that owns them.
    @Test func cleanRemovesWhatAFailedMoveLeftOnTheSource() async throws {
        try await withShardedClusters(fresh: true) { store, clusters in
            let (a, b) = (clusters["a"]!, clusters["b"]!)
            var moved: [UserID] = []
            for i in 0..<5 { moved.append(try await store.create(account(uniqueEmail("left\(i)"), shard: 7)).id) }
            let stay = try await store.create(account(uniqueEmail("stay"), shard: 8)).id
            let snapshot = try await a.readPrimary("snapshot") { client in
                var json = "[]"
                for try await t in try await client.query(
                    "SELECT coalesce(json_agg(u), '[]')::text FROM users u WHERE (u.id >> 12) & 1023 = 7").decode(String.self) { json = t }
                return json
            }
            let mover = ShardMover(clusters: clusters, directory: store.directory, logger: quietLogger)
            #expect(try await mover.move(7, to: "b") != nil)
            try await a.write("put_back") { c in
                try await c.query("SET LOCAL session_replication_role = replica", logger: c.logger)
                try await c.query("INSERT INTO users SELECT * FROM json_populate_recordset(null::users, \(snapshot)::json)", logger: c.logger)
            }
            #expect(try await count(a, "SELECT count(*) FROM users WHERE (id >> 12) & 1023 = 7") == 5)

            let counted = try await mover.clean(dryRun: true)
            let none = ["users": 0, "email_directory": 0, "sessions": 0, "city_directory": 0]
            #expect(counted == [.init(cluster: "a", rows: none.merging(["users": 5]) { $1 }), .init(cluster: "b", rows: none)])
            #expect(try await count(a, "SELECT count(*) FROM users WHERE (id >> 12) & 1023 = 7") == 5)
            #expect(try await mover.clean() == counted)
            #expect(try await count(a, "SELECT count(*) FROM users WHERE (id >> 12) & 1023 = 7") == 0)
            #expect(try await count(b, "SELECT count(*) FROM users WHERE (id >> 12) & 1023 = 7") == 5)
            #expect(try await count(a, "SELECT count(*) FROM users WHERE (id >> 12) & 1023 = 8") == 1)
            for id in moved + [stay] { #expect(try await store.user(id: id) != nil) }
            #expect(try await mover.clean(dryRun: true).allSatisfy { $0.total == 0 })
        }
    }

    /// Sessions (`session.store=sql`) live on their user's cluster, named by the token, and
    /// move with the user's shard: found, extended and deleted afterwards through a map
    /// read before the move.
    @Test func sessionsLiveWithTheirUserAndMoveWithTheShard() async throws {
        try await withShardedClusters(fresh: true) { store, clusters in
            let (a, b) = (clusters["a"]!, clusters["b"]!)
            let sessions = PostgresSessionStore(rows: ShardedSessionRows(users: store))
            let ann = try await store.create(account(uniqueEmail("ann"), shard: 7))
            let bob = try await store.create(account(uniqueEmail("bob"), shard: 900))
            let anns = [try await sessions.create(userID: ann.id, ttl: 3600), try await sessions.create(userID: ann.id, ttl: 3600)]
            let bobs = try await sessions.create(userID: bob.id, ttl: 3600)
            #expect(anns.allSatisfy { $0.id.hasPrefix("007") && Session.isWellFormed($0.id) } && bobs.id.hasPrefix("384"))
            #expect(try await count(a, "SELECT count(*) FROM sessions WHERE user_id = \(ann.id.rawValue)") == 2)
            #expect(try await count(b, "SELECT count(*) FROM sessions WHERE user_id = \(bob.id.rawValue)") == 1)
            #expect(try await sessions.session(id: anns[0].id, ttl: 3600)?.userID == ann.id)
            // A token this store did not make is just not found.
            #expect(try await sessions.session(id: "fff" + String(anns[0].id.dropFirst(3)), ttl: 3600) == nil)

            // Another process's store, whose map predates the move.
            let stale = ShardedUserStore(
                clusters: clusters, directory: ShardDirectory(set: a), metrics: AppMetrics(), logger: quietLogger, fenceWait: .seconds(60))
            _ = try await stale.directory.current()
            let staleSessions = PostgresSessionStore(rows: ShardedSessionRows(users: stale))
            let mover = ShardMover(clusters: clusters, directory: store.directory, logger: quietLogger)
            let move = try #require(try await mover.move(7, to: "b"))
            #expect(move.users == 1 && move.emails == 0 && move.sessions == 2)
            #expect(try await count(a, "SELECT count(*) FROM sessions WHERE user_id = \(ann.id.rawValue)") == 0)
            #expect(try await count(b, "SELECT count(*) FROM sessions WHERE user_id = \(ann.id.rawValue)") == 2)

            #expect(try await staleSessions.session(id: anns[0].id, ttl: 3600)?.userID == ann.id)
            try await staleSessions.delete(id: anns[0].id)
            #expect(try await sessions.session(id: anns[0].id, ttl: 3600) == nil)
            #expect(try await sessions.session(id: anns[1].id, ttl: 3600)?.userID == ann.id)
            // Sliding the expiry of a moved session is a write on its new cluster.
            let extended = try #require(try await staleSessions.session(id: anns[1].id, ttl: 1_000_000))
            #expect(extended.expiresAt > anns[1].expiresAt)
            try await sessions.deleteAll(userID: ann.id)
            #expect(try await sessions.session(id: anns[1].id, ttl: 3600) == nil)
            #expect(try await sessions.session(id: bobs.id, ttl: 3600)?.userID == bob.id)

            // Expired sessions are purged on every cluster.
            let short = try await sessions.create(userID: bob.id, ttl: -1)
            #expect(try await sessions.purgeExpired() >= 1)
            #expect(try await count(b, "SELECT count(*) FROM sessions WHERE user_id = \(bob.id.rawValue)") == 1)
            #expect(try await sessions.session(id: short.id, ttl: 3600) == nil)
            #expect(try await mover.clean(dryRun: true).allSatisfy { $0.total == 0 })
        }
    }

    @Test func rebalanceGivesANewClusterItsShare() async throws {
        try await PostgresTopology.withFresh(replicas: 0) { a in
            try await PostgresTopology.withFresh(replicas: 0) { b in
                try await PostgresTopology.withFresh(replicas: 0) { c in
                    try await runSharded([("a", a), ("b", b), ("c", c)], mapped: ["a", "b"]) { store, clusters in
                        var users: [UserID] = []
                        for i in 0..<30 {
                            users.append(try await store.create(account(uniqueEmail("rb\(i)"), shard: Int.random(in: 0..<1024))).id)
                        }
                        let mover = ShardMover(clusters: clusters, directory: store.directory, logger: quietLogger)
                        let moves = try await mover.rebalance(["a", "b", "c"])
                        let map = try await store.directory.current()
                        #expect(moves.count == 341)  // only what c needs: 171 from a, 170 from b
                        #expect(map.shards(of: "a").count == 342 && map.shards(of: "b").count == 341 && map.shards(of: "c").count == 341)
                        #expect(try await mover.rebalance(["a", "b", "c"]).isEmpty)
                        var total = 0
                        for set in clusters.values { total += try await count(set, "SELECT count(*) FROM users") }
                        #expect(total == users.count)
                        for id in users { #expect(try await store.user(id: id) != nil) }
                        for (name, set) in clusters {
                            #expect(try await count(set, "SELECT count(*) FROM shard_ownership") == map.shards(of: name).count)
                        }
                        // Draining c (`shards rebalance --drain c`): its shards go back to a and b.
                        #expect(try await mover.rebalance(["a", "b"]).count == 341)
                        let drained = try await store.directory.current()
                        #expect(drained.shards(of: "c").isEmpty && drained.shards(of: "a").count == 512)
                        #expect(try await count(clusters["c"]!, "SELECT count(*) FROM users") == 0)
                        #expect(try await count(clusters["c"]!, "SELECT count(*) FROM shard_ownership") == 0)
                        for id in users { #expect(try await store.user(id: id) != nil) }
                    }
                }
            }
        }
    }
}

/// The job queue of a sharded tier: every cluster's `jobs` table, ids naming the cluster.
@Suite struct ShardedJobQueueTests {
    static func queue(_ store: ShardedUserStore, _ clusters: [String: ReplicaSet]) -> ShardedJobQueue {
        ShardedJobQueue(clusters: clusters, order: ["a", "b"], directory: store.directory, logger: quietLogger)
    }

    @Test func jobsAreSpreadOverTheClustersAndTheirIdsNameTheirCluster() async throws {
        try await withShardedClusters { store, clusters in
            let jobs = Self.queue(store, clusters)
            let numbers = try await store.directory.clusterNumbers()
            #expect(numbers["a"] == 0 && numbers["b"] == 1, "\(numbers)")
            let q = "sq-\(UUID().uuidString.prefix(8))"
            var ids: [Int64] = []
            for n in 0..<10 { ids.append(try await jobs.enqueue(queue: q, payload: #"{"n":\#(n)}"#)) }
            #expect(Set(ids).count == 10)
            // Half on each cluster, each id naming the cluster whose table holds it.
            #expect(Set(ids.map { $0 >> ShardedJobQueue.localBits }) == [0, 1])
            for (name, number) in [("a", Int64(0)), ("b", Int64(1))] {
                let local = ids.filter { $0 >> ShardedJobQueue.localBits == number }.map { $0 & ShardedJobQueue.localMask }
                #expect(local.count == 5)
                #expect(try await count(clusters[name]!, "SELECT count(*) FROM jobs WHERE queue = '\(q)'") == 5)
                #expect(
                    try await count(
                        clusters[name]!, "SELECT count(*) FROM jobs WHERE queue = '\(q)' AND id IN (\(local.map(String.init).joined(separator: ",")))")
                        == 5)
            }
            // Every job is claimed once, from both clusters, and ends where it began.
            var claimed: [Job] = []
            while let job = try await jobs.claim(queues: [q], worker: "w", leaseSeconds: 60) { claimed.append(job) }
            #expect(Set(claimed.map(\.id)) == Set(ids))
            #expect(try await jobs.heartbeat(id: ids[0], worker: "w", leaseSeconds: 60))
            #expect(try await jobs.heartbeat(id: ids[0], worker: "other", leaseSeconds: 60) == false)
            for id in ids.dropFirst(2) { try await jobs.complete(id: id, worker: "w", resultPositions: ["b": 42]) }
            try await jobs.fail(id: ids[0], worker: "w", error: "boom", retryAt: nil)
            try await jobs.release(id: ids[1], worker: "w")
            let done = try #require(try await jobs.job(id: ids[3]))
            #expect(done.id == ids[3] && done.state == .done && done.resultPositions == ["b": 42])
            #expect(try await jobs.job(id: ids[1])?.state == .ready)
            let stats = try #require(try await jobs.stats().first { $0.queue == q })
            #expect(stats.done == 8 && stats.dead == 1 && stats.ready == 1 && stats.running == 0, "\(stats)")
            #expect(try await jobs.deadJobs(limit: 1000).contains { $0.id == ids[0] && $0.lastError == "boom" })
            #expect(try await jobs.retryDead(id: ids[0]))
            #expect(try await jobs.job(id: ids[0])?.state == .ready)
            // An id no cluster could have made is not found, not an error.
            #expect(try await jobs.job(id: 30 << 48 | 1) == nil)
            #expect(try await jobs.job(id: -5) == nil)
        }
    }

    /// A photo's version and its jobs commit together on the user's cluster, and the job's
    /// id names that cluster.
    @Test func aPhotoJobIsQueuedOnItsUsersCluster() async throws {
        try await withShardedClusters { store, clusters in
            let jobs = Self.queue(store, clusters)
            let requests = ShardedPhotoRequests(users: store, jobs: jobs)
            for (shard, name, number) in [(5, "a", Int64(0)), (800, "b", Int64(1))] {
                let user = try await store.create(account(uniqueEmail("photo-\(name)"), shard: shard))
                let made = try #require(try await requests.request(user: user.id, source: "orig-\(UUID().uuidString).jpg", edits: nil, maxAttempts: 3))
                #expect(made.job >> ShardedJobQueue.localBits == number)
                let local = made.job & ShardedJobQueue.localMask
                #expect(
                    try await count(
                        clusters[name]!, "SELECT count(*) FROM jobs WHERE id = \(local) AND payload::jsonb ->> 'user' = '\(user.id.rawValue)'") == 1)
                #expect(try await jobs.job(id: made.job)?.payload == made.payload.json)
                #expect(try await store.newestPhoto(id: user.id)?.version == made.payload.version)
            }
            // No such user: no version and no job.
            let ghost = UserID(seconds: Int64(Clock.secondsSince1970()), shard: 900, sequence: 7)
            #expect(try await requests.request(user: ghost, source: "x.jpg", edits: nil, maxAttempts: 3) == nil)
        }
    }
}

/// The people of a city on a sharded tier: the city directory (one cluster) and
/// scatter-gather (every cluster) give the same page; the directory follows sign-ups, moves
/// between cities, renames and deletions, refuses late writes, moves with its shard, and is
/// repaired by `reindexCities`.
@Suite(.serialized) struct CityDirectoryTests {
    func person(_ city: String, shard: Int, first: String = "Ann") -> NewAccount {
        var a = account(uniqueEmail("city"), shard: shard)
        a.profile = Profile(firstName: first, lastName: "Lee", address: Address(city: city), phoneNumbers: [])
        return a
    }

    @Test func theDirectoryAnswersAsScatterGatherDoesAndFollowsEveryChange() async throws {
        try await withShardedClusters(fresh: true) { store, clusters in
            let scatter = ShardedUserStore(
                clusters: clusters, directory: store.directory, metrics: AppMetrics(), logger: quietLogger, fenceWait: .seconds(60),
                gatherDeadline: .seconds(60), cityLookup: .scatter)
            let oslo = "Oslo-\(UUID().uuidString.prefix(6))", bergen = "Bergen-\(UUID().uuidString.prefix(6))"
            var people: [User] = []
            for (i, shard) in [3, 600, 9, 700, 12].enumerated() { people.append(try await store.create(person(oslo, shard: shard, first: "P\(i)"))) }
            let seeded = (0..<4).map { person(oslo, shard: 100 + 250 * $0, first: "S\($0)") }
            #expect(try await store.insertMany(seeded) == 4)
            let everyone = Set(people.map(\.id) + seeded.map(\.id))
            let page = try await store.usersIn(city: oslo, limit: 100)
            #expect(Set(page.users.map(\.id)) == everyone && page.missingClusters == 0)
            #expect(page.users.map(\.id) == page.users.map(\.id).sorted(by: >))
            #expect(page == (try await scatter.usersIn(city: oslo, limit: 100)))
            #expect(try await store.usersIn(city: oslo, limit: 3) == (try await scatter.usersIn(city: oslo, limit: 3)))
            // The city's entries are on one cluster, the one that owns the city's shard.
            let owner = try await store.directory.current().owner(of: ShardMap.logicalShard(ofKey: oslo))
            #expect(try await count(clusters[owner]!, "SELECT count(*) FROM city_directory WHERE city = '\(oslo)'") == 9)

            // Moving, renaming, a phone change (no directory write) and deleting.
            let mover = people[1], renamed = people[2], leaver = people[3]
            _ = try await store.update(id: mover.id, patch: ProfilePatch(city: bergen))
            _ = try await store.update(id: renamed.id, patch: ProfilePatch(firstName: "Renamed"))
            _ = try await store.update(id: people[4].id, patch: ProfilePatch(phoneNumbers: ["555 1234"]))
            _ = try await store.delete(id: leaver.id)
            let after = try await store.usersIn(city: oslo, limit: 100)
            #expect(Set(after.users.map(\.id)) == everyone.subtracting([mover.id, leaver.id]))
            #expect(after.users.first { $0.id == renamed.id }?.firstName == "Renamed")
            #expect(after == (try await scatter.usersIn(city: oslo, limit: 100)))
            #expect(try await store.usersIn(city: bergen, limit: 100).users.map(\.id) == [mover.id])
            #expect(try await store.usersIn(city: "Nowhere-\(UUID().uuidString)", limit: 10).users.isEmpty)

            // A late write of an older state loses to the newer one and to a tombstone.
            try await store.writeCityEntries([
                .init(city: oslo, userID: mover.id.rawValue, firstName: "Old", lastName: "Lee", version: 0, gone: false),
                .init(city: bergen, userID: mover.id.rawValue, firstName: "Old", lastName: "Lee", version: 0, gone: false),
            ])
            #expect(!(try await store.usersIn(city: oslo, limit: 100)).users.contains { $0.id == mover.id })
            #expect(try await store.usersIn(city: bergen, limit: 100).users.map(\.firstName) == [mover.profile.firstName])

            // Damage the directory (an entry lost, a stale one left), then repair it.
            let lost = people[0].id.rawValue
            try await clusters[owner]!.write("damage") { c in
                try await c.query("DELETE FROM city_directory WHERE user_id = \(lost)", logger: c.logger)
                try await c.query(
                    "UPDATE city_directory SET gone = false WHERE city = \(oslo) AND user_id = \(leaver.id.rawValue)", logger: c.logger)
            }
            let damaged = try await store.usersIn(city: oslo, limit: 100).users.map(\.id)
            #expect(!damaged.contains(people[0].id) && damaged.contains(leaver.id))
            let repair = try await store.reindexCities(batch: 3)
            #expect(repair.tombstones == 1, "\(repair)")
            #expect(try await store.usersIn(city: oslo, limit: 100) == (try await scatter.usersIn(city: oslo, limit: 100)))
            #expect(try await store.reindexCities().tombstones == 0)

            // The city's shard moves with its entries; the page is the same from the new owner.
            let logical = ShardMap.logicalShard(ofKey: oslo)
            let target = owner == "a" ? "b" : "a"
            let before = try await store.usersIn(city: oslo, limit: 100)
            let move = try #require(try await ShardMover(clusters: clusters, directory: store.directory, logger: quietLogger).move(logical, to: target))
            #expect(move.cityEntries >= 8)
            #expect(try await count(clusters[owner]!, "SELECT count(*) FROM city_directory WHERE city = '\(oslo)'") == 0)
            #expect(try await store.usersIn(city: oslo, limit: 100) == before)
            // Tombstones older than a moment ago are purged; live entries stay.
            #expect(try await store.purgeCityTombstones(before: Clock.secondsSince1970() + 1) >= 2)
            #expect(try await store.usersIn(city: oslo, limit: 100) == before)
        }
    }

    /// Through the HTTP API: the page's shape, and 400 for a missing, empty, long city or a bad limit.
    @Test func theAPIListsACitysPeopleAndRefusesBadQueries() async throws {
        try await TestApp.run { client, _ in
            let city = "Tromsø \(UUID().uuidString.prefix(6))"
            let made = try await client.send(
                .post, "/users",
                json: john.replacingOccurrences(of: "john@example.com", with: uniqueEmail("city-api"))
                    .replacingOccurrences(of: "\"New York\"", with: "\"\(city)\""))
            #expect(made.status == .created, "\(made.text)")
            let id = "\(made.object["id"] ?? "")"
            let encoded = city.addingPercentEncoding(withAllowedCharacters: .urlQueryAllowed)!
            let r = try await client.send(.get, "/users?city=\(encoded)&limit=5")
            #expect(r.status == .ok, "\(r.text)")
            #expect(r.object["city"] as? String == city && r.object["partial"] as? Bool == false)
            let users = try #require(r.object["users"] as? [[String: Any]])
            #expect(users.count == 1 && "\(users[0]["id"] ?? "")" == id && users[0]["lastName"] as? String == "Smith")
            for bad in ["/users", "/users?city=", "/users?city=%20%20", "/users?city=\(String(repeating: "x", count: 101))",
                "/users?city=Oslo&limit=0", "/users?city=Oslo&limit=101", "/users?city=Oslo&limit=ten"]
            {
                let r = try await client.send(.get, bad)
                #expect(r.status == .badRequest, "\(bad): \(r.status)")
                #expect(r.object["error"] != nil, "\(bad): \(r.text)")
            }
        }
    }
}
