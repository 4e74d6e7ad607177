import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// The chapter's data-center outage, as a drill: a whole site goes off the network, the
/// other takes all traffic (DNS stops answering the lost site; its replica is promoted if
/// the primary was there); later the site comes back as replicas of the new primary.
extension Cluster {
    /// Cuts every host of `site` off the network (the clients, users on the internet, stay).
    /// When the primary was there, the most caught-up replica elsewhere is promoted and the
    /// topology records it as the primary. With `--sync`, commits wait for a replica of
    /// another site: when the lost site held the only one, they stop waiting (said aloud).
    public func siteDown(_ site: String) throws {
        var state = try loadState()
        let (plan, net) = try siteDrillHosts(state, site)
        let down = state.sitesDown ?? []
        guard !down.contains(site) else { throw Processes.Failure("site \(site) is already down (`site-up \(site)` brings it back)") }
        let remaining = state.topology.sites.filter { $0 != site && !down.contains($0) }
        guard !remaining.isEmpty else { throw Processes.Failure("no other site is up to take the traffic") }
        let t = Date()
        let cut = siteHosts(state, site)
        for n in cut { try net.partition(plan.host(n)) }
        state.sitesDown = down + [site]
        try save(state)
        say("site \(site) cut off: \(cut.count) hosts (\(cut.map(\.name).joined(separator: ", ")))")

        let databases = state.topology.nodes(.database)
        if let primary = databases.first, primary.site == site, state.patroni {
            // Patroni's own failover: the leader key expires (its holder cannot renew it
            // from the cut-off site, which has no etcd majority), and a replica that can
            // reach the majority (the other site's, with the witness) takes it. Nothing to
            // run: this only waits to say when, and records the new primary.
            // Patroni promotes only a standby its sync key names (the one sure to hold every
            // acknowledged write). Right after a WAN heal PostgreSQL may count the other
            // site's standby as synchronous seconds before the key names it again: say so.
            let others = databases.filter { $0.site != site && !down.contains($0.site) }
            if state.syncReplication, let witness = others.first, let roles = patroniRoles(via: witness, state),
                !others.contains(where: { roles[Self.pgName($0)] == "sync_standby" })
            {
                say("warning: Patroni's sync key names no standby outside \(site) (\(roles.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))): Patroni will promote none of them, as none is sure to hold every acknowledged write")
            }
            var promoted: Node?
            Processes.wait(seconds: 120, every: 0.2) {
                promoted = databases.first { $0.site != site && !down.contains($0.site) && self.inRecovery($0) == false }
                return promoted != nil
            }
            let leader = try promoted.orThrow("Patroni promoted no replica outside \(site) in 120 s (see \(logs)/patroni-*.log)")
            state.topology.makePrimary(leader)
            try save(state)
            say("\(leader.name) (\(leader.site)) promoted by Patroni \(seconds(since: t)) after the cut, without a command; web servers and workers find it by themselves")
        } else if let primary = databases.first, primary.site == site {
            let f = Date()
            let status = try Processes.run(
                [binary, "db", "failover", "--log-level", "warning", "--set", "data.postgres.nodes=\(databases.map(\.address).joined(separator: ","))"],
                environment: state.secretEnvironment, log: "\(logs)/failover.log")
            guard status == 0 else { throw Processes.Failure("failover failed (exit \(status); see \(logs)/failover.log)") }
            let promoted = try databases.first { $0.site != site && inRecovery($0) == false }
                .orThrow("no primary outside \(site) after the failover (see \(logs)/failover.log)")
            state.topology.makePrimary(promoted)
            try save(state)
            say("\(promoted.name) (\(promoted.site)) promoted in \(seconds(since: f)); web servers and workers find it by themselves")
        }
        if state.syncReplication, !state.patroni, let primary = state.topology.nodes(.database).first {
            // The standbys a commit waits for, among the sites still up (Patroni keeps its own set).
            let names = syncNames(state, primary: primary, excluding: state.sitesDown ?? [])
            try script("postgres", ["set-sync", Self.pgName(primary), names.joined(separator: ",")], env: pgEnv(state))
            say(names.isEmpty
                ? "synchronous replication suspended: no replica outside \(primary.site) is up (commits would wait forever)"
                : "commits wait for one of \(names.joined(separator: ", "))")
        }
        say("site \(site) down in \(seconds(since: t)); DNS sends its clients to \(remaining.joined(separator: ", ")) once its health checks fail")
    }

