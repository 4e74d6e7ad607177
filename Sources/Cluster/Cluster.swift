import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// What `up` started, so later commands (status, scale, kill, down) can find it.
public struct ClusterState: Codable, Sendable {
    /// The secrets as the environment of a process that needs them (the web servers,
    /// workers, `migrate`, `seed`, the scripts): `/proc/PID/environ` is readable by the
    /// process's owner only, unlike its command line.
    public var secretEnvironment: [String: String] {
        var env: [String: String] = [:]
        env["MILLIONS_REDIS_PASSWORD"] = redisPassword
        env["MILLIONS_MEMCACHED_PASSWORD"] = memcachedPassword
        env["MILLIONS_CACHE_MEMCACHED_PASSWORD"] = memcachedPassword
        env["MILLIONS_DATA_POSTGRES_PASSWORD"] = postgresPassword
        return env
    }

    /// What psql needs to log in to the cluster's PostgreSQL (libpq reads `PGPASSWORD`).
    public var psqlEnvironment: [String: String] { postgresPassword.map { ["PGPASSWORD": $0] } ?? [:] }

    public var ports: Ports
    /// The user's `--set` keys, given to every web server.
    public var settings: [String: String]
    /// The nodes running now (scaling changes them).
    public var topology: Topology
    /// Set when every node runs on a host of its own (`up --hosts`).
    public var hosts: HostsPlan?
    /// Commits wait for a replica (of another site when there is one): `up --sync`.
    public var syncReplication = false
    /// Sites cut off by `site-down` (nil: none).
    public var sitesDown: [String]? = nil
    /// PostgreSQL under Patroni + etcd (`up --ha`): failover without an operator.
    public var ha: Bool? = nil
    /// The password every Redis server and sentinel of the cluster requires, made at `up`
    /// (this file is readable by its owner only). It reaches the servers' configuration
    /// files and the web servers' environment, never a command line.
    public var redisPassword: String? = nil
    /// The same for memcached's ASCII authentication (user `millions`).
    public var memcachedPassword: String? = nil
    /// And for PostgreSQL's `postgres` user (scram-sha-256 over TCP).
    public var postgresPassword: String? = nil
    public var patroni: Bool { ha ?? false }
    public var stage: Stage { topology.stage }
    public var nodes: [Node] {
        get { topology.nodes }
        set { topology.nodes = newValue }
    }
    public var webServers: [Node] { topology.nodes(.web) }
    public var workers: [Node] { topology.nodes(.worker) }
}

/// A node process's state as `cluster status` reports it (a database node's role is DataTier's `NodeStatus`).
public struct ProcessStatus: Sendable {
    public var node: Node
    public var pid: Int32?
    /// ready / unready (web), up, down
    public var health: String
}

/// `millions cluster`: brings a stage up on this machine from real servers, reports on it,
/// scales the web tier without failing a request, breaks it on purpose, and takes it all
/// down again. All state lives under one folder.
public struct Cluster: Sendable {
    public let dir: String
    /// The `millions` binary the web servers run.
    public let binary: String
    /// The project's `scripts/` folder (PostgreSQL, memcached and Redis helpers).
    public let scripts: String
    let say: @Sendable (String) -> Void

    public init(dir: String, binary: String, scripts: String, say: @escaping @Sendable (String) -> Void) {
        self.dir = URL(fileURLWithPath: dir).standardizedFileURL.path
        self.binary = binary
        self.scripts = scripts
        self.say = say
    }

    var statePath: String { dir + "/state.json" }
    var logs: String { dir + "/logs" }
    var run: String { dir + "/run" }
    /// nginx's folder (configuration, pid, temporary files): the one its pid file is in.
    func nginxDir(_ node: Node) -> String { URL(fileURLWithPath: node.pidFile).deletingLastPathComponent().path }

    public func loadState() throws -> ClusterState {
        guard let data = FileManager.default.contents(atPath: statePath) else {
            throw Processes.Failure("no cluster in \(dir) (run `millions cluster up` first)")
        }
        return try JSONDecoder().decode(ClusterState.self, from: data)
    }

