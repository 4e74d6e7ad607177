/// A stage of the journey (ARCHITECTURE.md §4): which real servers run, as a `Topology`.
/// Every stage runs the same binary with settings derived from its topology.
public enum Stage: String, CaseIterable, Codable, Sendable {
    case single
    case separateDB = "separate-db"
    case loadBalanced = "load-balanced"
    case replicated
    case cached
    case stateless
    case queued
    /// Users over several PostgreSQL clusters (shards), each a primary and a replica.
    case sharded
    /// Two data centers joined by a WAN (needs hosts).
    case multiDC = "multi-dc"

    /// The stages of the journey on one site, each the one before plus a tier.
    public static let journey: [Stage] = [.single, .separateDB, .loadBalanced, .replicated, .cached, .stateless, .queued, .sharded]

    /// Clusters of the sharded stage unless `up --shards` says otherwise, and the most it
    /// has ports for.
    public static let defaultShards = 2
    public static let maxShards = 3

    /// The data centers the stage spans.
    public var sites: [String] { self == .multiDC ? ["west", "east"] : ["dc1"] }

    /// The stage's nodes: what runs, on which port, where. `web` overrides the number of
    /// web servers behind a balancer (per site), `shards` the sharded stage's clusters.
    public func topology(web: Int? = nil, shards: Int? = nil, _ layout: Layout) -> Topology {
        var nodes: [Node] = []
        for (i, site) in sites.enumerated() {
            let l = layout.at(site, index: i, of: sites.count)
            // With hosts, clients get a host of their own too, outside the servers' budget.
            nodes += servers(web: web, shards: shards, l) + (layout.onHosts ? [l.client()] : [])
        }
        let links = sites.count > 1 ? [WANLink(sites: sites, delayMs: WANLink.defaultDelayMs, jitterMs: 0)] : []
        if sites.count > 1 && layout.onHosts { nodes.append(layout.dns()) }
        return Topology(stage: self, nodes: nodes.sorted { $0.role < $1.role }, links: links)
    }

    /// The stage's servers on one site; each stage is the one before it plus what it adds.
    func servers(web: Int?, shards: Int? = nil, _ l: Layout) -> [Node] {
        switch self {
        case .multiDC:
            // Each site: edge, balancer, web servers, a cache, a worker, a replica, and its
            // end of the WAN. The primary lives in the first site. No Redis: sessions are
            // rows in PostgreSQL, so they replicate to both sites and fail over with the
            // data (docs/cluster.md). Indices are global so ports and pid files never collide.
            let first = l.siteIndex == 0
            let webs = web ?? 2
            return [l.gateway()] + (first ? l.databases(replicas: 1) : [l.database(replica: 2)])
                + [l.cache(l.siteIndex + 1)] + (1...webs).map { l.web(l.siteIndex * webs + $0) } + [l.worker(l.siteIndex + 1)]
                + [l.balancer(behindEdge: true), l.edge()]
        case .single:
            return [l.web(1, isEntry: true)]
        case .separateDB:
            return l.databases(replicas: 0) + [l.web(1, isEntry: true)]
        case .loadBalanced:
            return l.databases(replicas: 0) + l.webs(web ?? 2) + [l.balancer(behindEdge: false)]
        case .replicated:
            return l.databases(replicas: 2) + l.webs(web ?? 2) + [l.balancer(behindEdge: false)]
        case .cached:
            return l.databases(replicas: 2) + l.caches(2) + l.webs(web ?? 2) + [l.balancer(behindEdge: true), l.edge()]
        case .stateless:
            return Stage.cached.servers(web: web, l) + [l.sessions()]
        case .queued:
            return Stage.stateless.servers(web: web, l) + l.workers(2)
        case .sharded:
            // As queued, with the users spread over clusters instead of one primary's.
            let clusters = (0..<(shards ?? Self.defaultShards)).flatMap { l.shardCluster($0, replicas: 1) }
            return clusters + Stage.queued.servers(web: web, l).filter { $0.role != .database }
        }
    }

