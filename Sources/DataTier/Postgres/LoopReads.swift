import Logging
import MillionsCore
import NIOCore
import Observability
import PostgresNIO
import Prometheus
import ServiceLifecycle
import Synchronization

/// Reads of one user answered on the caller's event loop, over connections that live on
/// that same loop: the request, its query and its answer never change threads.
///
/// The routed read (`ReplicaSet.read`) hops between threads five or six times per request
/// (the handler's task, a timeout task and its timer, the pool's lease, the connection's
/// loop and back); on two cores those wake-ups cost more than the query itself (issue 16,
/// P2). This path does only the common case: one primary-key read on the node the router
/// picks from discovery's view, honouring the client's write position. What it cannot do
/// at once (no usable node, a full queue) it declines, and any failure it hands back: the
/// caller then takes the routed path, which retries on the next node and answers 503 when
/// there is none. A node failure is reported to discovery as the routed path does.
///
/// Reads for one node that arrive together (in one pass of the loop, or while every
/// connection is busy) go as one query, `id = ANY($1)`: under load each read then costs
/// a fraction of a round trip, a system call and a query on the server.
public final class LoopReads: Service, Sendable {
    let set: ReplicaSet
    let perLoop: Int
    /// Reads in one query at most.
    let batchLimit: Int
    let maxWaiters = 256
    private let pools = Mutex<[ObjectIdentifier: LoopPool]>([:])
    private let closed = Atomic<Bool>(false)
    private let nextID = Atomic<Int>(0)
    let metrics: Metrics

    struct Metrics: Sendable {
        let routing: [String: Prometheus.Counter]
        let latency: [DurationHistogram]
        let storeReads: Prometheus.Counter
        let answered: Prometheus.Counter
        let declined: Prometheus.Counter
        let handedBack: Prometheus.Counter
        let queries: Prometheus.Counter
    }

    /// `connectionsPerLoop` connections at most to each node from each event loop;
    /// `batchLimit` reads at most in one query (1: one query per read).
    public init(replicaSet: ReplicaSet, connectionsPerLoop: Int, batchLimit: Int = 32) {
        set = replicaSet
        perLoop = max(1, connectionsPerLoop)
        self.batchLimit = max(1, batchLimit)
        let m = replicaSet.metrics
        var routing: [String: Prometheus.Counter] = [:]
        for label in ["replica", "primary_fallback", "read_your_writes_fallback", "stale_replica", "unavailable"] {
            routing[label] = m.cachedCounter("db_read_routing", "Where reads were sent, and why", [("decision", label)])
        }
        metrics = Metrics(
            routing: routing,
            latency: replicaSet.nodes.map { node in
                m.cachedLatency(
                    "db_query_duration", "Database calls by node, role and operation",
                    [("node", node.name), ("role", "read"), ("op", "get_user")])
            },
            // The series `MeteredUserStore` counts: database reads per request stay comparable.
            storeReads: m.counter(
                "user_store_calls", "Calls that reached the user store (the database), by operation", [("op", "read")]),
            answered: m.counter("db_loop_reads", "Reads answered on the request's event loop, by outcome", [("outcome", "answered")]),
            declined: m.counter("db_loop_reads", "Reads answered on the request's event loop, by outcome", [("outcome", "declined")]),
            handedBack: m.counter(
                "db_loop_reads", "Reads answered on the request's event loop, by outcome", [("outcome", "handed_back")]),
            queries: m.counter("db_loop_read_queries", "Queries sent for the event-loop reads (several reads may share one)", []))
    }

