import Logging
import MillionsCore
import NIOCore
import NIOPosix
import Observability
import PostgresNIO
import Prometheus
import ServiceLifecycle
import Synchronization

/// Connection settings for a PostgreSQL primary and its replicas.
public struct PostgresSettings: Sendable {
    /// "host:port" of every node; roles are discovered, not assumed.
    public var nodes: [String]
    /// Nodes in other sites: their roles are discovered too (a primary that moved there is
    /// found and written to), but as replicas they serve no reads (reads stay in the site).
    public var remoteNodes: [String] = []
    public var user = "postgres"
    public var password: String? = nil
    public var database = "millions"
    public var connectionsPerNode = 10
    public var queryTimeout: Duration = .seconds(2)
    public var discoveryInterval: Duration = .milliseconds(500)
    /// A replica further behind than this gets no reads.
    public var maxLagBytes: UInt64 = 16 * 1024 * 1024
    public var maxLagSeconds: Double = 10

    public init(nodes: [String]) { self.nodes = nodes }
}

/// A primary and its streaming replicas. Writes and transactions go to the primary;
/// reads go to healthy replicas, spread across them, honouring read-your-writes; each
/// node's role is discovered (`pg_is_in_recovery()`) every `discoveryInterval` and after
/// connection errors, so a promoted replica is found without a restart.
public final class ReplicaSet: Service {
    struct Node: Sendable {
        let name: String
        let client: PostgresClient
    }

    /// Internal: other tiers go through `read`, `write` and `transaction`, which route
    /// and fail over; they never hold a node's pool.
    let nodes: [Node]
    /// `host:port` of each node, in the order `statuses` reports them.
    public var nodeNames: [String] { nodes.map(\.name) }
    let settings: PostgresSettings
    public let router: ReadRouter
    public let logger: Logger
    /// The cluster's name among several (sharded users), under which a request's write
    /// positions on it are kept (`ReadYourWrites`); "" for the one cluster of a tier.
    public let scope: String
    public let metrics: AppMetrics
    private let status: Mutex<[NodeStatus]>
    private let spread = Atomic<Int>(0)
    private let discoverNow = Atomic<Bool>(false)

    public init(settings: PostgresSettings, metrics: AppMetrics, logger: Logger, scope: String = "") throws {
        guard !settings.nodes.isEmpty else { throw MillionsError(.badRequest, "data.postgres.nodes is empty") }
        self.settings = settings
        self.scope = scope
        self.logger = logger
        self.metrics = metrics
        self.router = ReadRouter(
            maxLagBytes: settings.maxLagBytes, maxLagSeconds: settings.maxLagSeconds,
            remote: Set(settings.nodes.count..<(settings.nodes.count + settings.remoteNodes.count)))
        self.nodes = try (settings.nodes + settings.remoteNodes).map { address in
            let parts = address.split(separator: ":")
            guard parts.count == 2, let port = Int(parts[1]) else {
                throw MillionsError(.badRequest, "postgres node must be host:port, got \(address)")
            }
            var config = PostgresClient.Configuration(
                host: String(parts[0]), port: port, username: settings.user, password: settings.password,
                database: settings.database, tls: .disable)
            config.options.maximumConnections = settings.connectionsPerNode
            // No keep-alive pings: the pool would arm a keep-alive timer each time a
            // connection comes back (tasks and a Dispatch timer per query); discovery
            // queries every node every `discoveryMs` instead. No minimum of connections:
            // postgres-nio 1.33 drops failed connects below the minimum (while a connect is
            // failing, the others are discarded) and then stops the process with a
            // precondition (`minimumConcurrentConnections <= active`) on the next lease that
            // needs a new connection; multi-dc web servers, connecting across a slow WAN,
            // died that way in CI.
            config.options.minimumConnections = 0
            config.options.keepAliveBehavior = nil
            config.options.connectTimeout = .seconds(1)
            return Node(name: address, client: PostgresClient(configuration: config, backgroundLogger: logger))
        }
        self.status = Mutex(Array(repeating: NodeStatus(), count: nodes.count))
    }

    /// A snapshot of what discovery last saw.
    public var statuses: [NodeStatus] { status.withLock { $0 } }

    public var primaryIndex: Int? {
        status.withLock { s in s.indices.first { s[$0].reachable && s[$0].role == .primary } }
    }

    // MARK: Running

    /// As a service: the pools and discovery run until the group shuts down (after the
    /// web server has drained).
    public func run() async throws {
        await cancelWhenGracefulShutdown { await self.runClients() }
    }

