import Bench
import DataTier
import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import Hummingbird
import HummingbirdTesting
import MillionsCore
import MillionsTesting
import NIOCore
import NIOHTTP1
import Observability
import Synchronization
import Testing

@Suite struct SeederAndSamplerTests {
    @Test func seededUsersAreDeterministicVariedAndValid() {
        let a = Seeder(passwordHash: "x", startSeconds: UserID.epoch + 100_000, seed: 7)
        let b = Seeder(passwordHash: "x", startSeconds: UserID.epoch + 100_000, seed: 7)
        let c = Seeder(passwordHash: "x", startSeconds: UserID.epoch + 100_000, seed: 8)
        let users = (0..<2000).map(a.account)
        #expect(users.map(\.profile) == (0..<2000).map(b.account).map(\.profile))
        #expect(users.map(\.profile) != (0..<2000).map(c.account).map(\.profile))
        #expect(Set(users.map(\.id)).count == 2000)
        #expect(Set(users.map(\.profile.firstName)).count >= 40)
        #expect(Set(users.map(\.profile.lastName)).count >= 40)
        #expect(Set(users.map(\.profile.address.city)).count >= 12)
        #expect(Set(users.map(\.profile.address.streetAddress)).count >= 1500)
        #expect(users.contains { $0.profile.phoneNumbers.count == 2 } && users.contains { $0.profile.phoneNumbers.count == 1 })
        #expect(users.contains { $0.profile.address.postalCode.hasPrefix("0") })
        for u in users {
            var errors: [FieldError] = []
            Validate.profile(u.profile, into: &errors)
            #expect(errors.isEmpty, "\(u.profile)")
        }
        #expect(users[5].email == "seed-5@example.com")
    }

    @Test func zipfFavoursTheFirstKeysAsTheLawSays() {
        let sampler = KeySampler(count: 1000, distribution: .zipf(exponent: 1))
        var rng = SplitMix64(seed: 3)
        var counts = [Int](repeating: 0, count: 1000)
        for _ in 0..<200_000 { counts[sampler.sample(&rng)] += 1 }
        let harmonic = (1...1000).reduce(0.0) { $0 + 1 / Double($1) }
        #expect(abs(Double(counts[0]) / 200_000 - 1 / harmonic) < 0.005)
        #expect(abs(Double(counts[1]) / 200_000 - 1 / (2 * harmonic)) < 0.005)
        #expect(counts[999] < counts[0] / 100 * 3)
        let uniform = KeySampler(count: 1000, distribution: .uniform)
        var hits = [Int](repeating: 0, count: 1000)
        for _ in 0..<200_000 { hits[uniform.sample(&rng)] += 1 }
        #expect(hits.min()! > 100 && hits.max()! < 320)
    }
}

@Suite struct SoakTests {
    @Test func growthCountsFromTheFirstSampleAfterTheWarmUp() throws {
        let samples = [(0, 50), (30, 80), (60, 100), (90, 104), (120, 109), (150, 107)].map { (second: $0.0, bytes: $0.1) }
        #expect(abs(try #require(Soak.growth(samples, warmup: 60)) - 0.09) < 1e-9)
        #expect(abs(try #require(Soak.growth(samples, warmup: 0)) - 1.18) < 1e-9)
        #expect(Soak.growth(samples, warmup: 200) == nil)
    }

    /// Every /metrics carries the process's resident memory and open files.
    @Test func processFiguresAreInEveryExposition() throws {
        let text = String(decoding: AppMetrics().exposition(), as: UTF8.self)
        let figures = try #require(Soak.figures(inMetrics: text), "\(text)")
        #expect(figures.residentBytes > 1_000_000 && figures.openFiles > 2)
    }
}

