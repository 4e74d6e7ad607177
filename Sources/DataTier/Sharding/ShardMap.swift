import MillionsCore

/// Which physical cluster owns each of the 1,024 logical shards that user ids carry, at one
/// version. A map is replaced by a newer version, never edited; every web server and
/// worker caches the newest it has read (`ShardDirectory`).
public struct ShardMap: Sendable, Equatable {
    public static let logicalShards = UserID.logicalShardCount

    public let version: Int64
    /// The owning cluster's name, by logical shard.
    public let owners: [String]

    public init(version: Int64, owners: [String]) throws {
        guard owners.count == Self.logicalShards, !owners.contains(where: \.isEmpty), version >= 1 else {
            throw MillionsError(.internalError, "a shard map names an owner for each of \(Self.logicalShards) logical shards")
        }
        self.version = version
        self.owners = owners
    }

    /// Version 1: the logical shards in contiguous, even ranges over `clusters`, in order.
    public static func even(_ clusters: [String]) throws -> ShardMap {
        guard !clusters.isEmpty else { throw MillionsError(.internalError, "a shard map needs at least one cluster") }
        let owners = (0..<logicalShards).map { clusters[$0 * clusters.count / logicalShards] }
        return try ShardMap(version: 1, owners: owners)
    }

    public func owner(of logical: Int) -> String { owners[logical] }
    public func owner(of id: UserID) -> String { owners[id.logicalShard] }

    /// Every cluster that owns a shard, sorted.
    public var clusters: [String] { Array(Set(owners)).sorted() }

    public func shards(of cluster: String) -> [Int] { owners.indices.filter { owners[$0] == cluster } }

    /// The next version, with `logicals` owned by `cluster`.
    public func moving(_ logicals: [Int], to cluster: String) throws -> ShardMap {
        var owners = self.owners
        for l in logicals { owners[l] = cluster }
        return try ShardMap(version: version + 1, owners: owners)
    }

    /// The logical shard of a key that is not a user id (an email in the email directory,
    /// a log-in throttle key): FNV-1a of its UTF-8 bytes. Stable across processes and
    /// versions, unlike `Hasher`.
    public static func logicalShard(ofKey key: String) -> Int {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in key.utf8 {
            hash ^= UInt64(byte)
            hash = hash &* 0x100_0000_01b3
        }
        return Int(hash % UInt64(logicalShards))
    }
}

/// A cluster was asked for a logical shard it does not own (any more): the caller's map is
/// stale, or the shard is being moved. The caller refreshes its map and tries again.
public struct WrongShardError: Error, Sendable, CustomStringConvertible {
    public let logical: Int
    public let cluster: String
    public var description: String { "logical shard \(logical) is not on cluster \(cluster)" }
}