    /// The user with `id` read on `loop` (nil inside: no such user), or nil when this path
    /// declines the read. A failed future means: take the routed path. `position` is the
    /// client's last write position (`LSN.position`; 0: none), as the routed read honours it.
    public func user(id: UserID, position: UInt64, on loop: any EventLoop) -> EventLoopFuture<User?>? {
        guard !closed.load(ordering: .relaxed) else { return nil }
        let decision = set.router.choose(set.statuses, minimumLSN: position, spread: set.nextSpread())
        guard let node = decision.node else {
            metrics.declined.increment()
            return nil
        }
        let pool = pool(for: loop)
        guard pool.hasRoom(node) else {
            metrics.declined.increment()
            return nil
        }
        let read = LoopRead(id: id.rawValue, node: node, promise: loop.makePromise(of: User?.self))
        pool.enqueue(read)
        metrics.routing[decision.label]?.increment()
        metrics.storeReads.increment()
        read.timer = loop.scheduleTask(in: .nanoseconds(set.settings.queryTimeout.nanosecondsClamped)) {
            self.expire(read, pool)
        }
        return read.promise.futureResult
    }

    /// A read out of time: handed back, alone. Still queued, it leaves the queue; already
    /// sent, its batch goes on for the others (the query has its own deadline, which is
    /// what judges the node: time spent queued on this loop says nothing of it).
    private func expire(_ read: LoopRead, _ pool: LoopPool) {
        guard !read.settled else { return }
        read.settled = true
        metrics.latency[read.node].record(ContinuousClock.now - read.start)
        metrics.handedBack.increment()
        if read.batch == nil { pool.remove(read) }
        read.promise.fail(TimeoutError())
    }

    /// Ends a read with its answer (or hands it back), once.
    func finish(_ read: LoopRead, _ result: Result<User?, any Error>) {
        guard !read.settled else { return }
        read.settled = true
        read.timer?.cancel()
        metrics.latency[read.node].record(ContinuousClock.now - read.start)
        switch result {
        case .success(let user):
            metrics.answered.increment()
            read.promise.succeed(user)
        case .failure(let error):
            metrics.handedBack.increment()
            read.promise.fail(error)
        }
    }

    /// Hands back every read of a failed query or connection; the node is reported once.
    func fail(_ batch: [LoopRead], node: Int, _ error: any Error, report: Bool) {
        set.logger.debug(
            "loop reads handed back",
            metadata: ["node": "\(set.nodes[node].name)", "reads": "\(batch.count)", "error": "\(String(reflecting: error))"])
        if report, ReplicaSet.isNodeFailure(error) { set.markFailed(node, error) }
        for read in batch { finish(read, .failure(error)) }
    }

    private func pool(for loop: any EventLoop) -> LoopPool {
        let key = ObjectIdentifier(loop)
        return pools.withLock { pools in
            if let pool = pools[key] { return pool }
            let pool = LoopPool(loop: loop, reads: self)
            pools[key] = pool
            return pool
        }
    }

    func connect(_ node: Int, on loop: any EventLoop) -> EventLoopFuture<LoopConnection> {
        let name = set.nodes[node].name
        let parts = name.split(separator: ":")
        let settings = set.settings
        var configuration = PostgresConnection.Configuration(
            host: String(parts[0]), port: Int(parts[1]) ?? 5432, username: settings.user, password: settings.password,
            database: settings.database, tls: .disable)
        configuration.options.connectTimeout = .seconds(1)
        return PostgresConnection.connect(
            on: loop, configuration: configuration, id: nextID.wrappingAdd(1, ordering: .relaxed).oldValue,
            logger: set.logger
        ).flatMap { connection in
            connection.prepare(query: PostgresUserStore.GetUser.sql)
                .and(connection.prepare(query: PostgresUserStore.GetUser.manySQL))
                .map { LoopConnection(connection: connection, getUser: $0.0, getUsers: $0.1) }
                .flatMapError { error in
                    let _: EventLoopFuture<Void> = connection.close()
                    return loop.makeFailedFuture(error)
                }
        }
    }

    var isClosed: Bool { closed.load(ordering: .relaxed) }

    /// As a service: closes every connection at shutdown (after the web server has drained).
    public func run() async throws {
        try? await gracefulShutdown()
        closed.store(true, ordering: .relaxed)
        let all = pools.withLock { Array($0.values) }
        for pool in all { try? await pool.loop.flatSubmit { pool.closeAll() }.get() }
    }
}

