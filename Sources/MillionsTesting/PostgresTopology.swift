import Cluster
import Foundation
import Synchronization

/// A real PostgreSQL primary + replicas for a test, run by `scripts/postgres` in its own
/// folder and ports. Fails loudly if it cannot start; never skips.
public final class PostgresTopology: Sendable {
    public let directory: String
    public let basePort: Int
    public let replicas: Int
    /// The `postgres` user's password (scram-sha-256), if the topology was made with one.
    public let password: String?

    public var primaryAddress: String { "127.0.0.1:\(basePort)" }
    public var addresses: [String] { (0...replicas).map { "127.0.0.1:\(basePort + $0)" } }
    public func port(_ node: String) -> Int { node == "primary" ? basePort : basePort + Int(node.dropFirst())! }

    init(directory: String, basePort: Int, replicas: Int, password: String? = nil) {
        self.directory = directory
        self.basePort = basePort
        self.replicas = replicas
        self.password = password
    }

    static var script: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../scripts/postgres")
            .standardized.path
    }

    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    /// The script gets the password in its environment, never on a command line.
    func run(_ args: [String]) throws {
        var env = ["MILLIONS_PG_DIR": directory, "MILLIONS_PG_PORT": String(basePort)]
        env["MILLIONS_PG_PASSWORD"] = password
        let status = try Processes.run(["/bin/bash", Self.script] + args, environment: env)
        guard status == 0 else { throw Failure(description: "scripts/postgres \(args.joined(separator: " ")) failed: \(status)") }
    }

    /// Starts (or reuses) a topology in `directory` on `basePort`…`basePort + replicas`.
    public static func start(directory: String, basePort: Int, replicas: Int = 2, sync: Bool = false, password: String? = nil) throws
        -> PostgresTopology
    {
        let t = PostgresTopology(directory: directory, basePort: basePort, replicas: replicas, password: password)
        // Already running (started by `scripts/test`, or by an earlier test): no script,
        // which would hold one of the few threads the tests' tasks share while it checks.
        if !sync && t.isRunning { return t }
        try t.run(["start", String(replicas)] + (sync ? ["--sync"] : []))
        return t
    }

    // Ports stay below 32768: Linux hands out 32768–60999 to outgoing connections, and a
    // server cannot bind a port a client happens to hold.

    /// The topology shared by non-destructive tests: started on first use, destroyed by
    /// `scripts/test` when the run ends.
    /// Started (or found running) once per process: each start waits for the script, on
    /// one of the few threads every test's tasks share (`scripts/test` starts it first).
    public static func shared() throws -> PostgresTopology {
        try sharedTopology.withLock { started in
            if let started { return started }
            let t = try start(directory: "/tmp/millions-pg-tests-shared", basePort: 15432, replicas: 2)
            started = t
            return t
        }
    }
    private static let sharedTopology = Mutex<PostgresTopology?>(nil)

    /// A shared topology for tests that pause their replicas' replay, one test at a time.
    /// Never `shared()`: its other tests read sessions through replicas, and a replica
    /// frozen by a test running beside them answers "no such session" (a CI run saw a 401).
    /// Each such test pauses and resumes the same replicas, so they take turns.
    public static func withLagging<T>(_ body: (PostgresTopology) async throws -> T) async throws -> T {
        await laggingTurn.take()
        defer { laggingTurn.give() }
        let t = try await offThePool {
            try start(directory: "/tmp/millions-pg-tests-lagging", basePort: 15452, replicas: 2)
        }
        // A test that failed mid-way may have left a replica paused.
        try await offThePool { for node in t.replicaNames { try t.resumeReplay(node) } }
        return try await body(t)
    }
    private static let laggingTurn = Turns()

    /// A fresh topology for a test that breaks things; destroyed after `body`.
    public static func withFresh<T>(
        replicas: Int = 2, sync: Bool = false, password: String? = nil, _ body: (PostgresTopology) async throws -> T
    ) async throws -> T {
        // 12000–13999: Redis Sentinel groups take 14000–14995 (RedisSentinelGroup).
        var port = 12000 + Int.random(in: 0..<200) * 10
        while FileManager.default.fileExists(atPath: "/tmp/millions-pg-test-\(port)") {
            port = 12000 + Int.random(in: 0..<200) * 10
        }
        let (directory, basePort) = ("/tmp/millions-pg-test-\(port)", port)
        let t = try await offThePool { try start(directory: directory, basePort: basePort, replicas: replicas, sync: sync, password: password) }
        do {
            let result = try await body(t)
            try? await offThePool { try t.run(["destroy"]) }
            return result
        } catch {
            try? await offThePool { try t.run(["destroy"]) }
            throw error
        }
    }

    /// Runs a blocking call (a script, waited for) on a thread of its own. The cooperative
    /// pool has a thread per core (two here): tests starting topologies at once would hold
    /// them all, and every other test's tasks (replica sets' discovery among them) would
    /// miss their deadlines meanwhile.
    static func offThePool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            Thread { continuation.resume(with: Result { try body() }) }.start()
        }
    }

    /// Every node's postmaster is alive (by its pid file).
    var isRunning: Bool {
        (["primary"] + replicaNames).allSatisfy { node in
            guard let text = try? String(contentsOfFile: "\(directory)/\(node)/postmaster.pid", encoding: .utf8),
                let pid = text.split(whereSeparator: \.isNewline).first.flatMap({ Int32($0) })
            else { return false }
            return Foundation.kill(pid, 0) == 0
        }
    }

    public func kill(_ node: String) throws { try run(["kill", node]) }
    public func startNode(_ node: String) throws { try run(["start-node", node]) }
    /// Stops a node at once (no shutdown checkpoint), as a crash would, leaving no pid file behind.
    public func stopNodeImmediately(_ node: String) throws { try run(["stop-node", node, "immediate"]) }

    /// Runs SQL on one node through psql.
    public func sql(_ node: String, _ statement: String) throws {
        let status = try Processes.run(
            [
                "/usr/bin/psql", "-q", "-w", "-h", "127.0.0.1", "-p", String(port(node)), "-U", "postgres", "-d", "millions", "-c",
                statement,
            ], environment: password.map { ["PGPASSWORD": $0] } ?? [:])
        guard status == 0 else { throw Failure(description: "psql on \(node) failed: \(statement)") }
    }

    /// Whether psql gets into the primary over TCP with no password at all.
    public func letsInWithoutPassword() throws -> Bool {
        try Processes.run(
            ["/usr/bin/psql", "-w", "-q", "-h", "127.0.0.1", "-p", String(basePort), "-U", "postgres", "-d", "millions", "-c", "SELECT 1"],
            log: directory + "/anonymous-psql.log") == 0
    }

    public func pauseReplay(_ node: String) throws { try sql(node, "SELECT pg_wal_replay_pause()") }
    public func resumeReplay(_ node: String) throws { try sql(node, "SELECT pg_wal_replay_resume()") }
    /// Every replica's replay paused (as if all were far behind), and resumed; a resume
    /// that fails leaves that replica as it is (the next `withLagging` resumes it).
    public func pauseReplicas() throws { for node in replicaNames { try pauseReplay(node) } }
    public func resumeReplicas() { for node in replicaNames { try? resumeReplay(node) } }
    var replicaNames: [String] { (0..<replicas).map { "r\($0 + 1)" } }
}

/// One holder at a time, waiting in line without holding a thread.
final class Turns: Sendable {
    private let state = Mutex<(busy: Bool, waiting: [CheckedContinuation<Void, Never>])>((false, []))

    func take() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let now = state.withLock { s -> Bool in
                if s.busy { s.waiting.append(c); return false }
                s.busy = true
                return true
            }
            if now { c.resume() }
        }
    }

    /// Hands the turn to the next in line (it stays busy), or frees it.
    func give() {
        let next = state.withLock { s -> CheckedContinuation<Void, Never>? in
            if s.waiting.isEmpty { s.busy = false; return nil }
            return s.waiting.removeFirst()
        }
        next?.resume()
    }
}
