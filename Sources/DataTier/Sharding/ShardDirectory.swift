import Logging
import MillionsCore
import PostgresNIO
import Synchronization

/// The shard map's home: every version in the directory cluster's `shard_maps`, and the
/// newest read cached here. Web servers and workers read it at start, again whenever a
/// cluster refuses a shard (`WrongShardError`), and at least every `maxAge`: a read that
/// finds its row asks no one, so without that a process could read a moved shard's rows
/// on the old cluster for as long as a failed clean leaves them there.
public final class ShardDirectory: Sendable {
    let set: ReplicaSet
    let maxAge: Duration
    /// The newest map read, when it was last read, and whether a reread is under way: one
    /// lock, taken once on the hot path.
    private struct Cache {
        var map: ShardMap?
        var readAt: ContinuousClock.Instant?
        var rereading = false
    }
    private let cached = Mutex(Cache())
    private let numbering = Mutex<[String: Int]?>(nil)

    public init(set: ReplicaSet, maxAge: Duration = .seconds(2)) {
        self.set = set
        self.maxAge = maxAge
    }

    /// The newest map read so far (read once if none yet). Past `maxAge`, one caller
    /// rereads it while the others go on with the cached map; if the directory does not
    /// answer, the cached map stays in use (a refused shard still makes callers reread).
    public func current() async throws -> ShardMap {
        let now = ContinuousClock.now
        let (known, reread) = cached.withLock { c -> (ShardMap?, Bool) in
            guard let map = c.map else { return (nil, false) }
            guard !c.rereading, c.readAt.map({ now - $0 >= maxAge }) ?? true else { return (map, false) }
            c.rereading = true
            return (map, true)
        }
        guard let map = known else { return try await refresh() }
        guard reread else { return map }
        defer { cached.withLock { $0.rereading = false } }
        return (try? await refresh()) ?? map
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
        return cached.withLock { c in
            c.readAt = .now
            if c.map.map({ $0.version < map.version }) ?? true { c.map = map }
            return c.map!
        }
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
        cached.withLock { c in
            if c.map.map({ $0.version < map.version }) ?? true { c.map = map }
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

    /// Gives each of `names` that has no number the next one (0 for the first cluster ever
    /// numbered), in order, and returns every cluster's number. Numbers are never changed or
    /// reused, so an id that names a cluster by number names it for good.
    @discardableResult
    public func number(_ names: [String]) async throws -> [String: Int] {
        let logger = set.logger
        let all = try await set.write("number_clusters") { c -> [String: Int] in
            // One numbering at a time: two new clusters must not take the same number.
            try await c.query("LOCK TABLE shard_clusters IN SHARE ROW EXCLUSIVE MODE", logger: logger)
            for name in names {
                try await c.query(
                    """
                    INSERT INTO shard_clusters (name, number) SELECT \(name), coalesce(max(number) + 1, 0) FROM shard_clusters
                    ON CONFLICT (name) DO NOTHING
                    """, logger: logger)
            }
            return try await Self.numbers(c.query("SELECT name, number FROM shard_clusters", logger: logger))
        }
        numbering.withLock { $0 = all }
        return all
    }

    /// Every cluster's number, as read last (read once if not yet; again with `refresh`).
    public func clusterNumbers(refresh: Bool = false) async throws -> [String: Int] {
        if !refresh, let known = numbering.withLock({ $0 }), !known.isEmpty { return known }
        let logger = set.logger
        let all = try await set.readPrimary("cluster_numbers") { client in
            try await Self.numbers(client.query("SELECT name, number FROM shard_clusters", logger: logger))
        }
        numbering.withLock { $0 = all }
        return all
    }

    static func numbers(_ rows: PostgresRowSequence) async throws -> [String: Int] {
        var out: [String: Int] = [:]
        for try await (name, number) in rows.decode((String, Int32).self) { out[name] = Int(number) }
        return out
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
