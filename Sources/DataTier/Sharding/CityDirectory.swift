import Logging
import MillionsCore
import Observability
import PostgresNIO
import Prometheus

/// The people of a city on a sharded tier (`GET /users?city=`), two ways (`CityLookup`):
///
/// - `scatter`: every cluster's `users_by_city` index at once, merged, a cluster that does
///   not answer within the gather deadline left out and counted (as the newest users).
/// - `directory`: `city_directory` on the cluster that owns the city's logical shard
///   (FNV-1a of the city, as emails): one cluster per read. The store writes it after each
///   sign-up, change of name or city, and deletion. Entries carry the user row's version
///   (`row_version`, bumped by a trigger on every update) and a write only replaces an
///   older version, so late or repeated writes cannot bring back an old state; leaving a
///   city leaves a tombstone at the new version, so a late write of the old city loses too.
///   A write that fails after the user's commit is logged and counted
///   (`city_directory_failures_total`); `millions shards reindex-cities` repairs it.
extension ShardedUserStore {
    /// One directory row to write: a user's names in a city at a version, or a tombstone.
    struct CityEntry: Sendable {
        var city: String
        var userID: Int64
        var firstName: String
        var lastName: String
        var version: Int64
        var gone: Bool

        var logical: Int { ShardMap.logicalShard(ofKey: city) }
    }

    public func usersIn(city: String, limit: Int) async throws -> CityPage {
        switch cityLookup {
        case .scatter:
            let (users, missing) = await gather("people of a city", limit: limit, id: \.id) {
                try await $0.usersIn(city: city, limit: limit).users
            }
            return CityPage(users: users, missingClusters: missing)
        case .directory:
            let logical = ShardMap.logicalShard(ofKey: city)
            let users = try await routed(logical) { name -> [UserSummary] in
                let set = try cluster(name).set
                let found = try await set.read("city_directory") { client in
                    try await PostgresUserStore.summaries(
                        client.query(
                            """
                            SELECT user_id, first_name, last_name FROM city_directory
                            WHERE city = \(city) AND NOT gone ORDER BY user_id DESC LIMIT \(limit)
                            """))
                }
                // Nobody there, or a cluster the city's shard has left: `unlessMoved` asks.
                return try await unlessMoved(found.isEmpty ? nil : found, logical, on: name) ?? []
            }
            return CityPage(users: users)
        }
    }

    /// After a user's row changed from `before` to `after` (nil: made, or deleted) at
    /// `version`: the entries that keep the directory true. Nothing when neither the city nor
    /// a name changed, or with `scatter`.
    func cityEntries(before: User?, after: User?, version: Int64) -> [CityEntry] {
        guard cityLookup == .directory else { return [] }
        var entries: [CityEntry] = []
        if let after, !after.profile.address.city.isEmpty,
            before.map({ $0.profile.address.city != after.profile.address.city || $0.profile.firstName != after.profile.firstName || $0.profile.lastName != after.profile.lastName }) ?? true
        {
            entries.append(
                CityEntry(
                    city: after.profile.address.city, userID: after.id.rawValue, firstName: after.profile.firstName,
                    lastName: after.profile.lastName, version: version, gone: false))
        }
        if let before, !before.profile.address.city.isEmpty, before.profile.address.city != after?.profile.address.city {
            entries.append(
                CityEntry(
                    city: before.profile.address.city, userID: before.id.rawValue, firstName: "", lastName: "", version: version,
                    gone: true))
        }
        return entries
    }

    /// Writes `entries` after the user's own commit; a failure is logged and counted, not
    /// thrown: the user's change stands, and `reindexCities` repairs the directory.
    func keepCityDirectory(_ entries: [CityEntry]) async {
        guard !entries.isEmpty else { return }
        do {
            try await writeCityEntries(entries)
        } catch {
            metrics.cachedCounter(
                "city_directory_failures", "City directory writes that failed after the user's commit (run shards reindex-cities)", []
            ).increment()
            logger.warning(
                "city directory not written; run `millions shards reindex-cities`",
                metadata: ["user_id": "\(entries[0].userID)", "error": "\(error)"])
        }
    }

    /// Writes entries on their cities' clusters, one statement per cluster, each replacing
    /// only an older version (a tombstone wins a tie); idempotent, so a refused group can
    /// simply go again (`perCluster`).
    func writeCityEntries(_ entries: [CityEntry]) async throws {
        let now = Clock.secondsSince1970()
        try await perCluster(entries, logical: \.logical) { name, group in
            let set = try cluster(name).set
            let logger = set.logger
            try await set.write("city_directory_write") { c in
                try await c.query(
                    """
                    INSERT INTO city_directory (city, logical, user_id, first_name, last_name, version, gone, changed_at)
                    SELECT c, l, u, f, n, v, g, \(now)
                    FROM unnest(\(group.map(\.city))::text[], \(group.map { Int32($0.logical) })::int[], \(group.map(\.userID))::bigint[],
                        \(group.map(\.firstName))::text[], \(group.map(\.lastName))::text[], \(group.map(\.version))::bigint[],
                        \(group.map(\.gone))::boolean[]) AS t(c, l, u, f, n, v, g)
                    ON CONFLICT (city, user_id) DO UPDATE SET first_name = EXCLUDED.first_name, last_name = EXCLUDED.last_name,
                        version = EXCLUDED.version, gone = EXCLUDED.gone, changed_at = EXCLUDED.changed_at
                    WHERE city_directory.version < EXCLUDED.version OR (city_directory.version = EXCLUDED.version AND EXCLUDED.gone)
                    """, logger: logger)
            }
        }
    }

