import Logging
import MillionsCore
import PostgresNIO

/// Moves logical shards between clusters while the site runs. A logical shard is a
/// 1/1,024th of the users, so its rows are copied inside a short write fence:
///
/// 1. The target is told it owns the shard from the next map version (nobody routes there
///    yet: the map still names the source).
/// 2. Fence: the source's ownership row is deleted. That waits for writes in flight; every
///    later write to the shard is refused, and the store retries it until the map moves on.
///    Reads go on at the source.
/// 3. Copy: the shard's rows of every table in `ShardSchema.tables` (users, email entries,
///    sessions), every column, source → target.
/// 4. Verify: row counts and an md5 over the rows' text, source against target; then wait
///    (bounded) until the target's replicas have replayed the copy.
/// 5. Switch: the next map version is published. Waiting writes now land on the target.
/// 6. Clean: the source's rows of the shard are deleted.
///
/// A failure before the switch undoes the move: the source owns the shard again, and the
/// target forgets it and its copies.
public struct ShardMover: Sendable {
    let clusters: [String: ReplicaSet]
    let directory: ShardDirectory
    let logger: Logger

    /// How long a move waits (fenced) for the target's replicas to replay the copy.
    let replayTimeout: Duration

    public init(clusters: [String: ReplicaSet], directory: ShardDirectory, logger: Logger, replayTimeout: Duration = .seconds(5)) {
        self.clusters = clusters
        self.directory = directory
        self.logger = logger
        self.replayTimeout = replayTimeout
    }

    /// What one move did.
    public struct Move: Sendable {
        public let logical: Int
        public let from: String
        public let to: String
        /// Rows copied, by table (`ShardSchema.tables`).
        public let rows: [String: Int]
        public var users: Int { rows["users"] ?? 0 }
        public var emails: Int { rows["email_directory"] ?? 0 }
        public var sessions: Int { rows["sessions"] ?? 0 }
        public var cityEntries: Int { rows["city_directory"] ?? 0 }
        /// From the fence to the switch: how long writes to the shard waited at most.
        public let fenced: Duration
        public let version: Int64
    }

    func cluster(_ name: String) throws -> ReplicaSet {
        guard let set = clusters[name] else { throw MillionsError(.badRequest, "no cluster named \(name) is configured") }
        return set
    }

    /// Moves `logical` to `target`; nil if it is there already.
    public func move(_ logical: Int, to target: String) async throws -> Move? {
        guard (0..<ShardMap.logicalShards).contains(logical) else {
            throw MillionsError(.badRequest, "a logical shard is 0...\(ShardMap.logicalShards - 1), not \(logical)")
        }
        let map = try await directory.refresh()
        let sourceName = map.owner(of: logical)
        guard sourceName != target else { return nil }
        let (source, destination) = (try cluster(sourceName), try cluster(target))
        let next = try map.moving([logical], to: target)

        try await ShardDirectory.own([logical], version: next.version, on: destination)
        let fencedAt = ContinuousClock.now
        let copied: [String: Int]
        do {
            try await source.write("shard_fence") { c in
                try await c.query("DELETE FROM shard_ownership WHERE logical = \(Int32(logical))", logger: c.logger)
            }
            copied = try await copy(logical, from: source, to: destination)
            let (before, after) = (try await Self.digest(logical, on: source), try await Self.digest(logical, on: destination))
            guard before == after else {
                throw MillionsError(.internalError, "logical shard \(logical): the copy on \(target) differs from \(sourceName) (\(before) vs \(after))")
            }
            // Reads go to the target's replicas once the map names it: they must have the
            // copy by then, or a moved user reads as "not found" for a moment.
            let copiedAt = try await destination.primaryPosition()
            let behind = await destination.waitForReplay(of: copiedAt, timeout: replayTimeout)
            if !behind.isEmpty {
                logger.warning(
                    "shard published before these replicas replayed its copy; they may answer 'not found' for it until they do",
                    metadata: ["logical": "\(logical)", "replicas": "\(behind.joined(separator: ","))"])
            }
            try await directory.publish(next)
        } catch {
            // A publish whose answer was lost may have committed: undo only what the map
            // does not name (else the shard would be owned by nobody the map points to).
            guard let now = try? await directory.refresh(), now.owner(of: logical) == sourceName else {
                logger.error(
                    "shard move not undone: the map names the target, or could not be read; run the move again",
                    metadata: ["logical": "\(logical)", "error": "\(error)"])
                throw error
            }
            logger.error("shard move undone", metadata: ["logical": "\(logical)", "to": "\(target)", "error": "\(error)"])
            try await undo(logical, source: source, target: destination, version: map.version)
            throw error
        }
        let fenced = ContinuousClock.now - fencedAt
        // The move is done once published. Its clean is tried a few times; what still
        // fails is left for `millions shards clean` (`clean()`), and said so.
        for attempt in 1... {
            do {
                try await Self.removeRows(logical, on: source)
                break
            } catch where attempt < 4 {
                try await Task.sleep(for: .milliseconds(200 << attempt))
            } catch {
                logger.error(
                    "shard moved, but its rows on the source were not removed; run `millions shards clean`",
                    metadata: ["logical": "\(logical)", "from": "\(sourceName)", "error": "\(error)"])
                throw error
            }
        }
        logger.info(
            "shard moved",
            metadata: [
                "logical": "\(logical)", "from": "\(sourceName)", "to": "\(target)", "rows": "\(copied)", "fenced_ms": "\(fenced.inMilliseconds)", "map_version": "\(next.version)",
            ])
        return Move(
            logical: logical, from: sourceName, to: target, rows: copied, fenced: fenced,
            version: next.version)
    }