/// The load generator against a small in-process server on a real socket.
@Suite struct LoadRunnerTests {
    /// `/ok` answers at once; `/stall` answers at once except for one request that waits
    /// 600 ms (a server hiccup); `/missing` is a 404.
    static func withServer(_ body: @escaping @Sendable (Int) async throws -> Void) async throws {
        let stalled = Atomic<Bool>(false)
        let router = Router()
        router.get("/ok") { _, _ in "ok" }
        router.get("/stall") { _, _ -> String in
            if !stalled.exchange(true, ordering: .relaxed) {
                try await Task.sleep(for: .milliseconds(600))
            }
            return "ok"
        }
        let app = Application(router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)))
        try await app.test(.live) { client in try await body(try #require(client.port)) }
    }

    struct Fixed: Scenario {
        let name = "fixed"
        let path: String
        struct Source: RequestSource {
            let path: String
            mutating func next() -> BenchRequest { BenchRequest(.GET, path) }
        }
        func source(connection index: Int) -> any RequestSource { Source(path: path) }
    }

    @Test func closedLoopCountsAnswersAndPercentiles() async throws {
        try await Self.withServer { port in
            var options = LoadOptions(port: port)
            options.connections = 4
            options.duration = .seconds(2)
            let r = try await LoadRunner.run(options, scenario: Fixed(path: "/ok"))
            #expect(r.requests > 10)  // counting is checked here, not speed
            #expect(r.errors.isEmpty)
            #expect(r.timeline.count == 2)
            #expect(r.timeline.map(\.requests).reduce(0, +) == r.requests)
            #expect(r.latencyMs.p50 <= r.latencyMs.p90 && r.latencyMs.p90 <= r.latencyMs.p99 && r.latencyMs.p99 <= r.latencyMs.max)
            #expect(r.mode == "closed")
        }
    }

    /// The warm pass: every id read exactly once across the connections, and the run ends
    /// when they are done rather than at its (long) duration.
    @Test func aScanReadsEveryIdOnceAndEnds() async throws {
        let seen = Mutex<[String: Int]>([:])
        let router = Router()
        router.get("/users/:id") { _, context -> String in
            let id = context.parameters.get("id") ?? "?"
            seen.withLock { $0[id, default: 0] += 1 }
            return "{}"
        }
        let app = Application(router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)))
        try await app.test(.live) { client in
            var options = LoadOptions(port: try #require(client.port))
            options.connections = 7
            options.duration = .seconds(3600)
            let ids = (1...1000).map { Int64($0) * 3 }
            let r = try await LoadRunner.run(options, scenario: ScanScenario(ids: ids, connections: 7))
            #expect(r.requests == 1000 && r.errors.isEmpty)
            let counts = seen.withLock { $0 }
            #expect(counts.count == 1000 && counts.values.allSatisfy { $0 == 1 })
            #expect(Set(counts.keys) == Set(ids.map(String.init)))
            // More connections than ids: the idle ones finish at once.
            options.connections = 16
            let few = try await LoadRunner.run(options, scenario: ScanScenario(ids: [1, 2, 3], connections: 16))
            #expect(few.requests == 3)
        }
    }

    @Test func openLoopHoldsTheRate() async throws {
        try await Self.withServer { port in
            var options = LoadOptions(port: port)
            options.connections = 4
            options.duration = .seconds(2)
            options.rate = 200
            let r = try await LoadRunner.run(options, scenario: Fixed(path: "/ok"))
            // Never more than the schedule allows; a stalled machine may send a few less.
            #expect(r.requests >= 300 && r.requests <= 402, "\(r.requests)")
            #expect(r.errors.isEmpty && r.backlog == 0)
        }
    }

    /// A 600 ms stall on one connection at 100 requests/s: the open loop charges the
    /// requests that queued behind it from when they were due, so the stall shows in the
    /// percentiles instead of being one slow sample (coordinated omission).
    @Test func openLoopDoesNotHideAStall() async throws {
        try await Self.withServer { port in
            var options = LoadOptions(port: port)
            options.connections = 1
            options.duration = .seconds(3)
            options.rate = 100
            let r = try await LoadRunner.run(options, scenario: Fixed(path: "/stall"))
            #expect(r.errors.isEmpty)
            #expect(r.latencyMs.max >= 550)
            // About 60 of ~300 requests were due during the stall.
            #expect(r.latencyMs.p90 >= 100, "p90 \(r.latencyMs.p90) ms")
        }
    }

    @Test func errorsAreCountedByKind() async throws {
        try await Self.withServer { port in
            var options = LoadOptions(port: port)
            options.connections = 2
            options.duration = .seconds(1)
            let r = try await LoadRunner.run(options, scenario: Fixed(path: "/missing"))
            #expect(r.requests > 0)
            #expect(r.errors == ["status 4xx": r.requests])
        }
        var options = LoadOptions(port: 1)  // nothing listens on port 1
        options.connections = 2
        options.duration = .seconds(1)
        let r = try await LoadRunner.run(options, scenario: Fixed(path: "/ok"))
        #expect(r.requests == 0)
        #expect((r.errors["connect"] ?? 0) > 0)
    }
}