    /// The stage as it comes up by default (ports from 8080, no folder): for the figures
    /// below, which describe the stage rather than a running cluster.
    var standard: Topology { topology(Layout(ports: Ports.standard, dir: "")) }
    /// Sites live on subnets of hosts: without them, nothing keeps them apart.
    public var needsHosts: Bool { sites.count > 1 }
    public var replicas: Int { max(0, standard.nodes(.database).count - standard.databaseGroups.count) }
    /// nginx in front of several web servers.
    public var balanced: Bool { !standard.nodes(.balancer).isEmpty }
    /// Varnish as the edge (CDN) in front of nginx.
    public var edge: Bool { !standard.nodes(.edge).isEmpty }
    /// `millions worker` processes consuming the PostgreSQL queue.
    public var defaultWorkers: Int { standard.nodes(.worker).count }
    public var hasWorkers: Bool { defaultWorkers > 0 }
    public var defaultWebServers: Int { standard.nodes(.web).count }

    public var summary: String {
        switch self {
        case .single: "one web server with SQLite and the in-process cache"
        case .separateDB: "one web server, PostgreSQL on its own"
        case .loadBalanced: "nginx in front of web servers, PostgreSQL"
        case .replicated: "nginx, web servers, PostgreSQL primary + 2 replicas (reads on replicas)"
        case .cached: "Varnish edge, nginx, web servers, memcached ×2, PostgreSQL primary + 2 replicas"
        case .stateless: "as cached, with sessions in Redis"
        case .queued: "as stateless, with worker processes on the PostgreSQL queue"
        case .sharded: "as queued, with the users over PostgreSQL clusters (shards), each a primary + 1 replica"
        case .multiDC: "two sites (west, east) joined by a WAN, each with an edge, nginx, web servers, memcached, a replica, a worker; the primary in west, sessions in PostgreSQL"
        }
    }
}

/// Where a cluster's nodes go: their ports, host address, site, and the files under the
/// cluster folder where each keeps its pid. On loopback every node is at 127.0.0.1; with
/// hosts, each site has a subnet `198.18.<subnet>.0/24` and each node an address in it
/// from a fixed plan by role, so a node added later (`scale`) gets the same address every time.
public struct Layout: Sendable {
    public var ports: Ports
    public var dir: String
    /// With hosts, the subnet of each site, in the stage's order; empty on loopback.
    public var subnets: [Int]
    public private(set) var site = "dc1"
    var siteIndex = 0
    /// With several sites, names of a site's one-of-a-kind nodes end in "-SITE".
    var suffix = ""

    public init(ports: Ports, dir: String, subnet: Int? = nil) {
        self.init(ports: ports, dir: dir, subnets: subnet.map { [$0] } ?? [])
    }

    public init(ports: Ports, dir: String, subnets: [Int]) {
        self.ports = ports
        self.dir = dir
        self.subnets = subnets
    }

    public var onHosts: Bool { !subnets.isEmpty }

    /// The layout of site number `index` of `count`.
    func at(_ site: String, index: Int, of count: Int) -> Layout {
        var l = self
        l.site = site
        l.siteIndex = index
        l.suffix = count > 1 ? "-" + site : ""
        return l
    }

    var run: String { dir + "/run" }

    /// The last byte of each node's host address: .1 is the machine itself (the bridge).
    static func hostNumber(_ role: Role, index: Int) -> Int {
        switch role {
        case .balancer: 2
        case .edge: 3
        case .database: 10 + index  // the primary is index 0
        case .cache: 20 + index
        case .sessions: 30
        case .web: 40 + index  // up to Ports.maxWebServers
        case .worker: 70 + index  // up to Ports.maxWorkers
        case .client: 100 + index  // one per site, each on every subnet
        case .gateway: 4 + index  // one per site: each is on every subnet, so they differ
        case .dns: 9
        case .coordinator: 90 + index  // 1…3
        }
    }

