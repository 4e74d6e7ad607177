import MillionsCore
import NIOCore
import Observability
import Prometheus
import Synchronization

/// One memcached server: a bounded set of pipelined connections, opened lazily and
/// reopened after failures, plus the node's circuit breaker and metrics.
public final class MemcachedNode: Sendable {
    public let host: String
    public let port: Int
    public var name: String { "\(host):\(port)" }
    let timeout: TimeAmount
    /// ASCII authentication on each new connection (memcached `-Y`), if set.
    let credentials: (user: String, password: String)?
    private let slots: Mutex<[MemcachedConnection?]>
    private let nextSlot = Atomic<Int>(0)
    let health: Mutex<NodeHealth>
    let latency: DurationHistogram
    let errors: Prometheus.Counter
    let upGauge: Gauge

    public init(
        host: String, port: Int, connections: Int, timeout: TimeAmount, health: NodeHealth, metrics: AppMetrics,
        credentials: (user: String, password: String)? = nil
    ) {
        self.host = host
        self.port = port
        self.timeout = timeout
        self.credentials = credentials
        self.slots = Mutex(Array(repeating: nil, count: max(1, connections)))
        self.health = Mutex(health)
        let labels = [("node", "\(host):\(port)")]
        latency = metrics.latency("memcached_request_duration", "Memcached round trips by node", labels)
        errors = metrics.counter("memcached_errors", "Memcached requests that failed, by node", labels)
        upGauge = metrics.gauge("memcached_node_up", "1 while the node is in the ring, 0 while it is out", labels)
        upGauge.set(to: 1)
    }

    public var isUp: Bool { health.withLock { $0.isUp } }

    /// Sends a request on one of the node's connections, recording latency and failures.
    public func send(_ request: MemcachedRequest) async throws -> MemcachedResponse {
        let start = ContinuousClock.now
        do {
            let connection = try await connection()
            let response = try await connection.send(request, timeout: timeout)
            latency.record(ContinuousClock.now - start)
            if case .error(let message) = response.status { throw MemcachedError.server(message) }
            health.withLock { $0.recordSuccess() }
            return response
        } catch MemcachedError.server(let message) {
            // The server answered: the node is alive, the request was wrong.
            throw MemcachedError.server(message)
        } catch {
            errors.increment()
            let tookOut = health.withLock { $0.recordFailure(now: Clock.secondsSince1970()) }
            if tookOut { upGauge.set(to: 0) }
            throw error as? MemcachedError ?? .connectionClosed
        }
    }

    /// If the node is out and a probe is due: `mn`, then `flush_all` so nothing cached
    /// before the outage (and possibly invalidated during it) survives, then back in.
    /// Returns true if the node rejoined.
    func probeIfDue() async -> Bool {
        guard health.withLock({ $0.probeDue(now: Clock.secondsSince1970()) }) else { return false }
        do {
            let connection = try await connection()
            _ = try await connection.send(.noop, timeout: timeout)
            _ = try await connection.send(.flushAll, timeout: timeout)
            let rejoined = health.withLock { $0.probeSucceeded() }
            if rejoined { upGauge.set(to: 1) }
            return rejoined
        } catch {
            _ = health.withLock { $0.recordFailure(now: Clock.secondsSince1970()) }
            return false
        }
    }

    private func connection() async throws -> MemcachedConnection {
        let count = slots.withLock { $0.count }
        let i = nextSlot.wrappingAdd(1, ordering: .relaxed).oldValue % count
        if let existing = slots.withLock({ $0[i] }), existing.isActive { return existing }
        let fresh = try await MemcachedConnection.connect(host: host, port: port, timeout: timeout)
        if let credentials {
            let answer = try await fresh.send(.authenticate(user: credentials.user, password: credentials.password), timeout: timeout)
            guard answer.status == .ok else {
                fresh.close()
                // Not the request's fault: the node is unusable to this client.
                throw MemcachedError.connectionClosed
            }
        }
        let (use, spare) = slots.withLock { slots -> (MemcachedConnection, MemcachedConnection?) in
            if let other = slots[i], other.isActive { return (other, fresh) }
            slots[i] = fresh
            return (fresh, nil)
        }
        spare?.close()
        return use
    }

    func close() {
        let all = slots.withLock { slots -> [MemcachedConnection] in
            let open = slots.compactMap { $0 }
            slots = Array(repeating: nil, count: slots.count)
            return open
        }
        for c in all { c.close() }
    }
}
