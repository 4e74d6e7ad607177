import Cluster
import Foundation

/// Real memcached servers for a test, started and stopped by `scripts/memcached`.
/// Fails loudly if they cannot be started; never skips.
public final class MemcachedServers: Sendable {
    public let ports: [Int]
    public let megabytes: Int
    /// ASCII authentication's password (user `millions`), if the servers require one.
    public let password: String?
    public var addresses: [String] { ports.map { "127.0.0.1:\($0)" } }

    private init(ports: [Int], megabytes: Int, password: String?) {
        self.ports = ports
        self.megabytes = megabytes
        self.password = password
    }

    static var script: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../scripts/memcached")
            .standardized.path
    }

    /// The password goes to the script in its environment, never on a command line.
    @discardableResult
    static func run(_ args: [String], password: String? = nil) throws -> Int32 {
        try Processes.run(["/bin/bash", script] + args, environment: password.map { ["MILLIONS_MEMCACHED_PASSWORD": $0] } ?? [:])
    }

    public struct StartFailure: Error, CustomStringConvertible {
        public let description: String
    }

    /// Starts `count` servers on free loopback ports.
    public static func start(count: Int, megabytes: Int = 16, password: String? = nil) throws -> MemcachedServers {
        var ports: [Int] = []
        var attempts = 0
        while ports.count < count {
            attempts += 1
            if attempts > count * 20 { throw StartFailure(description: "could not start \(count) memcached servers") }
            let port = Int.random(in: 20_000..<30_000)
            if ports.contains(port) { continue }
            if try run(["status", String(port)]) == 0 { continue }
            if try run(["start", String(port), String(megabytes)], password: password) == 0 { ports.append(port) }
        }
        return MemcachedServers(ports: ports, megabytes: megabytes, password: password)
    }

    /// kill -9 one server.
    public func kill(_ index: Int) throws {
        guard try Self.run(["kill", String(ports[index])]) == 0 else {
            throw StartFailure(description: "could not kill memcached on \(ports[index])")
        }
    }

    /// Starts a killed server again on its port.
    public func restart(_ index: Int) throws {
        guard try Self.run(["start", String(ports[index]), String(megabytes)], password: password) == 0 else {
            throw StartFailure(description: "could not restart memcached on \(ports[index])")
        }
    }

    public func stopAll() {
        for p in ports { _ = try? Self.run(["stop", String(p)]) }
    }

    /// Runs `body` with fresh servers, stopping them afterwards whatever happens.
    public static func with<T>(
        count: Int, megabytes: Int = 16, password: String? = nil, _ body: (MemcachedServers) async throws -> T
    ) async throws -> T {
        let servers = try start(count: count, megabytes: megabytes, password: password)
        defer { servers.stopAll() }
        return try await body(servers)
    }
}
