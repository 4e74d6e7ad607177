import Cluster
import Foundation
import NIOCore

/// `millions bench journey`: every stage brought up, seeded, warmed and measured with the
/// same scenario, then brought down; one row per stage. With hosts, every node runs on a
/// host with the same CPU budget and the load generator on the client host, so a stage
/// that adds machines adds capacity; each row says how busy each tier was.
public struct Journey: Sendable {
    /// One tier's CPU while measured: cores used (CPU seconds per second) and, with hosts,
    /// the cores its hosts may use.
    public struct TierCPU: Codable, Sendable {
        public var tier: String
        public var nodes: Int
        public var cores: Double
        public var budget: Double?
        /// cores ÷ budget: 1 is saturated.
        public var utilization: Double? { budget.flatMap { $0 > 0 ? cores / $0 : nil } }
    }

    public struct Row: Codable, Sendable {
        public var stage: String
        public var hosts: Bool
        public var requestsPerSecond: Double
        public var p50Ms: Double
        public var p99Ms: Double
        /// User-store calls (database reads) per 1,000 requests, from the servers' metrics.
        public var databaseReadsPer1000: Double
        /// nil when the stage has no cache.
        public var cacheHitRatio: Double?
        /// Share of database reads answered by replicas; nil without replicas.
        public var replicaShare: Double?
        public var errors: Int
        public var upSeconds: Double
        public var seedSeconds: Double
        /// Per tier, in start order, the load generator ("client") last.
        public var cpu: [TierCPU]
        /// The tier closest to its budget (hosts), or using the most CPU (loopback).
        public var busiest: String?
    }

    public var stages: [Stage]
    public var users: Int
    public var connections: Int
    public var duration: Int
    public var warmup: Int
    public var distribution: KeySampler.Distribution
    public var basePort: Int
    public var dir: String
    public var binary: String
    public var scripts: String
    /// Extra configuration for every web server (e.g. log.level).
    public var settings: [String: String]
    /// Every node on a host of its own (`cluster up --hosts`), `cpus` cores each.
    public var hosts = false
    public var cpus: Double? = nil
    /// Web servers in the balanced stages (nil: each stage's default).
    public var webServers: Int? = nil
    /// Before the warm-up, read every seeded id once (see `ScanScenario`).
    public var warmPass = true

    public init(
        stages: [Stage], users: Int, connections: Int, duration: Int, warmup: Int, distribution: KeySampler.Distribution,
        basePort: Int, dir: String, binary: String, scripts: String, settings: [String: String]
    ) {
        self.stages = stages
        self.users = users
        self.connections = connections
        self.duration = duration
        self.warmup = warmup
        self.distribution = distribution
        self.basePort = basePort
        self.dir = dir
        self.binary = binary
        self.scripts = scripts
        self.settings = settings
    }

    public func run(say: @escaping @Sendable (String) -> Void) async throws -> [Row] {
        var rows: [Row] = []
        for stage in stages {
            guard hosts || !stage.needsHosts else { throw BenchError("the \(stage.rawValue) stage needs --hosts") }
            let cluster = Cluster(dir: dir, binary: binary, scripts: scripts, say: { say("  " + $0) })
            say("== \(stage.rawValue)\(hosts ? " on hosts" : ""): \(stage.summary)")
            do {
                let web = stage.balanced ? webServers : nil
                let upSeconds = try cluster.up(
                    stage: stage, webServers: web, basePort: basePort, settings: settings, hosts: hosts, cpus: cpus)
                rows += try await measure(stage, cluster, upSeconds: upSeconds, say: say)
            } catch {
                try? cluster.down()
                throw error
            }
            try cluster.down()
        }
        return rows
    }

    /// Where one region's load goes: on loopback this process loads the entry; with hosts,
    /// `millions bench read` runs on the region's client host. With several sites the
    /// client names the site as users do (the geo DNS picks its region's edge).
    struct Target {
        var site: String
        var client: String?
        var host: String
        var port: Int
    }

