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

    /// The stage's nodes: what runs, on which port, where. `web` overrides the number of
    /// web servers behind a balancer.
    public func topology(web: Int? = nil, _ layout: Layout) -> Topology {
        // With hosts, clients get a host of their own too, outside the servers' budget.
        let clients = layout.subnet == nil ? [] : [layout.client()]
        return Topology(stage: self, nodes: (servers(web: web, layout) + clients).sorted { $0.role < $1.role })
    }

    /// The stage's servers; each stage is the one before it plus what it adds.
    func servers(web: Int?, _ l: Layout) -> [Node] {
        switch self {
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
        }
    }

    /// The stage as it comes up by default (ports from 8080, no folder): for the figures
    /// below, which describe the stage rather than a running cluster.
    var standard: Topology { topology(Layout(ports: Ports.standard, dir: "")) }
    public var replicas: Int { max(0, standard.nodes(.database).count - 1) }
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
        }
    }
}

/// Where a cluster's nodes go: their ports, host address, site, and the files under the
/// cluster folder where each keeps its pid. On loopback every node is at 127.0.0.1; with
/// hosts (`subnet`), each node has an address of its own in `198.18.<subnet>.0/24`, from
/// a fixed plan by role, so a node added later (`scale`) gets the same address every time.
public struct Layout: Sendable {
    public var ports: Ports
    public var dir: String
    public var subnet: Int?
    public let site = "dc1"

    public init(ports: Ports, dir: String, subnet: Int? = nil) {
        self.ports = ports
        self.dir = dir
        self.subnet = subnet
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
        case .client: 100
        }
    }

    func node(_ name: String, _ role: Role, _ port: Int, index: Int = 0, pidFile: String) -> Node {
        let host = subnet.map { "198.18.\($0).\(Self.hostNumber(role, index: index))" } ?? "127.0.0.1"
        return Node(name: name, role: role, host: host, site: site, port: port, pidFile: pidFile)
    }

    /// The primary, then `replicas` replicas (scripts/postgres's node names and ports).
    public func databases(replicas: Int) -> [Node] {
        [node("postgres-primary", .database, ports.postgres, pidFile: "\(dir)/pg/primary/postmaster.pid")]
            + (0..<replicas).map { r in
                node("postgres-r\(r + 1)", .database, ports.postgres + 1 + r, index: r + 1, pidFile: "\(dir)/pg/r\(r + 1)/postmaster.pid")
            }
    }

    public func caches(_ count: Int) -> [Node] {
        (0..<count).map { i in
            node("memcached\(i + 1)", .cache, ports.memcached + i, index: i + 1, pidFile: "\(run)/memcached-\(ports.memcached + i).pid")
        }
    }

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

    public func balancer(behindEdge: Bool) -> Node {
        node("nginx", .balancer, behindEdge ? ports.balancerBehindEdge : ports.site, pidFile: "\(dir)/nginx/nginx.pid")
    }

    public func edge() -> Node { node("varnish", .edge, ports.site, pidFile: "\(run)/varnish.pid") }

    /// A host with no server, for `cluster exec client -- millions bench …`.
    public func client() -> Node { node("client", .client, 0, pidFile: "") }
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
