import DataTier
import Engines
import Foundation
import HTTPTypes
import HummingbirdTesting
import Logging
import MillionsCore
import MillionsTesting
import Observability
import PostgresNIO
import Synchronization
import Testing
import WebTier

@Suite struct ReadRouterTests {
    let router = ReadRouter(maxLagBytes: 1000, maxLagSeconds: 5)
    let primary = NodeStatus(role: .primary, reachable: true, lsn: 5000)
    func replica(_ lsn: UInt64, lag: UInt64 = 0, seconds: Double = 0, up: Bool = true) -> NodeStatus {
        NodeStatus(role: .replica, reachable: up, lsn: lsn, lagBytes: lag, lagSeconds: seconds)
    }

    @Test func spreadsReadsOverHealthyReplicas() {
        let nodes = [primary, replica(5000), replica(5000)]
        let picks = (0..<10).map { router.choose(nodes, minimumLSN: 0, spread: $0) }
        #expect(Set(picks) == [.replica(1), .replica(2)])
    }

    @Test func readYourWritesIsCheckedPerReplica() {
        let nodes = [primary, replica(4000, lag: 1000), replica(4900, lag: 100)]
        #expect((0..<4).allSatisfy { router.choose(nodes, minimumLSN: 4500, spread: $0) == .replica(2) })
        #expect(router.choose(nodes, minimumLSN: 4950, spread: 0) == .readYourWritesFallback(0))
    }

    @Test func laggingOrDownReplicasGetNoReads() {
        #expect(router.choose([primary, replica(1000, lag: 4000), replica(5000)], minimumLSN: 0, spread: 0) == .replica(2))
        #expect(router.choose([primary, replica(5000, seconds: 9), replica(5000, up: false)], minimumLSN: 0, spread: 0) == .primaryFallback(0))
        #expect(router.choose([primary, replica(5000), replica(5000)], minimumLSN: 0, excluded: [1, 2], spread: 0) == .primaryFallback(0))
    }

    /// Without a primary a stale replica serves clients with no write of their own; a
    /// client whose write no replica has yet gets a 503, not a past without it.
    @Test func withoutAPrimaryReplicasServeEvenIfStaleButNeverHideAClientsWrite() {
        let down = NodeStatus(role: .unknown, reachable: false)
        #expect(router.choose([down, replica(4000), replica(4900)], minimumLSN: 4500, spread: 0) == .replica(2))
        #expect(router.choose([down, replica(4000), replica(4100)], minimumLSN: 0, spread: 0) == .replica(1))
        #expect(router.choose([down, replica(4000), replica(4100)], minimumLSN: 4500, spread: 0) == .unavailable)
        // A replica of an older timeline does not count as having the write.
        var old = replica(9000)
        old.timeline = 1
        var new = replica(4600)
        new.timeline = 2
        #expect(router.choose([down, old, new], minimumLSN: 4500, spread: 0) == .replica(2))
        #expect(router.choose([down, old, replica(4100)], minimumLSN: 4500, spread: 0) == .replica(1))
        #expect(router.choose([down, replica(4000, up: false)], minimumLSN: 0, spread: 0) == .unavailable)
    }

