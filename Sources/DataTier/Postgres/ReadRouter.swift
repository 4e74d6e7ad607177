/// What the replica set knows about one node, refreshed by discovery.
public struct NodeStatus: Sendable, Equatable {
    public enum Role: String, Sendable { case primary, replica, unknown }
    public var role: Role = .unknown
    public var reachable = false
    /// Primary: current WAL position. Replica: last replayed position.
    public var lsn: UInt64 = 0
    /// Replica lag behind the primary, when both are known.
    public var lagBytes: UInt64 = 0
    public var lagSeconds: Double = 0

    public init(role: Role = .unknown, reachable: Bool = false, lsn: UInt64 = 0, lagBytes: UInt64 = 0, lagSeconds: Double = 0) {
        self.role = role
        self.reachable = reachable
        self.lsn = lsn
        self.lagBytes = lagBytes
        self.lagSeconds = lagSeconds
    }
}

/// Where a read goes, and why (the "why" is a metric label).
public enum ReadDecision: Sendable, Hashable {
    /// A healthy, caught-up-enough replica.
    case replica(Int)
    /// No replica is eligible (down or lagging): the primary serves.
    case primaryFallback(Int)
    /// Replicas are healthy but none has replayed this client's last write yet.
    case readYourWritesFallback(Int)
    /// The primary is out; a replica serves even if it lags (stale beats failing).
    case staleReplica(Int)
    case unavailable

    public var node: Int? {
        switch self {
        case .replica(let i), .primaryFallback(let i), .readYourWritesFallback(let i), .staleReplica(let i): i
        case .unavailable: nil
        }
    }

    public var label: String {
        switch self {
        case .replica: "replica"
        case .primaryFallback: "primary_fallback"
        case .readYourWritesFallback: "read_your_writes_fallback"
        case .staleReplica: "stale_replica"
        case .unavailable: "unavailable"
        }
    }
}

/// Read routing as a pure function of the nodes' status, so it is tested without servers.
public struct ReadRouter: Sendable {
    public var maxLagBytes: UInt64
    public var maxLagSeconds: Double

    public init(maxLagBytes: UInt64, maxLagSeconds: Double) {
        self.maxLagBytes = maxLagBytes
        self.maxLagSeconds = maxLagSeconds
    }

    /// Chooses a node for a read that must see `minimumLSN` (0: any), skipping `excluded`
    /// nodes (already failed for this read). `spread` rotates among eligible replicas.
    public func choose(_ nodes: [NodeStatus], minimumLSN: UInt64, excluded: Set<Int> = [], spread: Int) -> ReadDecision {
        let live = nodes.indices.filter { nodes[$0].reachable && !excluded.contains($0) }
        let primary = live.first { nodes[$0].role == .primary }
        let replicas = live.filter { nodes[$0].role == .replica }
        let fresh = replicas.filter {
            primary == nil || (nodes[$0].lagBytes <= maxLagBytes && nodes[$0].lagSeconds <= maxLagSeconds)
        }
        let caughtUp = fresh.filter { minimumLSN == 0 || nodes[$0].lsn >= minimumLSN }
        if let primary {
            if !caughtUp.isEmpty { return .replica(caughtUp[spread % caughtUp.count]) }
            if !fresh.isEmpty { return .readYourWritesFallback(primary) }
            return .primaryFallback(primary)
        }
        // No primary: any live replica, preferring one that has the client's write.
        if !caughtUp.isEmpty { return .replica(caughtUp[spread % caughtUp.count]) }
        if !replicas.isEmpty { return .staleReplica(replicas[spread % replicas.count]) }
        return .unavailable
    }
}
