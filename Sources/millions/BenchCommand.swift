import ArgumentParser
import Bench
import Cluster
import Foundation
import Imaging
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// `millions bench …`: load a running site and measure it; or the whole journey.
struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Load generator: closed or open loop, HDR latency percentiles, table / JSON / SVG.",
        subcommands: [
            Read.self, Mixed.self, Photos.self, SoakCommand.self, JourneyCommand.self, ChaosCommand.self, CachePolicyCommand.self,
        ])

    /// Flags every scenario shares.
    struct LoadFlags: ParsableArguments {
        @Option(name: .long, help: "Server address.") var host = "127.0.0.1"
        @Option(name: .long, help: "Server port (the site: nginx, Varnish or a web server).") var port = 8080
        @Option(name: [.short, .customLong("connections")], help: "Keep-alive connections.") var connections = 32
        @Option(name: [.short, .customLong("duration")], help: "Seconds to run.") var duration = 10
        @Option(name: .long, help: "Open loop at this many requests/s (latency counts from each request's intended start); without it, closed loop.")
        var rate: Double?
        @Option(name: .long, help: "Seconds before a request counts as timed out.") var timeout = 5
        @Option(name: .customLong("ids-file"), help: "Seeded ids (from `millions seed --ids-file`), most popular first.")
        var idsFile: String
        @Option(name: .long, help: "Zipf exponent for choosing ids (0 = uniform).") var zipf = 0.99
        @Option(name: .long, help: "Write the result as JSON here.") var json: String?
        @Option(name: .long, help: "Write an SVG chart of throughput and latency over time here.") var svg: String?

        func validate() throws {
            guard connections >= 1, connections <= 10_000 else { throw ValidationError("--connections must be 1...10000") }
            guard duration >= 1 else { throw ValidationError("--duration must be at least 1") }
            guard rate.map({ $0 > 0 }) ?? true else { throw ValidationError("--rate must be positive") }
            guard zipf >= 0 else { throw ValidationError("--zipf must be 0 or more") }
        }

        var options: LoadOptions {
            var o = LoadOptions(port: port)
            o.host = host
            o.connections = connections
            o.duration = .seconds(Int64(duration))
            o.rate = rate
            o.timeout = .seconds(Int64(timeout))
            return o
        }

        var distribution: KeySampler.Distribution { zipf == 0 ? .uniform : .zipf(exponent: zipf) }

        func run(_ scenario: any Scenario) async throws {
            let terminal = isatty(2) == 1
            var result = try await LoadRunner.run(options, scenario: scenario) { second, count, p99, errors in
                let line = String(format: "%3ds  %7d req/s  p99 %7.2f ms  errors %d", second, count, p99, errors)
                FileHandle.standardError.write(Data((terminal ? "\r" + line : line + "\n").utf8))
            }
            if terminal { FileHandle.standardError.write(Data("\n".utf8)) }
            if let photos = scenario as? PhotosScenario { result.photos = photos.outcomes.summary(seconds: Double(duration)) }
            print(result.table, terminator: "")
            if let json { try result.json().write(to: URL(fileURLWithPath: json)) }
            if let svg { try result.svg.write(toFile: svg, atomically: true, encoding: .utf8) }
        }
    }

    struct Read: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "GET /users/{id} over the seeded ids (uniform or Zipf).")
        @OptionGroup var load: LoadFlags

        func run() async throws {
            try await load.run(ReadScenario(ids: try Setup.ids(file: load.idsFile), distribution: load.distribution))
        }
    }

    struct Mixed: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Reads, profile updates through logged-in sessions, and log-ins (each connection is one seeded user).")
        @OptionGroup var load: LoadFlags
        @Option(name: .customLong("update-percent"), help: "Share of requests that update one's own profile.") var updatePercent = 10
        @Option(name: .customLong("login-percent"), help: "Share of requests that log in (bcrypt: expensive).") var loginPercent = 1

        func validate() throws {
            guard updatePercent >= 0, loginPercent >= 0, updatePercent + loginPercent <= 100 else {
                throw ValidationError("--update-percent and --login-percent must be 0…100 together")
            }
        }

        func run() async throws {
            let ids = try Setup.ids(file: load.idsFile)
            let users = try await Setup.logIn(host: load.host, port: load.port, ids: ids, count: load.connections)
            try await load.run(
                MixedScenario(
                    reads: ReadScenario(ids: ids, distribution: load.distribution), users: users, updatePercent: updatePercent,
                    loginPercent: loginPercent))
        }
    }

    struct SoakCommand: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "soak",
            abstract: "The mixed load at half the measured capacity for ten minutes: memory over time (flat within 10%?) and errors (none?).",
            discussion: """
                Measures capacity with a closed loop first, then offers a fraction of it open-loop while
                sampling process_resident_memory_bytes and process_open_fds from each --metrics endpoint
                (default: the target itself). Exits 1 when memory after the warm-up grows past
                --max-growth-percent or any request fails.
                """)
        @Option(name: .long, help: "Server address.") var host = "127.0.0.1"
        @Option(name: .long, help: "Server port.") var port = 8080
        @Option(name: [.short, .customLong("connections")], help: "Keep-alive connections.") var connections = 32
        @Option(name: [.short, .customLong("duration")], help: "Seconds to soak.") var duration = 600
        @Option(name: .customLong("capacity-seconds"), help: "Seconds of closed loop to measure capacity.") var capacitySeconds = 10
        @Option(name: .long, help: "Share of the measured capacity to offer.") var fraction = 0.5
        @Option(name: .customLong("sample-seconds"), help: "Seconds between memory samples.") var sampleSeconds = 10
        @Option(name: .customLong("warmup-seconds"), help: "Seconds of the soak before memory is held to the limit.") var warmupSeconds = 60
        @Option(name: .customLong("max-growth-percent"), help: "Largest allowed growth of resident memory after the warm-up.") var maxGrowthPercent = 10.0
        @Option(name: .long, parsing: .upToNextOption, help: "host:port of each /metrics to sample (default: the target).") var metrics: [String] = []
        @Option(name: .customLong("ids-file"), help: "Seeded ids (from `millions seed --ids-file`), most popular first.") var idsFile: String
        @Option(name: .long, help: "Zipf exponent for choosing ids (0 = uniform).") var zipf = 0.99
        @Option(name: .customLong("update-percent"), help: "Share of requests that update one's own profile.") var updatePercent = 10
        @Option(name: .customLong("login-percent"), help: "Share of requests that log in.") var loginPercent = 1
        @Option(name: .long, help: "Write the report as JSON here.") var json: String?

        func validate() throws {
            guard (1...10_000).contains(connections) else { throw ValidationError("--connections must be 1...10000") }
            guard duration >= 1, capacitySeconds >= 1, sampleSeconds >= 1, warmupSeconds >= 0 else {
                throw ValidationError("--duration, --capacity-seconds and --sample-seconds must be positive")
            }
            guard fraction > 0, fraction <= 1 else { throw ValidationError("--fraction must be in (0, 1]") }
            guard maxGrowthPercent >= 0 else { throw ValidationError("--max-growth-percent must not be negative") }
            guard updatePercent >= 0, loginPercent >= 0, updatePercent + loginPercent <= 100 else {
                throw ValidationError("--update-percent and --login-percent must be 0…100 together")
            }
        }

        func run() async throws {
            let ids = try Setup.ids(file: idsFile)
            let users = try await Setup.logIn(host: host, port: port, ids: ids, count: connections)
            var load = LoadOptions(port: port)
            load.host = host
            load.connections = connections
            load.duration = .seconds(Int64(duration))
            var options = Soak.Options(load: load, metrics: metrics.isEmpty ? ["\(host):\(port)"] : metrics)
            options.capacitySeconds = capacitySeconds
            options.fraction = fraction
            options.sampleSeconds = sampleSeconds
            options.warmupSeconds = warmupSeconds
            options.maxGrowth = maxGrowthPercent / 100
            let scenario = MixedScenario(
                reads: ReadScenario(ids: ids, distribution: zipf == 0 ? .uniform : .zipf(exponent: zipf)), users: users,
                updatePercent: updatePercent, loginPercent: loginPercent)
            let report = try await Soak.run(options, scenario: scenario) { line in
                FileHandle.standardError.write(Data((line + "\n").utf8))
            }
            print(report.table, terminator: "")
            if let json { try report.json().write(to: URL(fileURLWithPath: json)) }
            if !report.passed { throw ExitCode(1) }
        }
    }

    struct Photos: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Each connection, one seeded user: upload a photo, poll its job until the variants are ready, repeat.")
        @OptionGroup var load: LoadFlags
        @Option(name: .long, help: "Distinct photos, uploaded in turn.") var images = 4
        @Option(name: .long, help: "Photo size, WIDTHxHEIGHT (noise JPEGs made with libvips).") var size = "1600x1200"
        @Option(name: .customLong("poll-ms"), help: "Milliseconds between polls of a job.") var pollMS = 100

        func validate() throws {
            guard (1...64).contains(images) else { throw ValidationError("--images must be 1...64") }
            guard dimensions != nil else { throw ValidationError("--size must be WIDTHxHEIGHT, each 16...8000") }
            guard pollMS >= 1 else { throw ValidationError("--poll-ms must be positive") }
        }

        var dimensions: (Int, Int)? {
            let parts = size.split(separator: "x").compactMap { Int($0) }
            guard parts.count == 2, parts.allSatisfy({ (16...8000).contains($0) }) else { return nil }
            return (parts[0], parts[1])
        }

        func run() async throws {
            let ids = try Setup.ids(file: load.idsFile)
            let users = try await Setup.logIn(host: load.host, port: load.port, ids: ids, count: load.connections)
            let (w, h) = dimensions!
            // Noise, one pixel narrower each: every upload is an original of its own.
            var photos: [ByteBuffer] = []
            for i in 0..<images {
                photos.append(ByteBuffer(bytes: try Imaging.testImage(width: w - i, height: h, format: .jpeg)))
            }
            try await load.run(PhotosScenario(users: users, images: photos, pollInterval: .milliseconds(Int64(pollMS))))
        }
    }

    struct CachePolicyCommand: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "cache-policy",
            abstract: "The in-process cache's policies (W-TinyLFU, LRU) on a Zipf trace, plain and with one-time keys mixed in: hit ratio against the oracle.")
        @Option(name: .long, help: "Distinct keys (users).") var users = 100_000
        @Option(name: .long, help: "Cache size as a share of the users.") var fraction = 0.1
        @Option(name: .long, help: "Zipf exponent.") var zipf = 0.99
        @Option(name: .long, help: "Requests measured (half as many again warm the cache first).") var requests = 2_000_000
        @Option(name: .long, help: "Share of requests for one-time keys in the second trace.") var scan = 0.2

        func validate() throws {
            guard users >= 100, fraction > 0, fraction < 1, zipf > 0, requests >= 1_000, scan > 0, scan < 1 else {
                throw ValidationError("--users ≥ 100, 0 < --fraction < 1, --zipf > 0, --requests ≥ 1000, 0 < --scan < 1")
            }
        }

        func run() async throws {
            let capacity = Int(Double(users) * fraction)
            print("| policy | trace | hit ratio | oracle | of the oracle |")
            print("|---|---|---|---|---|")
            for scanShare in [0, scan] {
                for policy in ["tinylfu", "lru"] {
                    let r = await CachePolicyTrial.run(
                        policy: policy, users: users, capacity: capacity, exponent: zipf, requests: requests, scanShare: scanShare)
                    let trace = scanShare == 0 ? "Zipf \(zipf)" : "Zipf \(zipf) + \(Int(scanShare * 100))% one-time keys"
                    let figures = String(format: "%.3f | %.3f | %.3f", r.hitRatio, r.oracle, r.ofOracle)
                    print("| \(policy) | \(trace) | \(figures) |")
                    fflush(nil)
                }
            }
        }
    }

    struct ChaosCommand: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "chaos",
            abstract: "A history check under failures: writers, a nemesis that kills or freezes the primary every few seconds, then every acknowledged write checked (fails on any violation).")
        @Option(name: .long, help: "Faults: one per round.") var rounds = 5
        @Option(name: .long, help: "Seconds from one fault to the next.") var interval = 20.0
        @Option(name: .long, help: "Faults in turn, comma-separated: kill (the primary's host dying), pause (the primary stalled past the leader key's TTL), redis (the Redis master dying; stages with Redis), partition (the primary's host cut off the network; --hosts).")
        var faults = "kill"
        @Option(name: .long, help: "Concurrent writers (sign up, edit, read back).") var writers = 4
        @Option(name: .long, help: "Seconds a paused primary stays frozen (default: Patroni's TTL + 4).") var pauseSeconds: Double?
        @Flag(name: .long, help: "Patroni's synchronous mode: a commit waits for a replica.") var sync = false
        @Option(name: .long, help: "A one-site stage with replicas.") var stage = "replicated"
        @Option(name: .customLong("base-port")) var basePort = 8080
        @Option(name: .long, help: "Cluster folder.") var dir = ".cluster"
        @Option(name: .long, help: "Write the report as JSON here.") var json: String?
        @Flag(name: .long, help: "Each node on a host of its own (root): etcd members and sentinels on three coordinator hosts.")
        var hosts = false
        @Option(name: .long, help: "With --hosts: cores per host (default 0.25: Patroni's loop needs more than the journey's share).")
        var cpus: Double?

        func validate() throws {
            guard rounds >= 1, interval >= 5, writers >= 1 else { throw ValidationError("--rounds ≥ 1, --interval ≥ 5, --writers ≥ 1") }
            guard cpus == nil || hosts else { throw ValidationError("--cpus needs --hosts") }
        }

        func run() async throws {
            guard let stage = Stage(rawValue: stage), stage.replicas > 0, !stage.needsHosts else {
                throw ValidationError("--stage must be a one-site stage with replicas (replicated, cached, stateless, queued)")
            }
            let kinds = try faults.split(separator: ",").map { name in
                guard let fault = Chaos.Fault(rawValue: String(name)) else { throw ValidationError("unknown fault \(name); faults: kill, pause, redis, partition") }
                guard fault != .partition || hosts else { throw ValidationError("the partition fault needs --hosts") }
                return fault
            }
            let binary = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path
            let cluster = Cluster(
                dir: URL(fileURLWithPath: dir).standardizedFileURL.path, binary: binary, scripts: try Cluster.findScripts(binary: binary)
            ) { print("  " + $0); fflush(nil) }
            let ttl = Double(ProcessInfo.processInfo.environment["MILLIONS_PATRONI_TTL"] ?? "") ?? 6
            let report: Chaos.Report
            do {
                // Inside the do: a failed `up` is taken down too (etcd, Patroni, Redis left running otherwise).
                try cluster.up(stage: stage, webServers: nil, basePort: basePort, settings: ["log.level": "warning"], hosts: hosts,
                    cpus: hosts ? (cpus ?? 0.25) : nil, syncReplication: sync, ha: true)
                let state = try cluster.loadState()
                guard let entry = state.topology.entry(site: state.topology.sites[0]) else { throw ValidationError("the stage has no entry") }
                var chaos = Chaos(cluster: cluster, site: (entry.host, entry.port))
                chaos.rounds = rounds
                chaos.interval = interval
                chaos.faults = kinds
                chaos.writers = writers
                chaos.pauseSeconds = pauseSeconds ?? ttl + 4
                print("chaos: \(rounds) rounds of \(faults) every \(interval) s, \(writers) writers, \(sync ? "synchronous" : "asynchronous") replication, Patroni ttl \(ttl) s")
                report = try await chaos.run { print($0); fflush(nil) }
            } catch {
                try? cluster.down()
                throw error
            }
            try cluster.down()
            print(report.text)
            if let json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
                try encoder.encode(report).write(to: URL(fileURLWithPath: json))
            }
            if !report.violations.isEmpty { throw ExitCode(1) }
        }
    }

    struct JourneyCommand: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "journey",
            abstract: "Bring each stage up, seed, warm, measure the read scenario, bring it down; one table.")
        @Option(name: .long, help: "Stages, comma-separated (default: the one-site stages, and multi-dc with --hosts).")
        var stages: String?
        @Option(name: .long, help: "Users to seed in each stage.") var users = 100_000
        @Option(name: [.short, .customLong("connections")]) var connections = 32
        @Option(name: [.short, .customLong("duration")], help: "Measured seconds per stage.") var duration = 15
        @Option(name: .long, help: "Warm-up seconds per stage (not measured).") var warmup = 5
        @Option(name: .long, help: "Zipf exponent (0 = uniform).") var zipf = 0.99
        @Option(name: .customLong("base-port")) var basePort = 8080
        @Option(name: .long, help: "Cluster folder.") var dir = ".cluster"
        @Option(name: .customLong("set"), help: ArgumentHelp("A configuration key for every web server.", valueName: "key=value"))
        var settings: [String] = []
        @Flag(name: .long, help: "Every node on a host of its own (network namespace + CPU budget), the load generator on the client host; needs root.")
        var hosts = false
        @Option(name: .long, help: "With --hosts: cores per host (default: the largest stage fits the machine with room for the client).")
        var cpus: Double?
        @Option(name: .long, help: "Web servers in the stages with a balancer (default: each stage's own).") var web: Int?
        @Flag(name: .customLong("cold"), help: "Skip the warm pass (every seeded id read once before the warm-up): measure cold caches.")
        var cold = false
        @Option(name: .long) var json: String?
        @Option(name: .long) var svg: String?
        @Option(name: .long, help: "Print the table (and --svg) from a saved --json file instead of running; the other flags only title the chart.")
        var render: String?

        func validate() throws {
            guard cpus == nil || hosts else { throw ValidationError("--cpus needs --hosts") }
            guard cpus.map({ $0 > 0 }) ?? true else { throw ValidationError("--cpus must be positive") }
            guard duration >= 1, warmup >= 0, users >= 1, connections >= 1 else {
                throw ValidationError("--duration, --users and --connections must be positive, --warmup 0 or more")
            }
        }

        func run() async throws {
            let names = stages ?? (Stage.journey + (hosts ? [.multiDC] : [])).map(\.rawValue).joined(separator: ",")
            let chosen = try names.split(separator: ",").map { name in
                guard let s = Stage(rawValue: String(name)) else { throw ValidationError("unknown stage \(name)") }
                guard Stage.journey.contains(s) || (s == .multiDC && hosts) else {
                    throw ValidationError("\(name) is not in the journey\(s.needsHosts ? " without --hosts (its sites are subnets)" : "")")
                }
                return s
            }
            var extra = ["log.level": "warning"]
            for item in settings {
                let kv = item.split(separator: "=", maxSplits: 1)
                guard kv.count == 2 else { throw ValidationError("--set takes key=value") }
                extra[String(kv[0])] = String(kv[1])
            }
            let binary = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path
            var journey = Journey(
                stages: chosen, users: users, connections: connections, duration: duration, warmup: warmup,
                distribution: zipf == 0 ? .uniform : .zipf(exponent: zipf), basePort: basePort,
                dir: URL(fileURLWithPath: dir).standardizedFileURL.path, binary: binary,
                scripts: try Cluster.findScripts(binary: binary), settings: extra)
            journey.hosts = hosts
            journey.cpus = cpus
            journey.webServers = web
            journey.warmPass = !cold
            let rows: [Journey.Row]
            if let render {
                rows = try JSONDecoder().decode([Journey.Row].self, from: Data(contentsOf: URL(fileURLWithPath: render)))
            } else {
                rows = try await journey.run { line in
                    print(line)
                    fflush(nil)
                }
                print("")
            }
            print(Journey.table(rows), terminator: "")
            if let json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
                try encoder.encode(rows).write(to: URL(fileURLWithPath: json))
            }
            if let svg {
                // The budget per host, from the rows (they may come from --render).
                let perHost = rows.first?.cpu.first.flatMap { t in t.budget.map { $0 / Double(t.nodes) } }
                let place = perHost.map { "on hosts (\(String(format: "%.3g", $0)) cores each)" } ?? "on loopback"
                let title = "millions bench journey \(place): read, Zipf \(zipf), \(users) users, \(connections) connections, \(duration) s per stage"
                try Journey.svg(rows, title: title).write(toFile: svg, atomically: true, encoding: .utf8)
            }
        }
    }
}
