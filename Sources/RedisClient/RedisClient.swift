import Logging
import NIOCore
import Observability
import Prometheus
import ServiceLifecycle
import Synchronization

/// A client for one Redis server: a fixed number of pipelined connections, opened lazily
/// and reopened after failures, with a timeout on every call. A `Service`: it closes its
/// connections at shutdown.
public final class RedisClient: Service, Sendable {
    public struct Configuration: Sendable {
        public var host: String
        public var port: Int
        public var username: String? = nil
        public var password: String? = nil
        public var database = 0
        /// 3 asks for RESP3 (`HELLO 3`) and falls back to 2 if the server lacks it.
        public var protocolVersion = 3
        public var connections = 4
        public var timeout: TimeAmount = .milliseconds(500)
        public var connectTimeout: TimeAmount = .milliseconds(500)
        public var limits = RESPLimits()

        public init(host: String, port: Int) {
            self.host = host
            self.port = port
        }

        /// `host:port`.
        public init(address: String) throws {
            guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]),
                colon != address.startIndex, (1...65535).contains(port)
            else { throw RedisError(.protocolError, "redis address must be host:port, got \(address)") }
            self.init(host: String(address[..<colon]), port: port)
        }
    }

    public let configuration: Configuration
    private let slots: Mutex<[RedisConnection?]>
    private let nextSlot = Atomic<Int>(0)
    private let logger: Logger
    private let latency: DurationHistogram
    private let errors: Prometheus.Counter
    private let reconnects: Prometheus.Counter

    public init(configuration: Configuration, metrics: AppMetrics, logger: Logger) {
        self.configuration = configuration
        self.slots = Mutex(Array(repeating: nil, count: max(1, configuration.connections)))
        self.logger = logger
        let labels = [("node", "\(configuration.host):\(configuration.port)")]
        latency = metrics.latency("redis_request_duration", "Redis round trips (one per pipeline) by node", labels)
        errors = metrics.counter("redis_errors", "Redis calls that failed without a server reply, by node", labels)
        reconnects = metrics.counter("redis_connects", "Redis connections opened, by node", labels)
    }

    public func run() async throws {
        try? await gracefulShutdown()
        close()
    }

    /// Sends one command; an error reply throws `RedisError(.server, …)` (or
    /// `.authentication` when the server wants credentials).
    @discardableResult
    public func send(_ command: RedisCommand) async throws -> RESPValue {
        let reply = try await pipeline([command])[0]
        if case .error(let message) = reply { throw RedisError.reply(message) }
        return reply
    }

    /// Sends the commands together (one write, one round trip) and returns a reply for
    /// each, error replies included as `.error` values.
    ///
    /// A connection that turns out to be dead before anything was sent on it is replaced
    /// and the call tried once more on the fresh one; a failure after sending is thrown,
    /// since a write may or may not have been applied.
    public func pipeline(_ commands: [RedisCommand]) async throws -> [RESPValue] {
        guard !commands.isEmpty else { return [] }
        let start = ContinuousClock.now
        do {
            var conn = try await connection()
            if !conn.isActive { conn = try await connection(replacing: conn) }
            let replies: [RESPValue]
            do {
                replies = try await conn.send(commands, timeout: configuration.timeout)
            } catch let error as RedisError where error.code == .connectionClosed && commands.allSatisfy(\.isReadOnly) {
                replies = try await connection(replacing: conn).send(commands, timeout: configuration.timeout)
            }
            latency.record(ContinuousClock.now - start)
            return replies
        } catch {
            errors.increment()
            throw error as? RedisError ?? RedisError(.connectionClosed, "\(error)")
        }
    }

    /// The protocol the server agreed to (opens a connection if none is open).
    public func negotiatedProtocol() async throws -> Int { try await connection().protocolVersion }

    // MARK: - Commands the project uses

    public func get(_ key: String) async throws -> ByteBuffer? {
        switch try await send(RedisCommand("GET", key)) {
        case .bulkString(let b): b
        default: nil
        }
    }

    /// `SET key value [EX seconds]`.
    public func set(_ key: String, _ value: ByteBuffer, expireSeconds: Int? = nil) async throws {
        var args = [ByteBuffer(string: key), value]
        if let expireSeconds { args += [ByteBuffer(string: "EX"), ByteBuffer(string: String(expireSeconds))] }
        try await send(RedisCommand("SET", arguments: args))
    }

    /// Number of keys removed.
    @discardableResult
    public func delete(_ keys: [String]) async throws -> Int {
        guard !keys.isEmpty else { return 0 }
        return Int(try await send(RedisCommand("DEL", arguments: keys.map { ByteBuffer(string: $0) })).int ?? 0)
    }

    public func ping() async throws {
        let reply = try await send(RedisCommand("PING"))
        guard reply.string == "PONG" else { throw RedisError(.protocolError, "PING answered \(reply)") }
    }

    // MARK: - Connections

    private func connection() async throws -> RedisConnection {
        let count = slots.withLock { $0.count }
        let i = nextSlot.wrappingAdd(1, ordering: .relaxed).oldValue % count
        if let existing = slots.withLock({ $0[i] }), existing.isActive { return existing }
        return try await open(slot: i, replacing: nil)
    }

    private func connection(replacing dead: RedisConnection) async throws -> RedisConnection {
        let i = slots.withLock { slots in slots.firstIndex { $0 === dead } } ?? 0
        return try await open(slot: i, replacing: dead)
    }

    private func open(slot i: Int, replacing dead: RedisConnection?) async throws -> RedisConnection {
        let fresh = try await RedisConnection.connect(configuration)
        reconnects.increment()
        let (use, spare) = slots.withLock { slots -> (RedisConnection, RedisConnection?) in
            if let other = slots[i], other !== dead, other.isActive { return (other, fresh) }
            slots[i] = fresh
            return (fresh, nil)
        }
        spare?.close()
        dead?.close()
        return use
    }

    public func close() {
        let all = slots.withLock { slots -> [RedisConnection] in
            let open = slots.compactMap { $0 }
            slots = Array(repeating: nil, count: slots.count)
            return open
        }
        for c in all { c.close() }
    }
}