/// One read's state, touched only on its event loop.
final class LoopRead: @unchecked Sendable {
    let id: Int64
    let node: Int
    let promise: EventLoopPromise<User?>
    let start = ContinuousClock.now
    var timer: Scheduled<Void>?
    var settled = false
    /// The query it is part of, once sent.
    var batch: LoopBatch?

    init(id: Int64, node: Int, promise: EventLoopPromise<User?>) {
        self.id = id
        self.node = node
        self.promise = promise
    }
}

/// Reads sent as one query on one connection.
final class LoopBatch: @unchecked Sendable {
    let connection: LoopConnection
    /// The query's deadline closed the connection (and reported the node already).
    var timedOut = false
    init(_ connection: LoopConnection) { self.connection = connection }
}

extension Duration {
    /// For NIO's timers, which count nanoseconds in an Int64.
    var nanosecondsClamped: Int64 {
        let (seconds, attoseconds) = components
        return min(seconds, Int64.max / 1_000_000_000 - 1) * 1_000_000_000 + attoseconds / 1_000_000_000
    }
}

/// A connection of one event loop, with the reads prepared on it.
struct LoopConnection: Sendable {
    let connection: PostgresConnection
    let getUser: PreparedQuery
    let getUsers: PreparedQuery
    var isClosed: Bool { connection.isClosed }
    func close() { let _: EventLoopFuture<Void> = connection.close() }
}

/// The connections and waiting reads of one event loop, touched only on that loop.
final class LoopPool: @unchecked Sendable {
    let loop: any EventLoop
    unowned let reads: LoopReads
    private var idle: [[LoopConnection]]
    /// Open or opening, per node.
    private var open: [Int]
    /// Opening, per node.
    private var opening: [Int]
    /// Reads not sent yet, per node.
    private var queue: [[LoopRead]]
    /// A pass over the queue is due at the end of this turn of the loop.
    private var due: [Bool]

    init(loop: any EventLoop, reads: LoopReads) {
        self.loop = loop
        self.reads = reads
        let n = reads.set.nodes.count
        idle = Array(repeating: [], count: n)
        open = Array(repeating: 0, count: n)
        opening = Array(repeating: 0, count: n)
        queue = Array(repeating: [], count: n)
        due = Array(repeating: false, count: n)
    }

    /// Whether a read for `node` may queue (not too many wait already).
    func hasRoom(_ node: Int) -> Bool {
        loop.preconditionInEventLoop()
        return queue[node].count < reads.maxWaiters
    }

    /// Queues a read (`hasRoom` said yes); it is sent after the loop has handled every
    /// request of this turn, so those that arrived together share a query.
    func enqueue(_ read: LoopRead) {
        let node = read.node
        queue[node].append(read)
        if !due[node] {
            due[node] = true
            loop.execute {
                self.due[node] = false
                self.dispatch(node)
            }
        }
    }

    /// A queued read gave up (its deadline).
    func remove(_ read: LoopRead) {
        queue[read.node].removeAll { $0 === read }
    }

    /// Sends what waits for `node` on idle connections, and opens more when that is not enough.
    private func dispatch(_ node: Int) {
        while !queue[node].isEmpty {
            guard let connection = idle[node].popLast() else {
                openForQueue(node)
                return
            }
            if connection.isClosed {
                open[node] -= 1
                continue
            }
            send(node, on: connection)
        }
    }

    /// Opens connections for what still waits (a batch each), up to the loop's share; those
    /// opening and idle already count. One busy connection is not a reason: it takes the next batch
    /// when its answer arrives.
    private func openForQueue(_ node: Int) {
        let batches = (queue[node].count + reads.batchLimit - 1) / reads.batchLimit
        let wanted = min(batches - opening[node] - idle[node].count, reads.perLoop - open[node])
        if wanted > 0 { for _ in 0..<wanted { openConnection(node) } }
    }

