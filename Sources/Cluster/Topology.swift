/// What a node does in the cluster. The cases are in start order: each role needs only the
/// roles before it (web servers need the database, the balancer needs web servers, …);
/// `down` stops them in reverse.
public enum Role: String, Codable, Sendable, CaseIterable, Comparable {
    /// A site's end of the WAN: relays to the other sites' data servers, with the link's
    /// delay (only in stages with several sites). Needs nothing, so it starts first.
    case gateway
    /// With `up --ha`: an etcd member (Patroni's store) and a Redis sentinel; the first two
    /// also hold a Redis replica on hosts. Three of them, each on its own host.
    case coordinator = "coord"
    case database = "db"
    case cache
    case sessions
    case web
    case worker
    case balancer
    case edge
    /// An authoritative DNS server answering the site's name with the nearest healthy
    /// site (stages with several sites); outside every site, like a DNS provider.
    case dns
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
    /// Its addresses on other sites' subnets (a gateway is on both ends of the WAN).
    public var alsoAt: [String] = []
    /// A database node of a sharded stage: the name of its cluster (a, b, …).
    public var shard: String? = nil

    public var address: String { "\(host):\(port)" }
}

/// A WAN link between two sites: traffic between them is routed through each site's
/// gateway, delayed by `delayMs` one way (plus up to `jitterMs`); within a site, links are
/// native.
public struct WANLink: Codable, Sendable, Equatable {
    public var sites: [String]
    public var delayMs: Double
    public var jitterMs: Double

    public init(sites: [String], delayMs: Double, jitterMs: Double) {
        self.sites = sites
        self.delayMs = delayMs
        self.jitterMs = jitterMs
    }

    /// A continental distance, about 4,000 km of fibre one way.
    public static let defaultDelayMs = 20.0
}

/// A stage as data: every node with its role, host, site and port. `cluster up` realizes
/// it role by role, `status` prints it, `scale` and the drills change and act on it, and
/// every configuration (the web servers' settings, nginx's upstreams, Varnish's backend,
/// Prometheus' targets) is derived from it rather than from the stage's name.
public struct Topology: Codable, Sendable, Equatable {
    public var stage: Stage
    public var nodes: [Node]
    public var links: [WANLink] = []

    public func nodes(_ role: Role) -> [Node] { nodes.filter { $0.role == role } }
    public func nodes(_ role: Role, in site: String) -> [Node] { nodes.filter { $0.role == role && $0.site == site } }
    public func node(named name: String) -> Node? { nodes.first { $0.name == name } }

    /// The database nodes by cluster, each its primary first: one group unless the users
    /// are sharded, then one per shard cluster in map order.
    public var databaseGroups: [[Node]] {
        var groups: [[Node]] = []
        for n in nodes(.database) {
            if let i = groups.firstIndex(where: { $0[0].shard == n.shard }) { groups[i].append(n) } else { groups.append([n]) }
        }
        return groups.map { $0.sorted { $0.port < $1.port } }.sorted { ($0[0].shard ?? "") < ($1[0].shard ?? "") }
    }
    /// The cluster `node` belongs to.
    public func databaseGroup(of node: Node) -> [Node] { databaseGroups.first { $0.contains(node) } ?? [node] }
    public var isSharded: Bool { nodes(.database).contains { $0.shard != nil } }
    /// The sites, in the order their nodes come (the DNS server and etcd's witness are in none).
    public var sites: [String] {
        nodes.filter { $0.site != Layout.global }.map(\.site).reduce(into: []) { if !$0.contains($1) { $0.append($1) } }
    }

    /// The name clients use where the DNS server answers it (several sites).
    public static let domain = "millions.test"
    public static let siteName = "www." + domain

    /// The node clients use: the edge, else the balancer, else the only web server (of
    /// `site`, or of the first site).
    public func entry(site: String? = nil) -> Node? {
        let s = site ?? sites.first ?? ""
        return nodes(.edge, in: s).first ?? nodes(.balancer, in: s).first ?? nodes(.web, in: s).first
    }
    public var entry: Node? { entry() }

    /// Where dynamic requests (the API, per-user pages) go in the chapter's design: the
    /// balancer, else the only web server. The edge is a CDN, for static content.
    public func dynamicEntry(site: String? = nil) -> Node? {
        let s = site ?? sites.first ?? ""
        return nodes(.balancer, in: s).first ?? nodes(.web, in: s).first
    }
    public var dynamicEntry: Node? { dynamicEntry() }

    /// The /24 a site's nodes live on (`198.18.N.0/24`; hosts only), from its first node.
    public func subnet(of site: String) -> String? {
        guard let node = nodes.first(where: { $0.site == site && $0.site != Layout.global }) else { return nil }
        let parts = node.host.split(separator: ".")
        guard parts.count == 4 else { return nil }
        return parts.prefix(3).joined(separator: ".") + ".0/24"
    }

    /// The sites `site` has a WAN link to, and the link.
    public func links(from site: String) -> [(site: String, link: WANLink)] {
        links.filter { $0.sites.contains(site) }.flatMap { link in link.sites.filter { $0 != site }.map { ($0, link) } }
    }