    func address(_ role: Role, index: Int, subnet: Int) -> String { "198.18.\(subnet).\(Self.hostNumber(role, index: index))" }

    func node(_ name: String, _ role: Role, _ port: Int, index: Int = 0, pidFile: String) -> Node {
        guard onHosts else { return Node(name: name, role: role, host: "127.0.0.1", site: site, port: port, pidFile: pidFile) }
        var n = Node(name: name, role: role, host: address(role, index: index, subnet: subnets[siteIndex]), site: site, port: port, pidFile: pidFile)
        // On every site's subnet: a gateway (it routes its own site's packets to the others), the DNS
        // server (it answers every site's clients), and clients (users on the internet
        // reach every site's entry; a client's region is its first address).
        if [.gateway, .dns, .client].contains(role) { n.alsoAt = subnets.filter { $0 != subnets[siteIndex] }.map { address(role, index: index, subnet: $0) } }
        return n
    }

    /// The primary, then `replicas` replicas (scripts/postgres's node names and ports).
    public func databases(replicas: Int) -> [Node] {
        [node("postgres-primary", .database, ports.postgres, pidFile: "\(dir)/pg/primary/postmaster.pid")]
            + (0..<replicas).map { database(replica: $0 + 1) }
    }

    /// Replica `r` (r1, r2, …).
    func database(replica r: Int) -> Node {
        node("postgres-r\(r)", .database, ports.postgres + r, index: r, pidFile: "\(dir)/pg/r\(r)/postmaster.pid")
    }

    /// Shard cluster `k` (named a, b, c): a primary and `replicas` replicas. The first keeps
    /// the unsharded names and folder (it also holds the shard map, sessions and jobs); the
    /// others are `postgres-b-primary`, `postgres-b-r1`, … with their data in `pg-b`.
    public func shardCluster(_ k: Int, replicas: Int) -> [Node] {
        let name = Self.shardName(k)
        let nodes = k == 0 ? databases(replicas: replicas) : (0...replicas).map { r in
            let member = r == 0 ? "primary" : "r\(r)"
            return node(
                "postgres-\(name)-\(member)", .database, ports.shardPostgres(k) + r, index: 3 * k + r,
                pidFile: "\(dir)/pg-\(name)/\(member)/postmaster.pid")
        }
        return nodes.map { var n = $0; n.shard = name; return n }
    }

    public static func shardName(_ k: Int) -> String { String(UnicodeScalar(UInt8(ascii: "a") + UInt8(k))) }

    public func caches(_ count: Int) -> [Node] { (0..<count).map { cache($0 + 1) } }

    func cache(_ i: Int) -> Node {
        node("memcached\(i)", .cache, ports.memcached + i - 1, index: i, pidFile: "\(run)/memcached-\(ports.memcached + i - 1)/memcached.pid")
    }

    /// The three coordinators of `up --ha`: etcd member i listens for clients at
    /// `ports.etcd + i - 1` (and for peers 3 above), as scripts/patroni starts them.
    /// With several sites, one in each of the first two and the third a witness in none
    /// (like the DNS server, reachable from each site without the WAN): the site that keeps
    /// the witness keeps etcd's majority, so a site cut off never has one and the other,
    /// with the witness, elects a leader by itself.
    public func coordinators(sites: [String] = []) -> [Node] {
        func coordinator(_ i: Int, _ l: Layout) -> Node {
            l.node("coord\(i)", .coordinator, ports.etcd + i - 1, index: i, pidFile: "\(dir)/pg/etcd/e\(i - 1).pid")
        }
        guard sites.count > 1 else { return (1...3).map { coordinator($0, self) } }
        var witness = coordinator(3, at(sites[0], index: 0, of: sites.count))
        witness.site = Self.global
        if onHosts {
            witness.alsoAt = subnets.dropFirst().map { address(.coordinator, index: 3, subnet: $0) }
        }
        return [coordinator(1, at(sites[0], index: 0, of: sites.count)), coordinator(2, at(sites[1], index: 1, of: sites.count)), witness]
    }

