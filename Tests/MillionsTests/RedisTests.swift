import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import MillionsCore
import MillionsTesting
import NIOCore
import NIOEmbedded
import Observability
@testable import RedisClient
import SessionTier
import Testing
import Cluster
@testable import WebTier

@Suite struct RESPCodecTests {
    @Test func commandsOnTheWire() {
        var b = ByteBuffer()
        RedisCommand("SET", "k", "héllo", "EX", "10").encode(into: &b)
        #expect(String(buffer: b) == "*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$6\r\nhéllo\r\n$2\r\nEX\r\n$2\r\n10\r\n")
        b.clear()
        RedisCommand("PING").encode(into: &b)
        #expect(String(buffer: b) == "*1\r\n$4\r\nPING\r\n")
        b.clear()
        RedisCommand("SET", arguments: [ByteBuffer(), ByteBuffer(bytes: [0, 13, 10])]).encode(into: &b)
        #expect(Array(b.readableBytesView) == Array("*3\r\n$3\r\nSET\r\n$0\r\n\r\n$3\r\n".utf8) + [0, 13, 10] + [13, 10])
        #expect(RedisCommand("get", "k").isReadOnly)
        #expect(!RedisCommand("SET", "k", "v").isReadOnly)
    }

    /// RESP2 and RESP3 values, one after another in one stream.
    static let stream =
        "+OK\r\n" + "-ERR wrong\r\n" + ":-42\r\n" + "$5\r\nhello\r\n" + "$0\r\n\r\n" + "$-1\r\n" + "*-1\r\n"
        + "*2\r\n$1\r\na\r\n:1\r\n" + "_\r\n" + ",3.5\r\n" + ",-inf\r\n" + "#t\r\n" + "#f\r\n"
        + "(3492890328409238509324850943850943825024385\r\n" + "=15\r\ntxt:Some string\r\n"
        + "%2\r\n+first\r\n:1\r\n+second\r\n:2\r\n" + "~2\r\n+a\r\n+b\r\n" + ">2\r\n+message\r\n+hi\r\n"
        + "|1\r\n+ttl\r\n:3600\r\n+annotated\r\n" + "!21\r\nSYNTAX invalid syntax\r\n" + "*1\r\n*1\r\n*0\r\n"

    static let expected: [RESPValue] = [
        .simpleString("OK"), .error("ERR wrong"), .integer(-42), "hello", "", .null, .null,
        .array(["a", .integer(1)]), .null, .double(3.5), .double(-.infinity), .boolean(true), .boolean(false),
        .bigNumber("3492890328409238509324850943850943825024385"), .verbatim(format: "txt", text: "Some string"),
        .map([.init(.simpleString("first"), .integer(1)), .init(.simpleString("second"), .integer(2))]),
        .set([.simpleString("a"), .simpleString("b")]), .push([.simpleString("message"), .simpleString("hi")]),
        .simpleString("annotated"), .error("SYNTAX invalid syntax"), .array([.array([.array([])])]),
    ]

    @Test func decodesEveryTypeWhole() throws {
        var b = ByteBuffer(string: Self.stream)
        var values: [RESPValue] = []
        while let v = try RESPParser.parse(&b) { values.append(v) }
        #expect(values == Self.expected)
        #expect(b.readableBytes == 0)
    }

    /// Fed one byte at a time, the decoder waits for whole values and consumes nothing early.
    @Test func decodesEveryTypeByteByByte() throws {
        var b = ByteBuffer()
        var values: [RESPValue] = []
        for byte in Self.stream.utf8 {
            b.writeInteger(byte)
            while let v = try RESPParser.parse(&b) { values.append(v) }
        }
        #expect(values == Self.expected)
        #expect(b.readableBytes == 0)
    }