    /// Two nodes answering as primary (a failover left the old one behind): the newer
    /// timeline's is the primary; the older one gets neither reads nor writes.
    /// Another site's nodes (`data.postgres.remoteNodes`): a replica there serves no reads
    /// (not even stale ones); a primary there takes the reads that fall back to the primary.
    @Test func remoteReplicasServeNoReadsButARemotePrimaryIsUsed() {
        let router = ReadRouter(maxLagBytes: 1000, maxLagSeconds: 5, remote: [1, 2])
        // 0: this site's replica; 1: the primary, in the other site; 2: a replica there.
        let nodes = [replica(5000), primary, replica(5000)]
        for spread in 0..<4 { #expect(router.choose(nodes, minimumLSN: 0, spread: spread) == .replica(0)) }
        // This site's replica behind the client's write, or down: the primary, not the remote replica.
        #expect(router.choose(nodes, minimumLSN: 6000, spread: 1) == .readYourWritesFallback(1))
        #expect(router.choose([replica(5000, up: false), primary, replica(5000)], minimumLSN: 0, spread: 1) == .primaryFallback(1))
        // No primary: reads only from this site's replica; with none here, none.
        let noPrimary = [replica(4000), NodeStatus(), replica(4900)]
        #expect(router.choose(noPrimary, minimumLSN: 0, spread: 1) == .replica(0))
        #expect(router.choose([replica(4000, up: false), NodeStatus(), replica(4900)], minimumLSN: 0, spread: 0) == .unavailable)
    }

    @Test func aStalePrimaryOfAnOlderTimelineIsFenced() {
        let old = NodeStatus(role: .primary, reachable: true, lsn: 9000, timeline: 1)
        let new = NodeStatus(role: .primary, reachable: true, lsn: 5000, timeline: 2)
        let nodes = NodeStatus.fencingStalePrimaries([old, new, replica(5000)])
        #expect(nodes.map(\.role) == [.fenced, .primary, .replica])
        #expect((0..<4).allSatisfy { router.choose(nodes, minimumLSN: 0, spread: $0) == .replica(2) })
        #expect(router.choose(nodes, minimumLSN: 0, excluded: [2], spread: 0) == .primaryFallback(1))
        // A replica still on the old timeline has not got the client's write, whatever its position.
        var behind = replica(9000)
        behind.timeline = 1
        var following = replica(5000)
        following.timeline = 2
        #expect(router.choose([new, behind, following], minimumLSN: 4000, spread: 0) == .replica(2))
        #expect(router.choose([new, behind], minimumLSN: 4000, spread: 0) == .primaryFallback(0))
        // One primary alone is not fenced, whatever its timeline, unless a replica already
        // receives a newer one (the new primary missed a probe).
        #expect(NodeStatus.fencingStalePrimaries([old, replica(5000)]).map(\.role) == [.primary, .replica])
        #expect(NodeStatus.fencingStalePrimaries([old, following]).map(\.role) == [.fenced, .replica])
        // A replica of another timeline than the primary's gets no reads.
        #expect(router.choose([new, behind], minimumLSN: 0, spread: 0) == .primaryFallback(0))
    }

    /// A client's write position names its timeline. After a failover a replica still on
    /// the old timeline may have replayed past the write's position without having the
    /// write: it must not serve that client, even when the new primary failed this read
    /// (excluded) or did not answer the last probe. `bench chaos` found a 401 after an
    /// acknowledged sign-up this way.
    @Test func aWritesTimelineKeepsItsReadsOffReplicasOfAnOlderOne() {
        let write = LSN.position(4000, timeline: 2)
        #expect(LSN.timeline(of: write) == 2 && LSN.offset(of: write) == 4000)
        #expect(LSN.position(9000, timeline: 1) < write)  // a newer timeline is later
        let new = NodeStatus(role: .primary, reachable: true, lsn: 5000, timeline: 2)
        var behind = replica(9000)
        behind.timeline = 1
        var following = replica(4500)
        following.timeline = 2
        #expect(router.choose([new, behind], minimumLSN: write, excluded: [0], spread: 0) == .unavailable)
        let unanswered = NodeStatus(role: .unknown, reachable: false)
        #expect(router.choose([unanswered, behind], minimumLSN: write, spread: 0) == .unavailable)
        #expect(router.choose([unanswered, behind, following], minimumLSN: write, spread: 0) == .replica(2))
        // A client that has not written may still read the old one while no primary answers.
        #expect(router.choose([unanswered, behind], minimumLSN: 0, spread: 0) == .replica(1))
        // A primary of an older timeline than the write (not fenced yet) does not serve it.
        let old = NodeStatus(role: .primary, reachable: true, lsn: 9000, timeline: 1)
        #expect(router.choose([old, behind], minimumLSN: write, spread: 0) == .unavailable)
        #expect(router.choose([old, behind], minimumLSN: LSN.position(4000, timeline: 1), spread: 0) == .replica(1))
        // Positions from before timelines were recorded (timeline 0) compare as before.
        #expect(router.choose([new, following], minimumLSN: 4000, spread: 0) == .replica(1))
    }

    /// test_decoding's lines: a commit's users, its position, and the position read through.
    @Test func changeFeedLines() throws {
        let rows: [(lsn: String, data: String)] = [
            ("0/100", "BEGIN"), ("0/110", "table public.users: UPDATE: id[bigint]:42 email[text]:'a@example.com'"),
            ("0/120", "table public.jobs: INSERT: id[bigint]:7 queue[text]:'photos'"), ("0/180", "COMMIT"),
            ("0/190", "BEGIN"), ("0/1A0", "table public.sessions: DELETE: id_hash[text]:'x'"), ("0/1F0", "COMMIT"),
            ("0/200", "BEGIN"), ("0/210", "table public.users: DELETE: id[bigint]:-3"),
            ("0/220", "table public.users: INSERT: id[bigint]:9 email[text]:'id[bigint]:1'"), ("0/2F0", "COMMIT"),
        ]
        let batch = try #require(ChangeFeed.parse(rows))
        #expect(batch.commits == [.init(position: 0x180, userIDs: [42]), .init(position: 0x2F0, userIDs: [-3, 9])])
        #expect(batch.through == 0x2F0)
        #expect(ChangeFeed.parse([("0/100", "BEGIN")]) == nil)
        #expect(ChangeFeed.userID("table public.users_archive: UPDATE: id[bigint]:1") == nil)
    }

    @Test func lsnText() {
        #expect(LSN.parse("0/4043C08") == 0x4043C08)
        #expect(LSN.parse("1/0") == 1 << 32)
        #expect(LSN.format(0x1_0000_00FF) == "1/FF")
        #expect(LSN.parse("zz") == nil)
    }
}

/// Against real PostgreSQL primaries and replicas started by `scripts/postgres`.
@Suite(.serialized) struct ReplicationTests {
    static func replicaSet(_ t: PostgresTopology, maxLagBytes: UInt64 = 16 << 20) throws -> ReplicaSet {
        var s = PostgresSettings(nodes: t.addresses)
        s.password = t.password
        s.discoveryInterval = .milliseconds(100)
        s.queryTimeout = .seconds(3)  // a loaded machine is not a dead node
        s.maxLagBytes = maxLagBytes
        return try ReplicaSet(settings: s, metrics: AppMetrics(), logger: quietLogger)
    }

