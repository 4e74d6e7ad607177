import Synchronization

/// Read-your-writes for one request. The web tier puts one of these in a task-local for
/// each request: the client's last write positions come in from its cookie; stores raise
/// them when they commit a write, and the web tier sends the new ones back. Replica reads
/// for this request use only replicas that have replayed at least the position of their
/// cluster. Engines without replicas ignore it.
///
/// A position is a write position (timeline and WAL position, see `LSN.position`) of one
/// primary. Positions of different primaries do not compare, so each is kept under its
/// cluster's scope (`ReplicaSet.scope`; "" for the one cluster of an unsharded tier).
public final class ReadYourWrites: Sendable {
    @TaskLocal public static var current: ReadYourWrites?

    private let state: Mutex<(positions: [String: UInt64], raised: Bool)>

    public init(minimumLSN: UInt64 = 0) {
        self.state = Mutex((minimumLSN > 0 ? ["": minimumLSN] : [:], false))
    }

    public init(positions: [String: UInt64]) {
        self.state = Mutex((positions.filter { $0.value > 0 }, false))
    }

    /// The write position this request's reads of the unsharded cluster must see (0: none).
    public var minimumLSN: UInt64 { position(for: "") }
    /// The write position reads of `scope`'s cluster must see (0: none).
    public func position(for scope: String) -> UInt64 { state.withLock { $0.positions[scope] ?? 0 } }
    /// Every scope's position.
    public var positions: [String: UInt64] { state.withLock { $0.positions } }
    /// True if this request committed a write, or learned of one it must see from now on.
    public var advanced: Bool { state.withLock { $0.raised } }

    /// Records a committed write's position on `scope`'s cluster.
    public func wrote(at position: UInt64, scope: String = "") {
        state.withLock {
            $0.positions[scope] = max($0.positions[scope] ?? 0, position)
            $0.raised = true
        }
    }

    /// Records a write made elsewhere (a job's result) that this client has been told of,
    /// so its next reads see it too. True if that raised the position.
    @discardableResult
    public func learned(of position: UInt64, scope: String = "") -> Bool {
        state.withLock {
            guard position > ($0.positions[scope] ?? 0) else { return false }
            $0.positions[scope] = position
            $0.raised = true
            return true
        }
    }

    /// The positions as a cookie value: hex for the unsharded scope alone (as before
    /// sharding), else `scope.hex` joined by `~`.
    public var cookieValue: String { Self.text(positions) }

    /// Positions as text, as in the cookie (and a job's result).
    public static func text(_ positions: [String: UInt64]) -> String {
        positions.filter { $0.value > 0 }.sorted { $0.key < $1.key }
            .map { $0.key.isEmpty ? String($0.value, radix: 16) : "\($0.key).\(String($0.value, radix: 16))" }
            .joined(separator: "~")
    }

    /// Reads `cookieValue`; what does not parse is left out (a client's bad cookie only
    /// costs it its own read-your-writes). At most 64 scopes.
    public static func positions(cookie: String) -> [String: UInt64] {
        var out: [String: UInt64] = [:]
        for part in cookie.split(separator: "~").prefix(64) {
            let pieces = part.split(separator: ".", maxSplits: 1, omittingEmptySubsequences: false)
            if pieces.count == 1, let value = UInt64(pieces[0], radix: 16) {
                out[""] = value
            } else if pieces.count == 2, !pieces[0].isEmpty, pieces[0].count <= 64, let value = UInt64(pieces[1], radix: 16) {
                out[String(pieces[0])] = value
            }
        }
        return out
    }
}

/// A PostgreSQL WAL position, `X/Y` in hex, as one 64-bit number.
///
/// A client's write position also names the timeline it was written on, in the top 16 bits
/// (`position(_:timeline:)`): positions of different timelines do not compare (after a
/// failover, a replica still on the old timeline may have replayed past a write's position
/// without having the write). Packed this way one number still orders writes in time (a
/// newer timeline is later), and travels as before in the cookie and the job's result.
/// Timeline 0 means unknown. WAL positions stay below 2^48 (256 TiB of WAL).
public enum LSN {
    static let offsetBits: UInt64 = 48

    public static func position(_ lsn: UInt64, timeline: UInt32) -> UInt64 {
        UInt64(min(timeline, 0xFFFF)) << offsetBits | (lsn & (1 << offsetBits - 1))
    }

    /// The WAL position part of a write position.
    public static func offset(of position: UInt64) -> UInt64 { position & (1 << offsetBits - 1) }
    /// The timeline part (0: unknown).
    public static func timeline(of position: UInt64) -> UInt32 { UInt32(position >> offsetBits) }

    public static func parse(_ text: String) -> UInt64? {
        let parts = text.split(separator: "/")
        guard parts.count == 2, let hi = UInt64(parts[0], radix: 16), let lo = UInt64(parts[1], radix: 16),
            hi <= 0xFFFF_FFFF, lo <= 0xFFFF_FFFF
        else { return nil }
        return hi << 32 | lo
    }

    public static func format(_ value: UInt64) -> String {
        String(value >> 32, radix: 16, uppercase: true) + "/" + String(value & 0xFFFF_FFFF, radix: 16, uppercase: true)
    }
}