    /// Brings `site` back: while it is still cut off, its PostgreSQL nodes stop (an old
    /// primary must never answer again as one), then they rejoin as replicas of the current
    /// primary across the WAN (pg_rewind), caches restart empty (they missed every change),
    /// workers and web servers restart with settings derived from the new topology, and the
    /// site's entry comes back last, so DNS sends clients to it only when it is whole.
    /// The other sites' servers keep running as they are: they name this site's nodes as
    /// remote (`data.postgres.remoteNodes`), so these come back as replicas that serve them
    /// no reads.
    public func siteUp(_ site: String) throws {
        var state = try loadState()
        let (plan, net) = try siteDrillHosts(state, site)
        guard (state.sitesDown ?? []).contains(site) else { throw Processes.Failure("site \(site) is not down") }
        let t = Date()
        let databases = state.topology.nodes(.database)
        guard let primary = databases.first, primary.site != site else {
            throw Processes.Failure("the primary is still in \(site): no other site took over")
        }
        var w = Date()
        let own = databases.filter { $0.site == site }
        let caches = state.topology.nodes(.cache, in: site)
        let workers = state.topology.nodes(.worker, in: site), webs = state.topology.nodes(.web, in: site)
        // Fencing first, while nothing can reach them. (Under Patroni an old primary cut off
        // from etcd's majority has demoted itself already; killed all the same, as a power loss.)
        for n in own {
            if state.patroni {
                try script("patroni", ["kill", Self.pgName(n)], env: pgEnv(state))
            } else {
                try script("postgres", ["stop-node", Self.pgName(n), "immediate"], env: pgEnv(state))
            }
        }
        var steps = ["databases stopped \(seconds(since: w))"]
        // Like a power loss: what ran there is dropped (a worker's leases run out elsewhere).
        for n in webs + workers {
            if let p = pid(of: n), Processes.isAlive(p) {
                Processes.signal(p, SIGKILL)
                Processes.wait(seconds: 10) { Processes.reap(p); return !Processes.isAlive(p) }
            }
            try? FileManager.default.removeItem(atPath: n.pidFile)
        }
        steps.append("web servers and workers killed \(seconds(since: w))")
        // Killed, not stopped: they missed every change, and a graceful stop of a server cut
        // off from its clients waited seconds for connections that will never close.
        for n in caches { try script("memcached", ["kill", String(n.port)], env: serverEnv(n, state)) }
        steps.append("caches stopped \(seconds(since: w))")
        let entry: Set<Role> = [.balancer, .edge]
        let hosts = siteHosts(state, site)
        for n in hosts where !entry.contains(n.role) { try net.heal(plan.host(n)) }
        say("\(site): old nodes fenced and stopped, hosts back on the network in \(seconds(since: w)) (\(steps.joined(separator: ", ")))")

        let r = Date()
        if state.patroni {
            // Patroni rejoins each as a replica of the leader by itself (pg_rewind, or a
            // fresh copy when the rewind cannot be done); this waits until every one streams.
            for n in own { try script("patroni", ["start-node", Self.pgName(n)], env: pgEnv(state)) }
            try script("patroni", ["wait-whole", "180"], env: pgEnv(state))
            say("\(own.map(\.name).joined(separator: ", ")) rejoined by Patroni as replicas of \(primary.name) in \(seconds(since: r))")
        } else {
            let source = primary.address
            let parts = source.split(separator: ":")
            for n in own { try script("postgres", ["rejoin", Self.pgName(n), String(parts[0]), String(parts[1])], env: pgEnv(state)) }
            say("\(own.map(\.name).joined(separator: ", ")) rejoined as replicas of \(primary.name) (through \(source)) in \(seconds(since: r))")
        }
        state.sitesDown = (state.sitesDown ?? []).filter { $0 != site }
        try save(state)
        if state.syncReplication, !state.patroni {
            let names = syncNames(state, primary: primary, excluding: state.sitesDown ?? [])
            try script("postgres", ["set-sync", Self.pgName(primary), names.joined(separator: ",")], env: pgEnv(state))
            if !names.isEmpty { say("commits wait for one of \(names.joined(separator: ", ")) again") }
        }

        for n in caches { try script("memcached", ["start", String(n.port), "64"], env: serverEnv(n, state)) }
        w = Date()
        for n in workers { try startWorker(state, n) }
        try waitReady(workers, path: "/healthz")
        say("\(site): workers running in \(seconds(since: w))")
        w = Date()
        for n in webs { try startWebServer(state, n) }
        try waitReady(webs)
        say("\(site): web servers ready in \(seconds(since: w))")
        w = Date()
        for n in hosts where entry.contains(n.role) { try net.heal(plan.host(n)) }
        if let front = state.topology.entry(site: site) {
            guard Processes.wait(seconds: 60, every: 0.1, until: { Processes.httpStatus(host: front.host, port: front.port, path: "/readyz") == 200 }) else {
                throw Processes.Failure("site \(site)'s entry \(front.address) is not ready")
            }
        }
        say("\(site): entry ready in \(seconds(since: w))")
        say("site \(site) serving again in \(seconds(since: t)); DNS answers it once its health checks pass")
    }

