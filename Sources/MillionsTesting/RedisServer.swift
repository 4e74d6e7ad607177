import Foundation
import Cluster
import MillionsCore

/// A real Redis server for a test, started and stopped by `scripts/redis`, with its data
/// in a folder of its own. Fails loudly if it cannot be started; never skips.
public final class RedisServer: Sendable {
    public let port: Int
    public let password: String?
    public var address: String { "127.0.0.1:\(port)" }

    private init(port: Int, password: String?) {
        self.port = port
        self.password = password
    }

    static var script: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../scripts/redis")
            .standardized.path
    }

    /// The password goes to the script in its environment, never on a command line.
    @discardableResult
    static func run(_ args: [String], password: String? = nil) throws -> Int32 {
        try Processes.run(["/bin/bash", script] + args, environment: password.map { ["MILLIONS_REDIS_PASSWORD": $0] } ?? [:])
    }

    /// Starts a server on a free loopback port (16000–17999), optionally with a password.
    public static func start(password: String? = nil) throws -> RedisServer {
        for _ in 0..<20 {
            let port = Int.random(in: 16_000..<18_000)
            if try run(["status", String(port)]) == 0 { continue }
            if try run(["start", String(port)], password: password) == 0 {
                return RedisServer(port: port, password: password)
            }
        }
        throw MemcachedServers.StartFailure(description: "could not start a Redis server")
    }

    public func kill() throws {
        guard try Self.run(["kill", String(port)]) == 0 else {
            throw MemcachedServers.StartFailure(description: "could not kill redis on \(port)")
        }
    }

    public func restart() throws {
        guard try Self.run(["start", String(port)], password: password) == 0 else {
            throw MemcachedServers.StartFailure(description: "could not restart redis on \(port)")
        }
    }

    public func stop() {
        _ = try? Self.run(["stop", String(port)])
        let dir = (ProcessInfo.processInfo.environment["MILLIONS_RUN_DIR"] ?? "/tmp/millions-run") + "/redis-\(port)"
        try? FileManager.default.removeItem(atPath: dir)
    }

    /// Runs `body` with a fresh server, stopping it afterwards whatever happens.
    public static func with<T>(password: String? = nil, _ body: (RedisServer) async throws -> T) async throws -> T {
        let server = try start(password: password)
        defer { server.stop() }
        return try await body(server)
    }
}

/// A Redis master, two replicas and three sentinels (quorum 2) on six consecutive loopback
/// ports, started by `scripts/redis`; the sentinels call the master `millions`. Every
/// server and sentinel requires `password` (as the cluster's do).
public final class RedisSentinelGroup: Sendable {
    public let base: Int
    public let password: String
    /// Master (at first), replica, replica.
    public var serverPorts: [Int] { [base, base + 1, base + 2] }
    public var sentinels: [String] { (3...5).map { "127.0.0.1:\(base + $0)" } }

    private init(base: Int, password: String) {
        self.base = base
        self.password = password
    }

    func run(_ args: [String], replicaOf: Int? = nil, log: String? = nil) throws -> Int32 {
        var env = ["MILLIONS_REDIS_PASSWORD": password]
        if let replicaOf { env["MILLIONS_REDIS_REPLICAOF"] = "127.0.0.1 \(replicaOf)" }
        return try Processes.run(["/bin/bash", RedisServer.script] + args, environment: env, log: log)
    }

    public static func start() throws -> RedisSentinelGroup {
        for _ in 0..<20 {
            // Below RedisServer's range (16000–17999): its tests run alongside.
            let base = Int.random(in: 14_000..<14_990)
            let group = RedisSentinelGroup(base: base, password: Token.random(bytes: 16))
            if try (0..<6).contains(where: { try group.run(["status", String(base + $0)]) == 0 }) { continue }
            guard try group.run(["start", String(base)]) == 0,
                try group.run(["start", String(base + 1)], replicaOf: base) == 0,
                try group.run(["start", String(base + 2)], replicaOf: base) == 0,
                try (3...5).allSatisfy({ try group.run(["sentinel", String(base + $0), "127.0.0.1", String(base)]) == 0 })
            else {
                group.stop()
                continue
            }
            return group
        }
        throw MemcachedServers.StartFailure(description: "could not start Redis with sentinels")
    }

    /// The master the first sentinel that answers names now.
    public func master() throws -> Int? {
        for s in sentinels {
            let port = Int(s.split(separator: ":")[1])!
            let out = NSTemporaryDirectory() + "sentinel-\(port)-\(UUID().uuidString)"
            defer { try? FileManager.default.removeItem(atPath: out) }
            guard try run(["master", String(port)], log: out) == 0 else { continue }
            let text = try String(contentsOfFile: out, encoding: .utf8)
            if let p = text.split(separator: " ").last.flatMap({ Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) }) { return p }
        }
        return nil
    }

    /// The pid of the server or sentinel on `port`.
    public func pid(_ port: Int) throws -> Int32 {
        let dir = (ProcessInfo.processInfo.environment["MILLIONS_RUN_DIR"] ?? "/tmp/millions-run") + "/redis-\(port)"
        guard let text = try? String(contentsOfFile: dir + "/redis.pid", encoding: .utf8), let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)) else {
            throw MemcachedServers.StartFailure(description: "no pid for redis on \(port)")
        }
        return pid
    }

    public func kill(_ port: Int) throws {
        guard try run(["kill", String(port)]) == 0 else { throw MemcachedServers.StartFailure(description: "could not kill redis on \(port)") }
    }

    public func stop() {
        for port in base..<(base + 6) {
            _ = try? run(["stop", String(port)])
            let dir = (ProcessInfo.processInfo.environment["MILLIONS_RUN_DIR"] ?? "/tmp/millions-run") + "/redis-\(port)"
            try? FileManager.default.removeItem(atPath: dir)
        }
    }

    public static func with<T>(_ body: (RedisSentinelGroup) async throws -> T) async throws -> T {
        let group = try start()
        defer { group.stop() }
        return try await body(group)
    }
}