    @Test func refusesBrokenAndOversizedInput() {
        var small = RESPLimits()
        small.maxBulkBytes = 10
        small.maxElements = 3
        small.maxDepth = 3
        small.maxLineBytes = 16
        for bad in [
            "?what\r\n", ":12x\r\n", "$5\r\nhelloXX", "+no lf\rx", "#x\r\n", ",abc\r\n", "$11\r\n", "*4\r\n",
            "*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n", "+" + String(repeating: "a", count: 40), "=5\r\nhello\r\n", "$-2\r\n",
            // A map's or attribute's count times two overflowed and trapped.
            "%4611686018427387904\r\n", "|4611686018427387904\r\n", "%9223372036854775807\r\n", "*9223372036854775807\r\n",
            // A run of attributes is nesting too.
            String(repeating: "|1\r\n+k\r\n+v\r\n", count: 5) + "+x\r\n",
        ] {
            var b = ByteBuffer(string: bad)
            #expect(throws: RedisError.self, "\(bad)") { _ = try RESPParser.parse(&b, limits: small) }
        }
        // The same counts under the default limits.
        for bad in ["%4611686018427387904\r\n", "|4611686018427387904\r\n", String(repeating: "|1\r\n+k\r\n+v\r\n", count: 100_000)] {
            var b = ByteBuffer(string: bad)
            #expect(throws: RedisError.self) { _ = try RESPParser.parse(&b) }
        }
    }

    /// A reply still arriving may not grow past its bound (a server that never ends one).
    @Test func boundsAReplyWhileItArrives() throws {
        var limits = RESPLimits()
        limits.maxReplyBytes = 64
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(RESPValueDecoder(limits: limits)))
        try channel.writeInbound(ByteBuffer(string: "*3\r\n+short\r\n"))
        #expect(try channel.readInbound(as: RESPValue.self) == nil)
        #expect(throws: RedisError.self) { try channel.writeInbound(ByteBuffer(string: "+" + String(repeating: "a", count: 80))) }
        _ = try? channel.finish()
    }

    @Test func readsMapsFromBothProtocols() {
        let resp3: RESPValue = .map([.init("proto", .integer(3)), .init("role", "master")])
        let resp2: RESPValue = .array(["proto", .integer(2), "role", "master"])
        #expect(resp3["proto"]?.int == 3)
        #expect(resp2["proto"]?.int == 2)
        #expect(resp2["role"]?.string == "master")
        #expect(resp2["missing"] == nil)
    }
}

/// The client against a real Redis server.
@Suite struct RedisClientTests {
    static let logger = Logger(label: "test.redis") { _ in SwiftLogNoOpLogHandler() }

    func client(_ server: RedisServer, protocolVersion: Int = 3, password: String? = nil, timeoutMS: Int64 = 10_000)
        throws -> RedisClient
    {
        var config = try RedisClient.Configuration.forTests(server)
        config.protocolVersion = protocolVersion
        config.password = password
        config.connections = 2
        config.timeout = .milliseconds(timeoutMS)
        return RedisClient(configuration: config, metrics: AppMetrics(), logger: Self.logger)
    }

    @Test(arguments: [2, 3]) func commandsAndPipelining(protocolVersion: Int) async throws {
        try await RedisServer.with { server in
            let redis = try client(server, protocolVersion: protocolVersion)
            defer { redis.close() }
            #expect(try await redis.negotiatedProtocol() == protocolVersion)
            try await redis.ping()
            try await redis.set("k", ByteBuffer(string: "v1"), expireSeconds: 100)
            #expect(try await redis.get("k") == ByteBuffer(string: "v1"))
            #expect(try await redis.get("missing") == nil)
            let ttl = try await redis.send(RedisCommand("TTL", "k")).int
            #expect(ttl != nil && ttl! > 90 && ttl! <= 100)
            // HGETALL is a map in RESP3 and a flat array in RESP2; both read the same.
            try await redis.send(RedisCommand("HSET", "h", "a", "1", "b", "2"))
            let all = try await redis.send(RedisCommand("HGETALL", "h"))
            #expect(all["a"]?.string == "1" && all["b"]?.string == "2")
            if protocolVersion == 3 { if case .map = all {} else { Issue.record("RESP3 HGETALL should be a map: \(all)") } }
            // 1,000 commands in one write come back in order.
            let replies = try await redis.pipeline((0..<1000).map { _ in RedisCommand("INCR", "counter") })
            #expect(replies.map(\.int) == (1...1000).map { Int64($0) })
            // An error reply is a value in a pipeline and a thrown server error alone; the
            // connection stays usable.
            let mixed = try await redis.pipeline([RedisCommand("INCR", "h"), RedisCommand("GET", "k")])
            if case .error(let message) = mixed[0] { #expect(message.hasPrefix("WRONGTYPE")) } else { Issue.record("\(mixed)") }
            #expect(mixed[1].string == "v1")
            await #expect(throws: RedisError(.server, "ERR unknown command 'NOPE', with args beginning with: ")) {
                try await redis.send(RedisCommand("NOPE"))
            }
            #expect(try await redis.delete(["k", "h", "counter"]) == 3)
        }
    }