    static func routed(_ metrics: AppMetrics, _ decision: String) -> Int {
        let text = String(decoding: metrics.exposition(), as: UTF8.self)
        let prefix = "db_read_routing_total{decision=\"\(decision)\"} "
        return text.split(separator: "\n").first { $0.hasPrefix(prefix) }.flatMap { Int($0.dropFirst(prefix.count)) } ?? 0
    }

    /// The primary's change feed, through a logical replication slot: commits that touched
    /// users come in commit order with their position; the replicas report having replayed
    /// them; acknowledged commits do not come back.
    @Test func theChangeFeedFollowsCommitsToUsers() async throws {
        let t = try PostgresTopology.shared()
        let set = try Self.replicaSet(t)
        try await set.withRunning {
            try await PostgresEngine.migrate(set)
            let feed = try ChangeFeed(set: set, slot: "test_feed_\(UInt32.random(in: 0...UInt32.max))", logger: quietLogger)
            do {
                try await feed.ensureSlot()
                try await feed.ensureSlot()  // idempotent
            } catch {
                Issue.record("creating the slot: \(String(reflecting: error))")
                return
            }
            do {
                let store = PostgresUserStore(replicaSet: set)
                let a = try await store.create(StoreSuite.account(uniqueEmail("feed-a")))
                let b = try await store.create(StoreSuite.account(uniqueEmail("feed-b")))
                _ = try await store.update(id: a.id, patch: ProfilePatch(lastName: "Followed"))
                // Other tests write to the same server meanwhile: keep the commits about a and b.
                let ours = Set([a.id.rawValue, b.id.rawValue])
                var seen: [[Int64]] = [], last: UInt64 = 0, through: UInt64 = 0
                for _ in 0..<600 where seen.count < 3 {
                    if let batch = try await feed.peek(limit: 10_000) {
                        let mine = batch.commits.filter { !Set($0.userIDs).isDisjoint(with: ours) }
                        seen = mine.map { $0.userIDs.filter(ours.contains) }
                        last = mine.last?.position ?? 0
                        through = batch.through
                    }
                    if seen.count < 3 { try await Task.sleep(for: .milliseconds(100)) }
                }
                #expect(seen == [[a.id.rawValue], [b.id.rawValue], [a.id.rawValue]])
                var replayed = false
                for _ in 0..<600 where !replayed {
                    replayed = await feed.replayed(through: last)
                    if !replayed { try await Task.sleep(for: .milliseconds(100)) }
                }
                #expect(replayed, "the replicas replay the commits")
                try await feed.acknowledge(through: through)
                try await feed.acknowledge(through: through)  // again: already there, no error
                let after = try await feed.peek(limit: 10_000)
                #expect(after?.commits.allSatisfy { $0.position > through } ?? true)
            } catch {
                try? await feed.drop()
                Issue.record("following the feed: \(String(reflecting: error))")
                return
            }
            try await feed.drop()
        }
    }