    /// What `reindexCities` wrote.
    public struct CityReindex: Sendable, Equatable {
        /// Live entries written from users (those already current change nothing).
        public var entries: Int
        /// Entries found naming a user who is gone or lives elsewhere, now tombstones.
        public var tombstones: Int
    }

    /// Repairs the directory from the users: writes every user's entry at the user's
    /// version, then tombstones entries whose user is gone or lives in another city. Safe
    /// while the site runs (every write is versioned), and after `cityLookup` changes to
    /// `directory`.
    public func reindexCities(batch: Int = 1000) async throws -> CityReindex {
        var result = CityReindex(entries: 0, tombstones: 0)
        for name in clusters.keys.sorted() {
            let set = try cluster(name).set
            let logger = set.logger
            var after: Int64 = 0
            while true {
                let from = after
                let rows = try await set.readPrimary("city_reindex_users") { client in
                    var out: [CityEntry] = []
                    for try await (id, first, last, city, version) in try await client.query(
                        """
                        SELECT id, first_name, last_name, city, row_version FROM users u
                        WHERE id > \(from) AND city <> ''
                          AND EXISTS (SELECT 1 FROM shard_ownership o WHERE o.logical = (u.id >> 12) & 1023)
                        ORDER BY id LIMIT \(Int64(batch))
                        """, logger: logger
                    ).decode((Int64, String, String, String, Int64).self) {
                        out.append(CityEntry(city: city, userID: id, firstName: first, lastName: last, version: version, gone: false))
                    }
                    return out
                }
                guard let last = rows.last else { break }
                try await writeCityEntries(rows)
                result.entries += rows.count
                after = last.userID
            }
        }
        for name in clusters.keys.sorted() {
            let set = try cluster(name).set
            let logger = set.logger
            var after = ("", Int64(0))
            while true {
                let (city, id) = after
                let entries = try await set.readPrimary("city_reindex_entries") { client in
                    var out: [CityEntry] = []
                    for try await (city, user, version) in try await client.query(
                        """
                        SELECT city, user_id, version FROM city_directory d
                        WHERE NOT gone AND (city, user_id) > (\(city), \(id))
                          AND EXISTS (SELECT 1 FROM shard_ownership o WHERE o.logical = d.logical)
                        ORDER BY city, user_id LIMIT \(Int64(batch))
                        """, logger: logger
                    ).decode((String, Int64, Int64).self) {
                        out.append(CityEntry(city: city, userID: user, firstName: "", lastName: "", version: version, gone: true))
                    }
                    return out
                }
                guard let last = entries.last else { break }
                after = (last.city, last.userID)
                let homes = try await currentHomes(Set(entries.map(\.userID)))
                var stale: [CityEntry] = []
                for var entry in entries {
                    if let (home, version) = homes[entry.userID] {
                        guard home != entry.city else { continue }
                        entry.version = max(version, entry.version)
                    } else {
                        entry.version += 1
                    }
                    stale.append(entry)
                }
                try await writeCityEntries(stale)
                result.tombstones += stale.count
            }
        }
        return result
    }

    /// The city and row version of each user of `ids` that exists, read on the primaries.
    /// One who is not where the map says is looked for again through the routing (a shard
    /// that moved meanwhile), so no one is taken for gone by mistake.
    func currentHomes(_ ids: Set<Int64>) async throws -> [Int64: (String, Int64)] {
        let map = try await directory.current()
        var found: [Int64: (String, Int64)] = [:]
        let valid = ids.compactMap(UserID.init(rawValue:))
        for (name, group) in Dictionary(grouping: valid, by: { map.owner(of: $0) }) {
            let set = try cluster(name).set
            let logger = set.logger
            let rows = try await set.readPrimary("city_reindex_homes") { client in
                var out: [(Int64, String, Int64)] = []
                for try await row in try await client.query(
                    "SELECT id, city, row_version FROM users WHERE id = ANY(\(group.map(\.rawValue)))", logger: logger
                ).decode((Int64, String, Int64).self) { out.append(row) }
                return out
            }
            for (id, city, version) in rows { found[id] = (city, version) }
        }
        for id in valid where found[id.rawValue] == nil {
            let home = try await onOwner(of: id) { _, set in
                try await set.readPrimary("city_reindex_home") { client -> [String: Int64]? in
                    for try await (city, version) in try await client.query(
                        "SELECT city, row_version FROM users WHERE id = \(id.rawValue)", logger: set.logger
                    ).decode((String, Int64).self) { return [city: version] }
                    return nil
                }
            }
            if let (city, version) = home?.first { found[id.rawValue] = (city, version) }
        }
        return found
    }

    /// Tombstones older than `before`, on the shards each cluster owns; how many.
    public func purgeCityTombstones(before: Double) async throws -> Int {
        var total = 0
        for name in clusters.keys.sorted() {
            let set = try cluster(name).set
            let logger = set.logger
            total += try await set.write("city_tombstones_purge") { c in
                var n = 0
                for try await _ in try await c.query(
                    """
                    DELETE FROM city_directory d WHERE gone AND changed_at < \(before)
                      AND EXISTS (SELECT 1 FROM shard_ownership o WHERE o.logical = d.logical)
                    RETURNING 1
                    """, logger: logger)
                { n += 1 }
                return n
            }
        }
        return total
    }
}
