import Foundation

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

    @discardableResult
    static func run(_ args: [String]) throws -> Int32 {
        try Command.run(["/bin/bash", script] + args)
    }

    /// Starts a server on a free loopback port (16000–17999), optionally with a password.
    public static func start(password: String? = nil) throws -> RedisServer {
        for _ in 0..<20 {
            let port = Int.random(in: 16_000..<18_000)
            if try run(["status", String(port)]) == 0 { continue }
            if try run(["start", String(port)] + (password.map { [$0] } ?? [])) == 0 {
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
        guard try Self.run(["start", String(port)] + (password.map { [$0] } ?? [])) == 0 else {
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