    @Test func aWriteOnThePrimaryBecomesReadableThroughReplicas() async throws {
        let t = try PostgresTopology.shared()
        let set = try Self.replicaSet(t)
        try await set.withRunning {
          do {
            try await PostgresEngine.migrate(set)
            let store = PostgresUserStore(replicaSet: set)
            let user = try await store.create(StoreSuite.account(uniqueEmail("repl")))
            // No read-your-writes scope: reads go to replicas whenever discovery has one in
            // rotation. On a loaded machine a replica may be out of rotation for a while (a
            // read then falls back to the primary, as it should), so poll until a read that a
            // replica served returns the user (up to a minute).
            // Replicas first replay the schema and the row (a fresh topology may not have yet).
            try await waitUntilReplicasReplay(set, try await set.primaryPosition())
            var seen: User? = nil
            for _ in 0..<1200 where seen == nil {
                let before = Self.routed(set.metrics, "replica")
                let read = try await store.user(id: user.id)
                if Self.routed(set.metrics, "replica") > before, read != nil { seen = read } else { try await Task.sleep(for: .milliseconds(50)) }
            }
            #expect(seen == user)
            let text = String(decoding: set.metrics.exposition(), as: UTF8.self)
            for name in ["db_pool_in_use{node=", "db_replica_lag_bytes{node=", "db_query_duration_seconds_count{node=", "db_node_is_primary{node="] {
                #expect(text.contains(name), "\(name)")
            }
          } catch { Issue.record("\(String(reflecting: error))"); throw error }
        }
    }

    /// A shard move publishes the map only once the target's replicas have replayed the
    /// copy: `waitForReplay` names a replica whose replay is paused, and nothing once it
    /// goes on.
    @Test func waitForReplayNamesTheReplicasBehindAPosition() async throws {
        try await PostgresTopology.withLagging { t in
            let set = try Self.replicaSet(t)
            try await set.withRunning {
                try t.pauseReplay("r1")
                defer { try? t.resumeReplay("r1") }
                try await set.write("replay_probe") { c in
                    try await c.query("CREATE TABLE IF NOT EXISTS replay_probe (n int)", logger: c.logger)
                    try await c.query("INSERT INTO replay_probe VALUES (1)", logger: c.logger)
                }
                let position = try await set.primaryPosition()
                let behind = await set.waitForReplay(of: position, timeout: .milliseconds(200))
                #expect(behind.contains(t.addresses[1]), "behind: \(behind)")
                try t.resumeReplay("r1")
                #expect(await set.waitForReplay(of: position, timeout: .seconds(60)) == [])
            }
        }
    }

