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
public final class LoopReads: Service, Sendable {
    let set: ReplicaSet
    let perLoop: Int
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
    }

    /// `connectionsPerLoop` connections at most to each node from each event loop.
    public init(replicaSet: ReplicaSet, connectionsPerLoop: Int) {
        set = replicaSet
        perLoop = max(1, connectionsPerLoop)
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
                "db_loop_reads", "Reads answered on the request's event loop, by outcome", [("outcome", "handed_back")]))
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
        guard let (connection, waiter) = pool.lease(node) else {
            metrics.declined.increment()
            return nil
        }
        metrics.routing[decision.label]?.increment()
        metrics.storeReads.increment()
        let start = ContinuousClock.now
        let promise = loop.makePromise(of: User?.self)
        let attempt = Attempt()
        attempt.waiter = waiter
        let timer = loop.scheduleTask(in: .nanoseconds(set.settings.queryTimeout.nanosecondsClamped)) {
            guard !attempt.settled else { return }
            attempt.settled = true
            self.metrics.latency[node].record(ContinuousClock.now - start)
            self.metrics.handedBack.increment()
            if let connection = attempt.connection {
                // A query that ran out of time: its connection is closed (the query's failure
                // then gives back its place), and discovery is asked to look at the node.
                let _: EventLoopFuture<Void> = connection.close()
                self.set.markFailed(node, TimeoutError())
            } else {
                // Still waiting for a connection of this loop: that says nothing of the node.
                // The wait ends here, so no query runs later for an answer nobody wants.
                pool.cancel(attempt.waiter, node)
            }
            promise.fail(TimeoutError())
        }
        connection.flatMap { connection -> EventLoopFuture<User?> in
            attempt.waiter = nil
            attempt.connection = connection.connection
            // Prepared once per connection: each read sends Bind and Execute only.
            return connection.getUser.execute([PostgresData(int64: id.rawValue)])
                .flatMapErrorThrowing { error in
                    // The query's own failure. A server error leaves the connection usable;
                    // anything else may not.
                    if let e = error as? PSQLError, e.code == .server, !connection.connection.isClosed {
                        pool.release(connection, node)
                    } else {
                        pool.drop(connection, node)
                    }
                    throw error
                }
                .flatMapThrowing { rows -> User? in
                    // The connection goes back first; a row that does not decode is this
                    // read's failure, not the connection's.
                    pool.release(connection, node)
                    return try rows.first.map { PostgresUserStore.user(try PostgresUserStore.decodeRow($0, binary: true)) }
                }
        }.whenComplete { result in
            guard !attempt.settled else { return }
            attempt.settled = true
            timer.cancel()
            self.metrics.latency[node].record(ContinuousClock.now - start)
            switch result {
            case .success(let user):
                self.metrics.answered.increment()
                promise.succeed(user)
            case .failure(let error):
                self.metrics.handedBack.increment()
                self.set.logger.debug(
                    "loop read handed back", metadata: ["node": "\(self.set.nodes[node].name)", "error": "\(String(reflecting: error))"])
                if ReplicaSet.isNodeFailure(error) { self.set.markFailed(node, error) }
                promise.fail(error)
            }
        }
        return promise.futureResult
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
                .map { LoopConnection(connection: connection, getUser: $0) }
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
private final class Attempt: @unchecked Sendable {
    var settled = false
    var connection: PostgresConnection?
    /// Its place in the queue for a connection, while it waits for one.
    var waiter: LoopWaiter?
}

/// A read waiting for a connection of its loop; one that gave up is skipped.
final class LoopWaiter: @unchecked Sendable {
    let promise: EventLoopPromise<LoopConnection>
    var cancelled = false
    init(_ promise: EventLoopPromise<LoopConnection>) { self.promise = promise }
}

