import Foundation

/// With `up --ha`: databases under Patroni, Redis under Sentinel; their drills, and the
/// names they take.
extension Cluster {
    /// A Redis server or sentinel of `up --ha`, with the node whose host runs it.
    struct RedisMember {
        var port: Int
        var node: Node
        var address: String { "\(node.host):\(port)" }
    }

    /// The `redis` node's server (the first master), then its two replicas (ports + 1, + 2).
    /// On loopback they share the node's address; on hosts the replicas run on the first two
    /// coordinators' hosts, so that one host's loss takes one server.
    func redisServers(_ redis: Node, _ state: ClusterState) -> [RedisMember] {
        let coordinators = state.topology.nodes(.coordinator)
        return [RedisMember(port: redis.port, node: redis)]
            + (1...2).map { RedisMember(port: redis.port + $0, node: state.hosts == nil ? redis : coordinators[$0 - 1]) }
    }

    /// The three sentinels (ports + 3…5): on hosts, one on each coordinator's host.
    func sentinels(_ redis: Node, _ state: ClusterState) -> [RedisMember] {
        let coordinators = state.topology.nodes(.coordinator)
        return (0..<3).map { RedisMember(port: redis.port + 3 + $0, node: state.hosts == nil ? redis : coordinators[$0]) }
    }

    /// The replicas, then the sentinels watching the `redis` node (quorum 2).
    func startRedisReplicasAndSentinels(_ nodes: [Node], _ state: ClusterState) throws {
        for n in nodes {
            for r in redisServers(n, state).dropFirst() {
                var env = serverEnv(r.node, state)
                env["MILLIONS_REDIS_REPLICAOF"] = "\(n.host) \(n.port)"
                try script("redis", ["start", String(r.port)], env: env)
            }
            for s in sentinels(n, state) {
                try script("redis", ["sentinel", String(s.port), n.host, String(n.port)], env: serverEnv(s.node, state))
            }
        }
    }

    /// The Redis server the sentinels name master now.
    func redisMaster(_ node: Node, _ state: ClusterState) throws -> RedisMember {
        var problems: [String] = []
        for s in sentinels(node, state) {
            do {
                let text = try scriptOutput("redis", ["master", String(s.port)], env: serverEnv(s.node, state))
                let parts = text.split(separator: " ")
                if parts.count == 2, let p = Int(parts[1]),
                    let member = redisServers(node, state).first(where: { $0.node.host == parts[0] && $0.port == p })
                {
                    return member
                }
                problems.append("sentinel \(s.address): \(text)")
            } catch { problems.append("\(error)") }
        }
        throw Processes.Failure("no sentinel names a Redis master: \(problems.joined(separator: "; "))")
    }

    /// scripts/postgres's and scripts/patroni's name for a database node (primary, r1, …).
    /// The node's name in scripts/postgres (primary, r1, …): without its shard's prefix.
    static func pgName(_ node: Node) -> String {
        let name = node.name.dropFirst("postgres-".count)
        if let shard = node.shard, name.hasPrefix(shard + "-") { return String(name.dropFirst(shard.count + 1)) }
        return String(name)
    }

    /// Each member's role (`leader`, `sync_standby`, `replica`, …) as Patroni's `/cluster` on
    /// `node` tells it; nil if it does not answer.
    public func patroniRoles(via node: Node, _ state: ClusterState) -> [String: String]? {
        guard let r = Processes.httpGet(host: node.host, port: Self.restPort(node, state), path: "/cluster", timeout: 3),
            r.status == 200,
            let json = try? JSONSerialization.jsonObject(with: Data(r.body.utf8)) as? [String: Any],
            let members = json["members"] as? [[String: Any]]
        else { return nil }
        var roles: [String: String] = [:]
        for m in members { if let name = m["name"] as? String { roles[name] = m["role"] as? String ?? "?" } }
        return roles
    }

    /// A database node's Patroni REST port: as far above Patroni's first as its PostgreSQL
    /// port is above the primary's (`scripts/patroni`).
    public static func restPort(_ node: Node, _ state: ClusterState) -> Int {
        state.ports.patroni + node.port - state.ports.postgres
    }

    /// The node called `name`; `postgres-leader` names whichever database node is the
    /// primary now (under Patroni the role moves; `postgres-primary` is a name, not a role),
    /// `redis-master` the host of the Redis server the sentinels name master.
    public func node(named name: String, _ state: ClusterState) throws -> Node {
        if name == "postgres-leader" {
            return try currentPrimary(state).orThrow("no database node is the primary now")
        }
        if name == "redis-master", state.patroni, let redis = state.topology.nodes(.sessions).first {
            return try redisMaster(redis, state).node
        }
        return try state.nodes.first { $0.name == name }
            .orThrow("no node \(name); nodes: \(state.nodes.map(\.name).joined(separator: ", ")), postgres-leader")
    }

