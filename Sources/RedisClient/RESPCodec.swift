import NIOCore

/// A command: its name and arguments, each sent as a bulk string (the only form a server
/// accepts from clients).
public struct RedisCommand: Sendable, Equatable {
    public var parts: [ByteBuffer]

    public init(_ name: String, _ arguments: String...) {
        parts = ([name] + arguments).map { ByteBuffer(string: $0) }
    }

    public init(_ name: String, arguments: [ByteBuffer]) {
        parts = [ByteBuffer(string: name)] + arguments
    }

    public var name: String { parts.first.map { String(buffer: $0).uppercased() } ?? "" }

    /// Whether the command only reads (what routing to a replica would need).
    public var isReadOnly: Bool { Self.readOnly.contains(name) }
    static let readOnly: Set<String> = [
        "GET", "MGET", "EXISTS", "TTL", "PTTL", "TYPE", "STRLEN", "HGET", "HGETALL", "HMGET", "SMEMBERS", "SCARD",
        "SISMEMBER", "XRANGE", "XREVRANGE", "XLEN", "XINFO", "PING", "ECHO", "DBSIZE", "SCAN",
    ]

    /// `*<n>\r\n` then `$<len>\r\n<bytes>\r\n` for each part.
    public func encode(into out: inout ByteBuffer) {
        out.writeStaticString("*")
        out.writeString(String(parts.count))
        out.writeStaticString("\r\n")
        for part in parts {
            out.writeStaticString("$")
            out.writeString(String(part.readableBytes))
            out.writeStaticString("\r\n")
            out.writeImmutableBuffer(part)
            out.writeStaticString("\r\n")
        }
    }
}

struct RedisCommandEncoder: MessageToByteEncoder {
    typealias OutboundIn = RedisCommand
    func encode(data: RedisCommand, out: inout ByteBuffer) throws { data.encode(into: &out) }
}

/// Bounds on what a server may send, so a broken or hostile peer cannot make the client
/// allocate without limit or recurse without end.
public struct RESPLimits: Sendable {
    public var maxBulkBytes = 64 * 1024 * 1024
    public var maxLineBytes = 64 * 1024
    public var maxElements = 1_000_000
    public var maxDepth = 32
    /// Bytes a reply may take while it is still arriving (a bulk string at its limit fits).
    public var maxReplyBytes = 80 * 1024 * 1024
    public init() {}
}

/// Parses RESP2 and RESP3 values from the front of a buffer.
public enum RESPParser {
    /// The next complete value, consuming it; nil (and nothing consumed) if more bytes
    /// are needed. Attributes (`|`) are read and dropped: they annotate the value after them.
    public static func parse(_ buffer: inout ByteBuffer, limits: RESPLimits = RESPLimits()) throws -> RESPValue? {
        var copy = buffer
        guard let value = try value(&copy, limits, depth: 0) else { return nil }
        buffer = copy
        return value
    }

