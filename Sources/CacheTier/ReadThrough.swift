import Foundation
import Logging
import Observability
import Prometheus

/// Read-through caching for one kind of value: a miss loads from the source of truth once
/// (single-flight), fills the cache under the miss's lease, and absent values are cached
/// briefly too. A broken cache costs hit ratio, never an error: lookups and fills that
/// fail fall through to the loader.
public final class ReadThrough<Value: Codable & Sendable>: Sendable {
    public let kind: String
    let cache: any Cache
    let ttl: Duration
    let negativeTTL: Duration
    let flights = SingleFlight<[UInt8]>()
    let encode: @Sendable (Value) throws -> [UInt8]
    let logger: Logger
    let options: Options
    public let hot: HotSpots?
    let hits, misses, loads, sets, leaseWaits, staleFillsRefused, errors, nearHits: Prometheus.Counter

    /// The celebrity problem, in front of a shared cache: reads are counted by key
    /// (`HotKeys`), and a hot key's value is kept in this process (`NearCache`, when there
    /// is one) so its reads stop landing on one cache node. `bypass` says when a request
    /// must not be served from the near copy (it has just written: read-your-writes).
    public struct HotSpots: Sendable {
        public let keys: HotKeys
        public let near: NearCache?
        public let bypass: @Sendable () -> Bool

        public init(keys: HotKeys, near: NearCache?, bypass: @escaping @Sendable () -> Bool) {
            self.keys = keys
            self.near = near
            self.bypass = bypass
        }
    }

    /// How a read-through behaves on a miss.
    public struct Options: Sendable {
        /// Single-flight in process and lease-waiting across processes. Off only to
        /// measure what it saves.
        public var stampedeProtection = true
        /// While another reader holds the lease: how often and how long to re-check.
        public var leaseWaitAttempts = 25  // 500 ms at 20 ms
        public var leaseWaitInterval: Duration = .milliseconds(20)
        public init() {}
    }

    /// Stored for "known absent": JSON never begins with a zero byte.
    static var absentMarker: [UInt8] { [0] }

    public init(
        kind: String, cache: any Cache, ttl: Duration, negativeTTL: Duration, metrics: AppMetrics, logger: Logger,
        options: Options = Options(), hot: HotSpots? = nil,
        encode: @escaping @Sendable (Value) throws -> [UInt8] = { Array(try JSONEncoder().encode($0)) }
    ) {
        self.encode = encode
        self.hot = hot
        self.options = options
        self.kind = kind
        self.cache = cache
        self.ttl = ttl
        self.negativeTTL = negativeTTL
        self.logger = logger
        let l = [("kind", kind)]
        hits = metrics.counter("cache_hits", "Cache lookups that found a value", l)
        misses = metrics.counter("cache_misses", "Cache lookups that found nothing", l)
        loads = metrics.counter("cache_loads", "Loads from the source of truth after a miss", l)
        sets = metrics.counter("cache_sets", "Values filled into the cache", l)
        leaseWaits = metrics.counter("cache_lease_waits", "Pauses while another reader held the lease", l)
        staleFillsRefused = metrics.counter("cache_stale_fills_refused", "Fills refused because the key changed", l)
        errors = metrics.counter("cache_errors", "Cache operations that failed and fell through", l)
        nearHits = metrics.counter("cache_near_hits", "Reads of hot keys answered from this process's near copy", l)
    }

    public func key(_ id: some CustomStringConvertible) -> String { "\(kind):\(id)" }

    /// The cached value, or the loader's (then cached). nil when the loader finds nothing.
    public func get(
        _ id: some CustomStringConvertible, load: @escaping @Sendable () async throws -> Value?
    ) async throws -> Value? {
        try await bytes(id, load: load).map { try JSONDecoder().decode(Value.self, from: Data($0)) }
    }

    /// Whether the cache lives in this process (then `cachedBytes` can answer).
    public var isInProcess: Bool { cache is any InProcessCache }

    /// A cached value's bytes when the cache is in this process and holds it, without
    /// suspending: for answering on the event loop. nil otherwise (a miss, a cached
    /// absence, a remote cache), and then nothing is counted: the caller goes on to `bytes`.
    public func cachedBytes(_ id: some CustomStringConvertible) -> [UInt8]? {
        guard let memory = cache as? any InProcessCache, let bytes = memory.hit(key(id)), bytes != Self.absentMarker
        else { return nil }
        hits.increment()
        return bytes
    }