    /// A replica that has not replayed a migration's new table yet is behind, not broken:
    /// the read is answered by the primary, and the replica stays in rotation.
    @Test func aReadOfATableAReplicaLacksIsAnsweredByThePrimary() async throws {
        try await PostgresTopology.withLagging { t in
            let set = try Self.replicaSet(t)
            try await set.withRunning {
                try await set.waitUntilDiscovered()
                try t.pauseReplicas()
                defer { t.resumeReplicas() }
                let table = "schema_behind_\(UInt32.random(in: 0...UInt32.max))"
                try await set.write("create") { c in
                    try await c.query(PostgresQuery(unsafeSQL: "CREATE TABLE \(table) (n int)"), logger: c.logger)
                    try await c.query(PostgresQuery(unsafeSQL: "INSERT INTO \(table) VALUES (7)"), logger: c.logger)
                }
                let behind = { () -> Int in
                    let text = String(decoding: set.metrics.exposition(), as: UTF8.self)
                    return text.split(separator: "\n").first { $0.hasPrefix("db_read_schema_behind_total ") }
                        .flatMap { Int($0.split(separator: " ")[1]) } ?? 0
                }
                for _ in 0..<10 {  // whichever replica each read is sent to
                    let n = try await set.read("schema_behind") { client in
                        var n = 0
                        for try await (v) in try await client.query(PostgresQuery(unsafeSQL: "SELECT n FROM \(table)")).decode(Int32.self) { n = Int(v) }
                        return n
                    }
                    #expect(n == 7)
                }
                #expect(behind() >= 10)
                #expect(set.statuses.filter { $0.role == .replica }.count == 2, "both replicas stay in rotation")
            }
        }
    }