    /// Moves shards until every cluster in `order` owns its even share (1,024 / N, the
    /// first ones one more when it does not divide), moving as few as that takes: only
    /// clusters above their share give, from their highest shards.
    public func rebalance(_ order: [String]) async throws -> [Move] {
        guard !order.isEmpty else { return [] }
        for name in order { _ = try cluster(name) }
        let map = try await directory.refresh()
        var owned = Dictionary(uniqueKeysWithValues: order.map { ($0, map.shards(of: $0)) })
        let share = ShardMap.logicalShards / order.count, extra = ShardMap.logicalShards % order.count
        let target = Dictionary(uniqueKeysWithValues: order.enumerated().map { ($1, share + ($0 < extra ? 1 : 0)) })
        // Shards of clusters no longer listed go first; then each cluster's surplus.
        var surplus = map.owners.indices.filter { owned[map.owner(of: $0)] == nil }
        for name in order {
            while let count = owned[name]?.count, count > target[name, default: 0], let last = owned[name]?.popLast() {
                surplus.append(last)
            }
        }
        var moves: [Move] = []
        for name in order {
            while let count = owned[name]?.count, count < target[name, default: 0], let logical = surplus.popLast() {
                owned[name]?.append(logical)
                if let move = try await move(logical, to: name) { moves.append(move) }
            }
        }
        return moves
    }

    /// Copies the shard's rows of every sharded table (every column, as JSON rows) in one
    /// transaction on the target, replacing leftovers of an earlier attempt; rows by table.
    func copy(_ logical: Int, from source: ReplicaSet, to target: ReplicaSet) async throws -> [String: Int] {
        let l = Int32(logical)
        let logger = source.logger
        let tables = ShardSchema.tables
        // The shard is fenced: its rows do not change while they are read.
        let texts = try await source.readPrimary("shard_copy_read") { client in
            var out: [String] = []
            for t in tables {
                var text = "[]"
                let rows = try await client.query(
                    "SELECT coalesce(json_agg(t), '[]')::text FROM \(unescaped: t.name) t WHERE \(unescaped: t.logical("t")) = \(l)",
                    logger: logger)
                for try await v in rows.decode(String.self) { text = v }
                out.append(text)
            }
            return out
        }
        return try await target.write("shard_copy_write", timeout: .seconds(120)) { c in
            var counts: [String: Int] = [:]
            for (t, text) in zip(tables, texts) {
                try await c.query("DELETE FROM \(unescaped: t.name) t WHERE \(unescaped: t.logical("t")) = \(l)", logger: c.logger)
                let rows = try await c.query(
                    "INSERT INTO \(unescaped: t.name) SELECT * FROM json_populate_recordset(null::\(unescaped: t.name), \(text)::json) RETURNING 1",
                    logger: c.logger)
                var n = 0
                for try await _ in rows { n += 1 }
                counts[t.name] = n
            }
            return counts
        }
    }

