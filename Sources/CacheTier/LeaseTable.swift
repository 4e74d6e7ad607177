/// Fill leases of the in-process caches: one per key at a time, bounded in number.
/// Not thread-safe by itself; a cache keeps it inside its lock.
struct LeaseTable {
    private var leases: [String: (token: UInt64, issuedAt: Double)] = [:]
    private var nextToken: UInt64 = 1
    /// Outstanding leases are bounded; dropping one only makes its fill be refused.
    let maxLeases = 100_000
    /// How long a lease holder has to fill before another reader may take over.
    let leaseSeconds = 10.0

    /// A new lease for `key`, or nil when another reader holds a live one.
    mutating func take(_ key: String, at t: Double) -> CacheLease? {
        if let held = leases[key], t - held.issuedAt < leaseSeconds { return nil }
        if leases.count >= maxLeases { leases.removeAll(keepingCapacity: true) }
        let token = nextToken
        nextToken += 1
        leases[key] = (token, t)
        return CacheLease(token: token)
    }

    /// Whether `lease` is still current for `key`; if so it is used up.
    mutating func redeem(_ lease: CacheLease, for key: String) -> Bool {
        guard leases[key]?.token == lease.token else { return false }
        leases[key] = nil
        return true
    }

    mutating func cancel(_ key: String) { leases[key] = nil }

    /// Drops every lease; tokens keep counting so an old lease never matches a new one.
    mutating func removeAll() { leases.removeAll() }
}
