import NIOCore

/// One value of the Redis serialization protocol, RESP2 and RESP3.
///
/// RESP2 servers answer with simple strings, errors, integers, bulk strings and arrays
/// (null is a bulk or array of length -1); RESP3 adds null, doubles, booleans, big
/// numbers, verbatim strings, maps, sets and out-of-band pushes.
public enum RESPValue: Sendable, Equatable {
    case simpleString(String)
    case error(String)
    case integer(Int64)
    case bulkString(ByteBuffer)
    case null
    case array([RESPValue])
    case double(Double)
    case boolean(Bool)
    case bigNumber(String)
    case verbatim(format: String, text: String)
    case map([Pair])
    case set([RESPValue])
    /// Out-of-band data (pub/sub messages, invalidations); never the reply to a command.
    case push([RESPValue])

    public struct Pair: Sendable, Equatable {
        public var key: RESPValue
        public var value: RESPValue
        public init(_ key: RESPValue, _ value: RESPValue) {
            self.key = key
            self.value = value
        }
    }

    /// The value as text: simple, bulk and verbatim strings.
    public var string: String? {
        switch self {
        case .simpleString(let s), .bigNumber(let s): s
        case .bulkString(let b): String(buffer: b)
        case .verbatim(_, let text): text
        default: nil
        }
    }

    public var int: Int64? {
        switch self {
        case .integer(let i): i
        case .bulkString, .simpleString: string.flatMap { Int64($0) }
        default: nil
        }
    }

    public var isNull: Bool { self == .null }

    /// Elements of an array, set or push; the flattened pairs of a map.
    public var elements: [RESPValue]? {
        switch self {
        case .array(let a), .set(let a), .push(let a): a
        case .map(let pairs): pairs.flatMap { [$0.key, $0.value] }
        default: nil
        }
    }

    /// A map's value for a string key; RESP2 maps arrive as flat arrays of pairs.
    public subscript(key: String) -> RESPValue? {
        guard let items = elements, items.count % 2 == 0 else { return nil }
        var i = 0
        while i < items.count {
            if items[i].string == key { return items[i + 1] }
            i += 2
        }
        return nil
    }
}

extension RESPValue: ExpressibleByStringLiteral {
    public init(stringLiteral value: String) { self = .bulkString(ByteBuffer(string: value)) }
}