    /// The database node that is the primary now: Patroni's leader, else the one that answers
    /// `pg_is_in_recovery()` with false.
    public func currentPrimary(_ state: ClusterState) throws -> Node? {
        let databases = state.topology.nodes(.database)
        if state.patroni {
            // Patroni's REST API answers 200 on /primary on the member holding the leader key
            // (asked directly: the chaos run polls this every 200 ms).
            return databases.first {
                Processes.httpStatus(host: $0.host, port: Self.restPort($0, state), path: "/primary", timeout: 1) == 200
            }
        }
        return databases.first { (try? psql($0, "SELECT pg_is_in_recovery()")) == "f" }
    }

    /// Starts a killed database node again. Under Patroni it rejoins by itself: as a replica
    /// of whoever leads now, rewound (pg_rewind) if it had been a primary on an old timeline.
    public func restart(_ name: String) throws {
        let state = try loadState()
        if name == "etcd" && state.patroni {
            try script("patroni", ["start-etcd"], env: pgEnv(state))
            say("etcd running again")
            return
        }
        let node = try self.node(named: name, state)
        if node.role == .sessions, state.patroni {
            // Whichever Redis server is down comes back as a replica of the master now;
            // the sentinels take it in (a returning old master is turned into a replica too).
            let master = try redisMaster(node, state)
            for r in redisServers(node, state) where r.address != master.address {
                var env = serverEnv(r.node, state)
                env["MILLIONS_REDIS_REPLICAOF"] = "\(master.node.host) \(master.port)"
                try script("redis", ["start", String(r.port)], env: env)
            }
            say("redis servers running again, replicas of \(master.address)")
            return
        }
        guard node.role == .database, state.patroni else {
            throw Processes.Failure("restart is for database nodes under Patroni (`up --ha`); elsewhere use scale or site-up")
        }
        let t = Date()
        try script("patroni", ["start-node", Self.pgName(node)], env: pgEnv(state))
        say("\(node.name) running again under Patroni in \(seconds(since: t))")
    }

    /// Freezes (SIGSTOP) a database node's Patroni and PostgreSQL, as a long pause would
    /// (a stalled VM, a full disk); `resume` lets them go on from where they stood.
    public func pause(_ name: String) throws { try freeze(name, "pause") }
    public func resume(_ name: String) throws { try freeze(name, "resume") }

    private func freeze(_ name: String, _ command: String) throws {
        let state = try loadState()
        let node = try self.node(named: name, state)
        guard node.role == .database, state.patroni else {
            throw Processes.Failure("\(command) is for database nodes under Patroni (`up --ha`)")
        }
        try script("patroni", [command, Self.pgName(node)], env: pgEnv(state))
        say("\(command == "pause" ? "paused" : "resumed") \(node.name)\(node.name == name ? "" : " (\(name))")")
    }

    /// The Redis master's port the sentinels name now (`up --ha` with Redis), or nil.
    public func currentRedisMaster() throws -> Int? {
        let state = try loadState()
        guard state.patroni, let redis = state.topology.nodes(.sessions).first else { return nil }
        return try? redisMaster(redis, state).port
    }

    /// Waits until all three Redis servers answer and the sentinels name one master.
    public func waitRedisWhole(seconds: Double = 60) throws {
        let state = try loadState()
        guard state.patroni, let redis = state.topology.nodes(.sessions).first else { return }
        let ok = Processes.wait(seconds: seconds, every: 0.2) {
            self.redisServers(redis, state).allSatisfy { Processes.portOpen(host: $0.node.host, port: $0.port, timeout: 1) }
                && (try? self.redisMaster(redis, state)) != nil
        }
        guard ok else { throw Processes.Failure("Redis is not whole after \(seconds) s") }
    }

    /// Waits until every database node runs under Patroni and every replica streams.
    public func waitDatabasesWhole(seconds: Int = 120) throws {
        let state = try loadState()
        try script("patroni", ["wait-whole", String(seconds)], env: pgEnv(state))
    }

    /// Each database node's role and state as Patroni sees it (`scripts/patroni status`).
    public func databaseStatus() throws -> String {
        let state = try loadState()
        let groups = state.topology.databaseGroups
        return try groups.map { group in
            let text = try scriptOutput(state.patroni ? "patroni" : "postgres", ["status"], env: pgEnv(state, group))
            return groups.count > 1 ? "cluster \(group[0].shard ?? "")\n" + text : text
        }.joined(separator: "\n")
    }

    /// A script's standard output, trimmed; throws when it fails.
    func scriptOutput(_ name: String, _ args: [String], env: [String: String]) throws -> String {
        let out = "\(run)/\(name)-\(getpid())-\(UInt64.random(in: 0...UInt64.max)).out"
        defer { try? FileManager.default.removeItem(atPath: out) }
        let status = try Processes.run(["/bin/bash", "\(scripts)/\(name)"] + args, environment: env, log: out)
        let text = ((try? String(contentsOfFile: out, encoding: .utf8)) ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
        guard status == 0 else { throw Processes.Failure("scripts/\(name) \(args.joined(separator: " ")) failed: \(text)") }
        return text
    }
}
