import Foundation

/// `cluster scale shards=N` on the sharded stage: clusters join while the site serves.
extension Cluster {
    /// Adds shard clusters (each a primary and as many replicas as the first), then moves
    /// their even share of the logical shards onto them online (`millions shards rebalance`).
    /// Web servers and workers are replaced by ones that know the new clusters before any
    /// shard moves, the old ones leaving as in `scale web` (out of nginx, then draining).
    public func scale(shards target: Int) throws {
        var state = try loadState()
        let groups = state.topology.databaseGroups
        guard state.topology.isSharded else { throw Processes.Failure("shards=N is for the sharded stage") }
        guard target >= groups.count, target <= Stage.maxShards else {
            throw Processes.Failure(
                "shards can grow from \(groups.count) to at most \(Stage.maxShards); a cluster is not taken away here "
                    + "(move its shards off with `millions shards move` first)")
        }
        guard target > groups.count else {
            say("shards: already \(target)")
            return
        }
        let t = Date()
        let replicas = groups[0].count - 1
        let added = (groups.count..<target).map { layout(state).shardCluster($0, replicas: replicas) }
        // Beside the other database nodes, so status lists the clusters together.
        let after = state.nodes.lastIndex { $0.role == .database }.map { $0 + 1 } ?? 0
        state.nodes.insert(contentsOf: added.flatMap { $0 }, at: after)
        try save(state)
        try addHosts(added.flatMap { $0 }, state)
        for group in added { try script("postgres", ["start", String(replicas)] + syncFlag(state, group), env: pgEnv(state, group)) }
        try migrate(state, site: groups[0][0].site)
        say("shard clusters \(added.compactMap { $0.first?.shard }.joined(separator: ", ")) up and migrated in \(seconds(since: t))")

        try replaceWebServers(&state)
        try replaceWorkers(&state)

        let moved = Date()
        let log = "\(logs)/rebalance.log"
        let status = try Processes.run(
            [binary, "shards", "rebalance", "--log-level", "warning"] + setFlags(webSettings(state)),
            environment: state.secretEnvironment, log: log)
        guard status == 0 else { throw Processes.Failure("millions shards rebalance failed (exit \(status); see \(log))") }
        // Its last line sums the moves up (count, fence p50 and longest).
        let summary = (try? String(contentsOfFile: log, encoding: .utf8))?.split(separator: "\n").last.map(String.init) ?? ""
        say("rebalanced in \(seconds(since: moved)): \(summary)")
        say("shards: \(groups.count) → \(target) clusters in \(seconds(since: t))")
    }

    /// New web servers with the settings the topology gives now join nginx once ready; the
    /// old ones leave it, then drain. No request fails (as in `scale web`).
    func replaceWebServers(_ state: inout ClusterState) throws {
        let old = state.webServers
        guard let balancer = state.topology.nodes(.balancer).first, !old.isEmpty else {
            throw Processes.Failure("replacing web servers needs a load balancer")
        }
        let added = Self.freeIndices(named: "web", taken: old, count: old.count).map { layout(state).web($0) }
        guard added.allSatisfy({ $0.port <= state.ports.web(Ports.maxWebServers) }) else {
            throw Processes.Failure("no free web server ports to replace \(old.count) servers")
        }
        state.nodes += added
        try save(state)
        try addHosts(added, state)
        for n in added { try startWebServer(state, n) }
        try waitReady(added)
        try writeNginxConfig(balancer, upstreams: added, state)
        try reloadNginx(balancer)
        stopProcesses(old)
        try removeHosts(old, state)
        state.nodes.removeAll { old.contains($0) }
        try save(state)
        say("web servers replaced: \(old.map(\.name).joined(separator: ", ")) → \(added.map(\.name).joined(separator: ", "))")
    }

    /// The same for workers: new ones start, then the old ones finish or release their jobs.
    func replaceWorkers(_ state: inout ClusterState) throws {
        let old = state.workers
        guard !old.isEmpty else { return }
        let added = Self.freeIndices(named: "worker", taken: old, count: old.count).map { layout(state).worker($0) }
        state.nodes += added
        try save(state)
        try addHosts(added, state)
        for n in added { try startWorker(state, n) }
        try waitReady(added, path: "/healthz")
        stopProcesses(old)
        try removeHosts(old, state)
        state.nodes.removeAll { old.contains($0) }
        try save(state)
        say("workers replaced: \(old.map(\.name).joined(separator: ", ")) → \(added.map(\.name).joined(separator: ", "))")
    }
}
