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
import NIOPosix
import Observability
import Testing
@testable import WebTier

/// `GET /users/{id}` with no cache tier, read from PostgreSQL on the connection's event loop
/// (`LoopReads`): the route's answer, in order on a connection, honouring read-your-writes,
/// and handed to the route whenever it cannot answer.
@Suite struct LoopReadsTests {
    /// A live server on `topology` (the early path exists only on real connections).
    static func live(
        _ topology: PostgresTopology, _ overrides: [String: String] = [:],
        _ body: @escaping @Sendable (any TestClientProtocol, Int, Components) async throws -> Void
    ) async throws {
        try await TestApp.withTemporaryDirectory { dir in
            let settings = try TestApp.postgresSettings(
                dataDirectory: dir, topology,
                ["cache.backend": "none", "data.postgres.maxLagSeconds": "3600"].merging(overrides) { _, new in new })
            let components = try await TestApp.components(settings)
            let set = try #require(components.replicaSet)
            try await buildApplication(components).test(.live) { client in
                try await set.waitUntilDiscovered()
                try await PostgresEngine.migrate(set)
                try await body(client, try #require(client.port), components)
            }
        }
    }

    static func metric(_ metrics: AppMetrics, _ series: String) -> Int {
        let text = String(decoding: metrics.exposition(), as: UTF8.self)
        return text.split(separator: "\n").first { $0.hasPrefix(series + " ") }.flatMap { Int($0.split(separator: " ")[1]) } ?? 0
    }

    static func answered(_ c: Components) -> Int { metric(c.metrics, #"db_loop_reads_total{outcome="answered"}"#) }

    @Test func anUncachedReadIsAnsweredOnTheLoopWithTheRoutesAnswer() async throws {
        try await Self.live(try PostgresTopology.shared()) { client, port, components in
            let (id, _) = try await signUpJohn(client, email: uniqueEmail("loop"))
            try await waitUntilReplicasReplay(components.replicaSet!, try await components.replicaSet!.primaryPosition())
            let before = Self.answered(components)
            let c = try await RawConnection.open(port: port)
            let early = CachedReadPathTests.parse(
                try await c.request("GET /users/\(id) HTTP/1.1\r\nHost: x\r\nX-Request-ID: loop-1\r\n\r\n"))
            #expect(Self.answered(components) == before + 1)
            try await c.close()
            // `Connection: close` always takes the route: the same answer but for that header.
            let viaRoute = CachedReadPathTests.parse(
                try await RawConnection.exchange(
                    port: port, send: "GET /users/\(id) HTTP/1.1\r\nHost: x\r\nX-Request-ID: loop-2\r\nConnection: close\r\n\r\n"))
            #expect(Self.answered(components) == before + 1)
            #expect(early.status == "HTTP/1.1 200 OK" && viaRoute.status == early.status)
            #expect(early.body == viaRoute.body && early.body.contains(#""firstName":"John""#))
            #expect(Set(early.headers.keys) == Set(viaRoute.headers.keys).subtracting(["connection"]))
            for name in ["content-type", "cache-control", "content-length", "x-content-type-options", "server"] {
                #expect(early.headers[name] == viaRoute.headers[name], "\(name)")
            }
            #expect(early.headers["x-request-id"] == "loop-1")
            // Counted as the routed read is: a database read by a replica, and the route's request.
            #expect(Self.metric(components.metrics, #"user_store_calls_total{op="read"}"#) >= 2)
            #expect(
                Self.metric(components.metrics, #"http_server_requests_total{method="GET",route="/users/{id}",status="200"}"#) == 2)
        }
    }

    /// Requests behind a pending read wait for it; one the read cannot answer (no such
    /// user) goes to the route, which answers 404, still in order.
    @Test func pipelinedRequestsKeepTheirOrderBehindAPendingRead() async throws {
        try await Self.live(try PostgresTopology.shared()) { client, port, components in
            let (id, _) = try await signUpJohn(client, email: uniqueEmail("loop"))
            try await waitUntilReplicasReplay(components.replicaSet!, try await components.replicaSet!.primaryPosition())
            let requests = [
                "GET /users/\(id) HTTP/1.1\r\nHost: x\r\nX-Request-ID: r1\r\n\r\n",
                "GET /users/1 HTTP/1.1\r\nHost: x\r\nX-Request-ID: r2\r\n\r\n",
                "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Request-ID: r3\r\n\r\n",
                "GET /users/\(id) HTTP/1.1\r\nHost: x\r\nX-Request-ID: r4\r\n\r\n",
                "GET /users/\(id) HTTP/1.1\r\nHost: x\r\nX-Request-ID: r5\r\nConnection: close\r\n\r\n",
            ]
            let before = Self.answered(components)
            let answer = try await RawConnection.exchange(port: port, send: requests.joined())
            let ids = answer.components(separatedBy: "\r\n").filter { $0.lowercased().hasPrefix("x-request-id:") }
                .map { $0.split(separator: ":")[1].trimmingCharacters(in: .whitespaces) }
            #expect(ids == ["r1", "r2", "r3", "r4", "r5"], "\(answer)")
            // Answers follow each other with no separator after a body: find each status line.
            let statuses = answer.components(separatedBy: "HTTP/1.1 ").dropFirst().map { $0.prefix(3) }
            #expect(statuses == ["200", "404", "200", "200", "200"], "\(answer)")
            #expect(answer.components(separatedBy: #""firstName":"John""#).count == 4)
            // r1 and r2 were read on the loop (r2 found nothing: the route answered it); the
            // others arrived while the route owed r2 its answer, so they took the route too.
            #expect(Self.answered(components) == before + 2)
        }
    }

    /// A client that sends its request and then closes its side (half-close) still gets the
    /// answer: its close waits behind the pending read instead of ending the connection.
    @Test func aRequestFollowedByAHalfCloseIsAnswered() async throws {
        try await Self.live(try PostgresTopology.shared()) { client, port, components in
            let (id, _) = try await signUpJohn(client, email: uniqueEmail("loophalf"))
            try await waitUntilReplicasReplay(components.replicaSet!, try await components.replicaSet!.primaryPosition())
            for round in 0..<5 {
                let before = Self.answered(components)
                let c = try await RawConnection.open(port: port)
                try await c.send("GET /users/\(id) HTTP/1.1\r\nHost: x\r\nX-Request-ID: half-\(round)\r\n\r\n")
                try await c.channel.close(mode: .output)
                let answer = try await c.wait()  // until the server closes its side too
                try await c.close()
                #expect(answer.hasPrefix("HTTP/1.1 200") && answer.contains(#""firstName":"John""#), "round \(round): \(answer)")
                #expect(Self.answered(components) == before + 1)
            }
        }
    }

    /// A client that wrote reads its write while every replica is frozen behind it (the
    /// primary serves it); another client is served by a replica, stale as allowed.
    @Test func aClientThatWroteReadsItsWriteWhileReplicasLag() async throws {
        try await PostgresTopology.withLagging { t in
            try await Self.live(t) { client, port, components in
                let (id, session) = try await signUpJohn(client, email: uniqueEmail("loopryw"))
                try await waitUntilReplicasReplay(components.replicaSet!, try await components.replicaSet!.primaryPosition())
                try t.pauseReplicas()
                defer { t.resumeReplicas() }
                let patch = try await client.send(
                    .patch, "/users/\(id)", json: #"{"lastName":"Written"}"#, cookies: ["millions_session": session])
                #expect(patch.status == .ok)
                let lsn = try #require(patch.cookie("millions_lsn"))
                let before = Self.answered(components)
                let fallbacks = Self.metric(components.metrics, #"db_read_routing_total{decision="read_your_writes_fallback"}"#)
                let c = try await RawConnection.open(port: port)
                let mine = try await c.request("GET /users/\(id) HTTP/1.1\r\nHost: x\r\nCookie: millions_lsn=\(lsn)\r\n\r\n")
                #expect(mine.contains(#""lastName":"Written""#), "\(mine)")
                let other = try await c.request("GET /users/\(id) HTTP/1.1\r\nHost: x\r\n\r\n")
                #expect(other.contains(#""lastName":"Smith""#), "\(other)")
                try await c.close()
                #expect(Self.answered(components) == before + 2)
                #expect(
                    Self.metric(components.metrics, #"db_read_routing_total{decision="read_your_writes_fallback"}"#) == fallbacks + 1)
            }
        }
    }

    /// A replica killed under reads costs no failed request: the loop's reads on it fail and
    /// go to the route, which reads elsewhere; discovery then takes the replica out.
    @Test func aKilledReplicaFailsNoRead() async throws {
        try await PostgresTopology.withFresh { t in
            try await Self.live(t) { client, port, components in
                var ids: [String] = []
                for i in 0..<10 { ids.append(try await signUpJohn(client, email: uniqueEmail("loopkill\(i)")).id) }
                try await waitUntilReplicasReplay(components.replicaSet!, try await components.replicaSet!.primaryPosition())
                let c = try await RawConnection.open(port: port)
                var failed: [String] = []
                for n in 0..<150 {
                    if n == 50 { try t.kill("r1") }
                    let answer = try await c.request("GET /users/\(ids[n % ids.count]) HTTP/1.1\r\nHost: x\r\n\r\n")
                    if !answer.hasPrefix("HTTP/1.1 200") { failed.append(String(answer.prefix(200))) }
                }
                try await c.close()
                #expect(failed.isEmpty, "\(failed)")
                #expect(Self.answered(components) > 0)
            }
        }
    }

    /// Reads that arrive in one turn of the loop go as one query per node, and each gets its
    /// own answer: present, missing and repeated ids alike.
    @Test func readsThatArriveTogetherShareAQuery() async throws {
        try await Self.live(try PostgresTopology.shared()) { client, port, components in
            var ids: [Int64] = []
            for i in 0..<5 { ids.append(Int64(try await signUpJohn(client, email: uniqueEmail("batch\(i)")).id)!) }
            try await waitUntilReplicasReplay(components.replicaSet!, try await components.replicaSet!.primaryPosition())
            let reads = try #require(components.loopReads)
            // Spread alternates between the two replicas: each repeat is an even number of
            // places from its first, so both go to the same node, in the same query.
            let wanted = ids + [ids[1], 1, ids[3]]
            let queries = Self.metric(components.metrics, "db_loop_read_queries_total")
            let loop = MultiThreadedEventLoopGroup.singleton.next()
            let futures = try await loop.submit {
                wanted.map { reads.user(id: UserID(rawValue: $0)!, position: 0, on: loop) }
            }.get()
            var found: [Int64?] = []
            for future in futures { found.append(try await #require(future).get()?.id.rawValue) }
            #expect(found == ids + [ids[1], nil, ids[3]])
            // Spread over the two replicas: one query for each at most.
            let sent = Self.metric(components.metrics, "db_loop_read_queries_total") - queries
            #expect(sent >= 1 && sent <= 2, "\(sent) queries for \(wanted.count) reads")
        }
    }

    /// A burst beyond the queue (256 reads per node and loop) is declined past that (the
    /// route takes those), and everything queued is answered, in batches.
    @Test func aBurstBeyondTheQueueIsDeclinedAndTheRestAnswered() async throws {
        try await Self.live(try PostgresTopology.shared()) { client, port, components in
            let id = Int64(try await signUpJohn(client, email: uniqueEmail("burst")).id)!
            try await waitUntilReplicasReplay(components.replicaSet!, try await components.replicaSet!.primaryPosition())
            let reads = try #require(components.loopReads)
            let queries = Self.metric(components.metrics, "db_loop_read_queries_total")
            let loop = MultiThreadedEventLoopGroup.singleton.next()
            // Two replicas: 300 reads for each, 256 of them queued.
            let futures = try await loop.submit {
                (0..<600).map { _ in reads.user(id: UserID(rawValue: id)!, position: 0, on: loop) }
            }.get()
            let queued = futures.compactMap { $0 }
            #expect(queued.count == 512)
            for future in queued { #expect(try await future.get()?.id.rawValue == id) }
            let sent = Self.metric(components.metrics, "db_loop_read_queries_total") - queries
            #expect(sent >= 16 && sent < 64, "\(sent) queries for 512 reads")
        }
    }

    @Test func theWritePositionComesFromTheCookie() {
        #expect(CachedReadPath.writePosition([]) == 0)
        #expect(CachedReadPath.writePosition(["millions_session=abc"]) == 0)
        #expect(CachedReadPath.writePosition(["millions_session=abc; millions_lsn=1a2b"]) == 0x1a2b)
        #expect(CachedReadPath.writePosition(["millions_lsn=10", "a=b; millions_lsn=20"]) == 0x20)
        // Positions on named clusters (a sharded tier) are for the route to judge.
        #expect(CachedReadPath.writePosition(["millions_lsn=c1.10~c2.20"]) == nil)
    }
}
