import Foundation
import Logging
import MillionsCore
import PostgresNIO

/// The primary's committed changes to users, in commit order, read from a logical
/// replication slot (PostgreSQL's built-in `test_decoding` plugin; needs `wal_level =
/// logical`). A site's cache follows it to drop a user's cached profile once the site's own
/// replicas have replayed the change (`replayed(through:)`), so a miss right after the
/// delete cannot refill the old value from a lagging replica.
///
/// Changes are peeked, not consumed: the caller acknowledges a position after acting on
/// everything before it, so a crash between the two repeats work (a second delete) rather
/// than losing it.
public final class ChangeFeed: Sendable {
    /// One committed transaction that touched users.
    public struct Commit: Sendable, Equatable {
        /// The end of its commit record: a replica whose replay position reached this has it.
        public var position: UInt64
        public var userIDs: [Int64]
        public init(position: UInt64, userIDs: [Int64]) {
            self.position = position
            self.userIDs = userIDs
        }
    }

    public let slot: String
    let set: ReplicaSet
    let logger: Logger

    public init(set: ReplicaSet, slot: String, logger: Logger) throws {
        guard !slot.isEmpty, slot.count <= 63, slot.allSatisfy({ $0.isASCII && ($0.isLowercase || $0.isNumber || $0 == "_") }) else {
            throw MillionsError(.badRequest, "a replication slot name is 1-63 of a-z, 0-9 and _, got \(slot)")
        }
        self.set = set
        self.slot = slot
        self.logger = logger
    }

    /// Creates the slot on the primary unless it is there, and returns where it starts when
    /// it created it: changes committed before that are not in the feed (a first start, or
    /// a promoted replica, which has no logical slots), so the caller must assume it missed
    /// some. Nil when the slot was there.
    @discardableResult
    public func ensureSlot() async throws -> UInt64? {
        let slot = self.slot
        return try await set.readPrimary("change_feed_slot") { client -> UInt64? in
            let rows = try await client.query("SELECT count(*) FROM pg_replication_slots WHERE slot_name = \(slot)")
            for try await n in rows.decode(Int.self) where n > 0 { return nil }
            do {
                let created = try await client.query("SELECT lsn::text FROM pg_create_logical_replication_slot(\(slot)::name, 'test_decoding')")
                for try await lsn in created.decode(String.self) { return LSN.parse(lsn) ?? 0 }
                return 0
            } catch let e as PSQLError where e.serverInfo?[.sqlState] == "42710" {
                return nil  // Another follower created it first (and starts over itself).
            }
        }
    }

    /// Drops the slot, so the primary stops keeping WAL for it (a site taken away for good).
    public func drop() async throws {
        let slot = self.slot
        _ = try await set.readPrimary("change_feed_drop") { client in
            try await client.query("SELECT pg_drop_replication_slot(\(slot)::name)")
        }
    }

    /// Up to about `limit` changes after the slot's position: the commits that touched
    /// users, and the position through which it read (acknowledge that, even when no commit
    /// touched users, so the slot does not hold WAL back). Nil when nothing is new.
    public func peek(limit: Int) async throws -> (commits: [Commit], through: UInt64)? {
        let slot = self.slot
        // The server decodes whole transactions, whatever the limit: one bulk write (a seed,
        // a backfill) can take longer than a request's bound, and a timeout would start the
        // same work over and over.
        let rows: [(String, String)] = try await set.readPrimary("change_feed_peek", timeout: .seconds(300)) { client in
            var out: [(String, String)] = []
            let query: PostgresQuery = """
                SELECT lsn::text, data FROM pg_logical_slot_peek_changes(\(slot)::name, NULL::pg_lsn, \(limit)::int, 'include-xids', '0', 'skip-empty-xacts', '1')
                """
            for try await row in try await client.query(query).decode((String, String).self) { out.append(row) }
            return out
        }
        return Self.parse(rows)
    }

    /// The commits in test_decoding's output: `BEGIN`, then a line per row change such as
    /// `table public.users: UPDATE: id[bigint]:42 …`, then `COMMIT`, whose position is the
    /// end of the commit record.
    public static func parse(_ rows: [(lsn: String, data: String)]) -> (commits: [Commit], through: UInt64)? {
        var commits: [Commit] = []
        var ids: [Int64] = []
        var through: UInt64? = nil
        for (lsnText, data) in rows {
            if data.hasPrefix("BEGIN") {
                ids = []
            } else if data.hasPrefix("COMMIT") {
                guard let lsn = LSN.parse(lsnText) else { continue }
                if !ids.isEmpty { commits.append(Commit(position: lsn, userIDs: ids)) }
                through = lsn
                ids = []
            } else if let id = userID(data) {
                ids.append(id)
            }
        }
        return through.map { (commits, $0) }
    }

    /// The user id of a row change to `public.users` (its first column), else nil.
    public static func userID(_ line: String) -> Int64? {
        let prefix = "table public.users: "
        guard line.hasPrefix(prefix) else { return nil }
        let rest = line.dropFirst(prefix.count)
        for action in ["INSERT: ", "UPDATE: ", "DELETE: "] where rest.hasPrefix(action) {
            let column = rest.dropFirst(action.count)
            guard column.hasPrefix("id[bigint]:") else { return nil }
            return Int64(column.dropFirst("id[bigint]:".count).prefix { $0 == "-" || $0.isNumber })
        }
        return nil
    }

    /// Moves the slot past `position`, letting the primary recycle the WAL before it.
    public func acknowledge(through position: UInt64) async throws {
        let slot = self.slot, target = LSN.format(position)
        try await set.readPrimary("change_feed_ack") { client in
            do {
                try await client.query("SELECT pg_replication_slot_advance(\(slot)::name, \(target)::pg_lsn)")
            } catch let e as PSQLError where e.serverInfo?[.sqlState] == "55000" {
                // Already past it (another follower of the same slot acknowledged first).
            }
        }
    }

    /// Whether every replica of the set that answers now has replayed `position`. One that
    /// does not answer is out of the readers' rotation until discovery sees it again (and
    /// then only once its lag is small), so it is not waited for.
    public func replayed(through position: UInt64) async -> Bool {
        // This site's: a remote node's replicas serve no reads here.
        let replicas = set.statuses.indices.filter { set.statuses[$0].role == .replica && !set.router.remote.contains($0) }
        for i in replicas {
            let client = set.nodes[i].client
            let replay: UInt64?? = try? await withTimeout(.seconds(1)) {
                for try await text in try await client.query("SELECT pg_last_wal_replay_lsn()::text").decode(String?.self) {
                    return text.flatMap(LSN.parse)
                }
                return nil
            }
            guard let answered = replay else { continue }
            guard let at = answered, at >= position else { return false }
        }
        return true
    }
}
