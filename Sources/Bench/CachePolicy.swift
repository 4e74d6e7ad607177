import CacheTier
import DataTier

/// The in-process cache's policies replayed on a synthetic trace: Zipf-distributed reads of
/// `users` keys, optionally with a share of one-time keys mixed in (a scan, a crawler), and
/// a cache holding `capacity` entries. Measures the hit ratio after a warm-up against the
/// oracle: a cache that always held the `capacity` most popular keys.
public enum CachePolicyTrial {
    public struct Result: Sendable {
        public var policy: String
        public var hitRatio: Double
        public var oracle: Double
        public var ofOracle: Double { hitRatio / oracle }
    }

    public static func run(
        policy: String, users: Int, capacity: Int, exponent: Double, requests: Int, scanShare: Double = 0,
        seed: UInt64 = 20_261_205
    ) async -> Result {
        let sampler = KeySampler(count: users, distribution: .zipf(exponent: exponent))
        let cache: any InProcessCache =
            policy == "lru"
            ? LRUCache(maxEntries: capacity, maxBytes: Int.max / 2, now: { 0 })
            : TinyLFUCache(maxEntries: capacity, maxBytes: Int.max / 2, now: { 0 })
        var rng = SplitMix64(seed: seed)
        let value = [UInt8](repeating: 0x7B, count: 200)
        var scanCursor = users
        var hits = 0
        var counted = 0
        // Half again as many requests to warm up, not counted.
        let warmup = requests / 2
        for n in 0..<(warmup + requests) {
            let key: Int
            if scanShare > 0 && Double(rng.next() >> 11) / Double(1 << 53) < scanShare {
                key = scanCursor  // never asked for again
                scanCursor += 1
            } else {
                key = sampler.sample(&rng)
            }
            let name = "user:\(key)"
            let hit: Bool
            // The in-process caches neither suspend nor throw.
            switch try? await cache.get(name) {
            case .hit: hit = true
            case .miss(let lease):
                hit = false
                _ = try? await cache.set(name, value, ttl: .seconds(3600), lease: lease)
            case nil: hit = false
            }
            if n >= warmup {
                counted += 1
                if hit { hits += 1 }
            }
        }
        let oracle = sampler.mass(ofMostPopular: capacity) * (1 - scanShare)
        return Result(policy: policy, hitRatio: Double(hits) / Double(counted), oracle: oracle)
    }
}
