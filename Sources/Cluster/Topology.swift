/// What a node does in the cluster. The cases are in start order: each role needs only the
/// roles before it (web servers need the database, the balancer needs web servers, …);
/// `down` stops them in reverse.
public enum Role: String, Codable, Sendable, CaseIterable, Comparable {
    case database = "db"
    case cache
    case sessions
    case web
    case worker
    case balancer
    case edge
    /// Where the load generator and the drills' clients run (with hosts): no server.
    case client

    public static func < (a: Role, b: Role) -> Bool {
        allCases.firstIndex(of: a)! < allCases.firstIndex(of: b)!
    }
}

/// One process of a cluster: what it does, where it runs, where it keeps its pid.
public struct Node: Codable, Sendable, Equatable {
    public var name: String
    public var role: Role
    /// The address the other nodes reach it at.
    public var host: String
    /// The data center (group of hosts) it belongs to.
    public var site: String
    public var port: Int
    /// Where the process keeps its pid (servers that daemonize write it themselves).
    public var pidFile: String

    public var address: String { "\(host):\(port)" }
}

/// A stage as data: every node with its role, host, site and port. `cluster up` realizes
/// it role by role, `status` prints it, `scale` and the drills change and act on it, and
/// every configuration (the web servers' settings, nginx's upstreams, Varnish's backend,
/// Prometheus' targets) is derived from it rather than from the stage's name.
public struct Topology: Codable, Sendable, Equatable {
    public var stage: Stage
    public var nodes: [Node]

    public func nodes(_ role: Role) -> [Node] { nodes.filter { $0.role == role } }
    public func node(named name: String) -> Node? { nodes.first { $0.name == name } }

    /// The node clients use: the edge, else the balancer, else the only web server.
    public var entry: Node? { nodes(.edge).first ?? nodes(.balancer).first ?? nodes(.web).first }

    /// Where dynamic requests (the API, per-user pages) go in the chapter's design: the
    /// balancer, else the only web server. The edge is a CDN, for static content.
    public var dynamicEntry: Node? { nodes(.balancer).first ?? nodes(.web).first }

    /// The configuration every web server and worker runs with, derived from the nodes
    /// (the user's `--set` keys go on top, in `Cluster`).
    public func appSettings(dataDirectory: String) -> [String: String] {
        var s: [String: String] = [:]
        // Behind a balancer, leave it cleanly at SIGTERM (see DrainService), and believe
        // the client address it forwards (from its host's address).
        let balancers = nodes(.balancer)
        if !balancers.isEmpty {
            s["http.drainSeconds"] = String(ServerConfigs.drainSeconds)
            s["http.trustedProxies"] = (["127.0.0.1", "::1"] + balancers.map(\.host).filter { $0 != "127.0.0.1" }).joined(separator: ",")
        }
        let databases = nodes(.database)
        if databases.isEmpty {
            s["data.directory"] = dataDirectory
        } else {
            s["data.engine"] = "postgres"
            s["data.postgres.nodes"] = databases.map(\.address).joined(separator: ",")
            // With worker processes, consumers run only there; before that, one slot per
            // web server, so photos get processed in every stage.
            s["queue.inProcessWorkers"] = stage.hasWorkers ? "0" : "1"
        }
        // An in-process cache is only correct with one web server: with several, a write
        // on one would leave stale copies on the others. A shared cache tier fixes that.
        let caches = nodes(.cache)
        if !caches.isEmpty {
            s["cache.backend"] = "memcached"
            s["cache.memcached.nodes"] = caches.map(\.address).joined(separator: ",")
        } else {
            s["cache.backend"] = databases.isEmpty ? "memory" : "none"
        }
        // Every web server and worker shares one photo folder (a stand-in for a shared
        // volume or object store): a worker reads the original a web server stored.
        s["photos.directory"] = dataDirectory + "/photos"
        if let redis = nodes(.sessions).first {
            s["session.store"] = "redis"
            s["redis.address"] = redis.address
        }
        return s
    }
}