/// `millions seed` then `millions bench` through the real binary, with JSON and SVG out.
@Suite(.serialized) struct BenchCommandTests {
    @Test func seedThenBenchReadAndMixedWriteValidJSONAndSVG() async throws {
        try await TestApp.withTemporaryDirectory { dir in
            let binary = try EndToEndTests.binary()
            let ids = dir + "/ids.txt"
            #expect(try await Command.runOffPool([binary, "seed", "--users", "300", "--data-dir", dir, "--ids-file", ids, "--seed", "5", "--log-level", "warning", "--set", "auth.bcryptCost=4"]) == 0)
            let lines = try String(contentsOfFile: ids, encoding: .utf8).split(separator: "\n")
            #expect(lines.count == 300)
            let server = try await EndToEndTests.Server.start(dataDirectory: dir)
            defer { server.process.terminate() }
            #expect(try await EndToEndTests.request(server.port, .GET, "/users/\(lines[299])").status == 200)
            for scenario in ["read", "mixed"] {
                let json = dir + "/\(scenario).json", svg = dir + "/\(scenario).svg"
                let status = try await Command.runOffPool([
                    binary, "bench", scenario, "--port", String(server.port), "--ids-file", ids, "-d", "2", "-c", "4",
                    "--json", json, "--svg", svg,
                ])
                #expect(status == 0)
                let result = try JSONDecoder().decode(BenchResult.self, from: Data(contentsOf: URL(fileURLWithPath: json)))
                #expect(result.scenario == scenario)
                #expect(result.requests > 20)
                #expect(result.errors.isEmpty, "\(result.errors)")
                #expect(result.timeline.count == 2)
                let parser = XMLParser(data: try Data(contentsOf: URL(fileURLWithPath: svg)))
                let root = RootElement()
                parser.delegate = root
                #expect(parser.parse(), "SVG is not well-formed XML")
                #expect(root.name == "svg")
            }
            // soak: capacity, then half of it open-loop, with the server's memory sampled from
            // its /metrics (a generous limit: seconds of a test are all warm-up).
            let soakJSON = dir + "/soak.json"
            #expect(try await Command.runOffPool([
                binary, "bench", "soak", "--port", String(server.port), "--ids-file", ids, "-d", "4", "-c", "4",
                "--capacity-seconds", "2", "--sample-seconds", "1", "--warmup-seconds", "1", "--max-growth-percent", "1000",
                "--json", soakJSON,
            ]) == 0)
            let soak = try JSONDecoder().decode(Soak.Report.self, from: Data(contentsOf: URL(fileURLWithPath: soakJSON)))
            #expect(soak.passed && soak.errors == 0)
            #expect(abs(soak.offeredRPS - soak.capacityRPS / 2) < 1)
            #expect(soak.samples.count >= 3)
            #expect(soak.samples.allSatisfy { ($0.residentBytes.values.first ?? 0) > 1_000_000 && ($0.openFiles.values.first ?? 0) > 3 })
            #expect(soak.load.mode == "open" && soak.load.requests > 0)

            // photos: uploads, polls and finished jobs, counted from both sides.
            let json = dir + "/photos.json"
            #expect(try await Command.runOffPool([
                binary, "bench", "photos", "--port", String(server.port), "--ids-file", ids, "-d", "3", "-c", "2",
                "--size", "640x480", "--poll-ms", "50", "--json", json,
            ]) == 0)
            let result = try JSONDecoder().decode(BenchResult.self, from: Data(contentsOf: URL(fileURLWithPath: json)))
            #expect(result.errors.isEmpty, "\(result.errors)")
            let photos = try #require(result.photos)
            #expect(photos.done >= 2 && photos.failed == 0 && photos.refused == 0, "\(photos)")
            #expect(photos.accepted >= photos.done && photos.accepted <= photos.done + 2)
            #expect(photos.readyP50Ms > 0 && photos.readyP50Ms <= photos.readyMaxMs)
            let metrics = try await EndToEndTests.request(server.port, .GET, "/metrics").body
            let uploads = metrics.split(separator: "\n").first { $0.hasPrefix(#"photo_uploads_total{format="jpeg"} "#) }
            #expect(uploads.flatMap { Int($0.split(separator: " ").last ?? "") } == photos.accepted)
        }
    }
}

final class RootElement: NSObject, XMLParserDelegate {
    var name: String? = nil
    func parser(_ parser: XMLParser, didStartElement elementName: String, namespaceURI: String?, qualifiedName: String?, attributes: [String: String] = [:]) {
        if name == nil { name = elementName }
    }
}
