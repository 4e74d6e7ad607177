import Synchronization

/// In-process cache: least-recently-used eviction, bounded by entry count and by bytes,
/// with a TTL on every entry (checked when read).
public final class LRUCache: Cache {
    public struct Stats: Sendable, Equatable {
        public var entries: Int
        public var bytes: Int
        public var evictions: Int
    }

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
        var leases: [String: (token: UInt64, issuedAt: Double)] = [:]
        var nextLease: UInt64 = 1

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
    /// Outstanding leases are bounded; dropping one only makes its fill be refused.
    private let maxLeases = 100_000
    /// How long a lease holder has to fill before another reader may take over.
    private let leaseSeconds = 10.0

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
            // One lease per key at a time; a holder that never fills loses it after a while.
            if let held = s.leases[key], t - held.issuedAt < leaseSeconds { return .miss(nil) }
            if s.leases.count >= maxLeases { s.leases.removeAll(keepingCapacity: true) }
            let token = s.nextLease
            s.nextLease += 1
            s.leases[key] = (token, t)
            return .miss(CacheLease(token: token))
        }
    }

    @discardableResult
    public func set(_ key: String, _ value: [UInt8], ttl: Duration, lease: CacheLease?) -> Bool {
        let expiresAt = now() + Double(ttl.components.seconds) + Double(ttl.components.attoseconds) / 1e18
        let cost = State.cost(key: key, value: value)
        guard cost <= maxBytes else { return false }
        return state.withLock { s in
            if let lease {
                guard s.leases[key]?.token == lease.token else { return false }
                s.leases[key] = nil
            }
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
            s.leases[key] = nil
            if let i = s.index[key] { s.remove(i) }
        }
    }

    public func removeAll() {
        state.withLock { s in
            let evictions = s.evictions, nextLease = s.nextLease
            s = State()
            s.evictions = evictions
            s.nextLease = nextLease  // an old lease must not match a new one
        }
    }

    public var stats: Stats {
        state.withLock { Stats(entries: $0.index.count, bytes: $0.bytes, evictions: $0.evictions) }
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