    /// Runs the connection pools and discovery until cancelled.
    public func runClients() async {
        await withDiscardingTaskGroup { group in
            for node in nodes { group.addTask { await node.client.run() } }
            group.addTask { await self.discoveryLoop() }
        }
    }

    @discardableResult
    /// Runs the pools for the duration of `body` (for commands and tests that have no
    /// service group), after discovery has found a primary.
    public func withRunning<T: Sendable>(requirePrimary: Bool = true, _ body: @Sendable () async throws -> T)
        async throws -> T
    {
        let task = Task { await self.runClients() }
        do {
            if requirePrimary { try await waitUntilDiscovered() } else { await discover() }
            let result = try await body()
            task.cancel()
            await task.value
            return result
        } catch {
            task.cancel()
            await task.value
            throw error
        }
    }

    /// Discovers roles until a primary answers; callers use it to wait until the set is
    /// usable. 30 s: a first connection to a server that has just started, on a loaded
    /// machine, took longer than 10 s in CI.
    public func waitUntilDiscovered(timeout: Duration = .seconds(30)) async throws {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            await discover()
            if primaryIndex != nil { return }
            try await Task.sleep(for: .milliseconds(100))
        }
        let seen = zip(settings.nodes, statuses).map { node, s in
            "\(node): \(s.reachable ? s.role.rawValue : "no answer")"
        }
        throw MillionsError(.unavailable, "no PostgreSQL primary after \(timeout) (\(seen.joined(separator: ", ")))")
    }

    private func discoveryLoop() async {
        while !Task.isCancelled {
            await discover()
            var waited = Duration.zero
            while waited < settings.discoveryInterval && !discoverNow.load(ordering: .relaxed) {
                do { try await Task.sleep(for: .milliseconds(50)) } catch { return }
                waited += .milliseconds(50)
            }
            discoverNow.store(false, ordering: .relaxed)
        }
    }

    /// Probes every node: role, WAL position, replay delay; then computes lag. A node that
    /// did not answer last time is first asked for a TCP connection (500 ms): a dead node
    /// refuses it at once, where its pool would make the probe wait out the whole query
    /// timeout (and every probe of the round waits for the slowest). A live node, however
    /// slow, gets the full timeout.
    public func discover() async {
        let last = statuses
        var fresh = await withTaskGroup(of: (Int, NodeStatus).self) { group in
            for i in nodes.indices {
                group.addTask {
                    if !last[i].reachable, !(await self.acceptsConnections(i, slowMeansDown: self.router.remote.contains(i))) {
                        return (i, NodeStatus())
                    }
                    return (i, await self.probe(i, timeout: self.settings.queryTimeout))
                }
            }
            var out = Array(repeating: NodeStatus(), count: nodes.count)
            for await (i, s) in group { out[i] = s }
            return NodeStatus.fencingStalePrimaries(out)
        }
        let primaryLSN = fresh.first { $0.reachable && $0.role == .primary }?.lsn
        for i in fresh.indices where fresh[i].role == .replica {
            if let p = primaryLSN {
                fresh[i].lagBytes = p > fresh[i].lsn ? p - fresh[i].lsn : 0
                if fresh[i].lagBytes == 0 { fresh[i].lagSeconds = 0 }
            }
        }
        let previous = status.withLock { s in
            let old = s
            s = fresh
            return old
        }
        for (i, s) in fresh.enumerated() {
            let l = [("node", nodes[i].name)]
            metrics.gauge("db_node_up", "1 if the node answered the last probe", l).set(to: s.reachable ? 1 : 0)
            metrics.gauge("db_node_is_primary", "1 if the node is the primary", l).set(to: s.role == .primary ? 1 : 0)
            metrics.gauge("db_node_fenced", "1 if the node answers as a primary of an older timeline (refused)", l)
                .set(to: s.role == .fenced ? 1 : 0)
            if s.role == .replica {
                metrics.gauge("db_replica_lag_bytes", "WAL bytes the replica is behind", l).set(to: Double(s.lagBytes))
                metrics.gauge("db_replica_lag_seconds", "Seconds the replica's replay is behind", l).set(to: s.lagSeconds)
            }
            if previous[i].role != s.role || previous[i].reachable != s.reachable {
                logger.info(
                    "postgres node changed",
                    metadata: ["node": "\(nodes[i].name)", "role": "\(s.role.rawValue)", "reachable": "\(s.reachable)"])
            }
        }
    }

    /// False only when node `i` refuses a TCP connection (nothing listens: it is dead). A
    /// connection that does not complete in time says nothing (a busy machine, a cut-off
    /// host): the full probe decides. Except, with `slowMeansDown`, for a remote node that
    /// was already down: one that cannot finish a handshake in 500 ms stays down for this
    /// round, so a site cut off the network costs each round 0.5 s rather than the probe's
    /// whole timeout (a round waits for its slowest probe).
    func acceptsConnections(_ i: Int, slowMeansDown: Bool = false) async -> Bool {
        let parts = nodes[i].name.split(separator: ":")
        guard parts.count == 2, let port = Int(parts[1]) else { return true }
        do {
            let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connectTimeout(.milliseconds(500))
                .connect(host: String(parts[0]), port: port).get()
            try? await channel.close()
            return true
        } catch ChannelError.connectTimeout {
            return !slowMeansDown
        } catch {
            return false
        }
    }

    private func probe(_ i: Int, timeout: Duration) async -> NodeStatus {
        let client = nodes[i].client
        do {
            return try await withTimeout(timeout) {
                let rows = try await client.query(
                    """
                    SELECT pg_is_in_recovery(),
                      (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text,
                      COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 0)::float8,
                      CASE WHEN pg_is_in_recovery() THEN COALESCE((SELECT received_tli FROM pg_stat_wal_receiver), 0)
                        ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END
                    """)
                for try await (inRecovery, lsn, delay, timeline) in rows.decode((Bool, String?, Double, Int32).self) {
                    return NodeStatus(
                        role: inRecovery ? .replica : .primary, reachable: true, lsn: lsn.flatMap(LSN.parse) ?? 0,
                        lagSeconds: max(0, delay), timeline: UInt32(max(0, timeline)))
                }
                return NodeStatus()
            }
        } catch {
            return NodeStatus()
        }
    }

    /// The primary's index. When none is known (a slow query may have marked it failed a
    /// moment ago), the discovery loop is asked for a fresh look and its result awaited
    /// (about one probe's time), rather than a 503 on stale news. Every waiter shares that
    /// one probe.
    func currentPrimary() async throws -> Int {
        if let i = primaryIndex { return i }
        rediscoverSoon()
        let deadline = ContinuousClock.now + min(settings.queryTimeout, .seconds(2)) + .milliseconds(100)
        while ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(25))
            if let i = primaryIndex { return i }
        }
        throw Self.noPrimary
    }

    /// The primary's current WAL position.
    public func primaryPosition() async throws -> UInt64 {
        try await readPrimary("wal_position") { client in
            for try await text in try await client.query("SELECT pg_current_wal_lsn()::text").decode(String.self) {
                if let lsn = LSN.parse(text) { return lsn }
            }
            throw MillionsError(.internalError, "the primary gave no WAL position")
        }
    }

    /// Waits until every replica of this site that answers has replayed `position`, or
    /// `timeout` has passed; the names of those still behind. A replica that does not answer is not
    /// waited for: reads are not routed to it either.
    public func waitForReplay(of position: UInt64, timeout: Duration) async -> [String] {
        let deadline = ContinuousClock.now + timeout
        // This site's nodes: a remote replica serves no reads here.
        var waiting = nodes.indices.filter { !router.remote.contains($0) }
        while true {
            var behind: [Int] = []
            for i in waiting {
                let s = await probe(i, timeout: settings.queryTimeout)
                if s.reachable && s.role == .replica && s.lsn < position { behind.append(i) }
            }
            waiting = behind
            if waiting.isEmpty || ContinuousClock.now >= deadline { return waiting.map { nodes[$0].name } }
            try? await Task.sleep(for: .milliseconds(5))
        }
    }

    /// The next turn of the rotation among eligible replicas.
    func nextSpread() -> Int { spread.wrappingAdd(1, ordering: .relaxed).oldValue }

    /// Asks the discovery loop to probe every node now.
    public func rediscoverSoon() { discoverNow.store(true, ordering: .relaxed) }

    /// Marks a node unusable until discovery sees it again, and asks for discovery soon.
    func markFailed(_ i: Int, _ error: any Error) {
        // A call that only ran out of time says the node is slow (a busy machine), not
        // gone: it is not taken out of rotation (the primary stays the primary for other
        // writers); discovery looks at once, and its probe decides.
        if error is TimeoutError {
            discoverNow.store(true, ordering: .relaxed)
            metrics.counter("db_node_timeouts", "Calls that ran out of time on a node", [("node", nodes[i].name)]).increment()
            logger.warning("postgres node slow", metadata: ["node": "\(nodes[i].name)", "error": "\(String(reflecting: error))"])
            return
        }
        status.withLock { $0[i].reachable = false }
        discoverNow.store(true, ordering: .relaxed)
        metrics.counter("db_node_failures", "Queries that failed because a node was unusable", [("node", nodes[i].name)])
            .increment()
        logger.warning("postgres node failed", metadata: ["node": "\(nodes[i].name)", "error": "\(String(reflecting: error))"])
    }

    // MARK: Routing

    /// Runs a read on a replica chosen by the router (see `ReadRouter`), retrying on the
    /// next choice when a node fails, so a dead replica costs no failed read.
    public func read<T: Sendable>(
        _ op: String, _ body: @escaping @Sendable (PostgresClient) async throws -> T
    ) async throws -> T {
        let minimum = ReadYourWrites.current?.position(for: scope) ?? 0
        var excluded = Set<Int>()
        while true {
            let decision = router.choose(
                statuses, minimumLSN: minimum, excluded: excluded, spread: nextSpread())
            metrics.cachedCounter("db_read_routing", "Where reads were sent, and why", [("decision", decision.label)]).increment()
            guard let i = decision.node else {
                throw MillionsError(.unavailable, "the database is unavailable", retryAfter: 2)
            }
            do {
                return try await run(i, op: op, role: "read") { try await body(self.nodes[i].client) }
            } catch let error where Self.isNodeFailure(error) {
                markFailed(i, error)
                excluded.insert(i)
            } catch let error where Self.isSchemaBehind(error) {
                // A replica that has not replayed a migration yet (a new table or column):
                // behind, not broken; this read goes elsewhere, the primary at worst.
                guard case .replica = decision else { throw error }
                metrics.cachedCounter("db_read_schema_behind", "Reads a replica could not answer for lack of a migration's table or column", []).increment()
                excluded.insert(i)
            }
        }
    }

    /// Runs a read on the primary (log-ins, read-modify-write paths). `timeout` replaces
    /// `data.postgres.timeoutMs` for background calls that may rightly take long.
    public func readPrimary<T: Sendable>(
        _ op: String, timeout: Duration? = nil, _ body: @escaping @Sendable (PostgresClient) async throws -> T
    ) async throws -> T {
        let i = try await currentPrimary()
        do {
            return try await run(i, op: op, role: "primary", timeout: timeout) { try await body(self.nodes[i].client) }
        } catch let error where Self.isNodeFailure(error) {
            markFailed(i, error)
            throw error is TimeoutError ? Self.timedOut : Self.noPrimary
        }
    }

    @discardableResult
    /// Runs `body` in a transaction on the primary, then records the commit's WAL position
    /// for read-your-writes. Without a primary: 503 with Retry-After, never a retry on
    /// another node (a write is not idempotent).
    /// `timeout` replaces `data.postgres.timeoutMs` for calls that may rightly wait long
    /// (migrations wait for each other's lock and for DDL locks). Without `transaction`,
    /// each statement of `body` commits on its own: for a write that is one statement,
    /// this saves the BEGIN and COMMIT round trips.
    public func write<T: Sendable>(
        _ op: String, timeout: Duration? = nil, transaction: Bool = true,
        _ body: @escaping @Sendable (PostgresConnection) async throws -> T
    ) async throws -> T {
        let i = try await currentPrimary()
        let client = nodes[i].client
        let logger = self.logger
        do {
            let (result, lsn) = try await run(i, op: op, role: "write", timeout: timeout) {
                let result: T
                do {
                    if transaction {
                        result = try await client.withTransaction(logger: logger) { connection in
                            try await body(connection)
                        }
                    } else {
                        result = try await client.withConnection { connection in try await body(connection) }
                    }
                } catch let e as PostgresTransactionError {
                    // Surface the closure's own error (a conflict, say), not the wrapper.
                    throw e.closureError ?? e.beginError ?? e.commitError ?? e.rollbackError ?? e
                }
                // The timeline with the position: see `LSN.position`. Asked only when someone
                // will read it (a request's session, a job's result): it costs a round trip.
                var position: UInt64 = 0
                guard ReadYourWrites.current != nil else { return (result, position) }
                let rows = try await client.query(
                    """
                    SELECT pg_current_wal_lsn()::text,
                      ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int
                    """)
                for try await (text, timeline) in rows.decode((String, Int32).self) {
                    position = LSN.position(LSN.parse(text) ?? 0, timeline: UInt32(max(0, timeline)))
                }
                return (result, position)
            }
            ReadYourWrites.current?.wrote(at: lsn, scope: scope)
            return result
        } catch let error where Self.isNodeFailure(error) {
            markFailed(i, error)
            throw error is TimeoutError ? Self.timedOut : Self.noPrimary
        }
    }

    static var timedOut: MillionsError {
        MillionsError(.unavailable, "the database did not answer in time", retryAfter: 2)
    }

    static var noPrimary: MillionsError {
        MillionsError(.unavailable, "writes are unavailable: no PostgreSQL primary", retryAfter: 2)
    }

    private func run<T: Sendable>(
        _ i: Int, op: String, role: String, timeout: Duration? = nil, _ body: @escaping @Sendable () async throws -> T
    ) async throws -> T {
        let start = ContinuousClock.now
        // Each call holds one pooled connection while it runs: this is the pool's occupancy.
        let inUse = metrics.cachedGauge(
            "db_pool_in_use", "Calls holding (or waiting for) a pooled connection, by node", [("node", nodes[i].name)])
        inUse.increment()
        defer {
            inUse.decrement()
            metrics.cachedLatency(
                "db_query_duration", "Database calls by node, role and operation",
                [("node", nodes[i].name), ("role", role), ("op", op)]
            ).record(ContinuousClock.now - start)
        }
        return try await withTimeout(timeout ?? settings.queryTimeout, body)
    }

    /// Errors that say the node is unusable (down, closed, timed out, or not in the role we
    /// thought), as opposed to errors in the query itself.
    /// undefined_table, undefined_column.
    static func isSchemaBehind(_ error: any Error) -> Bool {
        guard let e = error as? PSQLError, e.code == .server else { return false }
        return ["42P01", "42703"].contains(e.serverInfo?[.sqlState] ?? "")
    }

    static func isNodeFailure(_ error: any Error) -> Bool {
        if error is TimeoutError { return true }
        if let e = error as? PSQLError {
            if e.code != .server { return true }
            let state = e.serverInfo?[.sqlState] ?? ""
            // read-only transaction (a replica answered as primary), recovery conflict,
            // administrator shutdown, crash shutdown, cannot connect now.
            return ["25006", "40001", "57P01", "57P02", "57P03"].contains(state)
        }
        return false
    }
}