    /// Like `get`, but returns the value's JSON encoding as cached, saving a decode and an
    /// encode on the hot path when the caller only sends it on.
    public func bytes(
        _ id: some CustomStringConvertible, load: @escaping @Sendable () async throws -> Value?
    ) async throws -> [UInt8]? {
        let key = key(id)
        var near: (copy: NearCache, generation: UInt64)? = nil
        if let hot, hot.keys.observe(key), let copy = hot.near, !hot.bypass() {
            if let bytes = copy.get(key) {
                nearHits.increment()
                return bytes == Self.absentMarker ? nil : bytes
            }
            near = (copy, copy.generation(key))
        }
        var lookup: CacheLookup? = nil
        do {
            lookup = try await cache.get(key)
        } catch {
            errors.increment()
            logger.warning("cache get failed", metadata: ["key": "\(key)", "error": "\(error)"])
        }
        if case .hit(let bytes) = lookup {
            hits.increment()
            if let near { near.copy.put(key, bytes, since: near.generation) }
            return bytes == Self.absentMarker ? nil : bytes
        }
        misses.increment()
        var lease: CacheLease? = nil
        if case .miss(let l) = lookup { lease = l }
        let cacheAnswered = lookup != nil
        let bytes: [UInt8]
        if options.stampedeProtection {
            bytes = try await flights.run(key) { [self, lease] in
                try await fill(key, lease: lease, cacheAnswered: cacheAnswered, load: load)
            }
        } else {
            // Every miss reads the source and fills unconditionally: the unprotected
            // baseline that the stampede measurements compare against.
            loads.increment()
            let value = try await load()
            bytes = try value.map(encode) ?? Self.absentMarker
            if cacheAnswered { await store(key, bytes, absent: value == nil, lease: nil) }
        }
        if let near { near.copy.put(key, bytes, since: near.generation) }
        return bytes == Self.absentMarker ? nil : bytes
    }

    /// One load for a key that missed. Without the lease, another reader (in this process
    /// or another web server) is filling: wait briefly for its value, take the lease if it
    /// lapses, and after that read the source without filling.
    private func fill(
        _ key: String, lease: CacheLease?, cacheAnswered: Bool, load: @Sendable () async throws -> Value?
    ) async throws -> [UInt8] {
        var lease = lease
        if lease == nil && cacheAnswered {
            waiting: for _ in 0..<options.leaseWaitAttempts {
                leaseWaits.increment()
                try await Task.sleep(for: options.leaseWaitInterval)
                guard let again = try? await cache.get(key) else { break waiting }
                switch again {
                case .hit(let bytes): return bytes
                case .miss(let l?):
                    lease = l
                    break waiting
                case .miss(nil): continue waiting
                }
            }
        }
        loads.increment()
        let value = try await load()
        let bytes = try value.map(encode) ?? Self.absentMarker
        if let lease { await store(key, bytes, absent: value == nil, lease: lease) }
        return bytes
    }

    private func store(_ key: String, _ bytes: [UInt8], absent: Bool, lease: CacheLease?) async {
        do {
            let stored = try await cache.set(key, bytes, ttl: absent ? negativeTTL : ttl, lease: lease)
            if stored { sets.increment() } else { staleFillsRefused.increment() }
        } catch {
            errors.increment()
            logger.warning("cache set failed", metadata: ["key": "\(key)", "error": "\(error)"])
        }
    }

    /// Drops every cached value (of every kind: the cache is shared); throws when the
    /// cache could not be emptied, since the caller is then still exposed to stale values.
    public func invalidateAll() async throws {
        flights.forgetAll()
        hot?.near?.removeAll()
        try await cache.removeAll()
    }

    /// Drops the cached value; call after the write that changed it has committed.
    public func invalidate(_ id: some CustomStringConvertible) async {
        let key = key(id)
        flights.forget(key)
        hot?.near?.remove(key)
        do {
            try await cache.delete(key)
        } catch {
            errors.increment()
            logger.error("cache invalidation failed", metadata: ["key": "\(key)", "error": "\(error)"])
        }
    }
}