    func save(_ state: ClusterState) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try encoder.encode(state).write(to: URL(fileURLWithPath: statePath))
        chmod(statePath, 0o600)  // it names every node, port and folder: the operator's only
        // Whatever the topology now is, Prometheus can scrape all of it.
        try ServerConfigs.prometheus(web: state.webServers.map(\.address), workers: state.workers.map(\.address))
            .write(toFile: dir + "/prometheus.yml", atomically: true, encoding: .utf8)
    }

    // MARK: - up

    /// Starts every server of `stage` and waits until each is ready. Returns seconds taken.
    @discardableResult
    public func up(
        stage: Stage, webServers: Int?, basePort: Int, settings: [String: String], hosts: Bool = false, cpus: Double? = nil,
        wan: (delayMs: Double, jitterMs: Double)? = nil, syncReplication: Bool = false, ha: Bool = false, shards: Int? = nil
    ) throws -> Double {
        let started = Date()
        if let existing = try? loadState(), existing.nodes.contains(where: { pid(of: $0).map(Processes.isAlive) ?? false }) {
            throw Processes.Failure("a \(existing.stage.rawValue) cluster is already up in \(dir); run `millions cluster down` first")
        }
        if let web = webServers {
            guard web >= 1, web <= Ports.maxWebServers, stage.balanced || web == 1 else {
                throw Processes.Failure(
                    stage.balanced ? "--web must be 1...\(Ports.maxWebServers)" : "the \(stage.rawValue) stage has one web server")
            }
        }
        if let shards {
            guard stage == .sharded, (1...Stage.maxShards).contains(shards) else {
                throw Processes.Failure(stage == .sharded ? "--shards must be 1...\(Stage.maxShards)" : "--shards is for the sharded stage")
            }
        }
        guard hosts || !stage.needsHosts else {
            throw Processes.Failure("the \(stage.rawValue) stage needs hosts (--hosts): its sites are subnets, joined only by the WAN's relays")
        }
        if let wan, !(wan.delayMs >= 0 && wan.jitterMs >= 0 && wan.delayMs + wan.jitterMs <= 10_000) {
            throw Processes.Failure("the WAN's delay and jitter must be 0…10000 ms")
        }
        let ports = try Ports(base: basePort)
        var plan: HostsPlan? = nil
        if hosts {
            let budget = Self.defaultHostBudget
            let prefix = Self.hostPrefix(dir)
            // What a crashed earlier `up` in this folder left behind.
            try HostNetwork(prefix: prefix, subnet: 1).removeAll()
            var subnets: [Int] = []
            for _ in stage.sites {
                subnets.append(try HostNetwork.freeSubnet(preferred: Int(Self.fnv(dir) % 254) + 1, excluding: subnets))
            }
            plan = HostsPlan(prefix: prefix, subnets: subnets, cpus: cpus ?? budget.cpus, memoryBytes: budget.memoryBytes)
        }
        let layout = Layout(ports: ports, dir: dir, subnets: plan?.subnets ?? [])
        var topology = stage.topology(web: webServers, shards: shards, layout)
        if ha {
            guard topology.nodes(.database).count >= 2, !topology.isSharded else {
                throw Processes.Failure("--ha needs a stage with replicas and one database cluster (replicated, cached, stateless, queued, multi-dc)")
            }
            topology.nodes += layout.coordinators(sites: topology.sites)
        }
        if let wan {
            for i in topology.links.indices { (topology.links[i].delayMs, topology.links[i].jitterMs) = wan }
        }
        if plan == nil, let busy = topology.nodes.first(where: { Processes.portOpen($0.port) }) {
            throw Processes.Failure("port \(busy.port) (for \(busy.name)) is in use; choose another --base-port")
        }
        try checkReachableByServiceUsers(topology)
        for d in [dir, logs, run, dir + "/hosts"] { try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true) }
        chmod(run, 0o755)  // memcached's pid file is in a folder of its own user (scripts/memcached)

        // Saved before anything starts, so `down` can clean up after a failed `up` (it
        // stops by pid file and script, which skip what never started). Every node's
        // settings come from the whole topology, not from the part already running.
        var state = ClusterState(ports: ports, settings: settings, topology: topology, hosts: plan)
        state.redisPassword = Self.newSecret()
        state.memcachedPassword = Self.newSecret()
        state.postgresPassword = Self.newSecret()
        state.syncReplication = syncReplication
        if syncReplication && topology.nodes(.database).count < 2 {
            throw Processes.Failure("--sync needs replicas; the \(stage.rawValue) stage has none")
        }
        state.ha = ha ? true : nil
        try save(state)
        if let plan {
            try plan.network().create()
            let subnets = zip(stage.sites, plan.subnets).map { "\($0) 198.18.\($1).0/24" }.joined(separator: ", ")
            say("hosts: \(topology.nodes.count) on bridge \(plan.prefix)br (\(subnets)), \(plan.cpus) cores and \(plan.memoryBytes >> 20) MiB each")
            for link in topology.links {
                say("WAN \(link.sites.joined(separator: " ↔ ")): \(link.delayMs) ms one way, jitter \(link.jitterMs) ms, through each site's gateway")
            }
        }
        for role in Role.allCases {
            let nodes = topology.nodes(role)
            guard !nodes.isEmpty else { continue }
            let t = Date()
            try start(nodes, role, state)
            say(startedLine(role, nodes) + " in \(seconds(since: t))")
        }
        let entries = try topology.sites.map { try topology.entry(site: $0).orThrow("site \($0) has no web server") }
        for entry in entries {
            // Bounds here are for a machine that is busy (a CPU hog, the test suite): waits end as soon as the condition holds.
            guard Processes.wait(seconds: 60, every: 0.1, until: { Processes.httpStatus(host: entry.host, port: entry.port, path: "/readyz") == 200 }) else {
                throw Processes.Failure("the site on \(entry.address) did not become ready")
            }
        }
        let took = Date().timeIntervalSince(started)
        say("stage \(stage.rawValue) up in \(String(format: "%.1f", took)) s: \(stage.summary)")
        for entry in entries { say("site\(entries.count > 1 ? " (" + entry.site + ")" : ""): http://\(entry.address)/") }
        return took
    }

    /// Every host's budget unless `--cpus` says otherwise: the same for every stage. It is
    /// sized by the journey up to `queued`; the sharded stage's clusters are machines added
    /// beyond it (with 2 or 3 clusters its hosts' caps add up to more than the box has).
    public static var defaultHostBudget: (cpus: Double, memoryBytes: UInt64) {
        let sized = Stage.journey.filter { $0 != .sharded }
        return HostsPlan.defaultBudget(hostsInLargestStage: sized.map { $0.standard.nodes.count }.max() ?? 1)
    }

    /// Starts the nodes of one role and waits until they serve.
    func start(_ nodes: [Node], _ role: Role, _ state: ClusterState) throws {
        try addHosts(nodes, state)
        switch role {
        case .gateway:
            for n in nodes { try startGateway(n, state) }
        case .coordinator:
            try script("patroni", ["start-etcd"], env: pgEnv(state))
        case .database:
            for group in state.topology.databaseGroups where group.contains(where: nodes.contains) {
                let replicas = group.count - 1
                if state.patroni {
                    try script("patroni", ["start", String(replicas)] + (state.syncReplication ? ["--sync"] : []), env: pgEnv(state))
                } else {
                    try script("postgres", ["start", String(replicas)] + syncFlag(state, group), env: pgEnv(state, group))
                }
            }
            try migrate(state, site: nodes[0].site)
        case .cache:
            for n in nodes { try script("memcached", ["start", String(n.port), "64"], env: serverEnv(n, state)) }
        case .sessions:
            for n in nodes { try script("redis", ["start", String(n.port)], env: serverEnv(n, state)) }
            if state.patroni { try startRedisReplicasAndSentinels(nodes, state) }
        case .web:
            for n in nodes { try startWebServer(state, n) }
            try waitReady(nodes)
        case .worker:
            for n in nodes { try startWorker(state, n) }
            // A worker's metrics server starts once its queue is reachable.
            try waitReady(nodes, path: "/healthz")
        case .balancer:
            for n in nodes { try startNginx(n, upstreams: state.topology.nodes(.web, in: n.site), state) }
        case .edge:
            for n in nodes {
                try startVarnish(n, backend: try state.topology.nodes(.balancer, in: n.site).first.orThrow("the edge needs a balancer"), state)
            }
        case .dns:
            for n in nodes { try startDNS(n, state) }
        case .client:
            break  // a host only: `cluster exec client -- …` runs the load generator there
        }
    }

    /// `millions migrate`: every cluster's schema (and a sharded tier's first map), once,
    /// before several servers start at the same moment.
    func migrate(_ state: ClusterState, site: String) throws {
        let status = try Processes.run(
            [binary, "migrate", "--log-level", "warning"] + setFlags(webSettings(state, site: site)),
            environment: state.secretEnvironment, log: "\(logs)/migrate.log")
        guard status == 0 else { throw Processes.Failure("millions migrate failed (exit \(status); see \(logs)/migrate.log)") }
    }

    // MARK: - hosts

    /// With hosts: a namespace and cgroup for each node, and `hosts/NAME`, the command that
    /// runs its arguments there (what scripts and processes are started through).
    func addHosts(_ nodes: [Node], _ state: ClusterState) throws {
        guard let plan = state.hosts else { return }
        let net = try plan.network()
        let dns = state.topology.nodes(.dns).first
        for n in nodes {
            let host = plan.host(n)
            // Each host asks the DNS server at its address on the host's own subnet.
            let prefix = n.host.split(separator: ".").prefix(3).joined(separator: ".") + "."
            try net.add(host, nameserver: dns.flatMap { d in ([d.host] + d.alsoAt).first { $0.hasPrefix(prefix) } })
            // The other sites, through this site's gateway (a host on every subnet needs none).
            if n.alsoAt.isEmpty, let gateway = state.topology.nodes(.gateway, in: n.site).first {
                let others = state.topology.links(from: n.site).compactMap { state.topology.subnet(of: $0.site) }
                try net.route(host, to: others, via: gateway.host)
                // etcd's witness is in no site: each reaches it directly, not through the WAN
                // (etcd advertises one address per member, on the first site's subnet).
                let witnesses = state.topology.nodes(.coordinator).filter { $0.site == Layout.global && !$0.alsoAt.isEmpty }
                try net.routeDirect(host, to: witnesses.map(\.host).filter { !$0.hasPrefix(prefix) })
            }
            let path = "\(dir)/hosts/\(n.name)"
            try net.wrapperScript(on: host).write(toFile: path, atomically: true, encoding: .utf8)
            chmod(path, 0o755)
        }
    }

    /// The prefix that runs a command on `node`'s host (nothing on loopback).
    func on(_ node: Node, _ state: ClusterState) -> [String] {
        state.hosts == nil ? [] : ["\(dir)/hosts/\(node.name)"]
    }

    /// 24 random bytes as hex, from the system's CSPRNG.
    static func newSecret() -> String {
        var rng = SystemRandomNumberGenerator()
        return (0..<24).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &rng)) }.joined()
    }

    /// memcached's and Redis's scripts: where to listen and how to get onto the host.
    func serverEnv(_ node: Node, _ state: ClusterState) -> [String: String] {
        var env = ["MILLIONS_RUN_DIR": run].merging(state.secretEnvironment) { a, _ in a }
        if state.hosts != nil {
            env["MILLIONS_BIND"] = node.host
            env["MILLIONS_WRAP"] = "\(dir)/hosts/\(node.name)"
        }
        return env
    }

    func network(_ state: ClusterState) throws -> HostNetwork {
        try state.hosts.orThrow("the cluster in \(dir) has no hosts (start it with `up --hosts`)").network()
    }

    func hostNode(_ name: String, _ state: ClusterState) throws -> (HostNetwork, NodeHost) {
        let net = try network(state)
        let node = try self.node(named: name, state)
        return (net, state.hosts!.host(node))
    }

    /// Cuts a node's host off the network; it keeps running (`heal` reconnects it).
    /// `postgres-leader` and `redis-master` (with `--ha`) name the host that leads now.
    public func partition(_ name: String) throws {
        let state = try loadState()
        let (net, host) = try hostNode(name, state)
        try net.partition(host)
        say("\(host.name)\(host.name == name ? "" : " (\(name))") (\(host.address)) cut off the network")
    }

    public func heal(_ name: String) throws {
        let state = try loadState()
        let (net, host) = try hostNode(name, state)
        try net.heal(host)
        say("\(name) (\(host.address)) back on the network")
    }

    /// Runs a command on a node's host, with this terminal; returns its exit status.
    public func exec(_ name: String, _ argv: [String]) throws -> Int32 {
        let state = try loadState()
        let node = try state.topology.node(named: name).orThrow("no node \(name)")
        return try Processes.run(on(node, state) + argv)
    }

    /// Vertical scaling: sets the CPU budget (cores) of nodes, by name or by role, live.
    public func scale(cpus: [String: Double]) throws {
        var state = try loadState()
        guard var plan = state.hosts else { throw Processes.Failure("CPU budgets need hosts (start the cluster with `up --hosts`)") }
        let net = try plan.network()
        for (target, cores) in cpus {
            guard cores > 0, cores <= Double(ProcessInfo.processInfo.activeProcessorCount) else {
                throw Processes.Failure("--cpu \(target): cores must be more than 0 and at most this machine's")
            }
            let nodes = state.nodes.filter { $0.name == target || $0.role.rawValue == target }
            guard !nodes.isEmpty else { throw Processes.Failure("no node or role \(target)") }
            for n in nodes {
                plan.cpusByNode[n.name] = cores
                try net.setBudget(plan.host(n))
                say("\(n.name): \(cores) cores")
            }
        }
        state.hosts = plan
        try save(state)
    }

    /// CPU seconds each node has used so far: its host's cgroup with hosts (everything that
    /// ever ran there), else its process and the live processes below it.
    public func cpuSeconds(_ state: ClusterState) throws -> [String: Double] {
        var out: [String: Double] = [:]
        if let plan = state.hosts {
            let net = try network(state)
            for n in state.nodes { out[n.name] = net.cpuSeconds(plan.host(n)) }
        } else {
            let table = ProcessTable()
            for n in state.nodes { out[n.name] = pid(of: n).flatMap(table.treeCPUSeconds) }
        }
        return out
    }

    static func fnv(_ text: String) -> UInt64 {
        text.utf8.reduce(14_695_981_039_346_656_037 as UInt64) { ($0 ^ UInt64($1)) &* 1_099_511_628_211 }
    }

    /// Kernel object names come from the cluster folder, so `down` finds them after a crash.
    /// Always "m" and 5 characters: no prefix of another cluster's (tests use "x…").
    public static func hostPrefix(_ dir: String) -> String {
        "m" + String(String(fnv(dir), radix: 36).suffix(5))
    }

    func startedLine(_ role: Role, _ nodes: [Node]) -> String {
        switch role {
        case .database:
            nodes.contains { $0.shard != nil }
                ? "postgres: \(Set(nodes.map(\.shard)).count) shard clusters, each a primary + \(nodes.count / max(1, Set(nodes.map(\.shard)).count) - 1) replicas, ready, schema migrated"
                : "postgres: primary + \(nodes.count - 1) replicas ready, schema migrated"
        case .cache: "memcached ×\(nodes.count) up"
        case .sessions: "redis up"
        case .web: "\(nodes.count) web server\(nodes.count == 1 ? "" : "s") ready"
        case .worker: "\(nodes.count) workers running"
        case .balancer: "nginx up"
        case .edge: "varnish up"
        case .client: "client host\(nodes.count == 1 ? "" : "s") ready"
        case .coordinator: "etcd ×\(nodes.count) healthy (" + nodes.map(\.address).joined(separator: ", ") + ")"
        case .gateway: "WAN gateways routing: " + nodes.map { "\($0.name) \($0.host)" }.joined(separator: ", ")
        case .dns: "DNS (PowerDNS) answering \(Topology.siteName) with each client's own site"
        }
    }

    /// The servers drop root for their own users (postgres, memcache, nobody), which must
    /// reach the cluster folder: refuse at once, naming the folder, rather than fail later
    /// inside initdb or nginx with "Permission denied" in a log file.
    func checkReachableByServiceUsers(_ topology: Topology) throws {
        guard geteuid() == 0, topology.nodes.contains(where: { ![.web, .worker, .client, .gateway].contains($0.role) }) else { return }
        var url = URL(fileURLWithPath: dir)
        while true {
            var info = stat()
            if stat(url.path, &info) == 0, info.st_mode & 0o001 == 0 {
                throw Processes.Failure(
                    "\(url.path) is not traversable by other users (mode \(String(info.st_mode & 0o777, radix: 8))), and the "
                        + "cluster's servers run as postgres, memcache and nobody inside \(dir). Use a folder they can reach, "
                        + "e.g. --dir /tmp/millions-cluster, or `chmod o+x \(url.path)`.")
            }
            if url.path == "/" { break }
            url.deleteLastPathComponent()
        }
    }

    // MARK: - web servers

    /// The configuration every web server of the cluster (in `site`, else the first)
    /// runs with (what `seed` and `migrate` need to reach the same data).
    public func webSettings(_ state: ClusterState, site: String? = nil) -> [String: String] {
        var s = state.topology.appSettings(dataDirectory: dir + "/data", site: site)
        if state.patroni, let redis = state.topology.nodes(.sessions).first {
            s["redis.sentinels"] = sentinels(redis, state).map(\.address).joined(separator: ",")
            // A session or job acknowledged is on a replica too, so a failover keeps it.
            s["redis.waitReplicas"] = "1"
        }
        s.merge(state.settings) { _, user in user }
        return s
    }

    public func setFlags(_ settings: [String: String]) -> [String] {
        settings.sorted { $0.key < $1.key }.flatMap { ["--set", "\($0.key)=\($0.value)"] }
    }

    func startWebServer(_ state: ClusterState, _ node: Node) throws {
        let argv = on(node, state) + [binary, "serve", "--host", node.host, "--port", String(node.port)]
            + setFlags(webSettings(state, site: node.site))
        let pid = try Processes.spawnDetached(argv, log: "\(logs)/\(node.name).log", environment: state.secretEnvironment)
        try String(pid).write(toFile: node.pidFile, atomically: true, encoding: .utf8)
    }

    func startWorker(_ state: ClusterState, _ node: Node) throws {
        let argv = on(node, state) + [binary, "worker", "--concurrency", "2", "--metrics-host", node.host, "--metrics-port", String(node.port)]
            + setFlags(webSettings(state, site: node.site))
        let pid = try Processes.spawnDetached(argv, log: "\(logs)/\(node.name).log", environment: state.secretEnvironment)
        try String(pid).write(toFile: node.pidFile, atomically: true, encoding: .utf8)
    }

    /// Sets the number of worker processes. Removed ones get SIGTERM: their running jobs
    /// finish within the grace period or go back to the queue.
    public func scale(workers target: Int) throws {
        var state = try loadState()
        try refuseSeveralSites(state, "scaling workers")
        guard state.stage.hasWorkers else { throw Processes.Failure("the \(state.stage.rawValue) stage has no workers (try queued)") }
        guard target >= 0, target <= Ports.maxWorkers else { throw Processes.Failure("workers must be 0...\(Ports.maxWorkers)") }
        let current = state.workers
        if target > current.count {
            let added = Self.freeIndices(named: "worker", taken: current, count: target - current.count)
                .map { layout(state).worker($0) }
            state.nodes += added
            try save(state)
            try addHosts(added, state)
            for n in added { try startWorker(state, n) }
            try waitReady(added, path: "/healthz")
        } else if target < current.count {
            let removed = Array(current.sorted { $0.name < $1.name }.suffix(current.count - target))
            stopProcesses(removed)
            try removeHosts(removed, state)
            state.nodes.removeAll { removed.contains($0) }
            try save(state)
        }
        say("workers: \(current.count) → \(target)")
    }

    /// Waits until each node answers 200 on `path` (web servers: `/readyz`, workers:
    /// `/healthz`); a process that exits (a bad configuration) fails at once.
    func waitReady(_ nodes: [Node], path: String = "/readyz") throws {
        for node in nodes {
            let alive = { pid(of: node).map(Processes.isAlive) ?? false }
            let answered = Processes.wait(seconds: 60, every: 0.1) {
                !alive() || Processes.httpStatus(host: node.host, port: node.port, path: path) == 200
            }
            guard answered, alive() else {
                throw Processes.Failure(
                    "\(node.name) on port \(node.port) is not ready (\(alive() ? "running" : "exited"); see \(logs)/\(node.name).log)")
            }
        }
    }

    // MARK: - gateways

    /// The gateway's host routes its site's packets for every linked site through a TUN
    /// device, and one `millions relay --tun` on it writes each back after the link's delay;
    /// ready when the relay holds the device. (The other direction is the other site's
    /// gateway's: each way is delayed once.)
    func startGateway(_ node: Node, _ state: ClusterState) throws {
        guard let plan = state.hosts, let own = state.topology.subnet(of: node.site) else { return }
        let linked = state.topology.links(from: node.site)
        guard let link = linked.first?.link else { return }
        let net = try plan.network()
        let host = plan.host(node)
        try net.delayRouted(host, device: Self.wanDevice, from: own, to: linked.compactMap { state.topology.subnet(of: $0.site) })
        let argv =
            on(node, state) + [
                binary, "relay", "--tun", Self.wanDevice, "--delay-ms", String(link.delayMs), "--jitter-ms", String(link.jitterMs),
            ]
        let pid = try Processes.spawnDetached(argv, log: "\(logs)/\(node.name).log")
        try String(pid).write(toFile: node.pidFile, atomically: true, encoding: .utf8)
        guard Processes.wait(seconds: 60, until: { !Processes.isAlive(pid) || net.deviceAttached(host, device: Self.wanDevice) }),
            Processes.isAlive(pid)
        else { throw Processes.Failure("\(node.name) is not delaying the WAN (see \(logs)/\(node.name).log)") }
    }

    /// The TUN device of every gateway.
    static let wanDevice = "wan0"

    // MARK: - DNS

    func dnsDir(_ node: Node) -> String { URL(fileURLWithPath: node.pidFile).deletingLastPathComponent().path }

    /// PowerDNS on its host, with the zone for the site's name; ready when a client of
    /// each site gets its own site's entry (the health checks have run).
    func startDNS(_ node: Node, _ state: ClusterState) throws {
        let folder = dnsDir(node)
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        try "zone \"\(Topology.domain)\" { type master; file \"\(folder)/zone\"; };\n"
            .write(toFile: "\(folder)/named.conf", atomically: true, encoding: .utf8)
        try ServerConfigs.dnsZone(state.topology).write(toFile: "\(folder)/zone", atomically: true, encoding: .utf8)
        let addresses = ([node.host] + node.alsoAt).joined(separator: ",")
        try script("dns", ["start", folder, addresses, String(node.port)], env: serverEnv(node, state))
        for site in state.topology.sites {
            guard let entry = state.topology.entry(site: site) else { continue }
            // The machine's own address on the site's subnet asks, as a client there would.
            let me = entry.host.split(separator: ".").prefix(3).joined(separator: ".") + ".1"
            let server = ([node.host] + node.alsoAt).first { $0.hasPrefix(String(me.dropLast(1))) } ?? node.host
            let answered = Processes.wait(seconds: 60, every: 0.5) { (try? Self.resolve(Topology.siteName, server: server, port: node.port, from: me)) == [entry.host] }
            guard answered else { throw Processes.Failure("DNS does not answer \(Topology.siteName) with \(entry.host) for site \(site) (see \(folder)/pdns.log)") }
        }
    }

    /// The A records `dig` gets for `name` from `server`, asking from address `from`.
    public static func resolve(_ name: String, server: String, port: Int = 53, from: String) throws -> [String] {
        let out = NSTemporaryDirectory() + "millions-dig-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: out) }
        let status = try Processes.run(["/usr/bin/dig", "+short", "+time=1", "+tries=1", "-p", String(port), "-b", from, "@\(server)", name, "A"], log: out)
        guard status == 0 else { throw Processes.Failure("dig failed (exit \(status))") }
        return (try String(contentsOfFile: out, encoding: .utf8)).split(whereSeparator: \.isNewline).map(String.init).filter { !$0.hasPrefix(";") }
    }

    // MARK: - nginx and Varnish

    func startNginx(_ node: Node, upstreams: [Node], _ state: ClusterState) throws {
        let folder = nginxDir(node)
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        chmod(folder, 0o755)
        // nginx's workers run as nobody when root starts it: its temporary folders are
        // theirs alone, not writable by everyone.
        let nobody = geteuid() == 0 ? getpwnam("nobody") : nil
        for d in ["/tmp", "/tmp/body", "/tmp/proxy", "/tmp/fastcgi", "/tmp/uwsgi", "/tmp/scgi"] {
            try FileManager.default.createDirectory(atPath: folder + d, withIntermediateDirectories: true)
            if let nobody { chown(folder + d, nobody.pointee.pw_uid, nobody.pointee.pw_gid) }
            chmod(folder + d, 0o700)
        }
        try writeNginxConfig(node, upstreams: upstreams, state)
        let status = try Processes.run(on(node, state) + ["/usr/sbin/nginx", "-e", "\(folder)/error.log", "-c", "\(folder)/nginx.conf"])
        guard status == 0 else { throw Processes.Failure("nginx did not start (see \(folder)/error.log)") }
        guard Processes.wait(seconds: 60, until: { Processes.portOpen(host: node.host, port: node.port) }) else {
            throw Processes.Failure("nginx is not listening on \(node.address)")
        }
    }

    func writeNginxConfig(_ node: Node, upstreams: [Node], _ state: ClusterState) throws {
        // A worker per core the host has: on a host of a fraction of a core, a second
        // worker only adds switches between them.
        let cores = state.hosts.map { $0.host(node).cpus } ?? 0
        let workers = cores > 0 ? max(1, Int(cores.rounded(.up))) : 2
        try ServerConfigs.nginx(listen: node.address, upstreams: upstreams.map(\.address), dir: nginxDir(node), workers: workers,
            operators: state.topology.operatorAddresses, edges: state.topology.nodes(.edge, in: node.site).map(\.host))
            .write(toFile: "\(nginxDir(node))/nginx.conf", atomically: true, encoding: .utf8)
    }

    func reloadNginx(_ node: Node) throws {
        let folder = nginxDir(node)
        guard let master = readPid("\(folder)/nginx.pid") else { throw Processes.Failure("nginx is not running") }
        let old = children(of: master)
        let status = try Processes.run(["/usr/sbin/nginx", "-e", "\(folder)/error.log", "-c", "\(folder)/nginx.conf", "-s", "reload"])
        guard status == 0 else { throw Processes.Failure("nginx reload failed (see \(folder)/error.log)") }
        let done = Processes.wait(seconds: 60) {
            let now = children(of: master)
            return old.allSatisfy { !now.contains($0) } && !now.isEmpty
        }
        if !done { throw Processes.Failure("nginx's old workers did not finish within 60 s") }
    }

    func startVarnish(_ node: Node, backend: Node, _ state: ClusterState) throws {
        let vcl = "\(dir)/\(node.name).vcl"
        try ServerConfigs.varnish(backend: backend, purgers: state.topology.purgers).write(toFile: vcl, atomically: true, encoding: .utf8)
        let status = try Processes.run(on(node, state) + [
            "/usr/sbin/varnishd", "-a", node.address, "-f", vcl, "-n", "\(dir)/\(node.name)",
            "-P", node.pidFile, "-s", "malloc,64m", "-T", "none",
            // Slow clients: the whole head within 10 s (as nginx and the web servers).
            "-p", "timeout_idle=10", "-p", "send_timeout=60", "-p", "idle_send_timeout=10",
        ], log: "\(logs)/\(node.name).log")
        guard status == 0 else { throw Processes.Failure("varnishd did not start (exit \(status))") }
        guard Processes.wait(seconds: 60, until: { Processes.portOpen(host: node.host, port: node.port) }) else {
            throw Processes.Failure("varnish is not listening on \(node.address)")
        }
    }

    // MARK: - status

    public func status() throws -> [ProcessStatus] {
        let state = try loadState()
        return state.nodes.map { node in
            let pid = pid(of: node)
            let alive = pid.map(Processes.isAlive) ?? false
            var health = "down"
            if (state.sitesDown ?? []).contains(node.site) && node.role != .client {
                health = "cut off"
            } else if node.role == .client {
                health = FileManager.default.fileExists(atPath: "\(dir)/hosts/\(node.name)") ? "up" : "down"
            } else if alive {
                switch node.role {
                case .web:
                    health = Processes.httpStatus(host: node.host, port: node.port, path: "/readyz", timeout: 1) == 200 ? "ready" : "unready"
                case .worker:
                    health = Processes.httpStatus(host: node.host, port: node.port, path: "/healthz", timeout: 1) == 200 ? "running" : "unready"
                case .balancer, .edge:
                    health = Processes.httpStatus(host: node.host, port: node.port, path: "/healthz", timeout: 1) == 200 ? "up" : "unready"
                case .database, .cache, .sessions, .coordinator:
                    health = Processes.portOpen(host: node.host, port: node.port, timeout: 1) ? "up" : "unready"
                case .gateway:
                    health = "routing"
                case .dns:
                    health = Processes.portOpen(host: node.host, port: node.port, timeout: 1) ? "up" : "unready"
                case .client:
                    break
                }
            }
            return ProcessStatus(node: node, pid: alive ? pid : nil, health: health)
        }
    }

    public static func table(_ rows: [ProcessStatus]) -> String {
        func col(_ text: String, _ width: Int) -> String { text.padding(toLength: width, withPad: " ", startingAt: 0) }
        var out = col("node", 20) + col("role", 10) + col("site", 8) + col("address", 22) + col("pid", 9) + "health\n"
        for r in rows {
            out += col(r.node.name, 20) + col(r.node.role.rawValue, 10) + col(r.node.site, 8)
                + col(r.node.port > 0 ? r.node.address : r.node.host, 22)
                + col(r.pid.map(String.init) ?? "-", 9) + r.health + "\n"
        }
        return out
    }

    // MARK: - scale

    /// Sets the number of web servers. New servers join the balancer once ready; removed
    /// ones leave it first (reload, old nginx workers finish), then drain on SIGTERM.
    /// No request fails either way.
    public func scale(web target: Int) throws {
        var state = try loadState()
        try refuseSeveralSites(state, "scaling the web tier")
        guard let balancer = state.topology.nodes(.balancer).first else {
            throw Processes.Failure("the \(state.stage.rawValue) stage has no load balancer to scale behind")
        }
        guard target >= 1, target <= Ports.maxWebServers else { throw Processes.Failure("web must be 1...\(Ports.maxWebServers)") }
        let current = state.webServers
        if target > current.count {
            let added = Self.freeIndices(named: "web", taken: current, count: target - current.count).map { layout(state).web($0) }
            state.nodes += added
            try save(state)
            try addHosts(added, state)
            for n in added { try startWebServer(state, n) }
            try waitReady(added)
            try writeNginxConfig(balancer, upstreams: state.webServers, state)
            try reloadNginx(balancer)
            say("web servers: \(current.count) → \(target) (\(added.map(\.name).joined(separator: ", ")) added)")
        } else if target < current.count {
            // Keep the lowest-numbered servers; prefer removing ones that are already down.
            let ordered = current.sorted { a, b in
                let aUp = pid(of: a).map(Processes.isAlive) ?? false
                let bUp = pid(of: b).map(Processes.isAlive) ?? false
                return aUp != bUp ? aUp : a.port < b.port
            }
            let keep = Array(ordered.prefix(target))
            let removed = current.filter { r in !keep.contains(r) }
            try writeNginxConfig(balancer, upstreams: keep.sorted { $0.port < $1.port }, state)
            try reloadNginx(balancer)
            stopProcesses(removed)
            try removeHosts(removed, state)
            state.nodes.removeAll { removed.contains($0) }
            try save(state)
            say("web servers: \(current.count) → \(target) (\(removed.map(\.name).joined(separator: ", ")) drained and stopped)")
        }
    }

    /// The lowest `count` indices whose `<prefix><index>` no node in `taken` uses.
    static func freeIndices(named prefix: String, taken: [Node], count: Int) -> [Int] {
        let used = Set(taken.map(\.name))
        return Array((1...).lazy.filter { !used.contains("\(prefix)\($0)") }.prefix(count))
    }

    /// SIGTERM to every process at once (web servers drain, workers finish or release
    /// their jobs), then waits for each.
    func stopProcesses(_ nodes: [Node]) {
        let pids = nodes.compactMap { pid(of: $0) }
        for p in pids { Processes.signal(p, SIGTERM) }
        for p in pids { Processes.stop(p, grace: 20) }
        for n in nodes { try? FileManager.default.removeItem(atPath: n.pidFile) }
    }

    // MARK: - kill

    /// Kills one node abruptly (kill -9), for failure drills.
    public func kill(_ name: String) throws {
        let state = try loadState()
        if name == "etcd" && state.patroni {
            // Every member: Patroni loses its store, and a leader that cannot renew its key steps down.
            try script("patroni", ["stop-etcd"], env: pgEnv(state))
            say("killed etcd (all three members)")
            return
        }
        let node = try self.node(named: name, state)
        switch node.role {
        case .database:
            try script(state.patroni ? "patroni" : "postgres", ["kill", Self.pgName(node)], env: pgEnv(state, state.topology.databaseGroup(of: node)))
        case .cache:
            try script("memcached", ["kill", String(node.port)], env: serverEnv(node, state))
        case .sessions:
            // Under Sentinel, `redis` is whichever server is the master now.
            let master = state.patroni ? try redisMaster(node, state) : RedisMember(port: node.port, node: node)
            try script("redis", ["kill", String(master.port)], env: serverEnv(master.node, state))
        case .dns:
            try script("dns", ["kill", dnsDir(node)], env: serverEnv(node, state))
        case .client:
            throw Processes.Failure("the client host runs no server (partition it instead)")
        case .coordinator:
            throw Processes.Failure("kill etcd stops every member; partition \(node.name) cuts one off")
        case .web, .worker, .balancer, .edge, .gateway:
            guard let pid = pid(of: node), Processes.isAlive(pid) else { throw Processes.Failure("\(name) is not running") }
            Processes.signal(pid, SIGKILL)
            Processes.wait(seconds: 10) { !Processes.isAlive(pid) }
        }
        say("killed \(node.name)\(node.name == name ? "" : " (\(name))")")
    }

    // MARK: - failover

    /// After the primary died: promote the most caught-up replica and repoint the others
    /// (`millions db failover` on this cluster's nodes). Web servers find the new primary
    /// by themselves.
    public func failover() throws {
        let state = try loadState()
        try refuseSeveralSites(state, "failover")
        let groups = state.topology.databaseGroups
        guard groups.contains(where: { $0.count > 1 }) else { throw Processes.Failure("the \(state.stage.rawValue) stage has no replicas") }
        if groups.count > 1 {
            // Sharded: each cluster whose primary is down.
            let down = groups.filter { g in !(pid(of: g[0]).map(Processes.isAlive) ?? false) }
            guard !down.isEmpty else { throw Processes.Failure("every shard cluster's primary is running") }
            for g in down { try failover(g, state) }
            return
        }
        try failover(groups[0], state)
    }

    func failover(_ databases: [Node], _ state: ClusterState) throws {
        let t = Date()
        if state.patroni {
            // Patroni's own failover (or switchover, when the leader answers): to the replica least behind.
            let leader = try scriptOutput("patroni", ["failover"], env: pgEnv(state))
            say("failover done in \(seconds(since: t)): postgres-\(leader) leads")
            return
        }
        let nodes = databases.map(\.address).joined(separator: ",")
        let status = try Processes.run(
            [binary, "db", "failover", "--log-level", "warning", "--set", "data.postgres.nodes=\(nodes)"],
            environment: state.secretEnvironment, log: "\(logs)/failover.log")
        guard status == 0 else { throw Processes.Failure("failover failed (exit \(status); see \(logs)/failover.log)") }
        say("failover\(databases[0].shard.map { " of cluster " + $0 } ?? "") done in \(seconds(since: t))")
    }

    // MARK: - down

    /// Stops everything `up` started, by pid, and removes the cluster's data (logs stay).
    public func down() throws {
        let state = try loadState()
        let t = Date()
        // In reverse start order: the entry first, the data last.
        for role in Role.allCases.reversed() {
            let nodes = state.topology.nodes(role)
            switch role {
            case .edge, .balancer, .gateway:
                for node in nodes { if let pid = pid(of: node) { Processes.stop(pid, grace: 10) } }
            case .worker, .web:
                stopProcesses(nodes)
            case .sessions:
                for node in nodes {
                    let members = state.patroni ? redisServers(node, state) + sentinels(node, state) : [RedisMember(port: node.port, node: node)]
                    for m in members { try? script("redis", ["stop", String(m.port)], env: serverEnv(m.node, state)) }
                }
            case .cache:
                for node in nodes { try? script("memcached", ["stop", String(node.port)], env: serverEnv(node, state)) }
            case .database:
                for group in state.topology.databaseGroups {
                    try? script(state.patroni ? "patroni" : "postgres", ["destroy"], env: pgEnv(state, group))
                }
            case .dns:
                for node in nodes { try? script("dns", ["stop", dnsDir(node)], env: serverEnv(node, state)) }
            case .client, .coordinator:
                break  // etcd stops with the databases (scripts/patroni destroy)
            }
        }
        // Then the hosts: namespaces, links, bridge, cgroups (killing anything left in them).
        var hostLeftovers: [String] = []
        if let plan = state.hosts {
            let net = try plan.network()
            try? net.removeAll()
            hostLeftovers = (try? net.leftovers()) ?? ["cannot list the hosts' network objects"]
        }
        // On hosts, no port check: a namespace that is gone takes its sockets with it, and
        // an address of a removed bridge may be routed elsewhere (and even answer).
        let leftovers = state.nodes.filter { node in
            (pid(of: node).map(Processes.isAlive) ?? false) || (state.hosts == nil && Processes.portOpen(node.port))
        }.map(\.name) + hostLeftovers
        for item in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] where item != "logs" {
            try? FileManager.default.removeItem(atPath: dir + "/" + item)
        }
        if !leftovers.isEmpty {
            throw Processes.Failure("still running after down: \(leftovers.joined(separator: ", "))")
        }
        say("stage \(state.stage.rawValue) down in \(seconds(since: t)); logs kept in \(logs)")
    }

    // MARK: - helpers

    func layout(_ state: ClusterState) -> Layout { Layout(ports: state.ports, dir: dir, subnets: state.hosts?.subnets ?? []) }

    /// What is not done across sites yet (per-site scaling; a site's failover comes with `site-down`).
    func refuseSeveralSites(_ state: ClusterState, _ what: String) throws {
        guard state.topology.sites.count == 1 else {
            throw Processes.Failure("\(what) is for one-site stages; the \(state.stage.rawValue) stage has sites \(state.topology.sites.joined(separator: ", "))")
        }
    }

    /// `--sync=…` for scripts/postgres: a commit waits for one replica, of another site than
    /// the primary's when there is one (so a site's loss loses no acknowledged write).
    func syncFlag(_ state: ClusterState, _ group: [Node]? = nil) -> [String] {
        guard state.syncReplication else { return [] }
        let databases = group ?? state.topology.databaseGroups.first ?? []
        guard let primary = databases.first else { return [] }
        let replicas = databases.dropFirst()
        let remote = replicas.filter { $0.site != primary.site }
        let names = (remote.isEmpty ? Array(replicas) : remote).map(Self.pgName)
        return ["--sync=" + names.joined(separator: ",")]
    }

    /// scripts/postgres's (and scripts/patroni's) environment for one database cluster: a
    /// shard's, or by default the first (the only one unless the users are sharded).
    func pgEnv(_ state: ClusterState, _ group: [Node]? = nil) -> [String: String] {
        let databases = group ?? state.topology.databaseGroups.first ?? []
        let primary = databases.first
        // postgres-primary's data is in pg/primary, postgres-b-primary's in pg-b/primary.
        let folder = primary.map { URL(fileURLWithPath: $0.pidFile).deletingLastPathComponent().deletingLastPathComponent().path } ?? dir + "/pg"
        var env = [
            "MILLIONS_PG_DIR": folder, "MILLIONS_PG_PORT": String(primary?.port ?? state.ports.postgres),
            "MILLIONS_PATRONI_PORT": String(state.ports.patroni), "MILLIONS_ETCD_PORT": String(state.ports.etcd),
            "MILLIONS_LOG_DIR": logs,
        ]
        env["MILLIONS_PG_PASSWORD"] = state.postgresPassword
        // Under Patroni with several sites and --sync, a commit waits for every replica: the
        // other site's is then always a synchronous standby, so losing the primary's whole
        // site loses no acknowledged write and that replica may take over (Patroni promotes
        // only a synchronous standby). A replica that stops answering leaves the set.
        if state.topology.sites.count > 1 {
            env["MILLIONS_PATRONI_SYNC_NODES"] = String(max(1, databases.count - 1))
            // Slower timing than one site's (docs/failover.md): an etcd request from a host of an
            // eighth of a core takes about a second (etcd's v2 authentication checks a bcrypt
            // hash on every request), and Patroni gives each member retry_timeout ÷ 3.
            let given = ProcessInfo.processInfo.environment
            for (key, value) in [("TTL", "15"), ("LOOP_WAIT", "2"), ("RETRY_TIMEOUT", "6")] {
                env["MILLIONS_PATRONI_" + key] = given["MILLIONS_PATRONI_" + key] ?? value
            }
        }
        if state.hosts != nil {
            env["MILLIONS_PG_HOSTS"] = databases.map { "\(Self.pgName($0))=\($0.host)" }.joined(separator: " ")
            env["MILLIONS_WRAP_DIR"] = dir + "/hosts"
            if let shard = primary?.shard, primary?.name.hasPrefix("postgres-\(shard)-") == true {
                env["MILLIONS_PG_WRAP_PREFIX"] = "postgres-\(shard)-"
            }
            env["MILLIONS_ETCD_HOSTS"] = state.topology.nodes(.coordinator).map(\.host).joined(separator: " ")
            // A replica in another site than the primary streams from it across the WAN.
            if let primary {
                env["MILLIONS_PG_UPSTREAMS"] = databases.dropFirst().filter { $0.site != primary.site }
                    .map { "\(Self.pgName($0))=\(primary.address)" }
                    .joined(separator: " ")
            }
        }
        return env
    }

    /// Removes the hosts of nodes that have stopped (after `scale` down).
    func removeHosts(_ nodes: [Node], _ state: ClusterState) throws {
        guard let plan = state.hosts else { return }
        let net = try plan.network()
        for n in nodes {
            try net.remove(plan.host(n))
            try? FileManager.default.removeItem(atPath: "\(dir)/hosts/\(n.name)")
        }
    }

    func script(_ name: String, _ args: [String], env: [String: String]) throws {
        let status = try Processes.run(["/bin/bash", "\(scripts)/\(name)"] + args, environment: env, log: "\(logs)/\(name).log")
        guard status == 0 else {
            throw Processes.Failure("scripts/\(name) \(args.joined(separator: " ")) failed (exit \(status); see \(logs)/\(name).log)")
        }
    }

    public func pid(of node: Node) -> Int32? { readPid(node.pidFile) }

    func readPid(_ path: String) -> Int32? {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8),
            let pid = text.split(whereSeparator: \.isNewline).first.flatMap({ Int32($0.trimmingCharacters(in: .whitespaces)) })
        else { return nil }
        // A pid file outlives its process; the number may now be someone else's. The process
        // a pid file names started before the file was written: one that started later is
        // not ours, and is never signalled.
        if let age = Processes.age(pid), let written = Processes.modificationTime(path),
            age + 2 < Date().timeIntervalSince1970 - written
        {
            return nil
        }
        return pid
    }

    /// Child processes of `pid`, from /proc.
    func children(of pid: Int32) -> Set<Int32> {
        let table = ProcessTable()
        return Set((table.children[pid] ?? []).filter { table.entries[$0]?.zombie == false })
    }

    func seconds(since t: Date) -> String { String(format: "%.1f s", Date().timeIntervalSince(t)) }

    /// The `scripts/` folder: `MILLIONS_SCRIPTS`, else found upward from the working
    /// directory or from the binary (it sits in the checkout's `.build`).
    public static func findScripts(binary: String) throws -> String {
        if let env = ProcessInfo.processInfo.environment["MILLIONS_SCRIPTS"] { return env }
        for start in [FileManager.default.currentDirectoryPath, URL(fileURLWithPath: binary).resolvingSymlinksInPath().path] {
            var url = URL(fileURLWithPath: start)
            for _ in 0..<8 {
                if FileManager.default.fileExists(atPath: url.path + "/scripts/postgres") { return url.path + "/scripts" }
                url.deleteLastPathComponent()
            }
        }
        throw Processes.Failure("cannot find the project's scripts/ folder; set MILLIONS_SCRIPTS")
    }
}

extension Optional {
    func orThrow(_ message: String) throws -> Wrapped {
        guard let self else { throw Processes.Failure(message) }
        return self
    }
}
