import CacheTier
import DataTier
import Engines
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import MillionsCore
import MillionsTesting
import NIOCore
import Observability
import Synchronization
import Testing
import WebTier

@Suite struct MemcachedCodecTests {
    func encoded(_ r: MemcachedRequest) -> String {
        var b = ByteBuffer()
        r.encode(into: &b)
        return String(buffer: b)
    }

    @Test func requestsOnTheWire() {
        #expect(encoded(.get(key: "user:1", flags: ["v", "c", "N5"])) == "mg user:1 v c N5\r\n")
        #expect(encoded(.set(key: "k", value: Array("hi".utf8), flags: ["T30", "C99"])) == "ms k 2 T30 C99\r\nhi\r\n")
        #expect(encoded(.delete(key: "k", flags: [])) == "md k\r\n")
        #expect(encoded(.noop) == "mn\r\n")
        #expect(encoded(.stats) == "stats\r\n")
        #expect(encoded(.flushAll) == "flush_all\r\n")
        #expect(MemcachedRequest.isValidKey("user:12"))
        #expect(!MemcachedRequest.isValidKey("has space"))
        #expect(!MemcachedRequest.isValidKey(String(repeating: "k", count: 251)))
        #expect(!MemcachedRequest.isValidKey(""))
    }

    static let stream = Array(
        ("VA 5 c42 W\r\nhello\r\n" + "VA 0 c43 Z\r\n\r\n" + "HD c44\r\n" + "EN\r\n" + "NS\r\n" + "EX\r\n" + "NF\r\n"
            + "MN\r\n" + "OK\r\n" + "STAT pid 1\r\nSTAT evictions 7\r\nEND\r\n" + "SERVER_ERROR out of memory\r\n"
            + "VA 4 X\r\na\r\nb\r\n").utf8)

    static let expected: [MemcachedResponse] = [
        .init(status: .value, flags: ["c": "42", "W": ""], value: Array("hello".utf8)),
        .init(status: .value, flags: ["c": "43", "Z": ""], value: []),
        .init(status: .stored, flags: ["c": "44"]),
        .init(status: .miss), .init(status: .notStored), .init(status: .exists), .init(status: .notFound),
        .init(status: .noop), .init(status: .ok),
        .init(status: .ok, stats: ["pid": "1", "evictions": "7"]),
        .init(status: .error("SERVER_ERROR out of memory")),
        .init(status: .value, flags: ["X": ""], value: Array("a\r\nb".utf8)),
    ]

    func decodeAll(_ chunks: [[UInt8]]) throws -> [MemcachedResponse] {
        var decoder = MemcachedResponseDecoder()
        var buffer = ByteBuffer()
        var out: [MemcachedResponse] = []
        for chunk in chunks {
            buffer.writeBytes(chunk)
            while let r = try decoder.decodeOne(&buffer) { out.append(r) }
        }
        #expect(buffer.readableBytes == 0)
        return out
    }

    @Test func decodesEveryKindOfResponse() throws {
        #expect(try decodeAll([Self.stream]) == Self.expected)
    }

    @Test func decodesTheSameWhenSplitAtEveryByte() throws {
        for split in 0...Self.stream.count {
            let parts = [Array(Self.stream[..<split]), Array(Self.stream[split...])]
            #expect(try decodeAll(parts) == Self.expected, "split at \(split)")
        }
        #expect(try decodeAll(Self.stream.map { [$0] }) == Self.expected)
    }

    @Test func refusesGarbage() {
        var decoder = MemcachedResponseDecoder()
        var bad = ByteBuffer(string: "WHAT\r\n")
        #expect(throws: MemcachedError.self) { try decoder.decodeOne(&bad) }
        var huge = ByteBuffer(string: "VA 999999999 \r\n")
        #expect(throws: MemcachedError.self) { try decoder.decodeOne(&huge) }
        var noLF = ByteBuffer(string: "HD\rX")
        #expect(throws: MemcachedError.self) { try decoder.decodeOne(&noLF) }
    }
}

@Suite struct HashRingTests {
    let keys = (0..<20_000).map { "user:\($0 * 7919)" }