    /// 64 concurrent callers over 2 connections: every caller gets its own reply.
    @Test func concurrentCallersGetTheirOwnReplies() async throws {
        try await RedisServer.with { server in
            let redis = try client(server)
            defer { redis.close() }
            try await withThrowingTaskGroup(of: Void.self) { group in
                for i in 0..<64 {
                    group.addTask {
                        for j in 0..<20 {
                            try await redis.set("k\(i)", ByteBuffer(string: "\(i)-\(j)"))
                            #expect(try await redis.get("k\(i)") == ByteBuffer(string: "\(i)-\(j)"))
                        }
                    }
                }
                try await group.waitForAll()
            }
        }
    }

    @Test(arguments: [2, 3]) func authenticates(protocolVersion: Int) async throws {
        try await RedisServer.with(password: "s3cret") { server in
            let good = try client(server, protocolVersion: protocolVersion, password: "s3cret")
            defer { good.close() }
            try await good.ping()
            let wrong = try client(server, protocolVersion: protocolVersion, password: "nope")
            defer { wrong.close() }
            await #expect { try await wrong.ping() } throws: { ($0 as? RedisError)?.code == .authentication }
            let none = try client(server, protocolVersion: protocolVersion)
            defer { none.close() }
            await #expect { try await none.ping() } throws: { ($0 as? RedisError)?.code == .authentication }
        }
    }

    /// A reply slower than the timeout fails the call and closes that connection; the next
    /// call works on a fresh one.
    @Test func timesOutAndRecovers() async throws {
        try await RedisServer.with { server in
            // Wide margins (a loaded CI machine can take a few hundred ms to connect): the
            // reply comes 5 s late against a 1.5 s timeout.
            let redis = try client(server, timeoutMS: 1500)
            defer { redis.close() }
            try await redis.ping()
            await #expect(throws: RedisError(.timeout, "no reply in time")) {
                try await redis.send(RedisCommand("BLPOP", "empty-list", "5"))
            }
            for _ in 0..<4 { try await redis.ping() }
        }
    }

    /// The server dies and comes back on the same port: calls fail while it is down, then
    /// work again without a new client.
    @Test func reconnectsAfterTheServerRestarts() async throws {
        try await RedisServer.with { server in
            let redis = try client(server)
            defer { redis.close() }
            try await redis.set("before", ByteBuffer(string: "1"))
            try server.kill()
            await #expect(throws: RedisError.self) { try await redis.ping() }
            try server.restart()
            for _ in 0..<4 { try await redis.ping() }
            // appendonly: the write made before the crash survived it.
            #expect(try await redis.get("before") == ByteBuffer(string: "1"))
        }
    }
}

/// Redis under Sentinel: the client asks the sentinels for the master and follows a
/// failover by itself; what asynchronous replication acknowledges, and what WAIT changes.
@Suite(.serialized) struct RedisSentinelTests {
    func client(_ group: RedisSentinelGroup, waitReplicas: Int = 0) throws -> RedisClient {
        var config = RedisClient.Configuration(host: "127.0.0.1", port: group.base)
        config.sentinels = group.sentinels
        config.password = group.password
        config.timeout = .seconds(2)
        config.connectTimeout = .seconds(2)
        config.waitReplicas = waitReplicas
        config.waitTimeout = .milliseconds(500)
        return RedisClient(configuration: config, metrics: AppMetrics(), logger: RedisClientTests.logger)
    }

