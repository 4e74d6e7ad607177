/// A stage of the journey (ARCHITECTURE.md §4): which real servers run, and how the web
/// servers are configured. Every stage runs the same binary with different settings.
public enum Stage: String, CaseIterable, Codable, Sendable {
    case single
    case separateDB = "separate-db"
    case loadBalanced = "load-balanced"
    case replicated
    case cached
    case stateless
    case queued

    /// PostgreSQL runs as its own server (else SQLite inside the web server).
    public var usesPostgres: Bool { self != .single }
    public var replicas: Int { [.replicated, .cached, .stateless, .queued].contains(self) ? 2 : 0 }
    /// nginx in front of several web servers.
    public var balanced: Bool { ![.single, .separateDB].contains(self) }
    public var memcachedNodes: Int { [.cached, .stateless, .queued].contains(self) ? 2 : 0 }
    /// Varnish as the edge (CDN) in front of nginx.
    public var edge: Bool { [.cached, .stateless, .queued].contains(self) }
    public var redis: Bool { [.stateless, .queued].contains(self) }
    /// `millions worker` processes consuming the PostgreSQL queue.
    public var defaultWorkers: Int { self == .queued ? 2 : 0 }
    public var defaultWebServers: Int { balanced ? 2 : 1 }

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

    /// Configuration keys for every web server of the stage (on top of the user's own).
    func webSettings(_ ports: Ports, dataDirectory: String) -> [String: String] {
        var s: [String: String] = [:]
        // Behind a balancer, leave it cleanly at SIGTERM (see DrainService).
        if balanced { s["http.drainSeconds"] = String(ServerConfigs.drainSeconds) }
        if usesPostgres {
            s["data.engine"] = "postgres"
            s["data.postgres.nodes"] = ([ports.postgres] + (0..<replicas).map { ports.postgres + 1 + $0 })
                .map { "127.0.0.1:\($0)" }.joined(separator: ",")
        } else {
            s["data.directory"] = dataDirectory
        }
        // An in-process cache is only correct with one web server: with several, a write
        // on one would leave stale copies on the others. The cached stage shares memcached.
        if memcachedNodes > 0 {
            s["cache.backend"] = "memcached"
            s["cache.memcached.nodes"] = (0..<memcachedNodes).map { "127.0.0.1:\(ports.memcached + $0)" }
                .joined(separator: ",")
        } else {
            s["cache.backend"] = self == .single ? "memory" : "none"
        }
        // Every web server and worker shares one photo folder (a stand-in for a shared
        // volume or object store): a worker reads the original a web server stored.
        s["photos.directory"] = dataDirectory + "/photos"
        if usesPostgres {
            // With worker processes (queued), consumers run only there; before that stage,
            // one slot per web server, so photos get processed in every stage.
            s["queue.inProcessWorkers"] = defaultWorkers > 0 ? "0" : "1"
        }
        if redis {
            s["session.store"] = "redis"
            s["redis.address"] = "127.0.0.1:\(ports.redis)"
        }
        return s
    }
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

    public init(base: Int) throws {
        guard base >= 1024, base + 100 < 32768 else {
            throw Processes.Failure("--base-port must be 1024...32667 (the cluster uses base…base+99, below 32768)")
        }
        self.base = base
    }
}