    /// One row per site (one, except in `multi-dc`): every region loaded at once.
    func measure(_ stage: Stage, _ cluster: Cluster, upSeconds: Double, say: @escaping @Sendable (String) -> Void) async throws -> [Row] {
        let state = try cluster.loadState()
        let idsFile = dir + "/ids.txt"
        let seedStart = Date()
        let status = try Processes.run(
            [binary, "seed", "--users", String(users), "--ids-file", idsFile, "--log-level", "warning"]
                + cluster.setFlags(cluster.webSettings(state)), environment: state.secretEnvironment, log: dir + "/logs/seed.log")
        guard status == 0 else { throw BenchError("seeding failed (see \(dir)/logs/seed.log)") }
        let seedSeconds = Date().timeIntervalSince(seedStart)
        say("  seeded \(users) users in \(String(format: "%.1f", seedSeconds)) s")
        try await waitForChangeFeeds(state, cluster, say: say)
        let sites = state.topology.sites
        let several = sites.count > 1
        let targets: [Target] = try sites.map { site in
            // API reads are dynamic content: the balancer, not the CDN; with several sites,
            // the name users resolve (the edge, which passes API requests to the balancer).
            var client: String? = nil
            if hosts {
                guard let c = state.topology.nodes(.client, in: site).first else { throw BenchError("site \(site) has no client host") }
                client = c.name
            }
            if several, let edge = state.topology.entry(site: site) { return Target(site: site, client: client, host: Topology.siteName, port: edge.port) }
            guard let entry = state.topology.dynamicEntry(site: site) else { throw BenchError("the topology has no web server") }
            return Target(site: site, client: client, host: entry.host, port: entry.port)
        }
        let ids = try Setup.ids(file: idsFile)
        if warmPass {
            for site in sites {
                guard let entry = state.topology.dynamicEntry(site: site) else { continue }
                let started = Date()
                let scan = try await LoadRunner.run(options(entry, seconds: 3600), scenario: ScanScenario(ids: ids, connections: connections))
                say("  warm pass\(several ? " (" + site + ")" : ""): \(scan.requests) reads (every id once) in \(String(format: "%.1f", Date().timeIntervalSince(started))) s, \(scan.errorCount) errors")
            }
        }
        if warmup > 0 { _ = try await load(targets, ids: ids, idsFile: idsFile, seconds: warmup) }

        // CPU is sampled inside the run, a second after its start and before its end, so
        // the load generator's start and the servers' idle tail are not averaged in.
        let margin = duration >= 6 ? 1.0 : 0.0
        let before = sites.map { Metrics.scrape(state.topology.nodes(.web, in: $0)) }
        async let running = load(targets, ids: ids, idsFile: idsFile, seconds: duration)
        try await Task.sleep(for: .seconds(margin))
        let cpu0 = try cluster.cpuSeconds(state), client0 = Self.ownCPUSeconds(), t0 = Date()
        try await Task.sleep(for: .seconds(Double(duration) - 2 * margin))
        let cpu1 = try cluster.cpuSeconds(state), client1 = Self.ownCPUSeconds(), t1 = Date()
        let results = try await running
        let after = sites.map { Metrics.scrape(state.topology.nodes(.web, in: $0)) }

        let seconds = max(t1.timeIntervalSince(t0), 0.001)
        // The whole cluster's CPU (with several sites, both rows show all of it).
        var tiers: [TierCPU] = Role.allCases.compactMap { role in
            let nodes = state.topology.nodes(role)
            guard !nodes.isEmpty, role != .client || hosts else { return nil }
            let used = nodes.map { (cpu1[$0.name] ?? 0) - (cpu0[$0.name] ?? 0) }.reduce(0, +)
            return TierCPU(
                tier: role.rawValue, nodes: nodes.count, cores: used / seconds,
                budget: state.hosts.map { plan in nodes.map { plan.host($0).cpus }.reduce(0, +) })
        }
        // On loopback the load generator is this process.
        if !hosts { tiers.append(TierCPU(tier: "client", nodes: 1, cores: (client1 - client0) / seconds, budget: nil)) }
        let busiest = hosts ? tiers.max { ($0.utilization ?? 0) < ($1.utilization ?? 0) } : tiers.max { $0.cores < $1.cores }

        return sites.indices.map { i in
            let d = after[i].minus(before[i]), result = results[i]
            let requests = max(d.value("http_server_requests_total"), 1)
            let hits = d.value("cache_hits_total"), misses = d.value("cache_misses_total")
            // Reads are labelled role=read on whichever node served them (role=primary when
            // read-your-writes pinned them there); a node is a replica if no server saw it as primary.
            let primaries = Set(after[i].samples.filter { $0.name == "db_node_is_primary" && $0.value > 0 }.compactMap { $0.labels["node"] })
            let reads = d.samples.filter { $0.name == "db_query_duration_seconds_count" && ($0.labels["role"] == "read" || $0.labels["role"] == "primary") }
            let allQueries = reads.map(\.value).reduce(0, +)
            let replica = reads.filter { $0.labels["role"] == "read" && !primaries.contains($0.labels["node"] ?? "") }.map(\.value).reduce(0, +)
            let row = Row(
                stage: several ? "\(stage.rawValue) \(sites[i])" : stage.rawValue, hosts: hosts,
                requestsPerSecond: result.requestsPerSecond, p50Ms: result.latencyMs.p50, p99Ms: result.latencyMs.p99,
                databaseReadsPer1000: d.value("user_store_calls_total", where: ["op": "read"]) / requests * 1000,
                cacheHitRatio: hits + misses > 0 ? hits / (hits + misses) : nil,
                replicaShare: stage.replicas > 0 && allQueries >= requests / 100 ? replica / allQueries : nil,
                errors: result.errorCount, upSeconds: upSeconds, seedSeconds: seedSeconds, cpu: tiers, busiest: busiest?.tier)
            say("  \(several ? sites[i] + ": " : "")\(Int(row.requestsPerSecond)) req/s, p99 \(Format.ms(row.p99Ms)) ms, \(Format.number(row.databaseReadsPer1000)) db reads / 1k requests")
            if i == sites.count - 1 { say("  CPU: \(Self.cpuText(row))") }
            return row
        }
    }

