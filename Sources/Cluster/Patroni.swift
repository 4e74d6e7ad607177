import Foundation

/// With `up --ha`: databases under Patroni, Redis under Sentinel; their drills, and the
/// names they take.
extension Cluster {
    /// Redis's two replicas (the node's port + 1, + 2), then its three sentinels (+ 3…5).
    static func redisHAPorts(_ node: Node) -> [Int] { (1...5).map { node.port + $0 } }
    static func sentinelPorts(_ node: Node) -> [Int] { (3...5).map { node.port + $0 } }

    /// Two replicas of the `redis` node and three sentinels watching it (quorum 2).
    func startRedisReplicasAndSentinels(_ nodes: [Node], _ state: ClusterState) throws {
        for n in nodes {
            var env = serverEnv(n, state)
            env["MILLIONS_REDIS_REPLICAOF"] = "\(n.host) \(n.port)"
            for port in [n.port + 1, n.port + 2] { try script("redis", ["start", String(port)], env: env) }
            for port in Self.sentinelPorts(n) { try script("redis", ["sentinel", String(port), n.host, String(n.port)], env: serverEnv(n, state)) }
        }
    }

    /// The Redis master the sentinels name now.
    func redisMaster(_ node: Node, _ state: ClusterState) throws -> (host: String, port: Int) {
        var problems: [String] = []
        for port in Self.sentinelPorts(node) {
            do {
                let text = try scriptOutput("redis", ["master", String(port)], env: serverEnv(node, state))
                let parts = text.split(separator: " ")
                if parts.count == 2, let p = Int(parts[1]) { return (String(parts[0]), p) }
                problems.append("sentinel \(port): \(text)")
            } catch { problems.append("\(error)") }
        }
        throw Processes.Failure("no sentinel names a Redis master: \(problems.joined(separator: "; "))")
    }

    /// scripts/postgres's and scripts/patroni's name for a database node (primary, r1, …).
    static func pgName(_ node: Node) -> String { String(node.name.dropFirst("postgres-".count)) }

    /// The node called `name`; `postgres-leader` names whichever database node is the
    /// primary now (under Patroni the role moves; `postgres-primary` is a name, not a role).
    public func node(named name: String, _ state: ClusterState) throws -> Node {
        if name == "postgres-leader" {
            return try currentPrimary(state).orThrow("no database node is the primary now")
        }
        return try state.nodes.first { $0.name == name }
            .orThrow("no node \(name); nodes: \(state.nodes.map(\.name).joined(separator: ", ")), postgres-leader")
    }

    /// The database node that is the primary now: Patroni's leader, else the one that answers
    /// `pg_is_in_recovery()` with false.
    public func currentPrimary(_ state: ClusterState) throws -> Node? {
        let databases = state.topology.nodes(.database)
        if state.patroni {
            guard let name = try? scriptOutput("patroni", ["leader"], env: pgEnv(state)) else { return nil }
            return databases.first { Self.pgName($0) == name }
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
            var env = serverEnv(node, state)
            env["MILLIONS_REDIS_REPLICAOF"] = "\(master.host) \(master.port)"
            for port in [node.port, node.port + 1, node.port + 2] where port != master.port {
                try script("redis", ["start", String(port)], env: env)
            }
            say("redis servers running again, replicas of \(master.host):\(master.port)")
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
    public func pause(_ name: String) throws {
        let state = try loadState()
        let node = try self.node(named: name, state)
        guard node.role == .database, state.patroni else { throw Processes.Failure("pause is for database nodes under Patroni (`up --ha`)") }
        try script("patroni", ["pause", Self.pgName(node)], env: pgEnv(state))
        say("paused \(node.name)\(node.name == name ? "" : " (\(name))")")
    }

    public func resume(_ name: String) throws {
        let state = try loadState()
        let node = try self.node(named: name, state)
        guard node.role == .database, state.patroni else { throw Processes.Failure("resume is for database nodes under Patroni (`up --ha`)") }
        try script("patroni", ["resume", Self.pgName(node)], env: pgEnv(state))
        say("resumed \(node.name)")
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
            [redis.port, redis.port + 1, redis.port + 2].allSatisfy { Processes.portOpen(host: redis.host, port: $0, timeout: 1) }
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
        return try scriptOutput(state.patroni ? "patroni" : "postgres", ["status"], env: pgEnv(state))
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
