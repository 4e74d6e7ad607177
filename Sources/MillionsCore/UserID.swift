import Synchronization

/// A user id that carries its own logical shard, so later tiers can route it without a lookup.
///
/// Layout (53 bits, so the id stays an exact JSON number in every JavaScript client):
///
///     [ 31 bits: seconds since 2026-01-01T00:00:00Z ][ 10 bits: logical shard ][ 12 bits: sequence ]
///
/// 31 bits of seconds last until 2094; 1024 logical shards; 4096 ids per second per shard per
/// process before the sequence wraps. Ids sort roughly by creation time.
public struct UserID: Sendable, Hashable, Comparable, Codable, CustomStringConvertible {
    public let rawValue: Int64

    /// Seconds since 1970 of the id epoch, 2026-01-01T00:00:00Z.
    public static let epoch: Int64 = 1_767_225_600
    public static let shardBits = 10
    public static let sequenceBits = 12
    public static let timeBits = 31
    public static let logicalShardCount = 1 << shardBits
    /// The largest valid id: 2^53 - 1.
    public static let maxRawValue: Int64 = (1 << 53) - 1

    public init?(rawValue: Int64) {
        guard rawValue > 0, rawValue <= Self.maxRawValue else { return nil }
        self.rawValue = rawValue
    }

    public init(seconds: Int64, shard: Int, sequence: Int) {
        precondition(shard >= 0 && shard < Self.logicalShardCount)
        let t = max(0, seconds - Self.epoch) & ((1 << Self.timeBits) - 1)
        let s = Int64(sequence) & ((1 << Self.sequenceBits) - 1)
        // Time 0, shard 0, sequence 0 would be id 0, which is not valid: start sequences at 1 there.
        let raw = (t << Int64(Self.shardBits + Self.sequenceBits)) | (Int64(shard) << Int64(Self.sequenceBits)) | s
        self.rawValue = raw == 0 ? 1 : raw
    }

    /// Parses a decimal id from a URL path segment; nil for anything else.
    public init?(_ text: some StringProtocol) {
        guard !text.isEmpty, text.count <= 16, text.allSatisfy({ $0.isASCII && $0.isNumber }),
            let value = Int64(text)
        else { return nil }
        self.init(rawValue: value)
    }

    /// The logical shard this id routes to.
    public var logicalShard: Int { Int((rawValue >> Int64(Self.sequenceBits)) & Int64(Self.logicalShardCount - 1)) }
    /// Creation time, seconds since 1970.
    public var createdAtSeconds: Int64 { (rawValue >> Int64(Self.shardBits + Self.sequenceBits)) + Self.epoch }

    public var description: String { String(rawValue) }
    public static func < (a: UserID, b: UserID) -> Bool { a.rawValue < b.rawValue }

    public init(from decoder: any Decoder) throws {
        let value = try decoder.singleValueContainer().decode(Int64.self)
        guard let id = UserID(rawValue: value) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "invalid user id"))
        }
        self = id
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(rawValue)
    }
}

/// Makes user ids: the current second, a random logical shard (spreads new users evenly),
/// and a per-process sequence that starts at a random point.
///
/// Two processes can, rarely, mint the same id in the same second; stores insert with a
/// uniqueness check and the caller retries with a fresh id.
public final class UserIDGenerator: Sendable {
    private let sequence: Atomic<Int>
    private let now: @Sendable () -> Int64

    public init(now: @escaping @Sendable () -> Int64 = { Int64(Clock.secondsSince1970()) }) {
        self.sequence = Atomic(Int.random(in: 0..<(1 << UserID.sequenceBits)))
        self.now = now
    }

    public func next() -> UserID {
        let seq = sequence.wrappingAdd(1, ordering: .relaxed).newValue
        return UserID(seconds: now(), shard: Int.random(in: 0..<UserID.logicalShardCount), sequence: seq)
    }
}