    /// The "site" of nodes in none (the DNS server, etcd's witness): a drill never cuts them.
    public static let global = "global"

    public func sessions() -> Node {
        node("redis", .sessions, ports.redis, pidFile: "\(run)/redis-\(ports.redis)/redis.pid")
    }

    /// Web server `index`; without a balancer the only web server is the site itself.
    public func web(_ index: Int, isEntry: Bool = false) -> Node {
        node("web\(index)", .web, isEntry ? ports.site : ports.web(index), index: index, pidFile: "\(run)/web\(index).pid")
    }

    public func webs(_ count: Int) -> [Node] { (1...max(1, count)).map { web($0) } }

    /// A worker's port serves only `/metrics` and `/healthz`.
    public func worker(_ index: Int) -> Node {
        node("worker\(index)", .worker, ports.worker(index), index: index, pidFile: "\(run)/worker\(index).pid")
    }

    public func workers(_ count: Int) -> [Node] { (0..<count).map { worker($0 + 1) } }

    /// nginx keeps its files (configuration, pid) in a folder named after the node.
    public func balancer(behindEdge: Bool) -> Node {
        node("nginx" + suffix, .balancer, behindEdge ? ports.balancerBehindEdge : ports.site, pidFile: "\(dir)/nginx\(suffix)/nginx.pid")
    }

    public func edge() -> Node { node("varnish" + suffix, .edge, ports.site, pidFile: "\(run)/varnish\(suffix).pid") }

    /// A host with no server, for `cluster exec client -- millions bench …`.
    public func client() -> Node { node("client" + suffix, .client, 0, index: siteIndex, pidFile: "") }

    /// The DNS server: in no site, reachable from each at an address on its subnet.
    public func dns() -> Node {
        var n = node("dns", .dns, 53, pidFile: "\(dir)/dns/pdns.pid")
        n.site = Self.global
        return n
    }

    /// The site's end of the WAN: one `millions relay` process; its ports are the relayed ones.
    public func gateway() -> Node { node("wan" + suffix, .gateway, 0, index: siteIndex, pidFile: "\(run)/wan\(suffix).pid") }
}

/// Where everything listens, from one base port. All below 32768, so no port collides
/// with the kernel's range for outgoing connections.
public struct Ports: Codable, Sendable, Equatable {
    public var base: Int
    /// The site's URL: the edge, else nginx, else the only web server.
    public var site: Int { base }
    /// nginx when Varnish is in front of it.
    public var balancerBehindEdge: Int { base + 1 }
    public func web(_ i: Int) -> Int { base + 10 + i }
    public var postgres: Int { base + 40 }
    /// Shard cluster `k`'s primary (its replicas on the next ports); the first is `postgres`.
    public func shardPostgres(_ k: Int) -> Int { k == 0 ? postgres : base + 50 + 3 * k }
    /// Patroni's REST API, one port per database node (with `--ha`).
    public var patroni: Int { base + 45 }
    /// etcd's three members: clients here and at +1, +2; peers at +3…+5 (with `--ha`).
    public var etcd: Int { base + 2 }
    public var memcached: Int { base + 50 }
    public var redis: Int { base + 60 }
    /// Workers' metrics servers.
    public func worker(_ i: Int) -> Int { base + 70 + i }
    public static let maxWebServers = 29
    public static let maxWorkers = 29
    static let standard = try! Ports(base: 8080)

    public init(base: Int) throws {
        guard base >= 1024, base + 100 < 32768 else {
            throw Processes.Failure("--base-port must be 1024...32667 (the cluster uses base…base+99, below 32768)")
        }
        self.base = base
    }
}