    /// The master dies: calls fail until the sentinels promote a replica, then work again on
    /// the same client, and a write that WAIT saw on a replica survived.
    @Test func theClientFollowsTheMasterTheSentinelsName() async throws {
        try await RedisSentinelGroup.with { group in
            let metrics = AppMetrics()
            var config = RedisClient.Configuration(host: "127.0.0.1", port: group.base)
            config.sentinels = group.sentinels
            config.password = group.password
            config.timeout = .seconds(2)
            config.waitReplicas = 1
            config.waitTimeout = .seconds(1)
            let redis = RedisClient(configuration: config, metrics: metrics, logger: RedisClientTests.logger)
            defer { redis.close() }
            try await redis.send(RedisCommand("SET", "kept", "1"), durable: true)
            #expect(try group.master() == group.base)
            // Servers and sentinels alike refuse a client without the password.
            var anonymous = config
            anonymous.password = nil
            let stranger = RedisClient(configuration: anonymous, metrics: AppMetrics(), logger: RedisClientTests.logger)
            defer { stranger.close() }
            await #expect(throws: RedisError.self) { try await stranger.send(RedisCommand("GET", "kept")) }
            var direct = anonymous
            direct.sentinels = []
            let strangerAtMaster = RedisClient(configuration: direct, metrics: AppMetrics(), logger: RedisClientTests.logger)
            defer { strangerAtMaster.close() }
            await #expect(throws: RedisError.self) { try await strangerAtMaster.send(RedisCommand("GET", "kept")) }
            try group.kill(group.base)
            var after: Int? = nil
            for _ in 0..<300 where after == nil {
                do {
                    try await redis.send(RedisCommand("SET", "after", "2"), durable: true)
                    after = try group.master()
                } catch {
                    try await Task.sleep(for: .milliseconds(100))
                }
            }
            let promoted = try #require(after)
            #expect(promoted != group.base && group.serverPorts.contains(promoted))
            #expect(try await redis.get("kept") == ByteBuffer(string: "1"))
            #expect(try await redis.get("after") == ByteBuffer(string: "2"))
            let text = String(decoding: metrics.exposition(), as: UTF8.self)
            let line = try #require(text.split(separator: "\n").first { $0.hasPrefix(#"redis_master_lookups_total{node="master:millions"}"#) })
            #expect(Double(line.split(separator: " ").last ?? "") ?? 0 >= 2, "looked the master up at start and after the failover")
        }
    }

    /// With both replicas frozen, a plain write is acknowledged though only the master has
    /// it (the next failover would lose it); a durable write (WAIT 1) is refused instead.
    @Test func anAcknowledgementMeansOnTheMasterUnlessWaitSaysMore() async throws {
        try await RedisSentinelGroup.with { group in
            let plain = try client(group)
            let waiting = try client(group, waitReplicas: 1)
            defer {
                plain.close()
                waiting.close()
            }
            try await waiting.send(RedisCommand("SET", "both", "1"), durable: true)  // the replicas are there
            let replicas = try [group.pid(group.base + 1), group.pid(group.base + 2)]
            for p in replicas { Processes.signal(p, SIGSTOP) }
            defer { for p in replicas { Processes.signal(p, SIGCONT) } }
            try await plain.set("master-only", ByteBuffer(string: "1"))
            await #expect(throws: RedisError.self) { try await waiting.send(RedisCommand("SET", "refused", "1"), durable: true) }
            // A write not marked durable does not wait, even on the waiting client.
            try await waiting.send(RedisCommand("SET", "not-durable", "1"))
            // The master has both writes; no replica confirmed either.
            let offsets = try await plain.send(RedisCommand("INFO", "replication")).string ?? ""
            #expect(offsets.contains("connected_slaves:2"))
            #expect(try await plain.get("master-only") == ByteBuffer(string: "1"))
        }
    }
}