    @Test func readYourWritesWhileReplicasArePaused() async throws {
        try await PostgresTopology.withLagging { t in
            // Replicas paused stay in rotation however long a loaded machine takes.
            try await TestApp.runPostgres(t, ["cache.backend": "none", "data.postgres.maxLagSeconds": "3600"]) { client, components in
                let (id, session) = try await signUpJohn(client, email: uniqueEmail("ryw"))
                // Let the replicas have the new user, then freeze them.
                try await waitUntilReplicasReplay(components.replicaSet!, try await components.replicaSet!.primaryPosition())
                try t.pauseReplicas()
                defer { t.resumeReplicas() }
                let patch = try await client.send(
                    .patch, "/users/\(id)", json: #"{"lastName":"Written"}"#, cookies: ["millions_session": session])
                #expect(patch.status == .ok)
                // Discovery's view of a replica is never ahead of it, so whatever it has seen
                // yet, no replica qualifies for this position.
                let lsn = try #require(patch.cookie("millions_lsn"))

                // The writer reads its write (from the primary; no replica has it).
                let before = Self.routed(components.metrics, "read_your_writes_fallback")
                let mine = try await client.send(.get, "/users/\(id)", cookies: ["millions_session": session, "millions_lsn": lsn])
                #expect(mine.object["lastName"] as? String == "Written")
                #expect(Self.routed(components.metrics, "read_your_writes_fallback") > before)

                // Another client is served by a replica: stale is allowed, and it is stale.
                let replicaReads = Self.routed(components.metrics, "replica")
                let other = try await client.send(.get, "/users/\(id)")
                #expect(other.object["lastName"] as? String == "Smith")
                #expect(Self.routed(components.metrics, "replica") > replicaReads)
            }
        }
    }

    @Test func aReplicaPastTheLagBoundLeavesRotationAndReturns() async throws {
        try await PostgresTopology.withLagging { t in
            let set = try Self.replicaSet(t, maxLagBytes: 4096)
            try await set.withRunning {
                try await PostgresEngine.migrate(set)
                let store = PostgresUserStore(replicaSet: set)
                try t.pauseReplay("r1")
                do {
                    let seeder = Seeder(passwordHash: "x", startSeconds: Int64(Clock.secondsSince1970()) - Int64.random(in: 0..<10_000_000))
                    _ = try await store.insertMany((0..<200).map { i in
                        var a = seeder.account(i)
                        a.email = uniqueEmail("lag\(i)")
                        return a
                    })
                    var r1Behind = false
                    for _ in 0..<600 where !r1Behind {  // discovery notices (bounded: a minute)
                        try await Task.sleep(for: .milliseconds(100))
                        r1Behind = set.statuses[1].lagBytes > 4096
                    }
                    #expect(r1Behind)
                    // Other tests write to the shared primary too, so r2 may be briefly past the
                    // small bound as well; it must come back, and r1 must never be chosen.
                    var r2Chosen = false
                    for _ in 0..<600 where !r2Chosen {
                        let picks = (0..<20).map { set.router.choose(set.statuses, minimumLSN: 0, spread: $0) }
                        #expect(!picks.contains(.replica(1)))
                        r2Chosen = picks.contains(.replica(2))
                        if !r2Chosen { try await Task.sleep(for: .milliseconds(100)) }
                    }
                    #expect(r2Chosen)
                } catch {
                    try? t.resumeReplay("r1")
                    throw error
                }
                try t.resumeReplay("r1")
                var back = false
                for _ in 0..<600 where !back {
                    try await Task.sleep(for: .milliseconds(100))
                    back = (0..<20).map { set.router.choose(set.statuses, minimumLSN: 0, spread: $0) }.contains(.replica(1))
                }
                #expect(back)
            }
        }
    }

    /// Six readers loop over `ids` while `during` runs, and go on until 100 more reads were
    /// made after it (bounded: a minute), however slow a busy machine makes them.
    /// Returns (ok, failed, reads after `during`).
    static func readUnderLoad(
        _ store: PostgresUserStore, _ ids: [UserID], during: @Sendable () async throws -> Void
    ) async throws -> (ok: Int, failed: Int, after: Int) {
        let good = Counter(), bad = Counter(), stop = Counter()
        var after = 0
        try await withThrowingTaskGroup(of: Void.self) { group in
            for w in 0..<6 {
                group.addTask {
                    var i = w
                    while stop.value == 0 {
                        do {
                            if try await store.user(id: ids[i % ids.count]) != nil { good.add() } else { bad.add() }
                        } catch { bad.add() }
                        i += 1
                    }
                }
            }
            // Some reads before, so the readers are running when `during` acts.
            for _ in 0..<600 where good.value + bad.value < 50 { try await Task.sleep(for: .milliseconds(100)) }
            try await during()
            let atEvent = good.value + bad.value
            for _ in 0..<600 where good.value + bad.value - atEvent < 100 { try await Task.sleep(for: .milliseconds(100)) }
            stop.add()
            try await group.waitForAll()
            after = good.value + bad.value - atEvent
        }
        let (ok, failed) = (good.value, bad.value)
        return (ok, failed, after)
    }

    /// A replica that is down when the web server starts and comes up later (a slow WAN
    /// timing connects out looks alike): its pool's first connects fail, later ones succeed,
    /// and concurrent reads then ask it for more connections. It joins the rotation and the
    /// process lives on (see the pool settings in `ReplicaSet.init`).
    @Test func aReplicaDownAtStartJoinsWithoutStoppingTheProcess() async throws {
        try await PostgresTopology.withFresh(replicas: 1) { t in
            try t.stopNodeImmediately("r1")
            let set = try Self.replicaSet(t)
            try await set.withRunning {
                try await PostgresEngine.migrate(set)
                // Discovery has asked r1's pool for connections, and every connect failed.
                for _ in 0..<5 { await set.discover() }
                #expect(!set.statuses[1].reachable)
                try t.startNode("r1")
                var back = false
                for _ in 0..<600 where !back {
                    await set.discover()
                    back = set.statuses[1].reachable
                    if !back { try await Task.sleep(for: .milliseconds(100)) }
                }
                try #require(back, "r1 did not come back")
                let store = PostgresUserStore(replicaSet: set)
                let before = Self.routed(set.metrics, "replica")
                // A read may fail while r1 finishes starting (CI saw one PSQLError here, once
                // in four runs); what counts is that the process lives and r1 serves reads.
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for _ in 0..<16 {
                        group.addTask { for _ in 0..<50 { _ = try? await store.user(id: UserID(seconds: 0, shard: 0, sequence: 1)) } }
                    }
                    try await group.waitForAll()
                }
                #expect(Self.routed(set.metrics, "replica") > before)
            }
        }
    }