    func placement(_ ring: HashRing) -> [Int] { keys.map { ring.node(for: $0)! } }

    @Test func spreadsKeysEvenly() {
        let names = (0..<4).map { "10.0.0.\($0):11211" }
        let counts = Dictionary(grouping: placement(HashRing(names: names)), by: { $0 }).mapValues(\.count)
        for n in 0..<4 { #expect(Double(counts[n] ?? 0) / Double(keys.count) > 0.17 && Double(counts[n] ?? 0) / Double(keys.count) < 0.33) }
    }

    @Test func addingANodeMovesAboutOneNthOnlyToIt() {
        let four = (0..<4).map { "10.0.0.\($0):11211" }
        let before = placement(HashRing(names: four))
        let after = placement(HashRing(names: four + ["10.0.0.9:11211"]))
        let moved = zip(before, after).filter { $0 != $1 }
        let share = Double(moved.count) / Double(keys.count)
        #expect(share > 0.12 && share < 0.28, "moved \(share)")
        #expect(moved.allSatisfy { $0.1 == 4 })  // only to the new node
    }

    @Test func aNodeOutMovesOnlyItsKeys() {
        let names = (0..<4).map { "10.0.0.\($0):11211" }
        let ring = HashRing(names: names)
        let before = placement(ring)
        let after = keys.map { ring.node(for: $0, isUp: { $0 != 2 })! }
        for (b, a) in zip(before, after) {
            if b == 2 { #expect(a != 2) } else { #expect(a == b) }
        }
        #expect(ring.node(for: "k", isUp: { _ in false }) == nil)
    }

    @Test func orderOfTheNodeListDoesNotMatter() {
        let a = HashRing(names: ["a:1", "b:1", "c:1"])
        let b = HashRing(names: ["c:1", "a:1", "b:1"])
        let names = ["a:1", "b:1", "c:1"]
        let names2 = ["c:1", "a:1", "b:1"]
        for k in keys.prefix(2000) { #expect(names[a.node(for: k)!] == names2[b.node(for: k)!]) }
    }
}

@Suite struct NodeHealthTests {
    @Test func opensAfterThresholdProbesAndRecovers() {
        var h = NodeHealth(failureThreshold: 3, retryInterval: 2)
        var out = h.recordFailure(now: 0)
        #expect(!out)
        h.recordSuccess()
        out = h.recordFailure(now: 1)
        #expect(!out)
        out = h.recordFailure(now: 1)
        #expect(!out)
        out = h.recordFailure(now: 1)
        #expect(out)  // third in a row: out
        #expect(!h.isUp)
        #expect(!h.probeDue(now: 2.9))
        #expect(h.probeDue(now: 3))
        _ = h.recordFailure(now: 3)  // probe failed: next one later
        #expect(!h.probeDue(now: 4))
        #expect(h.probeDue(now: 5))
        let rejoined = h.probeSucceeded()
        #expect(rejoined)
        #expect(h.isUp)
    }
}

/// Against real memcached servers started by `scripts/memcached`.
@Suite(.serialized) struct MemcachedLiveTests {
    func pool(_ servers: MemcachedServers, metrics: AppMetrics = AppMetrics(), retrySeconds: Double = 0.3) throws
        -> MemcachedCache
    {
        var options = MemcachedCache.Options()
        options.retrySeconds = retrySeconds
        options.failureThreshold = 2
        // The whole suite runs in parallel on two cores: do not mistake a busy machine for a dead node.
        options.timeout = .seconds(2)
        // A lease outlives any pause of a loaded machine between two steps of a test (beside
        // a CPU hog, 5 s expired between the first two reads of hitMissTTLAndLeases).
        options.leaseSeconds = 120
        return try MemcachedCache(nodes: servers.addresses, options: options, metrics: metrics, logger: Logger(label: "test"))
    }

    @Test func hitMissTTLAndLeases() async throws {
        try await MemcachedServers.with(count: 2) { servers in
            let cache = try pool(servers)
            // First miss wins the lease; a second reader sees someone else holds it.
            guard case .miss(let lease?) = try await cache.get("a") else { Issue.record("expected a lease"); return }
            #expect(try await cache.get("a") == .miss(nil))
            #expect(try await cache.set("a", Array("one".utf8), ttl: .seconds(60), lease: lease))
            #expect(try await cache.get("a") == .hit(Array("one".utf8)))

            // Unconditional set and TTL expiry. memcached's clock ticks in whole seconds, so a
            // TTL can end up to a second early: 10 s leaves a loaded machine room for the
            // read that must hit; waiting past it is always safe.
            #expect(try await cache.set("b", [1, 2, 3], ttl: .seconds(10), lease: nil))
            #expect(try await cache.get("b") == .hit([1, 2, 3]))
            try await Task.sleep(for: .milliseconds(11_100))
            guard case .miss = try await cache.get("b") else { Issue.record("expected expiry"); return }
        }
    }

    /// Servers started with a password (the cluster's) serve a client that logs in with it
    /// and refuse one that does not: it never reads or writes a thing.
    @Test func aServerWithAPasswordServesOnlyClientsThatHaveIt() async throws {
        try await MemcachedServers.with(count: 1, password: "correct-horse") { servers in
            var options = MemcachedCache.Options()
            options.timeout = .seconds(2)
            options.password = "correct-horse"
            let cache = try MemcachedCache(nodes: servers.addresses, options: options, metrics: AppMetrics(), logger: Logger(label: "test"))
            #expect(try await cache.set("k", [7], ttl: .seconds(60), lease: nil))
            #expect(try await cache.get("k") == .hit([7]))
            for wrong in [nil, "wrong"] {
                options.password = wrong
                let stranger = try MemcachedCache(nodes: servers.addresses, options: options, metrics: AppMetrics(), logger: Logger(label: "test"))
                await #expect(throws: (any Error).self) { _ = try await stranger.nodes[0].send(.get(key: "k", flags: ["v"])) }
            }
        }
    }

    @Test func aSlowReaderCannotReinstateAnInvalidatedValue() async throws {
        try await MemcachedServers.with(count: 2) { servers in
            let cache = try pool(servers)
            guard case .miss(let slow?) = try await cache.get("user:1") else { Issue.record("lease"); return }
            // The slow reader has read the old row; now a write commits and invalidates.
            try await cache.delete("user:1")
            #expect(!(try await cache.set("user:1", Array("old".utf8), ttl: .seconds(60), lease: slow)))
            // Same if another reader has re-vivified the key in between.
            guard case .miss(let fresh?) = try await cache.get("user:1") else { Issue.record("lease"); return }
            #expect(!(try await cache.set("user:1", Array("old".utf8), ttl: .seconds(60), lease: slow)))
            #expect(try await cache.set("user:1", Array("new".utf8), ttl: .seconds(60), lease: fresh))
            #expect(try await cache.get("user:1") == .hit(Array("new".utf8)))
        }
    }

    @Test func keysOfANodeThatIsOutGoToTheGutterWithAShortTTL() async throws {
        try await MemcachedServers.with(count: 3) { servers in
            var options = MemcachedCache.Options()
            options.failureThreshold = 1
            options.retrySeconds = 60
            options.fallbackTTLSeconds = 7
            let cache = try MemcachedCache(
                nodes: Array(servers.addresses.prefix(2)), gutter: [servers.addresses[2]], options: options,
                metrics: AppMetrics(), logger: Logger(label: "test"))
            let gutterOnly = try MemcachedCache(
                nodes: [servers.addresses[2]], metrics: AppMetrics(), logger: Logger(label: "test"))
            // A key whose home is node 0.
            let key = try #require((0..<1000).map { "user:\($0)" }.first { cache.homeNode(of: $0) === cache.nodes[0] })
            try servers.kill(0)
            // The first failure takes node 0 out (threshold 1); it is an error, not a hang.
            await #expect(throws: MemcachedError.self) { _ = try await cache.get(key) }
            #expect(!cache.nodes[0].isUp)
            guard case .miss(let lease?) = try await cache.get(key) else { Issue.record("lease from the gutter"); return }
            #expect(try await cache.set(key, Array("v".utf8), ttl: .seconds(300), lease: lease))
            #expect(try await cache.get(key) == .hit(Array("v".utf8)))
            // It is stored on the gutter node, with the TTL capped.
            #expect(try await gutterOnly.get(key) == .hit(Array("v".utf8)))
            let ttl = try await gutterOnly.nodes[0].send(.get(key: key, flags: ["t"]))
            #expect((Int(ttl.flags["t"] ?? "") ?? 999) <= 7)
        }
    }

    @Test func evictsUnderASmallMemoryLimit() async throws {
        try await MemcachedServers.with(count: 1, megabytes: 2) { servers in
            let cache = try pool(servers)
            let value = [UInt8](repeating: 7, count: 10_000)
            for i in 0..<1000 { try await cache.set("big:\(i)", value, ttl: .seconds(600), lease: nil) }
            let stats = try #require(await cache.stats()[servers.addresses[0]])
            #expect(Int(stats["evictions"] ?? "0")! > 0)
            guard case .miss = try await cache.get("big:0") else { Issue.record("oldest should be evicted"); return }
            #expect(try await cache.get("big:999") == .hit(value))
        }
    }

    @Test func pipelinesManyRequestsOnFewConnections() async throws {
        try await MemcachedServers.with(count: 1) { servers in
            let cache = try pool(servers)
            try await withThrowingTaskGroup(of: Void.self) { group in
                for i in 0..<500 {
                    group.addTask {
                        let stored = try await cache.set("p:\(i)", Array("\(i)".utf8), ttl: .seconds(60), lease: nil)
                        let found = try await cache.get("p:\(i)")
                        #expect(stored)
                        #expect(found == .hit(Array("\(i)".utf8)))
                    }
                }
                try await group.waitForAll()
            }
        }
    }
}

/// Two web servers sharing one SQLite file and one memcached pool.
@Suite(.serialized) struct MemcachedWebTierTests {
    static func settings(_ dir: String, _ servers: MemcachedServers, _ extra: [String: String] = [:]) throws -> Settings {
        var o = ["cache.backend": "memcached", "cache.memcached.nodes": servers.addresses.joined(separator: ",")]
        o.merge(extra) { _, new in new }
        return try TestApp.settings(dataDirectory: dir, o)
    }

    /// Runs `body` with two apps ("web servers") on the same data and cache.
    static func twoServers(
        _ servers: MemcachedServers, _ extra: [String: String] = [:], delay: Duration = .zero,
        _ body: @escaping @Sendable (any TestClientProtocol, any TestClientProtocol, CountingUserStore, CountingUserStore) async throws -> Void
    ) async throws {
        try await TestApp.withTemporaryDirectory { dir in
            let s = try settings(dir, servers, extra)
            let countA = Mutex<CountingUserStore?>(nil)
            let countB = Mutex<CountingUserStore?>(nil)
            let a = try await TestApp.components(s) { inner in
                let c = CountingUserStore(inner, delay: delay)
                countA.withLock { $0 = c }
                return c
            }
            let b = try await TestApp.components(s) { inner in
                let c = CountingUserStore(inner, delay: delay)
                countB.withLock { $0 = c }
                return c
            }
            let ca = countA.withLock { $0! }, cb = countB.withLock { $0! }
            try await buildApplication(a).test(.router) { clientA in
                try await buildApplication(b).test(.router) { clientB in
                    try await body(clientA, clientB, ca, cb)
                }
            }
        }
    }

    /// Memcached requests per node, from the metrics page.
    static func requestsByNode(_ metrics: AppMetrics) -> [String: Double] {
        var out: [String: Double] = [:]
        for line in String(decoding: metrics.exposition(), as: UTF8.self).split(separator: "\n")
        where line.hasPrefix("memcached_request_duration") && line.contains("_count{") {
            guard let node = line.firstMatch(of: /node="([^"]+)"/)?.1, let value = Double(line.split(separator: " ").last ?? "") else { continue }
            out[String(node), default: 0] += value
        }
        return out
    }

    /// The celebrity problem: one user takes 30% of the reads. Without near copies the
    /// memcached node that holds the user's key serves about twice its share; with them
    /// (`cache.nearTtlMs`) no node serves more than 1.5× the mean, the hot key is found
    /// (`cache_hot_key`), and the celebrity's reads cost the database nothing.
    @Test func aCelebritysReadsAreSpreadByNearCopies() async throws {
        try await MemcachedServers.with(count: 5) { servers in
            for near in [false, true] {
                try await TestApp.withTemporaryDirectory { dir in
                    let counting = Mutex<CountingUserStore?>(nil)
                    let s = try Self.settings(dir, servers, near ? ["cache.nearTtlMs": "60000"] : [:])
                    let c = try await TestApp.components(s) { inner in
                        let store = CountingUserStore(inner)
                        counting.withLock { $0 = store }
                        return store
                    }
                    let store = try #require(counting.withLock { $0 })
                    var made: [UserID] = []
                    for i in 0..<500 {
                        let account = NewAccount(
                            id: UserIDGenerator().next(), email: uniqueEmail("fan\(i)"), passwordHash: "x",
                            profile: Profile(firstName: "F", lastName: "L", address: Address(), phoneNumbers: []))
                        made.append(try await c.users.create(account).id)
                    }
                    let ids = made, celebrity = made[0]
                    try await buildApplication(c).test(.router) { client in
                        for i in 0..<3000 {
                            let id = i % 10 < 3 ? celebrity : ids[1 + (i * 7919) % (ids.count - 1)]
                            #expect(try await client.send(.get, "/users/\(id)").status == .ok)
                        }
                        let perNode = Self.requestsByNode(c.metrics)
                        let mean = perNode.values.reduce(0, +) / Double(servers.ports.count)
                        let ratio = (perNode.values.max() ?? 0) / mean
                        print("celebrity at 30% of reads, near copies \(near): busiest memcached node \(ratio)× the mean \(perNode)")
                        store.resetReads()
                        for _ in 0..<200 { _ = try await client.send(.get, "/users/\(celebrity)") }
                        #expect(store.reads == 0)  // from memcached or the near copy
                        if near {
                            #expect(ratio <= 1.5)
                            #expect(c.engines.userCache.map { $0.hot?.keys.top(1).first?.key } == "user:\(celebrity)")
                        } else {
                            #expect(ratio > 1.5)  // the problem, measured
                        }
                    }
                }
            }
        }
    }

    @Test func anUpdateOnOneServerIsSeenByTheNextReadOnEvery() async throws {
        try await MemcachedServers.with(count: 3) { servers in
            try await Self.twoServers(servers) { a, b, _, storeB in
                let (id, session) = try await signUpJohn(a)
                #expect(try await b.send(.get, "/users/\(id)").object["lastName"] as? String == "Smith")
                storeB.resetReads()
                #expect(try await b.send(.get, "/users/\(id)").status == .ok)
                #expect(storeB.reads == 0)  // served from memcached
                let patch = try await a.send(
                    .patch, "/users/\(id)", json: #"{"lastName":"Smythe"}"#, cookies: ["millions_session": session])
                #expect(patch.status == .ok)
                #expect(try await b.send(.get, "/users/\(id)").object["lastName"] as? String == "Smythe")
                #expect(try await a.send(.get, "/users/\(id)").object["lastName"] as? String == "Smythe")
                // Deletion is seen everywhere too.
                #expect(try await a.send(.delete, "/users/\(id)", cookies: ["millions_session": session]).status == .noContent)
                #expect(try await b.send(.get, "/users/\(id)").status == .notFound)
            }
        }
    }

    /// 2 servers × 25 concurrent readers of one cold key, database reads slowed to 300 ms
    /// (long enough that a loaded machine still starts every reader before the first read ends).
    static func stampede(_ servers: MemcachedServers, protection: Bool) async throws -> Int {
        let total = Mutex(0)
        try await twoServers(servers, [
            "cache.stampedeProtection": protection ? "true" : "false", "cache.leaseWaitMs": "5000",
            // A busy machine must not look like a dead cache: a timeout falls through to the database.
            "cache.memcached.timeoutMs": "3000",
        ], delay: .milliseconds(300)) {
            a, b, storeA, storeB in
            let (id, _) = try await signUpJohn(a)
            storeA.resetReads()
            storeB.resetReads()
            try await withThrowingTaskGroup(of: Void.self) { group in
                for i in 0..<50 {
                    let client = i % 2 == 0 ? a : b
                    group.addTask {
                        let r = try await client.send(.get, "/users/\(id)")
                        #expect(r.status == .ok)
                        #expect(r.object["firstName"] as? String == "John")
                    }
                }
                try await group.waitForAll()
            }
            total.withLock { $0 = storeA.reads + storeB.reads }
            if storeA.reads + storeB.reads != 1 && protection {
                for c in [a, b] {
                    print(try await c.send(.get, "/metrics").text.split(separator: "\n").filter { $0.hasPrefix("cache_") || $0.hasPrefix("memcached_sets") }.joined(separator: " | "))
                }
            }
        }
        return total.withLock { $0 }
    }

    @Test func aColdHotKeyCausesOneDatabaseReadAcrossServers() async throws {
        try await MemcachedServers.with(count: 3) { servers in
            let protected = try await Self.stampede(servers, protection: true)
            let unprotected = try await Self.stampede(servers, protection: false)
            print("stampede: 50 concurrent cold reads over 2 servers -> \(protected) database reads with protection, \(unprotected) without")
            #expect(protected == 1)
            #expect(unprotected > 10)
        }
    }

    @Test func killingANodeUnderLoadFailsNoRequestAndItRejoins() async throws {
        try await MemcachedServers.with(count: 3) { servers in
            try await TestApp.withTemporaryDirectory { dir in
                let s = try Self.settings(
                    dir, servers, ["cache.memcached.retrySeconds": "0.5", "cache.memcached.failureThreshold": "2"])
                let c = try await TestApp.components(s)
                let memcached = try #require(c.memcached)
                try await buildApplication(c).test(.router) { client in
                    var ids: [String] = []
                    for i in 0..<30 { ids.append(try await signUpJohn(client, email: "u\(i)@example.com").id) }
                    let failures = Counter()
                    let served = Counter()
                    let stop = Counter()
                    let userIDs = ids
                    try await withThrowingTaskGroup(of: Void.self) { group in
                        for w in 0..<8 {
                            group.addTask {
                                var i = w
                                while stop.value == 0 {
                                    let r = try await client.send(.get, "/users/\(userIDs[i % userIDs.count])")
                                    if r.status == .ok { served.add() } else { failures.add() }
                                    i += 1
                                }
                            }
                        }
                        try await Task.sleep(for: .milliseconds(500))
                        // The script blocks while it waits for the port to close: not on
                        // one of the few cooperative threads the load needs.
                        try await withCheckedThrowingContinuation { (done: CheckedContinuation<Void, any Error>) in
                            DispatchQueue.global().async {
                                do {
                                    try servers.kill(1)
                                    done.resume()
                                } catch { done.resume(throwing: error) }
                            }
                        }
                        // Load goes on until the node is out and 100 more reads were served
                        // (bounded), however slow a busy machine makes the requests.
                        let servedAtKill = served.value
                        for _ in 0..<600 where memcached.nodes[1].isUp || served.value - servedAtKill < 100 {
                            try await Task.sleep(for: .milliseconds(100))
                        }
                        stop.add()
                        try await group.waitForAll()
                        #expect(served.value - servedAtKill >= 100)
                    }
                    #expect(failures.value == 0)
                    #expect(!memcached.nodes[1].isUp)

                    // Back on its port, it is probed, flushed and put back in the ring.
                    try servers.restart(1)
                    var rejoined = false
                    for _ in 0..<600 where !rejoined {
                        try await Task.sleep(for: .milliseconds(100))
                        rejoined = memcached.nodes[1].isUp
                    }
                    #expect(rejoined)
                    for id in ids { #expect(try await client.send(.get, "/users/\(id)").status == .ok) }
                    let metrics = String(decoding: c.metrics.exposition(), as: UTF8.self)
                    #expect(metrics.contains("memcached_node_rejoins_total 1"))
                }
            }
        }
    }
}
