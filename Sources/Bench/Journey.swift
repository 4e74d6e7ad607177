import Cluster
import Foundation
import NIOCore

/// `millions bench journey`: every stage brought up, seeded, warmed and measured with the
/// same scenario, then brought down; one row per stage.
public struct Journey: Sendable {
    public struct Row: Codable, Sendable {
        public var stage: String
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
            let cluster = Cluster(dir: dir, binary: binary, scripts: scripts, say: { say("  " + $0) })
            say("== \(stage.rawValue): \(stage.summary)")
            let upSeconds = try cluster.up(stage: stage, webServers: nil, basePort: basePort, settings: settings)
            do {
                rows.append(try await measure(stage, cluster, upSeconds: upSeconds, say: say))
            } catch {
                try? cluster.down()
                throw error
            }
            try cluster.down()
        }
        return rows
    }

    func measure(_ stage: Stage, _ cluster: Cluster, upSeconds: Double, say: @escaping @Sendable (String) -> Void) async throws -> Row {
        let state = try cluster.loadState()
        let idsFile = dir + "/ids.txt"
        let seedStart = Date()
        let status = try Processes.run(
            [binary, "seed", "--users", String(users), "--ids-file", idsFile, "--log-level", "warning"]
                + cluster.setFlags(cluster.webSettings(state)), log: dir + "/logs/seed.log")
        guard status == 0 else { throw BenchError("seeding failed (see \(dir)/logs/seed.log)") }
        let seedSeconds = Date().timeIntervalSince(seedStart)
        say("  seeded \(users) users in \(String(format: "%.1f", seedSeconds)) s")
        let scenario = ReadScenario(ids: try Setup.ids(file: idsFile), distribution: distribution)
        var options = LoadOptions(port: state.ports.site)
        options.connections = connections
        if warmup > 0 {
            options.duration = .seconds(Int64(warmup))
            _ = try await LoadRunner.run(options, scenario: scenario)
        }
        let webPorts = state.webServers.map(\.port)
        let before = Metrics.scrape(webPorts)
        options.duration = .seconds(Int64(duration))
        let result = try await LoadRunner.run(options, scenario: scenario)
        let after = Metrics.scrape(webPorts)
        let d = after.minus(before)
        let requests = max(d.value("http_server_requests_total"), 1)
        let hits = d.value("cache_hits_total"), misses = d.value("cache_misses_total")
        // Reads are labelled role=read on whichever node served them (role=primary when
        // read-your-writes pinned them there); a node is a replica if no server saw it as primary.
        let primaries = Set(after.samples.filter { $0.name == "db_node_is_primary" && $0.value > 0 }.compactMap { $0.labels["node"] })
        let reads = d.samples.filter { $0.name == "db_query_duration_seconds_count" && ($0.labels["role"] == "read" || $0.labels["role"] == "primary") }
        let allQueries = reads.map(\.value).reduce(0, +)
        let replica = reads.filter { $0.labels["role"] == "read" && !primaries.contains($0.labels["node"] ?? "") }.map(\.value).reduce(0, +)
        let row = Row(
            stage: stage.rawValue, requestsPerSecond: result.requestsPerSecond, p50Ms: result.latencyMs.p50,
            p99Ms: result.latencyMs.p99,
            databaseReadsPer1000: d.value("user_store_calls_total", where: ["op": "read"]) / requests * 1000,
            cacheHitRatio: hits + misses > 0 ? hits / (hits + misses) : nil,
            replicaShare: stage.replicas > 0 && allQueries > 0 ? replica / allQueries : nil,
            errors: result.errorCount, upSeconds: upSeconds, seedSeconds: seedSeconds)
        say("  \(Int(row.requestsPerSecond)) req/s, p99 \(Format.ms(row.p99Ms)) ms, \(Format.number(row.databaseReadsPer1000)) db reads / 1k requests")
        return row
    }

    public static func table(_ rows: [Row]) -> String {
        var out = "| stage | requests/s | p50 ms | p99 ms | db reads / 1k req | cache hit ratio | replica share | errors |\n"
        out += "|---|---|---|---|---|---|---|---|\n"
        for r in rows {
            out +=
                "| \(r.stage) | \(Format.number(r.requestsPerSecond)) | \(Format.ms(r.p50Ms)) | \(Format.ms(r.p99Ms)) | \(Format.number(r.databaseReadsPer1000)) | \(r.cacheHitRatio.map { String(format: "%.3f", $0) } ?? "–") | \(r.replicaShare.map { String(format: "%.0f%%", $0 * 100) } ?? "–") | \(r.errors) |\n"
        }
        return out
    }

    public static func svg(_ rows: [Row], title: String) -> String {
        SVGChart.bars(
            title: title, categories: rows.map(\.stage),
            panels: [
                ("requests/s", "#2f6fb0", rows.map(\.requestsPerSecond)),
                ("p99 latency, ms", "#c0392b", rows.map(\.p99Ms)),
                ("database reads per 1,000 requests", "#8e44ad", rows.map(\.databaseReadsPer1000)),
            ])
    }
}

/// Prometheus text scraped from the web servers, summed across them.
struct Metrics {
    var samples: [(name: String, labels: [String: String], value: Double)] = []

    static func scrape(_ ports: [Int]) -> Metrics {
        var m = Metrics()
        for port in ports {
            guard let (status, body) = Processes.httpGet(port: port, path: "/metrics"), status == 200 else { continue }
            for line in body.split(separator: "\n") where !line.hasPrefix("#") {
                guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else { continue }
                let series = line[..<space]
                var name = String(series)
                var labels: [String: String] = [:]
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