    @Test func killingAReplicaFailsNoRead() async throws {
        try await PostgresTopology.withFresh { t in
            let set = try Self.replicaSet(t)
            try await set.withRunning {
                try await PostgresEngine.migrate(set)
                let store = PostgresUserStore(replicaSet: set)
                var ids: [UserID] = []
                for i in 0..<20 { ids.append(try await store.create(StoreSuite.account("k\(i)@example.com")).id) }
                try await waitUntilReplicasReplay(set, try await set.primaryPosition())
                let (ok, failed, after) = try await Self.readUnderLoad(store, ids) { try t.kill("r1") }
                #expect(failed == 0)
                #expect(ok > 0 && after >= 100)
                var noticed = false
                for _ in 0..<600 where !noticed {
                    noticed = !set.statuses[1].reachable
                    if !noticed { try await Task.sleep(for: .milliseconds(100)) }
                }
                #expect(noticed)
            }
        }
    }

    @Test func killingThePrimaryKeepsReadsAndRefusesWritesWith503() async throws {
        try await PostgresTopology.withFresh { t in
            try await TestApp.runPostgres(t, ["cache.backend": "none"]) { client, components in
                let set = components.replicaSet!
                let store = PostgresUserStore(replicaSet: set)
                var ids: [UserID] = []
                for i in 0..<20 { ids.append(UserID(try await signUpJohn(client, email: "p\(i)@example.com").id)!) }
                try await waitUntilReplicasReplay(set, try await set.primaryPosition())
                let (ok, failed, after) = try await Self.readUnderLoad(store, ids) { try t.kill("primary") }
                #expect(failed == 0)
                #expect(ok > 0 && after >= 100)
                var noticed = false
                for _ in 0..<600 where !noticed {
                    noticed = set.primaryIndex == nil
                    if !noticed { try await Task.sleep(for: .milliseconds(100)) }
                }
                #expect(noticed)

                let write = try await client.send(.post, "/users", json: john.replacingOccurrences(of: "john@", with: "late@"))
                #expect(write.status == .serviceUnavailable)
                #expect(write.errorCode == "unavailable")
                #expect(write.headers[.retryAfter] == "2")
                let read = try await client.send(.get, "/users/\(ids[0])")
                #expect(read.status == .ok)
                let ready = try await client.send(.get, "/readyz")
                #expect(ready.object["status"] as? String == "degraded")
            }
        }
    }