/// A call that did not finish in time.
public struct TimeoutError: Error, Sendable {}

/// Runs `body`, failing with `TimeoutError` after `limit`. The caller is released at the
/// limit even if `body` ignores cancellation (a lease waiting on a dead node can): the body
/// is cancelled and left to finish on its own.
public func withTimeout<T: Sendable>(_ limit: Duration, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    let race = Race<T>()
    return try await withTaskCancellationHandler {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
            race.start(continuation, limit: limit, body)
        }
    } onCancel: {
        race.cancel()
    }
}

/// The first of a body and a timer to finish resumes the caller; the other is cancelled.
private final class Race<T: Sendable>: Sendable {
    private struct State {
        var continuation: CheckedContinuation<T, any Error>?
        var work: Task<Void, Never>?
        var timer: Scheduled<Void>?
    }
    private let state = Mutex(State())

    func start(_ continuation: CheckedContinuation<T, any Error>, limit: Duration, _ body: @escaping @Sendable () async throws -> T) {
        state.withLock { $0.continuation = continuation }
        let work = Task {
            let result: Result<T, any Error>
            do { result = .success(try await body()) } catch { result = .failure(error) }
            self.finish(result)
        }
        // A NIO timer: cheap, on an event loop's own timer heap (a sleeping Task per call
        // went through Dispatch's timer thread and showed in profiles).
        let nanoseconds = limit.components.seconds * 1_000_000_000 + limit.components.attoseconds / 1_000_000_000
        let timer = MultiThreadedEventLoopGroup.singleton.any().scheduleTask(in: .nanoseconds(nanoseconds)) {
            self.finish(.failure(TimeoutError()))
        }
        let alreadyDone = state.withLock { s -> Bool in
            s.work = work
            s.timer = timer
            return s.continuation == nil
        }
        if alreadyDone { timer.cancel() }
    }

    func cancel() { finish(.failure(CancellationError())) }

    private func finish(_ result: Result<T, any Error>) {
        let (continuation, work, timer) = state.withLock { s in
            let c = s.continuation
            s.continuation = nil
            return (c, s.work, s.timer)
        }
        guard let continuation else { return }
        work?.cancel()
        timer?.cancel()
        continuation.resume(with: result)
    }
}