    func siteDrillHosts(_ state: ClusterState, _ site: String) throws -> (HostsPlan, HostNetwork) {
        guard state.topology.sites.count > 1 else {
            throw Processes.Failure("site drills need a stage with several sites (multi-dc); this is \(state.stage.rawValue)")
        }
        guard state.topology.sites.contains(site) else {
            throw Processes.Failure("no site \(site); sites: \(state.topology.sites.joined(separator: ", "))")
        }
        let plan = try state.hosts.orThrow("the cluster in \(dir) has no hosts")
        return (plan, try plan.network())
    }

    /// A site's hosts as a drill cuts them: all but its clients (users on the internet).
    func siteHosts(_ state: ClusterState, _ site: String) -> [Node] {
        state.nodes.filter { $0.site == site && $0.role != .client }
    }

    /// Replicas of other sites than the primary's, not in a site that is down.
    func syncNames(_ state: ClusterState, primary: Node, excluding down: [String]) -> [String] {
        state.topology.nodes(.database).dropFirst()
            .filter { $0.site != primary.site && !down.contains($0.site) }
            .map(Self.pgName)
    }

    /// Whether a PostgreSQL node is in recovery (a replica); nil when it does not answer.
    public func inRecovery(_ n: Node) -> Bool? {
        (try? psql(n, "SELECT pg_is_in_recovery()")).map { $0 == "t" }
    }

    /// One value from the `millions` database on a PostgreSQL node, through psql.
    public func psql(_ node: Node, _ sql: String) throws -> String {
        let out = "\(run)/psql-\(node.name)-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: out) }
        let status = try Processes.run(
            ["/usr/bin/psql", "-h", node.host, "-p", String(node.port), "-U", "postgres", "-d", "millions", "-Atc", sql],
            environment: ["PGCONNECT_TIMEOUT": "5"].merging(try loadState().psqlEnvironment) { a, _ in a }, log: out)
        let text = ((try? String(contentsOfFile: out, encoding: .utf8)) ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
        guard status == 0 else { throw Processes.Failure("psql on \(node.name) failed: \(text)") }
        return text
    }
}

extension Topology {
    /// Records `node` as the primary: the first database node, as every configuration reads it.
    public mutating func makePrimary(_ node: Node) {
        guard let from = nodes.firstIndex(of: node), let first = nodes.firstIndex(where: { $0.role == .database }), from != first else { return }
        let moved = nodes.remove(at: from)
        nodes.insert(moved, at: first)
    }
}