@Suite struct RedisSessionStoreTests {
    /// A store on a Redis server of its own, and the client, to look at the keys.
    static func withStore(_ body: (RedisClient, RedisSessionStore) async throws -> Void) async throws {
        try await RedisServer.with { server in
            let redis = RedisClient(
                configuration: try .forTests(server), metrics: AppMetrics(), logger: RedisClientTests.logger)
            defer { redis.close() }
            try await body(redis, RedisSessionStore(redis: redis))
        }
    }

    @Test func lifecycleAndLogOutEverywhere() async throws {
        try await Self.withStore { redis, store in
            let user = try #require(UserID(rawValue: 77))
            let s = try await store.create(userID: user, ttl: 100)
            #expect(Session.isWellFormed(s.id))
            let found = try #require(try await store.session(id: s.id, ttl: 100))
            #expect(found.userID == user && found.csrfToken == s.csrfToken)
            // Only the hash of the id is stored: the token itself is not a key.
            let keys = try await redis.send(RedisCommand("KEYS", "*")).elements?.compactMap(\.string) ?? []
            #expect(!keys.contains { $0.contains(s.id) })
            #expect(keys.contains("millions:session:" + SHA256.hex(s.id)))
            let a = try await store.create(userID: user, ttl: 100)
            let other = try await store.create(userID: try #require(UserID(rawValue: 78)), ttl: 100)
            try await store.delete(id: s.id)
            #expect(try await store.session(id: s.id, ttl: 100) == nil)
            #expect(try await store.session(id: a.id, ttl: 100) != nil)
            try await store.deleteAll(userID: user)
            #expect(try await store.session(id: a.id, ttl: 100) == nil)
            #expect(try await store.session(id: other.id, ttl: 100) != nil)
            #expect(try await store.session(id: "not-a-session", ttl: 100) == nil)
            try await store.ping()
        }
    }

    /// Sessions expire in Redis after `ttl` without use, and every use pushes expiry back.
    @Test func expiresInRedisAndSlidesOnUse() async throws {
        try await Self.withStore { redis, store in
            let user = try #require(UserID(rawValue: 5))
            // No race with the clock: waiting longer than a ttl is always safe, and the slide
            // is seen in Redis's own countdown, not in how fast this machine runs.
            let idle = try await store.create(userID: user, ttl: 1)
            let used = try await store.create(userID: user, ttl: 100)
            let usedKey = "millions:session:" + SHA256.hex(used.id)
            #expect(try await redis.send(RedisCommand("PEXPIRE", usedKey, "20000")).int == 1)
            #expect(try await store.session(id: used.id, ttl: 100) != nil)
            #expect(try await redis.send(RedisCommand("PTTL", usedKey)).int ?? 0 > 50_000)  // use gave it the ttl back
            try await Task.sleep(for: .milliseconds(1500))
            #expect(try await redis.send(RedisCommand("EXISTS", "millions:session:" + SHA256.hex(idle.id))).int == 0)
            #expect(try await store.session(id: idle.id, ttl: 1) == nil)
            #expect(try await store.session(id: used.id, ttl: 100) != nil)
        }
    }

    /// A session kept alive by use keeps its user's set alive too: "delete all sessions"
    /// (account deletion) still finds it after the set's first expiry would have passed.
    @Test func aUsedSessionKeepsItsUsersSetAlive() async throws {
        try await Self.withStore { redis, store in
            let user = try #require(UserID(rawValue: 9))
            let s = try await store.create(userID: user, ttl: 60)
            let set = "millions:user-sessions:9"
            #expect(try await redis.send(RedisCommand("TTL", set)).int ?? 0 <= 60)
            #expect(try await store.session(id: s.id, ttl: 1000) != nil)
            #expect(try await redis.send(RedisCommand("TTL", set)).int ?? 0 > 900, "the set's expiry moved with the session's")
            #expect(try await store.session(id: s.id, ttl: 10) != nil)
            #expect(try await redis.send(RedisCommand("TTL", set)).int ?? 0 > 900, "and never forward")
            try await store.deleteAll(userID: user)
            #expect(try await store.session(id: s.id, ttl: 1000) == nil)
        }
    }
}

/// Two web servers (two object graphs on one database) with sessions in Redis: a session
/// made on one works on the other, and log-out on the other ends it everywhere.
@Suite struct RedisSessionsThroughTheWebTier {
    @Test func aSessionFromOneServerWorksOnAnother() async throws {
        try await RedisServer.with { server in
            try await TestApp.withTemporaryDirectory { dir in
                let overrides = ["session.store": "redis", "redis.address": server.address]
                let a = try await TestApp.components(try TestApp.settings(dataDirectory: dir, overrides))
                let b = try await TestApp.components(try TestApp.settings(dataDirectory: dir, overrides))
                try await buildApplication(a).test(.router) { clientA in
                    try await buildApplication(b).test(.router) { clientB in
                        let (id, session) = try await signUpJohn(clientA)
                        let me = try await clientB.send(.get, "/me", cookies: ["millions_session": session])
                        #expect(me.status == .ok)
                        #expect((me.object["id"] as? Int).map(String.init) == id)
                        #expect(try await clientB.send(.delete, "/sessions/current", cookies: ["millions_session": session]).status == .noContent)
                        #expect(try await clientA.send(.get, "/me", cookies: ["millions_session": session]).status == .unauthorized)
                        #expect(try await clientA.send(.get, "/readyz").status == .ok)
                    }
                }
            }
        }
    }
}

@Suite struct ForwardedHeadersTests {
    @Test func onlyTrustedPeersAreBelieved() {
        let trusted: Set<String> = ["127.0.0.1", "10.0.0.2"]
        #expect(Forwarded.resolve(peer: "127.0.0.1", forwardedFor: ["203.0.113.9"], forwardedProto: "https", trusted: trusted) == ("203.0.113.9", true))
        // A client-supplied first hop is skipped: the rightmost untrusted address counts.
        #expect(Forwarded.resolve(peer: "127.0.0.1", forwardedFor: ["6.6.6.6, 203.0.113.9", "10.0.0.2"], forwardedProto: nil, trusted: trusted) == ("203.0.113.9", false))
        // From an untrusted peer the headers mean nothing.
        #expect(Forwarded.resolve(peer: "198.51.100.1", forwardedFor: ["1.2.3.4"], forwardedProto: "https", trusted: trusted) == ("198.51.100.1", false))
        #expect(Forwarded.resolve(peer: "127.0.0.1", forwardedFor: [], forwardedProto: "HTTP", trusted: trusted) == ("127.0.0.1", false))
    }

