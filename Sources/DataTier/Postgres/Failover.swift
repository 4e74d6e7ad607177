import Logging
import MillionsCore
import PostgresNIO

/// Promotes a replica when the primary is gone, and points the other replicas at it.
/// Web servers need no restart: their discovery finds the new primary by itself.
public enum Failover {
    public struct Result: Sendable {
        public let promoted: String
        public let repointed: [String]
    }

    /// Picks the reachable replica that has received the most WAL, promotes it
    /// (`pg_promote`), creates the other replicas' slots on it and repoints them
    /// (`primary_conninfo`, reloaded). Refuses while a primary still answers.
    public static func promoteBestReplica(_ set: ReplicaSet, logger: Logger) async throws -> Result {
        // A dead primary refuses connections: discovery says so at once (it used to wait
        // out the full query timeout, three rounds of 2 s in a 6.3 s failover). A slow
        // but live primary still gets its full timeout, so it is not taken for dead.
        await set.discover()
        if let live = set.primaryIndex {
            throw MillionsError(.conflict, "the primary \(set.nodes[live].name) still answers; refusing to fail over")
        }
        // Received (not just replayed) WAL decides: after promotion a replica replays all it received.
        var candidates: [(index: Int, received: UInt64, name: String, slot: String)] = []
        for (i, status) in set.statuses.enumerated() where status.reachable && status.role == .replica {
            let client = set.nodes[i].client
            let row = try await withTimeout(.seconds(5)) { () -> (UInt64, String, String) in
                let rows = try await client.query(
                    """
                    SELECT COALESCE(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::text,
                      current_setting('cluster_name'), current_setting('primary_slot_name')
                    """)
                for try await (lsn, name, slot) in rows.decode((String, String, String).self) {
                    return (LSN.parse(lsn) ?? 0, name, slot)
                }
                return (0, "", "")
            }
            candidates.append((i, row.0, row.1, row.2))
        }
        guard let best = candidates.max(by: { $0.received < $1.received }) else {
            throw MillionsError(.unavailable, "no reachable replica to promote")
        }
        let newPrimary = set.nodes[best.index]
        logger.info("promoting", metadata: ["node": "\(newPrimary.name)", "received_lsn": "\(LSN.format(best.received))"])
        _ = try await withTimeout(.seconds(60)) {
            // A paused replay would never finish recovery.
            try await newPrimary.client.query("SELECT pg_wal_replay_resume()")
            for try await ok in try await newPrimary.client.query("SELECT pg_promote(true, 55)").decode(Bool.self) {
                guard ok else { throw MillionsError(.unavailable, "pg_promote did not finish") }
            }
            return true
        }
        let parts = newPrimary.name.split(separator: ":")
        let host = String(parts[0]), port = String(parts[1])
        var repointed: [String] = []
        for other in candidates where other.index != best.index {
            let slot = other.slot.isEmpty ? other.name : other.slot
            _ = try await withTimeout(.seconds(10)) {
                let exists = try await newPrimary.client.query(
                    "SELECT count(*) FROM pg_replication_slots WHERE slot_name = \(slot)")
                var count: Int64 = 0
                for try await n in exists.decode(Int64.self) { count = n }
                if count == 0 {
                    try await newPrimary.client.query("SELECT pg_create_physical_replication_slot(\(slot))")
                }
                let client = set.nodes[other.index].client
                // Keep where the replica finds its password (scripts/postgres's pgpass file).
                var passfile = ""
                for try await current in try await client.query("SELECT setting FROM pg_settings WHERE name = 'primary_conninfo'")
                    .decode(String.self)
                {
                    passfile = Self.passfileOption(current)
                }
                let conninfo = "host=\(host) port=\(port) user=postgres application_name=\(other.name)" + passfile
                try await client.query(PostgresQuery(unsafeSQL: "ALTER SYSTEM SET primary_conninfo = '\(conninfo)'"))
                try await client.query(PostgresQuery(unsafeSQL: "ALTER SYSTEM SET primary_slot_name = '\(slot)'"))
                try await client.query("SELECT pg_reload_conf()")
                return true
            }
            repointed.append(set.nodes[other.index].name)
            logger.info("repointed replica", metadata: ["node": "\(set.nodes[other.index].name)", "primary": "\(newPrimary.name)"])
        }
        return Result(promoted: newPrimary.name, repointed: repointed)
    }

    /// ` passfile=PATH` from a conninfo string (`passfile='/x'` or `passfile=/x`), or "".
    static func passfileOption(_ conninfo: String) -> String {
        guard let token = conninfo.split(separator: " ").first(where: { $0.hasPrefix("passfile=") }) else { return "" }
        let path = token.dropFirst("passfile=".count).filter { $0 != "'" }
        guard !path.isEmpty, path.allSatisfy({ $0.isLetter || $0.isNumber || "/._-".contains($0) }) else { return "" }
        return " passfile=" + path
    }
}
