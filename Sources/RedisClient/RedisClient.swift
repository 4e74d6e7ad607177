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
        /// Sentinels (`host:port`) that name the master of `masterName`; when set, `host`
        /// and `port` are only where to start, and a switch of master is followed.
        public var sentinels: [String] = []
        public var masterName = "millions"
        /// Durable calls (`durable: true`: a new session, an enqueued or completed job) end
        /// with `WAIT waitReplicas`: the call succeeds only once that many replicas have the
        /// writes (async replication otherwise loses what a failover promotes past). Other
        /// writes (a session's sliding expiry) do not wait. 0: no wait.
        public var waitReplicas = 0
        public var waitTimeout: TimeAmount = .milliseconds(250)

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
    private let switches: Prometheus.Counter
    /// With sentinels: the master they named last (nil: ask them before the next connection).
    private let master = Mutex<(host: String, port: Int)?>(nil)

    public init(configuration: Configuration, metrics: AppMetrics, logger: Logger) {
        self.configuration = configuration
        self.slots = Mutex(Array(repeating: nil, count: max(1, configuration.connections)))
        self.logger = logger
        let labels = [("node", configuration.sentinels.isEmpty ? "\(configuration.host):\(configuration.port)" : "master:\(configuration.masterName)")]
        switches = metrics.counter("redis_master_lookups", "Masters named by Sentinel (at start and after each failure)", labels)
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
    public func send(_ command: RedisCommand, durable: Bool = false) async throws -> RESPValue {
        let reply = try await pipeline([command], durable: durable)[0]
        if case .error(let message) = reply { throw RedisError.reply(message) }
        return reply
    }

    /// Sends the commands together (one write, one round trip) and returns a reply for
    /// each, error replies included as `.error` values.
    ///
    /// A connection that turns out to be dead before anything was sent on it is replaced
    /// and the call tried once more on the fresh one; a failure after sending is thrown,
    /// since a write may or may not have been applied.
    public func pipeline(_ commands: [RedisCommand], durable: Bool = false) async throws -> [RESPValue] {
        guard !commands.isEmpty else { return [] }
        let waits = durable && configuration.waitReplicas > 0 && !commands.allSatisfy(\.isReadOnly)
        guard waits else { return try await send(commands, timeout: configuration.timeout) }
        let ms = max(1, configuration.waitTimeout.nanoseconds / 1_000_000)
        var replies = try await send(
            commands + [Self.wait(replicas: configuration.waitReplicas, timeoutMs: Int(ms))],
            timeout: configuration.timeout + configuration.waitTimeout)
        let acked = replies.removeLast().int ?? 0
        guard acked >= configuration.waitReplicas else {
            errors.increment()
            throw RedisError(.timeout, "the write reached \(acked) of \(configuration.waitReplicas) replicas in time")
        }
        return replies
    }

    private func send(_ commands: [RedisCommand], timeout: TimeAmount) async throws -> [RESPValue] {
        let start = ContinuousClock.now
        do {
            var conn = try await connection()
            if !conn.isActive { conn = try await connection(replacing: conn) }
            var replies: [RESPValue]
            do {
                replies = try await conn.send(commands, timeout: timeout)
            } catch let error as RedisError where error.code == .connectionClosed && commands.allSatisfy(\.isReadOnly) {
                replies = try await connection(replacing: conn).send(commands, timeout: timeout)
            }
            if !configuration.sentinels.isEmpty, replies.contains(where: Self.isReadOnlyReply) {
                // A master demoted by a failover refuses writes (and applied none of them):
                // ask the sentinels again and send once more to whoever they name.
                forgetMaster()
                replies = try await connection().send(commands, timeout: timeout)
            }
            latency.record(ContinuousClock.now - start)
            return replies
        } catch {
            errors.increment()
            let failure = error as? RedisError ?? RedisError(.connectionClosed, "\(error)")
            if !configuration.sentinels.isEmpty, failure.code != .server, failure.code != .authentication {
                // A closed or reset connection: the master may be gone, ask the sentinels
                // anew. A timeout alone may be a slow master: forget it only if the
                // sentinels name another one now (a frozen master answers nothing at all).
                if failure.code != .timeout {
                    forgetMaster()
                } else if let known = master.withLock({ $0 }), let named = await askSentinels(), named != known {
                    forgetMaster()
                }
            }
            throw failure
        }
    }

    /// The master the first sentinel that answers names, unverified (nil: none answered).
    private func askSentinels() async -> (host: String, port: Int)? {
        for address in configuration.sentinels {
            if let named = try? await askSentinel(address) { return named }
        }
        return nil
    }

    /// The master sentinel `address` names (`SENTINEL get-master-addr-by-name`).
    private func askSentinel(_ address: String) async throws -> (host: String, port: Int) {
        var asked = try Configuration(address: address)
        // The sentinels require the servers' password too (scripts/redis).
        asked.password = configuration.password
        asked.protocolVersion = 2
        asked.timeout = configuration.timeout
        asked.connectTimeout = configuration.connectTimeout
        let sentinel = try await RedisConnection.connect(asked)
        defer { sentinel.close() }
        let reply = try await sentinel.send(
            [RedisCommand("SENTINEL", "get-master-addr-by-name", configuration.masterName)], timeout: configuration.timeout)[0]
        guard let pair = reply.elements, pair.count == 2, let host = pair[0].string, let port = pair[1].string.flatMap({ Int($0) })
        else { throw RedisError(.connectionClosed, "\(address) knows no master \(configuration.masterName)") }
        return (host, port)
    }

    static func isReadOnlyReply(_ reply: RESPValue) -> Bool {
        if case .error(let message) = reply { return message.hasPrefix("READONLY") }
        return false
    }

    /// `WAIT replicas timeout`: how many replicas have every write this connection sent so far.
    /// Send it in the same pipeline as the writes it is about (one connection).
    public static func wait(replicas: Int, timeoutMs: Int) -> RedisCommand {
        RedisCommand("WAIT", String(replicas), String(timeoutMs))
    }

    // MARK: - Sentinel

    /// Drops the master the sentinels named and every connection to it.
    func forgetMaster() {
        let known = master.withLock { m -> Bool in
            defer { m = nil }
            return m != nil
        }
        if known { close() }
    }

    /// Where to connect: the configured server, or the master the sentinels name now (and
    /// that says so itself: `ROLE` answers `master`).
    private func serverConfiguration() async throws -> Configuration {
        guard !configuration.sentinels.isEmpty else { return configuration }
        if let m = master.withLock({ $0 }) { return configuration.at(m.host, m.port) }
        var problems: [String] = []
        for address in configuration.sentinels {
            do {
                let (host, port) = try await askSentinel(address)
                let candidate = configuration.at(host, port)
                let probe = try await RedisConnection.connect(candidate)
                defer { probe.close() }
                let role = try await probe.send([RedisCommand("ROLE")], timeout: configuration.timeout)[0]
                guard role.elements?.first?.string == "master" else {
                    problems.append("\(address) names \(host):\(port), which is not a master (yet)")
                    continue
                }
                master.withLock { $0 = (host, port) }
                switches.increment()
                logger.info("redis master", metadata: ["master": "\(host):\(port)", "sentinel": "\(address)"])
                return candidate
            } catch {
                problems.append("\(address): \(error)")
            }
        }
        throw RedisError(.connectionClosed, "no master \(configuration.masterName) from the sentinels: \(problems.joined(separator: "; "))")
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
        let fresh = try await RedisConnection.connect(try await serverConfiguration())
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

extension RedisClient.Configuration {
    /// The same settings for another server.
    func at(_ host: String, _ port: Int) -> Self {
        var c = self
        c.host = host
        c.port = port
        return c
    }
}