    /// Waits until every site's cache follower (a logical slot per site) has gone past the
    /// seed: it deletes the keys of the users the seed inserted (a "not found" may be
    /// cached), and deletes that land after the warm pass would be measured as misses.
    func waitForChangeFeeds(_ state: ClusterState, _ cluster: Cluster, say: @escaping @Sendable (String) -> Void) async throws {
        let slots = Set(state.topology.sites.compactMap { cluster.webSettings(state, site: $0)["cache.followSlot"] })
        guard !slots.isEmpty else { return }
        let started = Date()
        let list = slots.sorted().map { "'\($0)'" }.joined(separator: ",")
        // Every cluster's primary: a sharded tier has one per shard cluster, each with its slots.
        for primary in state.topology.databaseGroups.map({ $0[0] }) {
            let target = try cluster.psql(primary, "SELECT pg_current_wal_lsn()")
            let behind = "SELECT \(slots.count) - count(*) FILTER (WHERE confirmed_flush_lsn >= '\(target)') FROM pg_replication_slots WHERE slot_name IN (\(list))"
            while try cluster.psql(primary, behind) != "0" {
                guard Date().timeIntervalSince(started) < 600 else { throw BenchError("the caches' change feeds did not catch up with the seed in 600 s") }
                try await Task.sleep(for: .milliseconds(200))
            }
        }
        say("  caches' change feeds past the seed after \(String(format: "%.1f", Date().timeIntervalSince(started))) s")
    }

    /// The read scenario for `seconds` against every target at once: in this process on
    /// loopback; with hosts, as `millions bench read` on each region's client host, so the
    /// load generator has a budget too.
    func load(_ targets: [Target], ids: [Int64], idsFile: String, seconds: Int) async throws -> [BenchResult] {
        try await withThrowingTaskGroup(of: (Int, BenchResult).self) { group in
            for (i, target) in targets.enumerated() {
                group.addTask { (i, try await self.load(target, ids: ids, idsFile: idsFile, seconds: seconds)) }
            }
            var results = [BenchResult?](repeating: nil, count: targets.count)
            for try await (i, r) in group { results[i] = r }
            return results.compactMap { $0 }
        }
    }

    func load(_ target: Target, ids: [Int64], idsFile: String, seconds: Int) async throws -> BenchResult {
        guard let client = target.client else {
            var o = LoadOptions(port: target.port)
            o.host = target.host
            o.connections = connections
            o.duration = .seconds(Int64(seconds))
            return try await LoadRunner.run(o, scenario: ReadScenario(ids: ids, distribution: distribution))
        }
        let json = dir + "/logs/\(client)-result.json"
        try? FileManager.default.removeItem(atPath: json)
        let zipf: Double = if case .zipf(let e) = distribution { e } else { 0 }
        let argv = [
            dir + "/hosts/" + client, binary, "bench", "read", "--host", target.host, "--port", String(target.port), "--ids-file", idsFile,
            "--connections", String(connections), "--duration", String(seconds), "--zipf", String(zipf), "--json", json,
        ]
        let log = dir + "/logs/\(client).log"
        // Off the cooperative pool: this blocks until the load generator exits.
        let status = try await Processes.detached { try Processes.run(argv, log: log) }
        guard status == 0, let data = FileManager.default.contents(atPath: json) else {
            throw BenchError("the load generator on \(client) failed (exit \(status); see \(log))")
        }
        return try JSONDecoder().decode(BenchResult.self, from: data)
    }

    /// The in-process load generator's options against `entry`.
    func options(_ entry: Node, seconds: Int) -> LoadOptions {
        var o = LoadOptions(port: entry.port)
        o.host = entry.host
        o.connections = connections
        o.duration = .seconds(Int64(seconds))
        return o
    }