    /// Over a real socket from 127.0.0.1 (a trusted proxy by default): `X-Forwarded-Proto:
    /// https` makes the session cookie Secure; without it the cookie is not.
    @Test func httpsBehindTheBalancerMakesCookiesSecure() async throws {
        try await TestApp.withTemporaryDirectory { dir in
            let c = try await TestApp.components(try TestApp.settings(dataDirectory: dir))
            try await buildApplication(c).test(.live) { client in
                var headers = HTTPFields()
                headers[HTTPField.Name("X-Forwarded-Proto")!] = "https"
                headers[HTTPField.Name("X-Forwarded-For")!] = "203.0.113.9"
                let secure = try await client.send(.post, "/users", json: john, headers: headers)
                #expect(secure.status == .created)
                #expect(!secure.headers[values: .setCookie].isEmpty)
                #expect(secure.headers[values: .setCookie].allSatisfy { $0.hasSuffix("; Secure") || $0.contains("; Secure;") })
                let plain = try await client.send(.post, "/users", json: john.replacingOccurrences(of: "john@", with: "jim@"))
                #expect(plain.status == .created)
                #expect(!plain.headers[values: .setCookie].contains { $0.contains("Secure") })
            }
        }
    }
}

extension RedisClient.Configuration {
    /// A loaded machine (the whole suite in parallel, or a CPU hog beside it) is not a dead
    /// server: wide timeouts, except in the tests that are about timeouts.
    static func forTests(_ server: RedisServer) throws -> Self {
        var config = try Self(address: server.address)
        config.timeout = .seconds(10)
        config.connectTimeout = .seconds(10)
        return config
    }
}
