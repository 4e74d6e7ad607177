import Synchronization

/// What an in-process cache holds now.
public struct CacheStats: Sendable, Equatable {
    public var entries: Int
    public var bytes: Int
    public var evictions: Int
    /// New entries the admission policy turned away (TinyLFU only).
    public var refused: Int = 0
}

/// The in-process caches (`cache.backend=memory`).
public protocol InProcessCache: Cache {
    var stats: CacheStats { get }
    /// A live entry's bytes, counted as a use like `get`; a miss changes nothing (no lease,
    /// no count), so a caller that then goes through `get` is not counted twice.
    func hit(_ key: String) -> [UInt8]?
}

/// In-process cache with W-TinyLFU admission, as in Caffeine. Every new entry lands in a small
/// LRU window (1%); one leaving the window enters the main space only if it has been asked
/// for more often than the entry it would push out, by a count-min sketch of recent requests
/// that halves itself every 10 × capacity requests so that it forgets. The main space is a
/// segmented LRU: probation, and protected (80%) for entries hit again there. A scan or a
/// long tail of one-time keys therefore cannot flush the popular ones, which an LRU lets it do.
/// Bounded by entry count and bytes; TTLs and fill leases as in `LRUCache`.
public final class TinyLFUCache: InProcessCache {
    enum Segment: Int { case window = 0, probation, protected }

    private struct Node {
        var key: String
        var value: [UInt8]
        var hash: UInt64
        var expiresAt: Double
        var segment: Segment
        var prev: Int
        var next: Int
    }

    private struct List {
        var head = -1  // most recently used
        var tail = -1  // least recently used
        var count = 0
    }

    private struct State {
        var index: [String: Int] = [:]
        var nodes: [Node] = []
        var free: [Int] = []
        var lists = [List(), List(), List()]
        var bytes = 0
        var evictions = 0
        var refused = 0
        var sketch: FrequencySketch
        var leases = LeaseTable()
        var random: UInt64 = 0x2545_F491_4F6C_DD1D

        mutating func unlink(_ i: Int) {
            let seg = nodes[i].segment.rawValue
            let p = nodes[i].prev, n = nodes[i].next
            if p >= 0 { nodes[p].next = n } else { lists[seg].head = n }
            if n >= 0 { nodes[n].prev = p } else { lists[seg].tail = p }
            nodes[i].prev = -1
            nodes[i].next = -1
            lists[seg].count -= 1
        }

        mutating func pushFront(_ i: Int, _ segment: Segment) {
            let seg = segment.rawValue
            nodes[i].segment = segment
            nodes[i].prev = -1
            nodes[i].next = lists[seg].head
            if lists[seg].head >= 0 { nodes[lists[seg].head].prev = i }
            lists[seg].head = i
            if lists[seg].tail < 0 { lists[seg].tail = i }
            lists[seg].count += 1
        }

        mutating func remove(_ i: Int) {
            unlink(i)
            index[nodes[i].key] = nil
            bytes -= cost(nodes[i])
            nodes[i].value = []
            nodes[i].key = ""
            free.append(i)
        }

        func cost(_ node: Node) -> Int { TinyLFUCache.cost(key: node.key, value: node.value) }

        /// Caffeine's guard against hash flooding: a warm candidate that loses on frequency
        /// still gets in now and then, so an attacker cannot pin a victim by colliding with it.
        mutating func admits(candidate: Int, victim: Int) -> Bool {
            let c = sketch.frequency(nodes[candidate].hash)
            let v = sketch.frequency(nodes[victim].hash)
            if c > v { return true }
            if c <= 5 { return false }
            random ^= random << 13
            random ^= random >> 7
            random ^= random << 17
            return random & 127 == 0
        }
    }

    static func cost(key: String, value: [UInt8]) -> Int { key.utf8.count + value.count + 64 }

    public let maxEntries: Int
    public let maxBytes: Int
    let windowMax: Int
    let protectedMax: Int
    private let now: @Sendable () -> Double
    private let state: Mutex<State>

    public init(maxEntries: Int, maxBytes: Int, now: @escaping @Sendable () -> Double) {
        precondition(maxEntries > 0 && maxBytes > 0)
        self.maxEntries = maxEntries
        self.maxBytes = maxBytes
        self.now = now
        windowMax = max(1, maxEntries / 100)
        protectedMax = (maxEntries - windowMax) * 8 / 10
        state = Mutex(State(sketch: FrequencySketch(capacity: maxEntries)))
    }

