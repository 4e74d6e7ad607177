import Synchronization

/// Read-your-writes for one request. The web tier puts one of these in a task-local for
/// each request: the client's last write position comes in (from its cookie) as
/// `minimumLSN` (a write position: timeline and WAL position, see `LSN.position`); stores
/// raise it when they commit a write, and the web tier sends the new position back. Replica reads for this request use only replicas that have replayed at
/// least `minimumLSN`. Engines without replicas ignore it.
public final class ReadYourWrites: Sendable {
    @TaskLocal public static var current: ReadYourWrites?

    private let lsn: Mutex<UInt64>
    private let raised = Mutex(false)

    public init(minimumLSN: UInt64 = 0) {
        self.lsn = Mutex(minimumLSN)
    }

    /// The write position this request's reads must see (0: none).
    public var minimumLSN: UInt64 { lsn.withLock { $0 } }
    /// True if this request committed a write, or learned of one it must see from now on.
    public var advanced: Bool { raised.withLock { $0 } }

    /// Records a committed write's position.
    public func wrote(at position: UInt64) {
        lsn.withLock { $0 = max($0, position) }
        raised.withLock { $0 = true }
    }

    /// Records a write made elsewhere (a job's result) that this client has been told of,
    /// so its next reads see it too. True if that raised the position.
    @discardableResult
    public func learned(of position: UInt64) -> Bool {
        let higher = lsn.withLock { current in
            guard position > current else { return false }
            current = position
            return true
        }
        if higher { raised.withLock { $0 = true } }
        return higher
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