    static func ownCPUSeconds() -> Double {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        func s(_ t: timeval) -> Double { Double(t.tv_sec) + Double(t.tv_usec) / 1e6 }
        return s(usage.ru_utime) + s(usage.ru_stime)
    }

    /// "web ×2 0.25/0.25 · db 0.04/0.13 · …": cores used, and of what budget with hosts.
    static func cpuText(_ row: Row) -> String {
        row.cpu.map { t in
            let count = t.nodes > 1 ? " ×\(t.nodes)" : ""
            let budget = t.budget.map { "/" + String(format: "%.2f", $0) } ?? ""
            return "\(t.tier)\(count) \(String(format: "%.2f", t.cores))\(budget)"
        }.joined(separator: " · ")
    }

    public static func table(_ rows: [Row]) -> String {
        var out = "| stage | requests/s | p50 ms | p99 ms | db reads / 1k req | cache hit ratio | replica share | errors | CPU cores used\(rows.contains { $0.hosts } ? " / budget" : "") | busiest |\n"
        out += "|---|---|---|---|---|---|---|---|---|---|\n"
        for r in rows {
            out +=
                "| \(r.stage) | \(Format.number(r.requestsPerSecond)) | \(Format.ms(r.p50Ms)) | \(Format.ms(r.p99Ms)) | \(Format.number(r.databaseReadsPer1000)) | \(r.cacheHitRatio.map { String(format: "%.3f", $0) } ?? "–") | \(r.replicaShare.map { String(format: "%.0f%%", $0 * 100) } ?? "–") | \(r.errors) | \(cpuText(r)) | \(r.busiest ?? "–") |\n"
        }
        return out
    }

    public static func svg(_ rows: [Row], title: String) -> String {
        // The bottleneck: with hosts, how close the busiest tier is to its budget.
        let busiest = rows.map { r in r.cpu.first { $0.tier == r.busiest } }
        let hosts = rows.contains { $0.hosts }
        return SVGChart.bars(
            title: title, categories: rows.map(\.stage),
            panels: [
                ("requests/s", "#2f6fb0", rows.map(\.requestsPerSecond)),
                ("p99 latency, ms", "#c0392b", rows.map(\.p99Ms)),
                ("database reads per 1,000 requests", "#8e44ad", rows.map(\.databaseReadsPer1000)),
                (
                    hosts ? "busiest tier: CPU used ÷ its budget" : "busiest tier: cores used", "#27ae60",
                    busiest.map { ($0.flatMap { hosts ? $0.utilization : $0.cores }) ?? 0 }
                ),
            ],
            notes: [3: busiest.map { t in t.map { "\($0.tier) \(String(format: hosts ? "%.0f%%" : "%.2f", hosts ? ($0.utilization ?? 0) * 100 : $0.cores))" } ?? "–" }])
    }
}

/// Prometheus text scraped from the web servers, summed across them.
struct Metrics {
    var samples: [(name: String, labels: [String: String], value: Double)] = []

    static func scrape(_ nodes: [Node]) -> Metrics {
        var m = Metrics()
        for node in nodes {
            guard let (status, body) = Processes.httpGet(host: node.host, port: node.port, path: "/metrics"), status == 200 else { continue }
            for line in body.split(separator: "\n") where !line.hasPrefix("#") {
                guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else { continue }
                let series = line[..<space]
                var name = String(series)
                // Each server's series apart: two servers report the same labels.
                var labels: [String: String] = ["_server": node.name]
                if let brace = series.firstIndex(of: "{") {
                    name = String(series[..<brace])
                    for pair in series[series.index(after: brace)...].dropLast().split(separator: ",") {
                        let kv = pair.split(separator: "=", maxSplits: 1)
                        if kv.count == 2 { labels[String(kv[0])] = kv[1].trimmingCharacters(in: CharacterSet(charactersIn: "\"")) }
                    }
                }
                m.samples.append((name, labels, value))
            }
        }
        return m
    }

    func value(_ name: String, where match: [String: String] = [:]) -> Double {
        samples.filter { sample in sample.name == name && match.allSatisfy { k, v in sample.labels[k] == v } }.map(\.value)
            .reduce(0, +)
    }

    /// Counter increases between two scrapes (`self` later than `earlier`).
    func minus(_ earlier: Metrics) -> Metrics {
        var out = self
        for i in out.samples.indices {
            let s = out.samples[i]
            let before = earlier.samples.first { $0.name == s.name && $0.labels == s.labels }?.value ?? 0
            out.samples[i].value = s.value - before
        }
        return out
    }
}