extension Duration {
    /// For NIO's timers, which count nanoseconds in an Int64.
    var nanosecondsClamped: Int64 {
        let (seconds, attoseconds) = components
        return min(seconds, Int64.max / 1_000_000_000 - 1) * 1_000_000_000 + attoseconds / 1_000_000_000
    }
}

/// A connection of one event loop, with the read prepared on it.
struct LoopConnection: Sendable {
    let connection: PostgresConnection
    let getUser: PreparedQuery
    var isClosed: Bool { connection.isClosed }
    func close() { let _: EventLoopFuture<Void> = connection.close() }
}

/// The connections of one event loop, touched only on that loop.
final class LoopPool: @unchecked Sendable {
    let loop: any EventLoop
    unowned let reads: LoopReads
    private var idle: [[LoopConnection]]
    /// Open or opening, per node.
    private var open: [Int]
    private var waiters: [[LoopWaiter]]

    init(loop: any EventLoop, reads: LoopReads) {
        self.loop = loop
        self.reads = reads
        let n = reads.set.nodes.count
        idle = Array(repeating: [], count: n)
        open = Array(repeating: 0, count: n)
        waiters = Array(repeating: [], count: n)
    }

    /// A connection to `node` now or soon (with the queue place when it must wait); nil when
    /// too many reads wait already.
    func lease(_ node: Int) -> (EventLoopFuture<LoopConnection>, LoopWaiter?)? {
        loop.preconditionInEventLoop()
        while let connection = idle[node].popLast() {
            if !connection.isClosed { return (loop.makeSucceededFuture(connection), nil) }
            open[node] -= 1
        }
        guard waiters[node].count < reads.maxWaiters else { return nil }
        let waiter = LoopWaiter(loop.makePromise(of: LoopConnection.self))
        waiters[node].append(waiter)
        if open[node] < reads.perLoop { openConnection(node) }
        return (waiter.promise.futureResult, waiter)
    }

    /// A waiting read gave up (its deadline): it leaves the queue, and its future fails.
    func cancel(_ waiter: LoopWaiter?, _ node: Int) {
        guard let waiter, !waiter.cancelled else { return }
        waiter.cancelled = true
        waiters[node].removeAll { $0 === waiter }
        waiter.promise.fail(TimeoutError())
    }

    private func openConnection(_ node: Int) {
        open[node] += 1
        reads.connect(node, on: loop).hop(to: loop).whenComplete { result in
            switch result {
            case .success(let connection):
                self.release(connection, node)
            case .failure(let error):
                self.open[node] -= 1
                // The node does not take connections: every read waiting for it goes the routed way.
                let waiting = self.waiters[node]
                self.waiters[node] = []
                for w in waiting where !w.cancelled { w.promise.fail(error) }
            }
        }
    }

    /// Gives a connection back after a query (or a fresh one) to the next waiter, or keeps it.
    func release(_ connection: LoopConnection, _ node: Int) {
        loop.preconditionInEventLoop()
        if reads.isClosed || connection.isClosed {
            drop(connection, node)
            return
        }
        while !waiters[node].isEmpty {
            let next = waiters[node].removeFirst()
            if next.cancelled { continue }
            next.promise.succeed(connection)
            return
        }
        idle[node].append(connection)
    }

    /// A connection that failed: closed, and a new one opened for waiters if any.
    func drop(_ connection: LoopConnection, _ node: Int) {
        open[node] -= 1
        connection.close()
        guard !waiters[node].isEmpty else { return }
        if reads.isClosed {
            failWaiters(node, MillionsError(.unavailable, "shutting down"))
        } else {
            openConnection(node)
        }
    }

    private func failWaiters(_ node: Int, _ error: any Error) {
        let waiting = waiters[node]
        waiters[node] = []
        for w in waiting where !w.cancelled { w.promise.fail(error) }
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
            failWaiters(node, MillionsError(.unavailable, "shutting down"))
        }
        return EventLoopFuture.andAllComplete(closing, on: loop)
    }
}
