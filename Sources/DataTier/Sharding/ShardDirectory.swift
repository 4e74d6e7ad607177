import Logging
import MillionsCore
import PostgresNIO
import Synchronization

/// The shard map's home: every version in the directory cluster's `shard_maps`, and the
/// newest read cached here. Web servers and workers read it at start and again whenever a
/// cluster refuses a shard (`WrongShardError`).
public final class ShardDirectory: Sendable {
    let set: ReplicaSet
    private let cached = Mutex<ShardMap?>(nil)

    public init(set: ReplicaSet) { self.set = set }

    /// The newest map read so far (read once if none yet).
    public func current() async throws -> ShardMap {
        if let map = cached.withLock({ $0 }) { return map }
        return try await refresh()
    }

    /// Reads the newest stored map (from the primary: a replica may not have the newest).
    @discardableResult
    public func refresh() async throws -> ShardMap {
        let logger = set.logger
        let stored = try await set.readPrimary("shard_map") { client -> (Int64, [String])? in
            let rows = try await client.query("SELECT version, owners FROM shard_maps ORDER BY version DESC LIMIT 1", logger: logger)
            for try await row in rows.decode((Int64, [String]).self) { return row }
            return nil
        }
        guard let (version, owners) = stored else {
            throw NoShardMapError()
        }
        let map = try ShardMap(version: version, owners: owners)
        cached.withLock { current in
            if current.map({ $0.version < map.version }) ?? true { current = map }
        }
        return cached.withLock { $0! }
    }

    /// Stores `map` as the newest version. Fails if that version exists already (another
    /// process published first): versions are never overwritten.
    public func publish(_ map: ShardMap) async throws {
        let logger = set.logger
        do {
            try await set.write("publish_shard_map") { c in
                try await c.query("INSERT INTO shard_maps (version, owners) VALUES (\(map.version), \(map.owners))", logger: logger)
            }
        } catch let e as PSQLError where e.serverInfo?[.sqlState] == "23505" {
            throw MillionsError(.conflict, "shard map version \(map.version) exists already")
        }
        cached.withLock { current in
            if current.map({ $0.version < map.version }) ?? true { current = map }
        }
    }

    /// Makes version 1 if there is no map: `clusters` own even ranges, and each is told
    /// which shards it owns before the map names it. Returns the newest map. Idempotent.
    @discardableResult
    public func initialize(clusters: [String: ReplicaSet], order: [String]) async throws -> ShardMap {
        // Only a directory that answers "no map" gets version 1: one that does not answer
        // must not re-grant shards that have moved since.
        do { return try await refresh() } catch is NoShardMapError {}
        let map = try ShardMap.even(order)
        for name in order {
            guard let cluster = clusters[name] else { throw MillionsError(.internalError, "no cluster named \(name)") }
            try await Self.own(map.shards(of: name), version: map.version, on: cluster)
        }
        do { try await publish(map) } catch let e as MillionsError where e.code == .conflict {}
        return try await refresh()
    }

    /// Records on `cluster` that it owns `logicals` (from map `version` on).
    public static func own(_ logicals: [Int], version: Int64, on cluster: ReplicaSet) async throws {
        let logger = cluster.logger
        let shards = logicals.map { Int32($0) }
        try await cluster.write("own_shards") { c in
            try await c.query(
                """
                INSERT INTO shard_ownership (logical, map_version) SELECT l, \(version) FROM unnest(\(shards)::int[]) AS t(l)
                ON CONFLICT (logical) DO UPDATE SET map_version = EXCLUDED.map_version
                """, logger: logger)
        }
    }

    /// Whether `cluster` owns `logical` now (read on its primary).
    public static func owns(_ logical: Int, on cluster: ReplicaSet) async throws -> Bool {
        let logger = cluster.logger
        return try await cluster.readPrimary("shard_owned") { client in
            let rows = try await client.query("SELECT 1 FROM shard_ownership WHERE logical = \(Int32(logical))", logger: logger)
            for try await _ in rows { return true }
            return false
        }
    }
}

/// The directory answered, and has no shard map yet (a new sharded tier).
public struct NoShardMapError: Error, Sendable, CustomStringConvertible {
    public var description: String { "no shard map yet: the first `millions serve` makes version 1" }
}