    /// The next reads for `node` (up to the batch limit) as one query on `connection`.
    private func send(_ node: Int, on connection: LoopConnection) {
        let count = min(queue[node].count, reads.batchLimit)
        let batch = Array(queue[node].prefix(count))
        queue[node].removeFirst(count)
        let shared = LoopBatch(connection)
        for read in batch { read.batch = shared }
        reads.metrics.queries.increment()
        var ids: [Int64] = []
        for read in batch where !ids.contains(read.id) { ids.append(read.id) }
        // Prepared once per connection: each query sends Bind and Execute only.
        let query =
            ids.count == 1
            ? connection.getUser.execute([PostgresData(int64: ids[0])])
            : connection.getUsers.execute([PostgresData(array: ids.map { PostgresData(int64: $0) }, elementType: .int8)])
        // The query's deadline: past it the connection is closed (the query then fails, and
        // its reads go the routed way) and discovery is asked to look at the node.
        let deadline = loop.scheduleTask(in: .nanoseconds(reads.set.settings.queryTimeout.nanosecondsClamped)) {
            shared.timedOut = true
            connection.close()
            self.reads.set.markFailed(node, TimeoutError())
        }
        // More waiting than this connection carries: more connections, up to the share.
        if !queue[node].isEmpty { openForQueue(node) }
        query.whenComplete { result in
            deadline.cancel()
            switch result {
            case .success(let rows):
                // The connection goes back first (to the next reads); a row that does not
                // decode is the reads' failure, not the connection's.
                self.release(connection, node)
                var users: [Int64: User] = [:]
                var broken: (any Error)?
                for row in rows {
                    do {
                        let user = PostgresUserStore.user(try PostgresUserStore.decodeRow(row, binary: true))
                        users[user.id.rawValue] = user
                    } catch {
                        broken = error
                    }
                }
                for read in batch {
                    if let user = users[read.id] {
                        self.reads.finish(read, .success(user))
                    } else if let broken {
                        self.reads.finish(read, .failure(broken))
                    } else {
                        self.reads.finish(read, .success(nil))
                    }
                }
            case .failure(let error):
                // A server error leaves the connection usable; anything else may not.
                if let e = error as? PSQLError, e.code == .server, !connection.isClosed {
                    self.release(connection, node)
                } else {
                    self.drop(connection, node)
                }
                self.reads.fail(batch, node: node, error, report: !shared.timedOut)
            }
        }
    }

    private func openConnection(_ node: Int) {
        open[node] += 1
        opening[node] += 1
        reads.connect(node, on: loop).hop(to: loop).whenComplete { result in
            self.opening[node] -= 1
            switch result {
            case .success(let connection):
                self.release(connection, node)
            case .failure(let error):
                self.open[node] -= 1
                // The node does not take connections: every read waiting for it goes the routed way.
                let waiting = self.queue[node]
                self.queue[node] = []
                self.reads.fail(waiting, node: node, error, report: true)
            }
        }
    }

    /// Takes a connection back after a query (or a fresh one): it carries the next reads
    /// at once if some wait, or stays idle.
    func release(_ connection: LoopConnection, _ node: Int) {
        loop.preconditionInEventLoop()
        if reads.isClosed || connection.isClosed {
            drop(connection, node)
            return
        }
        if queue[node].isEmpty {
            idle[node].append(connection)
        } else {
            send(node, on: connection)
        }
    }

    /// A connection that failed: closed, and a new one opened for waiting reads if any.
    func drop(_ connection: LoopConnection, _ node: Int) {
        open[node] -= 1
        connection.close()
        guard !queue[node].isEmpty else { return }
        if reads.isClosed {
            failQueued(node, MillionsError(.unavailable, "shutting down"))
        } else {
            openConnection(node)
        }
    }

    private func failQueued(_ node: Int, _ error: any Error) {
        let waiting = queue[node]
        queue[node] = []
        reads.fail(waiting, node: node, error, report: false)
    }

    func closeAll() -> EventLoopFuture<Void> {
        var closing: [EventLoopFuture<Void>] = []
        for node in idle.indices {
            for connection in idle[node] {
                let closed: EventLoopFuture<Void> = connection.connection.close()
                closing.append(closed)
            }
            open[node] -= idle[node].count
            idle[node] = []
            failQueued(node, MillionsError(.unavailable, "shutting down"))
        }
        return EventLoopFuture.andAllComplete(closing, on: loop)
    }
}
