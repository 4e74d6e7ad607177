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
    let hits, misses, loads, staleFillsRefused, errors: Prometheus.Counter

    /// Stored for "known absent": JSON never begins with a zero byte.
    static var absentMarker: [UInt8] { [0] }

    public init(
        kind: String, cache: any Cache, ttl: Duration, negativeTTL: Duration, metrics: AppMetrics, logger: Logger,
        encode: @escaping @Sendable (Value) throws -> [UInt8] = { Array(try JSONEncoder().encode($0)) }
    ) {
        self.encode = encode
        self.kind = kind
        self.cache = cache
        self.ttl = ttl
        self.negativeTTL = negativeTTL
        self.logger = logger
        let l = [("kind", kind)]
        hits = metrics.counter("cache_hits", "Cache lookups that found a value", l)
        misses = metrics.counter("cache_misses", "Cache lookups that found nothing", l)
        loads = metrics.counter("cache_loads", "Loads from the source of truth after a miss", l)
        staleFillsRefused = metrics.counter("cache_stale_fills_refused", "Fills refused because the key changed", l)
        errors = metrics.counter("cache_errors", "Cache operations that failed and fell through", l)
    }

    public func key(_ id: some CustomStringConvertible) -> String { "\(kind):\(id)" }

    /// The cached value, or the loader's (then cached). nil when the loader finds nothing.
    public func get(
        _ id: some CustomStringConvertible, load: @escaping @Sendable () async throws -> Value?
    ) async throws -> Value? {
        try await bytes(id, load: load).map { try JSONDecoder().decode(Value.self, from: Data($0)) }
    }

    /// Like `get`, but returns the value's JSON encoding as cached, saving a decode and an
    /// encode on the hot path when the caller only sends it on.
    public func bytes(
        _ id: some CustomStringConvertible, load: @escaping @Sendable () async throws -> Value?
    ) async throws -> [UInt8]? {
        let key = key(id)
        var lease: CacheLease? = nil
        do {
            switch try await cache.get(key) {
            case .hit(let bytes):
                hits.increment()
                return bytes == Self.absentMarker ? nil : bytes
            case .miss(let l):
                misses.increment()
                lease = l
            }
        } catch {
            errors.increment()
            logger.warning("cache get failed", metadata: ["key": "\(key)", "error": "\(error)"])
        }
        let bytes = try await flights.run(key) { [self, lease] in
            loads.increment()
            let value = try await load()
            let bytes = try value.map(encode) ?? Self.absentMarker
            // No lease: another reader is filling (or the cache is down); don't race it.
            guard let lease else { return bytes }
            do {
                let stored = try await cache.set(key, bytes, ttl: value == nil ? negativeTTL : ttl, lease: lease)
                if !stored { staleFillsRefused.increment() }
            } catch {
                errors.increment()
                logger.warning("cache set failed", metadata: ["key": "\(key)", "error": "\(error)"])
            }
            return bytes
        }
        return bytes == Self.absentMarker ? nil : bytes
    }

    /// Drops the cached value; call after the write that changed it has committed.
    public func invalidate(_ id: some CustomStringConvertible) async {
        let key = key(id)
        flights.forget(key)
        do {
            try await cache.delete(key)
        } catch {
            errors.increment()
            logger.error("cache invalidation failed", metadata: ["key": "\(key)", "error": "\(error)"])
        }
    }
}
