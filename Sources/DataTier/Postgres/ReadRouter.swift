/// What the replica set knows about one node, refreshed by discovery.
public struct NodeStatus: Sendable, Equatable {
    /// `fenced`: answers as a primary, but on an older timeline than another primary (a
    /// failover left it behind and it has not stepped down yet): it gets no reads or writes.
    public enum Role: String, Sendable { case primary, replica, fenced, unknown }
    public var role: Role = .unknown
    /// The timeline a primary writes, or a replica receives (each promotion starts a new
    /// one); 0 when unknown (a replica not streaming).
    public var timeline: UInt32 = 0
    public var reachable = false
    /// Primary: current WAL position. Replica: last replayed position.
    public var lsn: UInt64 = 0
    /// Replica lag behind the primary, when both are known.
    public var lagBytes: UInt64 = 0
    public var lagSeconds: Double = 0

    public init(
        role: Role = .unknown, reachable: Bool = false, lsn: UInt64 = 0, lagBytes: UInt64 = 0, lagSeconds: Double = 0,
        timeline: UInt32 = 0
    ) {
        self.role = role
        self.timeline = timeline
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
    /// Nodes of other sites (`data.postgres.remoteNodes`): as replicas they get no reads; as
    /// the primary, the reads that fall back to the primary.
    public var remote: Set<Int>

    public init(maxLagBytes: UInt64, maxLagSeconds: Double, remote: Set<Int> = []) {
        self.maxLagBytes = maxLagBytes
        self.maxLagSeconds = maxLagSeconds
        self.remote = remote
    }

    /// Chooses a node for a read that must see the write position `minimumLSN` (0: any; see
    /// `LSN.position`), skipping `excluded` nodes (already failed for this read). `spread`
    /// rotates among eligible replicas.
    public func choose(_ nodes: [NodeStatus], minimumLSN: UInt64, excluded: Set<Int> = [], spread: Int) -> ReadDecision {
        let wanted = LSN.timeline(of: minimumLSN)
        let minimumLSN = LSN.offset(of: minimumLSN)
        let live = nodes.indices.filter { nodes[$0].reachable && !excluded.contains($0) }
        var primary = live.first { nodes[$0].role == .primary }
        // A primary of an older timeline than the client's write has not got it (it is a
        // stale one discovery has not fenced yet): it serves no one who wrote.
        if let p = primary, nodes[p].timeline < wanted { primary = nil }
        let replicas = live.filter { nodes[$0].role == .replica && !remote.contains($0) }
        // Positions compare only within a timeline: after a failover, a replica still on the
        // old one may have replayed past a client's write position with other writes. With
        // no primary, the newest timeline stands for it: of every node that answered
        // (including those that failed this read: a new primary that failed once is still
        // the newest), and of the client's write.
        let newest = nodes.filter { $0.reachable && $0.role != .fenced }.map(\.timeline).max() ?? 0
        let timeline = primary.map { nodes[$0].timeline } ?? max(newest, wanted)
        // A replica known to receive another timeline than the primary's follows a history
        // the primary does not have (its lag, by position, means nothing).
        let fresh = replicas.filter {
            primary == nil
                || (nodes[$0].lagBytes <= maxLagBytes && nodes[$0].lagSeconds <= maxLagSeconds
                    && (timeline == 0 || nodes[$0].timeline == 0 || nodes[$0].timeline == timeline))
        }
        let caughtUp = fresh.filter {
            minimumLSN == 0 || (nodes[$0].lsn >= minimumLSN && (timeline == 0 || nodes[$0].timeline == timeline))
        }
        if let primary {
            if !caughtUp.isEmpty { return .replica(caughtUp[spread % caughtUp.count]) }
            if !fresh.isEmpty { return .readYourWritesFallback(primary) }
            return .primaryFallback(primary)
        }
        // No primary: a replica that has the client's write; a client with no write of its
        // own may read a stale one. One that wrote is refused rather than shown a past
        // without its write (a session it was just given, say): `bench chaos` found that.
        if !caughtUp.isEmpty { return .replica(caughtUp[spread % caughtUp.count]) }
        if !replicas.isEmpty && minimumLSN == 0 { return .staleReplica(replicas[spread % replicas.count]) }
        return .unavailable
    }
}

extension NodeStatus {
    /// Of several nodes answering as primary, only those on the newest timeline stay
    /// primaries; the others are fenced (a stale primary is refused, not used).
    /// A replica receiving a newer timeline than a primary's also shows that primary stale
    /// (the new one may have missed a probe).
    public static func fencingStalePrimaries(_ nodes: [NodeStatus]) -> [NodeStatus] {
        let newest = nodes.filter { $0.reachable && ($0.role == .primary || $0.role == .replica) }.map(\.timeline).max() ?? 0
        return nodes.map { n in
            var n = n
            if n.reachable && n.role == .primary && n.timeline < newest { n.role = .fenced }
            return n
        }
    }
}