    public func get(_ key: String) -> CacheLookup {
        let t = now()
        let h = Self.hash(key)
        return state.withLock { s in
            s.sketch.increment(h)
            if let i = s.index[key] {
                if s.nodes[i].expiresAt > t {
                    onHit(&s, i)
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
            s.sketch.increment(s.nodes[i].hash)
            onHit(&s, i)
            return s.nodes[i].value
        }
    }

    private func onHit(_ s: inout State, _ i: Int) {
        switch s.nodes[i].segment {
        case .window:
            s.unlink(i)
            s.pushFront(i, .window)
        case .probation:
            s.unlink(i)
            s.pushFront(i, .protected)
            if s.lists[Segment.protected.rawValue].count > protectedMax {
                let demoted = s.lists[Segment.protected.rawValue].tail
                s.unlink(demoted)
                s.pushFront(demoted, .probation)
            }
        case .protected:
            s.unlink(i)
            s.pushFront(i, .protected)
        }
    }

    @discardableResult
    public func set(_ key: String, _ value: [UInt8], ttl: Duration, lease: CacheLease?) -> Bool {
        let expiresAt = now() + Double(ttl.components.seconds) + Double(ttl.components.attoseconds) / 1e18
        let cost = Self.cost(key: key, value: value)
        guard cost <= maxBytes else { return false }
        let h = Self.hash(key)
        return state.withLock { s in
            if let lease, !s.leases.redeem(lease, for: key) { return false }
            if let i = s.index[key] {
                // A new value for a cached key keeps the key's place and standing.
                s.bytes += cost - s.cost(s.nodes[i])
                s.nodes[i].value = value
                s.nodes[i].expiresAt = expiresAt
                let segment = s.nodes[i].segment
                s.unlink(i)
                s.pushFront(i, segment)
            } else {
                let node = Node(
                    key: key, value: value, hash: h, expiresAt: expiresAt, segment: .window, prev: -1, next: -1)
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
                s.pushFront(i, .window)
            }
            evict(&s)
            return true
        }
    }

    private func evict(_ s: inout State) {
        let mainMax = maxEntries - windowMax
        while s.lists[Segment.window.rawValue].count > windowMax {
            let candidate = s.lists[Segment.window.rawValue].tail
            s.unlink(candidate)
            s.pushFront(candidate, .probation)
            let main = s.lists[Segment.probation.rawValue].count + s.lists[Segment.protected.rawValue].count
            guard main > mainMax else { continue }
            var victim = s.lists[Segment.probation.rawValue].tail
            if victim == candidate { victim = s.lists[Segment.protected.rawValue].tail }
            if victim < 0 || s.admits(candidate: candidate, victim: victim) {
                s.remove(victim >= 0 ? victim : candidate)
            } else {
                s.remove(candidate)
                s.refused += 1
            }
            s.evictions += 1
        }
        // Over the byte bound: the least valuable first.
        while s.bytes > maxBytes {
            let order: [Segment] = [.probation, .protected, .window]
            guard let seg = order.first(where: { s.lists[$0.rawValue].tail >= 0 }) else { break }
            s.remove(s.lists[seg.rawValue].tail)
            s.evictions += 1
        }
    }

    public func delete(_ key: String) {
        state.withLock { s in
            s.leases.cancel(key)
            if let i = s.index[key] { s.remove(i) }
        }
    }

    /// Drops every entry and lease. The sketch stays: what is popular has not changed.
    public func removeAll() {
        state.withLock { s in
            s.leases.removeAll()
            s.index.removeAll()
            s.nodes.removeAll()
            s.free.removeAll()
            s.lists = [List(), List(), List()]
            s.bytes = 0
        }
    }

    public var stats: CacheStats {
        state.withLock {
            CacheStats(entries: $0.index.count, bytes: $0.bytes, evictions: $0.evictions, refused: $0.refused)
        }
    }

    /// Keys of one segment from most to least recently used (for tests and debugging).
    func keys(in segment: Segment) -> [String] {
        state.withLock { s in
            var out: [String] = []
            var i = s.lists[segment.rawValue].head
            while i >= 0 {
                out.append(s.nodes[i].key)
                i = s.nodes[i].next
            }
            return out
        }
    }

    /// Every cached key, window first (for tests and debugging).
    public var keys: [String] { keys(in: .window) + keys(in: .probation) + keys(in: .protected) }

    static func hash(_ key: String) -> UInt64 { UInt64(bitPattern: Int64(key.hashValue)) }
}

/// A count-min sketch of request counts: four rows of 4-bit counters (kept in bytes, capped
/// at 15), each row indexed by its own mix of the key's hash. The estimate is the smallest
/// of the four. After 10 × capacity increments every counter is halved: popularity ages.
struct FrequencySketch {
    private var table: [UInt8]
    private let width: Int
    private let sampleSize: Int
    private var additions = 0

    init(capacity: Int) {
        var w = 16
        while w < capacity { w <<= 1 }
        width = w
        table = [UInt8](repeating: 0, count: 4 * w)
        sampleSize = 10 * max(capacity, 16)
    }

    private func slot(_ hash: UInt64, row: Int) -> Int {
        // splitmix64's finalizer, seeded per row.
        var z = hash &+ UInt64(row + 1) &* 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        z ^= z >> 31
        return row * width + Int(z & UInt64(width - 1))
    }

    func frequency(_ hash: UInt64) -> Int {
        var f = 15
        for row in 0..<4 { f = min(f, Int(table[slot(hash, row: row)])) }
        return f
    }

    mutating func increment(_ hash: UInt64) {
        var added = false
        for row in 0..<4 {
            let i = slot(hash, row: row)
            if table[i] < 15 {
                table[i] += 1
                added = true
            }
        }
        guard added else { return }
        additions += 1
        if additions >= sampleSize {
            for i in table.indices { table[i] >>= 1 }
            additions /= 2
        }
    }
}
