import Logging
import MillionsCore
import NIOCore
import Observability
import Prometheus
import ServiceLifecycle

/// The cache tier on a pool of memcached servers.
///
/// Keys are placed by consistent hashing (`HashRing`). A node that keeps failing is
/// taken out of the ring; its keys go to a gutter pool when one is configured, else to the
/// next node on the ring, in both cases with a short TTL, and a node coming back is
/// flushed before it rejoins. Lookups use meta-protocol leases: `mg … N` vivifies a miss
/// and hands exactly one client the `W` (win) flag with the item's CAS; that client fills
/// with `ms … C<cas>`, which memcached refuses if a delete (or anything else) touched the
/// key since. Clients that see `Z` wait for the winner or read the source themselves.
public final class MemcachedCache: Cache, Service {
    public let nodes: [MemcachedNode]
    public let gutter: [MemcachedNode]
    let ring: HashRing
    let gutterRing: HashRing
    /// How long a lease (the vivified stub) lives if its winner never fills it.
    let leaseSeconds: Int
    /// TTL cap for entries placed away from their home node.
    let fallbackTTLSeconds: Int
    let probeInterval: Duration
    let logger: Logger
    let metrics: AppMetrics
    let sets: Prometheus.Counter
    let rejoins: Prometheus.Counter

    public struct Options: Sendable {
        public var connectionsPerNode = 2
        public var timeout: TimeAmount = .milliseconds(250)
        public var failureThreshold = 3
        public var retrySeconds = 2.0
        public var leaseSeconds = 5
        public var fallbackTTLSeconds = 10
        /// The password of memcached's ASCII authentication (user `millions`), if the
        /// servers require one.
        public var password: String? = nil
        public init() {}
    }

    /// `nodes` and `gutter` are "host:port" strings.
    public init(nodes: [String], gutter: [String] = [], options: Options = Options(), metrics: AppMetrics, logger: Logger) throws {
        func make(_ address: String) throws -> MemcachedNode {
            let parts = address.split(separator: ":")
            guard parts.count == 2, let port = Int(parts[1]), port > 0, port < 65536 else {
                throw MillionsError(.badRequest, "memcached node must be host:port, got \(address)")
            }
            return MemcachedNode(
                host: String(parts[0]), port: port, connections: options.connectionsPerNode, timeout: options.timeout,
                health: NodeHealth(failureThreshold: options.failureThreshold, retryInterval: options.retrySeconds),
                metrics: metrics, credentials: options.password.map { ("millions", $0) })
        }
        guard !nodes.isEmpty else { throw MillionsError(.badRequest, "memcached needs at least one node") }
        self.nodes = try nodes.map(make)
        self.gutter = try gutter.map(make)
        self.ring = HashRing(names: nodes)
        self.gutterRing = HashRing(names: gutter)
        self.leaseSeconds = options.leaseSeconds
        self.fallbackTTLSeconds = options.fallbackTTLSeconds
        self.probeInterval = .milliseconds(Int(options.retrySeconds * 1000 / 2))
        self.logger = logger
        self.metrics = metrics
        sets = metrics.counter("memcached_sets", "Values stored in memcached")
        rejoins = metrics.counter("memcached_node_rejoins", "Nodes flushed and put back into the ring")
    }

    /// Where a key lives now, and whether that is away from its home node.
    func route(_ key: String) throws -> (node: MemcachedNode, away: Bool) {
        guard let home = ring.node(for: key) else { throw MemcachedError.noNodeAvailable }
        if nodes[home].isUp { return (nodes[home], false) }
        if !gutter.isEmpty, let g = gutterRing.node(for: key, isUp: { self.gutter[$0].isUp }) {
            return (gutter[g], true)
        }
        guard let next = ring.node(for: key, isUp: { self.nodes[$0].isUp }) else {
            throw MemcachedError.noNodeAvailable
        }
        return (nodes[next], true)
    }

    /// The home node of a key, ignoring health (for tests and tools).
    public func homeNode(of key: String) -> MemcachedNode? { ring.node(for: key).map { nodes[$0] } }

    public func get(_ key: String) async throws -> CacheLookup {
        guard MemcachedRequest.isValidKey(key) else { throw MemcachedError.invalidKey }
        let (node, _) = try route(key)
        let r = try await node.send(.get(key: key, flags: ["v", "c", "N\(leaseSeconds)"]))
        switch r.status {
        case .value:
            if r.won, let cas = r.cas { return .miss(CacheLease(token: cas)) }
            // An empty value is the lease stub of another client still filling; a stale
            // value (after an `md … I`) is not served either: correctness over a hit.
            if r.value?.isEmpty ?? true || r.stale { return .miss(nil) }
            return .hit(r.value!)
        case .miss:
            return .miss(nil)
        default:
            throw MemcachedError.protocolError("unexpected answer to mg: \(r.status)")
        }
    }

    @discardableResult
    public func set(_ key: String, _ value: [UInt8], ttl: Duration, lease: CacheLease?) async throws -> Bool {
        guard MemcachedRequest.isValidKey(key) else { throw MemcachedError.invalidKey }
        let (node, away) = try route(key)
        var seconds = max(1, Int(ttl.components.seconds))
        if away { seconds = min(seconds, fallbackTTLSeconds) }
        var flags = ["T\(seconds)"]
        if let lease { flags.append("C\(lease.token)") }
        let r = try await node.send(.set(key: key, value: value, flags: flags))
        switch r.status {
        case .stored:
            sets.increment()
            return true
        case .exists, .notFound, .notStored: return false
        default: throw MemcachedError.protocolError("unexpected answer to ms: \(r.status)")
        }
    }

    public func delete(_ key: String) async throws {
        guard MemcachedRequest.isValidKey(key) else { throw MemcachedError.invalidKey }
        let (node, _) = try route(key)
        let r = try await node.send(.delete(key: key, flags: []))
        switch r.status {
        case .stored, .notFound: return
        default: throw MemcachedError.protocolError("unexpected answer to md: \(r.status)")
        }
    }

    /// `flush_all` on every node that is up (one that is out is flushed when it rejoins).
    public func removeAll() async throws {
        for node in nodes + gutter where node.isUp {
            let r = try await node.send(.flushAll)
            guard r.status == .ok else { throw MemcachedError.protocolError("unexpected answer to flush_all: \(r.status)") }
        }
    }

    /// `stats` of every node that answers, by node name.
    public func stats() async -> [String: [String: String]] {
        var out: [String: [String: String]] = [:]
        for node in nodes + gutter where node.isUp {
            if let r = try? await node.send(.stats) { out[node.name] = r.stats }
        }
        return out
    }

    /// Probes nodes that are out and refreshes eviction gauges, until shutdown; then
    /// closes every connection.
    public func run() async throws {
        var statsDue = ContinuousClock.now
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            for node in nodes + gutter where await node.probeIfDue() {
                rejoins.increment()
                logger.info("memcached node rejoined after flush", metadata: ["node": "\(node.name)"])
            }
            if ContinuousClock.now >= statsDue {
                statsDue = ContinuousClock.now + .seconds(10)
                await publishStats()
            }
            do {
                try await cancelWhenGracefulShutdown { try await Task.sleep(for: self.probeInterval) }
            } catch { break }
        }
        for node in nodes + gutter { node.close() }
    }

    private func publishStats() async {
        for (name, s) in await stats() {
            for key in ["evictions", "curr_items", "get_hits", "get_misses", "bytes"] {
                if let v = s[key].flatMap(Double.init) {
                    metrics.gauge("memcached_\(key)", "memcached's own \(key) statistic", [("node", name)]).set(to: v)
                }
            }
        }
    }
}
