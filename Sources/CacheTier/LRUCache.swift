import Synchronization

/// In-process cache: least-recently-used eviction, bounded by entry count and by bytes,
/// with a TTL on every entry (checked when read). `cache.policy=lru`; the default is
/// `TinyLFUCache`, which a scan or a long tail cannot flush.
public final class LRUCache: InProcessCache {
    private struct Node {
        var key: String
        var value: [UInt8]
        var expiresAt: Double
        var prev: Int
        var next: Int
    }

    private struct State {
        var index: [String: Int] = [:]
        var nodes: [Node] = []
        var free: [Int] = []
        var head = -1  // most recently used
        var tail = -1  // least recently used
        var bytes = 0
        var evictions = 0
        var leases = LeaseTable()

        mutating func unlink(_ i: Int) {
            let p = nodes[i].prev, n = nodes[i].next
            if p >= 0 { nodes[p].next = n } else { head = n }
            if n >= 0 { nodes[n].prev = p } else { tail = p }
            nodes[i].prev = -1
            nodes[i].next = -1
        }

        mutating func pushFront(_ i: Int) {
            nodes[i].prev = -1
            nodes[i].next = head
            if head >= 0 { nodes[head].prev = i }
            head = i
            if tail < 0 { tail = i }
        }

        mutating func remove(_ i: Int) {
            unlink(i)
            index[nodes[i].key] = nil
            bytes -= Self.cost(key: nodes[i].key, value: nodes[i].value)
            nodes[i].value = []
            nodes[i].key = ""
            free.append(i)
        }

        static func cost(key: String, value: [UInt8]) -> Int { key.utf8.count + value.count + 64 }
    }

    public let maxEntries: Int
    public let maxBytes: Int
    private let now: @Sendable () -> Double
    private let state = Mutex(State())

    public init(maxEntries: Int, maxBytes: Int, now: @escaping @Sendable () -> Double) {
        precondition(maxEntries > 0 && maxBytes > 0)
        self.maxEntries = maxEntries
        self.maxBytes = maxBytes
        self.now = now
    }

    public func get(_ key: String) -> CacheLookup {
        let t = now()
        return state.withLock { s in
            if let i = s.index[key] {
                if s.nodes[i].expiresAt > t {
                    s.unlink(i)
                    s.pushFront(i)
                    return .hit(s.nodes[i].value)
                }
                s.remove(i)
            }
            return .miss(s.leases.take(key, at: t))
        }
    }

    public func hit(_ key: String) -> [UInt8]? {
        let t = now()
        return state.withLock { s in
            guard let i = s.index[key], s.nodes[i].expiresAt > t else { return nil }
            s.unlink(i)
            s.pushFront(i)
            return s.nodes[i].value
        }
    }

    @discardableResult
    public func set(_ key: String, _ value: [UInt8], ttl: Duration, lease: CacheLease?) -> Bool {
        let expiresAt = now() + Double(ttl.components.seconds) + Double(ttl.components.attoseconds) / 1e18
        let cost = State.cost(key: key, value: value)
        guard cost <= maxBytes else { return false }
        return state.withLock { s in
            if let lease, !s.leases.redeem(lease, for: key) { return false }
            if let i = s.index[key] { s.remove(i) }
            while s.tail >= 0 && (s.index.count >= maxEntries || s.bytes + cost > maxBytes) {
                s.remove(s.tail)
                s.evictions += 1
            }
            let node = Node(key: key, value: value, expiresAt: expiresAt, prev: -1, next: -1)
            let i: Int
            if let f = s.free.popLast() {
                s.nodes[f] = node
                i = f
            } else {
                s.nodes.append(node)
                i = s.nodes.count - 1
            }
            s.index[key] = i
            s.bytes += cost
            s.pushFront(i)
            return true
        }
    }

    public func delete(_ key: String) {
        state.withLock { s in
            s.leases.cancel(key)
            if let i = s.index[key] { s.remove(i) }
        }
    }

    public func removeAll() {
        state.withLock { s in
            var leases = s.leases
            leases.removeAll()
            let evictions = s.evictions
            s = State()
            s.evictions = evictions
            s.leases = leases  // an old lease must not match a new one
        }
    }

    public var stats: CacheStats {
        state.withLock { CacheStats(entries: $0.index.count, bytes: $0.bytes, evictions: $0.evictions) }
    }

    /// Keys from most to least recently used (for tests and debugging).
    public var keysByRecency: [String] {
        state.withLock { s in
            var out: [String] = []
            var i = s.head
            while i >= 0 {
                out.append(s.nodes[i].key)
                i = s.nodes[i].next
            }
            return out
        }
    }
}