    /// The configuration every web server and worker in `site` runs with, derived from the
    /// nodes (the user's `--set` keys go on top, in `Cluster`). Reads stay in the site:
    /// its own replicas and caches; the primary and Redis may be across the WAN.
    /// Where this machine's own tools reach the nodes from: loopback, and on hosts the
    /// bridges' addresses (`198.18.N.1`). They alone see `/metrics` and `X-Upstream`.
    public var operatorAddresses: [String] {
        let subnets = Set(nodes.map(\.host).filter { !$0.hasPrefix("127.") }.map { $0.split(separator: ".").prefix(3).joined(separator: ".") })
        return ["127.0.0.0/8", "::1"] + subnets.sorted().map { $0 + ".1" }
    }

    /// Who may purge a URL at an edge: this machine, and on hosts the cluster's own network
    /// (web servers and workers of every site: a purge crosses the WAN to the other sites).
    public var purgers: [String] {
        nodes.contains { !$0.host.hasPrefix("127.") } ? ["127.0.0.1", "198.18.0.0/15"] : ["127.0.0.1"]
    }

    public func appSettings(dataDirectory: String, site: String? = nil) -> [String: String] {
        let site = site ?? sites.first ?? ""
        var s: [String: String] = [:]
        // Behind a balancer, leave it cleanly at SIGTERM (see DrainService), and believe
        // the client address it forwards (from its host's address).
        let balancers = nodes(.balancer, in: site)
        if !balancers.isEmpty {
            s["http.drainSeconds"] = String(ServerConfigs.drainSeconds)
            // The edge too: behind it, the hop nginx names is the edge, and every user who
            // came through the CDN would share one address (and one sign-up limit).
            let proxies = (balancers + nodes(.edge, in: site)).map(\.host).filter { $0 != "127.0.0.1" }
            s["http.trustedProxies"] = (["127.0.0.1", "::1"] + proxies).joined(separator: ",")
        }
        s["http.metricsAllow"] = operatorAddresses.joined(separator: ",")
        // Benchmarks from this machine, and from the cluster's client hosts (its load
        // generators: the site drill's writers sign up ten users a second), log in to the
        // same accounts and sign up over and over.
        let clients = nodes(.client).flatMap { [$0.host] + $0.alsoAt }
        s["limits.exempt"] = (operatorAddresses + clients).joined(separator: ",")
        // The site's own database nodes; the other sites' are remote: probed for their role
        // (the primary may be, or move, there), never read from as replicas.
        let databases = nodes(.database).filter { $0.site == site }
        let remoteDatabases = nodes(.database).filter { $0.site != site }
        if databases.isEmpty && remoteDatabases.isEmpty {
            s["data.directory"] = dataDirectory
        } else if isSharded {
            // Each cluster's primary and its replicas in this site, in map order.
            s["data.engine"] = "sharded"
            s["data.shards.clusters"] = databaseGroups.map { group in
                let here = group.enumerated().filter { $0.offset == 0 || $0.element.site == site }.map(\.element)
                return (group[0].shard ?? "") + "=" + here.map { $0.address }.joined(separator: ",")
            }.joined(separator: ";")
            s["queue.inProcessWorkers"] = stage.hasWorkers ? "0" : "1"
        } else {
            s["data.engine"] = "postgres"
            s["data.postgres.nodes"] = databases.map { $0.address }.joined(separator: ",")
            if !remoteDatabases.isEmpty {
                s["data.postgres.remoteNodes"] = remoteDatabases.map { $0.address }.joined(separator: ",")
            }
            // With worker processes, consumers run only there; before that, one slot per
            // web server, so photos get processed in every stage.
            s["queue.inProcessWorkers"] = stage.hasWorkers ? "0" : "1"
        }
        // An in-process cache is only correct with one web server: with several, a write
        // on one would leave stale copies on the others. A shared cache tier fixes that.
        let caches = nodes(.cache, in: site)
        if !caches.isEmpty {
            s["cache.backend"] = "memcached"
            s["cache.memcached.nodes"] = caches.map(\.address).joined(separator: ",")
            // A site's workers follow the primary's changes and delete cached profiles once
            // the site's replicas have them: writes from the other site, and refills from a
            // lagging replica. One replication slot per site.
            if databases.count + remoteDatabases.count > 1 && !nodes(.worker, in: site).isEmpty {
                s["cache.followSlot"] = "millions_cache_\(site)"
            }
        } else {
            s["cache.backend"] = databases.isEmpty && remoteDatabases.isEmpty ? "memory" : "none"
        }
        // Every web server and worker shares one photo folder (a stand-in for a shared
        // volume or object store): a worker reads the original a web server stored.
        s["photos.directory"] = dataDirectory + "/photos"
        // Every site's edge (across the WAN for the other sites').
        s["photos.purgeEdges"] = nodes(.edge).map { $0.address }.joined(separator: ",")
        // With several sites, no folder is shared: photos are replicated with the data,
        // so a site's loss loses none (docs/cluster.md).
        if sites.count > 1 && !databases.isEmpty { s["photos.store"] = "postgres" }
        if let redis = nodes(.sessions).first {
            s["session.store"] = "redis"
            s["redis.address"] = redis.address
        }
        return s
    }
}