    private static func value(_ b: inout ByteBuffer, _ limits: RESPLimits, depth: Int) throws -> RESPValue? {
        guard depth <= limits.maxDepth else { throw RedisError(.protocolError, "nesting deeper than \(limits.maxDepth)") }
        guard let type = b.readInteger(as: UInt8.self) else { return nil }
        guard let line = try line(&b, limits) else { return nil }
        switch type {
        case UInt8(ascii: "+"): return .simpleString(line)
        case UInt8(ascii: "-"): return .error(line)
        case UInt8(ascii: ":"): return .integer(try integer(line))
        case UInt8(ascii: "("): return .bigNumber(line)
        case UInt8(ascii: "_"): return .null
        case UInt8(ascii: "#"):
            switch line {
            case "t": return .boolean(true)
            case "f": return .boolean(false)
            default: throw RedisError(.protocolError, "bad boolean \(line)")
            }
        case UInt8(ascii: ","):
            switch line {
            case "inf": return .double(.infinity)
            case "-inf": return .double(-.infinity)
            case "nan": return .double(.nan)
            default:
                guard let d = Double(line) else { throw RedisError(.protocolError, "bad double \(line)") }
                return .double(d)
            }
        case UInt8(ascii: "$"), UInt8(ascii: "="), UInt8(ascii: "!"):
            let length = try integer(line)
            if length == -1, type == UInt8(ascii: "$") { return .null }
            guard length >= 0, length <= limits.maxBulkBytes else {
                throw RedisError(.protocolError, "bulk length \(length) out of bounds")
            }
            guard b.readableBytes >= Int(length) + 2, let bytes = b.readSlice(length: Int(length)) else { return nil }
            guard b.readInteger(as: UInt16.self) == 0x0d0a else { throw RedisError(.protocolError, "bulk not ended by CRLF") }
            if type == UInt8(ascii: "!") { return .error(String(buffer: bytes)) }
            if type == UInt8(ascii: "=") {
                let text = String(buffer: bytes)
                guard text.utf8.count >= 4, text.utf8[text.utf8.index(text.utf8.startIndex, offsetBy: 3)] == UInt8(ascii: ":") else {
                    throw RedisError(.protocolError, "verbatim string without a format")
                }
                return .verbatim(format: String(text.prefix(3)), text: String(text.dropFirst(4)))
            }
            return .bulkString(bytes)
        case UInt8(ascii: "*"), UInt8(ascii: "~"), UInt8(ascii: ">"), UInt8(ascii: "%"), UInt8(ascii: "|"):
            let count = try integer(line)
            if count == -1, type == UInt8(ascii: "*") { return .null }
            let isMap = type == UInt8(ascii: "%") || type == UInt8(ascii: "|")
            // Divided, not multiplied: a map's count times two can overflow (and trap).
            guard count >= 0, count <= limits.maxElements / (isMap ? 2 : 1) else {
                throw RedisError(.protocolError, "aggregate of \(count) elements out of bounds")
            }
            var items: [RESPValue] = []
            items.reserveCapacity(min(Int(count) * (isMap ? 2 : 1), 1024))
            for _ in 0..<(Int(count) * (isMap ? 2 : 1)) {
                guard let item = try value(&b, limits, depth: depth + 1) else { return nil }
                items.append(item)
            }
            switch type {
            case UInt8(ascii: "~"): return .set(items)
            case UInt8(ascii: ">"): return .push(items)
            case UInt8(ascii: "%"):
                return .map(stride(from: 0, to: items.count, by: 2).map { RESPValue.Pair(items[$0], items[$0 + 1]) })
            case UInt8(ascii: "|"):
                // The annotated value counts one level deeper: a run of attributes is
                // nesting too, and would otherwise recurse without bound.
                return try value(&b, limits, depth: depth + 1)
            default: return .array(items)
            }
        default:
            throw RedisError(.protocolError, "unknown type byte \(type)")
        }
    }

    /// The text up to the next CRLF, consumed with it; nil if the CRLF has not arrived.
    private static func line(_ b: inout ByteBuffer, _ limits: RESPLimits) throws -> String? {
        let view = b.readableBytesView
        guard let cr = view.firstIndex(of: UInt8(ascii: "\r")) else {
            if view.count > limits.maxLineBytes { throw RedisError(.protocolError, "line longer than \(limits.maxLineBytes)") }
            return nil
        }
        let length = cr - view.startIndex
        guard length <= limits.maxLineBytes else { throw RedisError(.protocolError, "line longer than \(limits.maxLineBytes)") }
        guard view.count > length + 1 else { return nil }
        guard view[cr + 1] == UInt8(ascii: "\n") else { throw RedisError(.protocolError, "CR without LF") }
        let text = b.readString(length: length)!
        b.moveReaderIndex(forwardBy: 2)
        return text
    }

    private static func integer(_ s: String) throws -> Int64 {
        guard let i = Int64(s) else { throw RedisError(.protocolError, "bad integer \(s)") }
        return i
    }
}

/// Frames the byte stream from a server into values.
struct RESPValueDecoder: ByteToMessageDecoder {
    typealias InboundOut = RESPValue
    let limits: RESPLimits

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let value = try RESPParser.parse(&buffer, limits: limits) else {
            guard buffer.readableBytes <= limits.maxReplyBytes else {
                throw RedisError(.protocolError, "reply larger than \(limits.maxReplyBytes) bytes")
            }
            return .needMoreData
        }
        context.fireChannelRead(wrapInboundOut(value))
        return .continue
    }

    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        try decode(context: context, buffer: &buffer)
    }
}
