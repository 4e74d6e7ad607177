/// Proof that a reader missed on a key; a fill carrying it is refused if the key was
/// deleted (or leased again) in between, so a slow reader cannot put back a value that a
/// write has already invalidated. Same idea as memcached's lease tokens.
public struct CacheLease: Sendable, Hashable {
    public let token: UInt64
    public init(token: UInt64) { self.token = token }
}

/// What a lookup found.
public enum CacheLookup: Sendable, Equatable {
    case hit([UInt8])
    /// Not cached. With a lease, this reader should load and fill; without one, another
    /// reader holds the lease and is filling, so load if you must but do not fill.
    case miss(CacheLease?)
}

/// A byte cache with TTLs. The in-process LRU is the embedded default; a memcached pool
/// implements the same protocol.
public protocol Cache: Sendable {
    func get(_ key: String) async throws -> CacheLookup
    /// Stores `value` for `ttl`. With a lease, stores only if the lease is still current
    /// (no delete or newer lease since); without one, stores unconditionally. Returns
    /// whether the value was stored.
    @discardableResult
    func set(_ key: String, _ value: [UInt8], ttl: Duration, lease: CacheLease?) async throws -> Bool
    func delete(_ key: String) async throws
    /// Drops every entry and every outstanding lease: for when changes may have been
    /// missed (a change feed that had to start over).
    func removeAll() async throws
}