    /// Row count and md5 of the rows' text, in key order, of the shard's rows of each table.
    static func digest(_ logical: Int, on set: ReplicaSet) async throws -> String {
        let l = Int32(logical)
        let logger = set.logger
        return try await set.readPrimary("shard_digest") { client in
            var parts: [String] = []
            for t in ShardSchema.tables {
                let rows = try await client.query(
                    """
                    SELECT count(*)::text || '/' || coalesce(md5(string_agg(t::text, '|' ORDER BY \(unescaped: t.key.map { "t." + $0 }.joined(separator: ", ")))), '')
                    FROM \(unescaped: t.name) t WHERE \(unescaped: t.logical("t")) = \(l)
                    """, logger: logger)
                for try await text in rows.decode(String.self) { parts.append("\(t.name) \(text)") }
            }
            return parts.joined(separator: ", ")
        }
    }

    /// Deletes the shard's rows from a cluster that no longer owns it. The fence refuses
    /// that too, so the delete bypasses triggers, as replication does.
    static func removeRows(_ logical: Int, on set: ReplicaSet) async throws {
        let l = Int32(logical)
        try await set.write("shard_clean", timeout: .seconds(120)) { c in
            try await c.query("SET LOCAL session_replication_role = replica", logger: c.logger)
            for t in ShardSchema.tables {
                try await c.query("DELETE FROM \(unescaped: t.name) t WHERE \(unescaped: t.logical("t")) = \(l)", logger: c.logger)
            }
        }
    }

    /// What `clean` found on one cluster.
    public struct Leftovers: Sendable, Equatable {
        public let cluster: String
        /// By table.
        public let rows: [String: Int]
        public var total: Int { rows.values.reduce(0, +) }
    }

    /// Rows a cluster keeps of logical shards that the map does not give it and that it
    /// does not own either (a move in progress owns them on its target): what a move whose
    /// clean failed leaves behind. A process with an old map could still read them.
    /// Removed (bypassing the fence, as a move's own clean does) unless `dryRun`.
    public func clean(dryRun: Bool = false) async throws -> [Leftovers] {
        let map = try await directory.refresh()
        var found: [Leftovers] = []
        for name in clusters.keys.sorted() {
            let set = try cluster(name)
            var binds = PostgresBindings()
            binds.append(map.shards(of: name).map(Int32.init))
            let mine = binds
            let rows = try await set.write("shard_leftovers", timeout: .seconds(120)) { c -> [String: Int] in
                try await c.query("SET LOCAL session_replication_role = replica", logger: c.logger)
                var counts: [String: Int] = [:]
                for t in ShardSchema.tables {
                    let shard = t.logical("t")
                    let leftover = "NOT (\(shard) = ANY($1)) AND NOT EXISTS (SELECT 1 FROM shard_ownership o WHERE o.logical = \(shard))"
                    let sql =
                        dryRun
                        ? "SELECT count(*)::int FROM \(t.name) t WHERE \(leftover)"
                        : "WITH gone AS (DELETE FROM \(t.name) t WHERE \(leftover) RETURNING 1) SELECT count(*)::int FROM gone"
                    for try await n in try await c.query(PostgresQuery(unsafeSQL: sql, binds: mine), logger: c.logger).decode(Int32.self) {
                        counts[t.name] = Int(n)
                    }
                }
                return counts
            }
            let leftovers = Leftovers(cluster: name, rows: rows)
            found.append(leftovers)
            if leftovers.total > 0 {
                logger.warning(
                    dryRun ? "leftover rows of shards moved away" : "leftover rows of shards moved away removed",
                    metadata: ["cluster": "\(name)", "rows": "\(rows)"])
            }
        }
        return found
    }

    /// Before the switch: the source owns the shard again; the target forgets it.
    func undo(_ logical: Int, source: ReplicaSet, target: ReplicaSet, version: Int64) async throws {
        try await ShardDirectory.own([logical], version: version, on: source)
        try await target.write("shard_undo") { c in
            try await c.query("DELETE FROM shard_ownership WHERE logical = \(Int32(logical))", logger: c.logger)
        }
        try await Self.removeRows(logical, on: target)
    }
}