    /// With a password on the topology (as the cluster runs it): nothing connects without
    /// it, and a failover keeps the other replica streaming (its repointed conninfo keeps
    /// the password file).
    @Test func failoverPromotesAReplicaAndWritesResumeWithoutRestart() async throws {
        try await PostgresTopology.withFresh(password: "pw-" + Token.random(bytes: 8)) { t in
            #expect(try !t.letsInWithoutPassword(), "a client without the password was let in")
            try await TestApp.runPostgres(t, ["cache.backend": "none"]) { client, components in
                let set = components.replicaSet!
                let (id, session) = try await signUpJohn(client, email: "fo@example.com")
                try await Task.sleep(for: .milliseconds(300))
                try t.kill("primary")
                let killed = ContinuousClock.now
                try await Task.sleep(for: .milliseconds(300))
                #expect(try await client.send(.post, "/users", json: john.replacingOccurrences(of: "john@", with: "x@")).status == .serviceUnavailable)

                // The operator's command, as `millions db failover` runs it: its own replica set.
                let operatorSet = try Self.replicaSet(t)
                let result = try await operatorSet.withRunning(requirePrimary: false) {
                    try await Failover.promoteBestReplica(operatorSet, logger: Logger(label: "test"))
                }
                #expect(result.repointed.count == 1)

                // The web tier finds the new primary by itself; writes resume.
                var firstWrite: Duration? = nil
                for i in 0..<600 where firstWrite == nil {
                    let r = try await client.send(.post, "/users", json: john.replacingOccurrences(of: "john@", with: "after\(i)@"))
                    if r.status == .created { firstWrite = ContinuousClock.now - killed } else { try await Task.sleep(for: .milliseconds(100)) }
                }
                let elapsed = try #require(firstWrite)
                print("failover: primary killed -> first successful write in \(elapsed) (including a 300 ms pause before the command)")
                #expect(set.primaryIndex == components.replicaSet!.nodeNames.firstIndex(of: result.promoted))
                let patch = try await client.send(
                    .patch, "/users/\(id)", json: #"{"address":{"city":"Promoted"}}"#, cookies: ["millions_session": session])
                #expect(patch.status == .ok)

                // The other replica follows the new primary.
                var following = false
                for _ in 0..<600 where !following {
                    try await Task.sleep(for: .milliseconds(100))
                    let s = set.statuses
                    following = s.contains { $0.role == .replica && $0.reachable && $0.lagBytes == 0 }
                        && s.contains { $0.role == .primary }
                }
                #expect(following)
            }
        }
    }

    @Test func withSynchronousReplicationNoAcknowledgedWriteIsLostByAFailover() async throws {
        try await PostgresTopology.withFresh(sync: true) { t in
            let set = try Self.replicaSet(t)
            final class Acknowledged: Sendable {
                let ids = Mutex<[UserID]>([])
            }
            let acknowledged = Acknowledged()
            try await set.withRunning {
                try await PostgresEngine.migrate(set)
                let store = PostgresUserStore(replicaSet: set)
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for w in 0..<4 {
                        group.addTask {
                            for i in 0..<100_000 {
                                do {
                                    let u = try await store.create(StoreSuite.account("sync\(w)-\(i)@example.com"))
                                    acknowledged.ids.withLock { $0.append(u.id) }
                                } catch {
                                    return  // the primary is gone
                                }
                            }
                        }
                    }
                    // Kill once writes are flowing (bounded: a minute), not after a fixed time.
                    for _ in 0..<600 where acknowledged.ids.withLock({ $0.count }) < 50 {
                        try await Task.sleep(for: .milliseconds(100))
                    }
                    try t.kill("primary")
                    try await group.waitForAll()
                }
            }
            let ids = acknowledged.ids.withLock { $0 }
            #expect(ids.count >= 50)
            let operatorSet = try Self.replicaSet(t)
            try await operatorSet.withRunning(requirePrimary: false) {
                _ = try await Failover.promoteBestReplica(operatorSet, logger: Logger(label: "test"))
                try await operatorSet.waitUntilDiscovered()
                let store = PostgresUserStore(replicaSet: operatorSet)
                var missing = 0
                // An impossible read-your-writes position (no timeline named, the highest WAL
                // position) sends every read to the (new) primary.
                let impossible = LSN.position(.max, timeline: 0)
                try await ReadYourWrites.$current.withValue(ReadYourWrites(minimumLSN: impossible)) {
                    for id in ids where try await store.user(id: id) == nil { missing += 1 }
                }
                print("sync failover: \(ids.count) acknowledged writes, \(missing) missing after failover")
                #expect(missing == 0)
            }
        }
    }
}
