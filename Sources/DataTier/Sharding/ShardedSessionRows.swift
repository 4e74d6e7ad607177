import MillionsCore
import PostgresNIO

/// Sessions on a sharded tier (`session.store=sql`): each on its user's cluster, fenced and
/// moved with the user's logical shard (`ShardSchema`), so a user's sessions go with the
/// user and logging out everywhere is one cluster's business. A token's first three hex
/// digits name that shard and the other 61 are random (244 bits), so a lookup needs no
/// directory.
public struct ShardedSessionRows: SessionRows {
    let users: ShardedUserStore

    public init(users: ShardedUserStore) { self.users = users }

    public func newToken(for user: UserID) -> String {
        let shard = String(user.logicalShard, radix: 16)
        return String(repeating: "0", count: 3 - shard.count) + shard + Token.random(bytes: 31).prefix(61)
    }

    /// The logical shard a token names. Any three digits route somewhere; a token this
    /// store did not make is then simply not found there.
    static func logical(ofToken token: String) -> Int { (Int(token.prefix(3), radix: 16) ?? 0) % ShardMap.logicalShards }

    func rows(_ set: ReplicaSet) -> PostgresSessionRows { PostgresSessionRows(replicaSet: set) }

    /// A write that changed no row may have gone to a cluster the shard has left: `onShard`
    /// checks that for a nil answer and retries on the new owner.
    static func changed(_ n: Int) -> Int? { n > 0 ? n : nil }

    public func insert(token: String, idHash: String, userID: UserID, csrf: String, created: Double, expires: Double) async throws {
        _ = try await users.onShard(userID.logicalShard) { _, set in
            try await rows(set).insert(idHash: idHash, userID: userID.rawValue, csrf: csrf, created: created, expires: expires)
            return true
        }
    }

    public func find(token: String, idHash: String) async throws -> (Int64, String, Double)? {
        let found = try await users.onShard(Self.logical(ofToken: token)) { _, set in
            try await rows(set).find(idHash: idHash).map { Row(user: $0.0, csrf: $0.1, expires: $0.2) }
        }
        return found.map { ($0.user, $0.csrf, $0.expires) }
    }

    struct Row: Sendable {
        var user: Int64
        var csrf: String
        var expires: Double
    }

    public func extend(token: String, idHash: String, to expires: Double) async throws {
        _ = try await users.onShard(Self.logical(ofToken: token)) { _, set in
            Self.changed(try await rows(set).extend(idHash: idHash, to: expires))
        }
    }

    public func delete(token: String, idHash: String) async throws {
        _ = try await users.onShard(Self.logical(ofToken: token)) { _, set in
            Self.changed(try await rows(set).delete(idHash: idHash))
        }
    }

    public func deleteAll(userID: UserID) async throws {
        _ = try await users.onShard(userID.logicalShard) { _, set in
            Self.changed(try await rows(set).deleteAll(userID: userID.rawValue))
        }
    }

    /// Expired sessions of the shards each cluster owns. The rows of a shard behind a move's
    /// fence are left for the next purge: the fence would refuse the whole statement.
    public func purge(before now: Double) async throws -> Int {
        var total = 0
        for name in users.clusters.keys.sorted() {
            guard let set = users.clusters[name] else { continue }
            let logger = set.logger
            total += try await set.write("purge_sessions") { c in
                let rows = try await c.query(
                    """
                    DELETE FROM sessions s WHERE expires_at <= \(now)
                      AND EXISTS (SELECT 1 FROM shard_ownership o WHERE o.logical = (s.user_id >> 12) & 1023)
                    RETURNING 1
                    """, logger: logger)
                var n = 0
                for try await _ in rows { n += 1 }
                return n
            }
        }
        return total
    }

    public func ping() async throws { try await users.ping() }
}
