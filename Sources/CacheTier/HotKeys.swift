import Observability
import Prometheus
import Synchronization

/// The keys read most, found with the Space-Saving algorithm (Metwally et al.): `capacity`
/// counters; a key without one takes the smallest, inheriting its count as the error bound.
/// Every `decayEvery` observations all counts halve, so yesterday's celebrity fades. A key
/// is hot when its guaranteed share (count minus error, over all observations) reaches
/// `hotShare`. The top five are on `/metrics` (`cache_hot_key{rank}`: the id;
/// `cache_hot_key_share{rank}`).
public final class HotKeys: Sendable {
    struct Counter {
        var count: Double
        var error: Double
    }

    struct State {
        var counters: [String: Counter] = [:]
        var total: Double = 0
        var sinceDecay = 0
        var hot: Set<String> = []
    }

    let capacity: Int
    let hotShare: Double
    let minimumObservations: Double
    let decayEvery: Int
    private let state = Mutex(State())
    private let keyGauges: [Prometheus.Gauge]
    private let shareGauges: [Prometheus.Gauge]

    public init(
        metrics: AppMetrics, capacity: Int = 64, hotShare: Double = 0.01, minimumObservations: Double = 200,
        decayEvery: Int = 20_000
    ) {
        self.capacity = capacity
        self.hotShare = hotShare
        self.minimumObservations = minimumObservations
        self.decayEvery = decayEvery
        keyGauges = (1...5).map {
            metrics.gauge("cache_hot_key", "The id in the n-th most read key (Space-Saving estimate)", [("rank", "\($0)")])
        }
        shareGauges = (1...5).map {
            metrics.gauge("cache_hot_key_share", "The n-th most read key's share of reads (guaranteed part)", [("rank", "\($0)")])
        }
    }

    /// Counts one read of `key`; true if the key is hot now.
    @discardableResult
    public func observe(_ key: String) -> Bool {
        let (hot, publish) = state.withLock { s -> (Bool, [(String, Double)]?) in
            s.total += 1
            s.sinceDecay += 1
            if var c = s.counters[key] {
                c.count += 1
                s.counters[key] = c
            } else if s.counters.count < capacity {
                s.counters[key] = Counter(count: 1, error: 0)
            } else if let (smallest, c) = s.counters.min(by: { $0.value.count < $1.value.count }) {
                s.counters[smallest] = nil
                s.hot.remove(smallest)
                s.counters[key] = Counter(count: c.count + 1, error: c.count)
            }
            if let c = s.counters[key], s.total >= minimumObservations {
                if (c.count - c.error) / s.total >= hotShare { s.hot.insert(key) } else { s.hot.remove(key) }
            }
            var publish: [(String, Double)]? = nil
            if s.sinceDecay >= decayEvery || s.sinceDecay % 1000 == 0 {
                publish = Self.top(s, 5)
            }
            if s.sinceDecay >= decayEvery {
                s.sinceDecay = 0
                s.total /= 2
                for k in s.counters.keys {
                    s.counters[k]!.count /= 2
                    s.counters[k]!.error /= 2
                }
            }
            return (s.hot.contains(key), publish)
        }
        if let publish { self.publish(publish) }
        return hot
    }

    public func isHot(_ key: String) -> Bool { state.withLock { $0.hot.contains(key) } }

    /// The `n` keys read most, with their guaranteed share of reads.
    public func top(_ n: Int) -> [(key: String, share: Double)] {
        state.withLock { Self.top($0, n) }.map { (key: $0.0, share: $0.1) }
    }

    static func top(_ s: State, _ n: Int) -> [(String, Double)] {
        guard s.total > 0 else { return [] }
        return s.counters.sorted { $0.value.count > $1.value.count }.prefix(n)
            .map { ($0.key, max(0, $0.value.count - $0.value.error) / s.total) }
    }

    func publish(_ top: [(String, Double)]) {
        for rank in 0..<5 {
            let entry = rank < top.count ? top[rank] : nil
            // Keys are `kind:id`; the gauge holds the id (exact below 2^53).
            keyGauges[rank].set(entry.flatMap { Double($0.0.split(separator: ":").last ?? "") } ?? 0)
            shareGauges[rank].set(entry?.1 ?? 0)
        }
    }
}

/// A small in-process copy of hot keys' values in front of a shared cache, for
/// `nearTTL`: the celebrity's reads stop landing on the one memcached node that holds
/// their key. Another web server's update is seen here within `nearTTL` (this server's own
/// updates at once).
public final class NearCache: Sendable {
    let ttl: Duration
    let maxEntries: Int

    struct State {
        var entries: [String: (bytes: [UInt8], until: ContinuousClock.Instant)] = [:]
        /// Invalidations counted in 1,024 slots by key hash: a read that began before its
        /// key's slot moved must not fill (it may carry the value the write replaced).
        var generations = [UInt64](repeating: 0, count: 1024)
    }
    private let state = Mutex(State())

    public init(ttl: Duration, maxEntries: Int = 256) {
        self.ttl = ttl
        self.maxEntries = maxEntries
    }

    static func slot(_ key: String) -> Int { Int(truncatingIfNeeded: UInt(bitPattern: key.hashValue) % 1024) }

    func get(_ key: String) -> [UInt8]? {
        let now = ContinuousClock.now
        return state.withLock { s in
            guard let entry = s.entries[key] else { return nil }
            if entry.until > now { return entry.bytes }
            s.entries[key] = nil
            return nil
        }
    }

    /// Where the key's invalidations stand; give it to `put` with the value read after.
    func generation(_ key: String) -> UInt64 { state.withLock { $0.generations[Self.slot(key)] } }

    /// Keeps `bytes` unless the key (or one sharing its slot) was invalidated since
    /// `generation`: a read in flight across an update would otherwise keep the old value.
    func put(_ key: String, _ bytes: [UInt8], since generation: UInt64) {
        let until = ContinuousClock.now + ttl
        state.withLock { s in
            guard s.generations[Self.slot(key)] == generation else { return }
            if s.entries.count >= maxEntries, s.entries[key] == nil,
                let oldest = s.entries.min(by: { $0.value.until < $1.value.until })?.key
            {
                s.entries[oldest] = nil
            }
            s.entries[key] = (bytes, until)
        }
    }

    func remove(_ key: String) {
        state.withLock { s in
            s.entries[key] = nil
            s.generations[Self.slot(key)] &+= 1
        }
    }

    func removeAll() {
        state.withLock { s in
            s.entries.removeAll()
            for i in s.generations.indices { s.generations[i] &+= 1 }
        }
    }
}
