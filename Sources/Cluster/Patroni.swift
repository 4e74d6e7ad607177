import Foundation

/// Drills for databases under Patroni (`up --ha`), and the names they take.
extension Cluster {
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
        let node = try self.node(named: name, state)
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
