import NIOCore

/// One memcached request in the meta text protocol (plus the few classic commands the
/// pool needs for health and stats). A value that knows its key, so routing can use it.
public enum MemcachedRequest: Sendable, Equatable {
    /// `mg <key> <flags>*`
    case get(key: String, flags: [String])
    /// `ms <key> <datalen> <flags>*` followed by the data block.
    case set(key: String, value: [UInt8], flags: [String])
    /// `md <key> <flags>*`
    case delete(key: String, flags: [String])
    /// `mn`: answers `MN`; used as a cheap liveness probe.
    case noop
    /// `stats`: answers `STAT name value` lines then `END`.
    case stats
    /// `flush_all`: drops every item (used when a node rejoins after an outage).
    case flushAll
    /// ASCII authentication (memcached's `-Y`): the first request of a connection,
    /// `set <any> 0 0 <n>` with "user password" as its data; answers `STORED`.
    case authenticate(user: String, password: String)

    public var key: String? {
        switch self {
        case .get(let k, _), .set(let k, _, _), .delete(let k, _): k
        case .noop, .stats, .flushAll, .authenticate: nil
        }
    }

    /// Writes the request's wire bytes.
    public func encode(into buffer: inout ByteBuffer) {
        func line(_ verb: String, _ parts: [String]) {
            buffer.writeString(verb)
            for p in parts {
                buffer.writeInteger(UInt8(ascii: " "))
                buffer.writeString(p)
            }
            buffer.writeString("\r\n")
        }
        switch self {
        case .get(let key, let flags): line("mg", [key] + flags)
        case .set(let key, let value, let flags):
            line("ms", [key, String(value.count)] + flags)
            buffer.writeBytes(value)
            buffer.writeString("\r\n")
        case .delete(let key, let flags): line("md", [key] + flags)
        case .noop: buffer.writeString("mn\r\n")
        case .stats: buffer.writeString("stats\r\n")
        case .flushAll: buffer.writeString("flush_all\r\n")
        case .authenticate(let user, let password):
            let data = user + " " + password
            buffer.writeString("set auth 0 0 \(data.utf8.count)\r\n\(data)\r\n")
        }
    }

    /// Memcached keys: 1–250 bytes, no spaces or control characters.
    public static func isValidKey(_ key: String) -> Bool {
        let u = key.utf8
        return !u.isEmpty && u.count <= 250 && u.allSatisfy { $0 > 0x20 && $0 != 0x7f }
    }
}

/// One response.
public struct MemcachedResponse: Sendable, Equatable {
    public enum Status: Sendable, Equatable {
        /// `VA`: a value follows.
        case value
        /// `HD`: success, no value.
        case stored
        /// `EN`: miss.
        case miss
        /// `NS`: not stored.
        case notStored
        /// `EX`: CAS mismatch.
        case exists
        /// `NF`: not found.
        case notFound
        /// `MN`: answer to `mn`.
        case noop
        /// `OK` (flush_all), `END` (stats) and other classic acknowledgements.
        case ok
        /// `ERROR`, `CLIENT_ERROR …`, `SERVER_ERROR …`.
        case error(String)
    }

    public var status: Status
    /// Return flags by their letter, with their token ("" for bare flags like `W`).
    public var flags: [Character: String]
    public var value: [UInt8]?
    /// For `stats`.
    public var stats: [String: String]

    public init(
        status: Status, flags: [Character: String] = [:], value: [UInt8]? = nil, stats: [String: String] = [:]
    ) {
        self.status = status
        self.flags = flags
        self.value = value
        self.stats = stats
    }

    public var cas: UInt64? { flags["c"].flatMap { UInt64($0) } }
    public var won: Bool { flags["W"] != nil }
    public var stale: Bool { flags["X"] != nil }
    public var alreadyWon: Bool { flags["Z"] != nil }
}

/// Writes requests.
public struct MemcachedRequestEncoder: MessageToByteEncoder {
    public typealias OutboundIn = MemcachedRequest
    public init() {}
    public func encode(data: MemcachedRequest, out: inout ByteBuffer) {
        data.encode(into: &out)
    }
}

/// Reads responses; waits for more bytes whenever a line or a data block is incomplete,
/// so a response split at any byte decodes the same.
public struct MemcachedResponseDecoder: ByteToMessageDecoder {
    public typealias InboundOut = MemcachedResponse
    /// Values larger than this are a protocol error (memcached's default item limit is 1 MiB).
    public static let maxValueBytes = 2 * 1024 * 1024
    /// STAT lines one `stats` answer may have.
    public static let maxStats = 4096
    private var stats: [String: String]? = nil

    public init() {}

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let response = try decodeOne(&buffer) else { return .needMoreData }
        context.fireChannelRead(NIOAny(response))
        return .continue
    }

    public mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws
        -> DecodingState
    {
        try decode(context: context, buffer: &buffer)
    }

    /// Decodes one response if the buffer holds a whole one; consumes nothing otherwise.
    public mutating func decodeOne(_ buffer: inout ByteBuffer) throws -> MemcachedResponse? {
        while true {
            let view = buffer.readableBytesView
            guard let cr = view.firstIndex(of: UInt8(ascii: "\r")) else {
                if view.count > 8192 { throw MemcachedError.protocolError("response line too long") }
                return nil
            }
            guard view.index(after: cr) < view.endIndex else { return nil }
            guard view[view.index(after: cr)] == UInt8(ascii: "\n") else {
                throw MemcachedError.protocolError("line not ended by CRLF")
            }
            let lineLength = cr - view.startIndex
            let line = String(decoding: view[view.startIndex..<cr], as: UTF8.self)
            let tokens = line.split(separator: " ", omittingEmptySubsequences: true)
            let head = tokens.first.map(String.init) ?? ""

            if head == "STAT" {
                buffer.moveReaderIndex(forwardBy: lineLength + 2)
                if tokens.count >= 3 {
                    stats = stats ?? [:]
                    stats![String(tokens[1])] = tokens[2...].joined(separator: " ")
                    // memcached sends under a hundred; a peer that never ends them is broken.
                    if stats!.count > Self.maxStats { throw MemcachedError.protocolError("more than \(Self.maxStats) STAT lines") }
                }
                continue
            }
            if head == "END" {
                buffer.moveReaderIndex(forwardBy: lineLength + 2)
                let collected = stats ?? [:]
                stats = nil
                return MemcachedResponse(status: .ok, stats: collected)
            }
            if head == "VA" {
                guard tokens.count >= 2, let size = Int(tokens[1]), size >= 0, size <= Self.maxValueBytes else {
                    throw MemcachedError.protocolError("bad VA line: \(line)")
                }
                let total = lineLength + 2 + size + 2
                guard view.count >= total else { return nil }
                buffer.moveReaderIndex(forwardBy: lineLength + 2)
                let value = buffer.readBytes(length: size)!
                guard buffer.readBytes(length: 2) == [13, 10] else {
                    throw MemcachedError.protocolError("data block not ended by CRLF")
                }
                return MemcachedResponse(status: .value, flags: Self.flags(tokens.dropFirst(2)), value: value)
            }
            buffer.moveReaderIndex(forwardBy: lineLength + 2)
            let flags = Self.flags(tokens.dropFirst())
            switch head {
            case "HD": return MemcachedResponse(status: .stored, flags: flags)
            case "EN": return MemcachedResponse(status: .miss)
            case "NS": return MemcachedResponse(status: .notStored, flags: flags)
            case "EX": return MemcachedResponse(status: .exists, flags: flags)
            case "NF": return MemcachedResponse(status: .notFound, flags: flags)
            case "MN": return MemcachedResponse(status: .noop)
            case "OK", "STORED": return MemcachedResponse(status: .ok)
            case "ERROR", "CLIENT_ERROR", "SERVER_ERROR": return MemcachedResponse(status: .error(line))
            default: throw MemcachedError.protocolError("unexpected response: \(line.prefix(100))")
            }
        }
    }

    static func flags(_ tokens: some Sequence<Substring>) -> [Character: String] {
        var out: [Character: String] = [:]
        for t in tokens {
            guard let letter = t.first else { continue }
            out[letter] = String(t.dropFirst())
        }
        return out
    }
}

/// What can go wrong talking to memcached.
public enum MemcachedError: Error, Sendable, Equatable {
    case timeout
    case connectionClosed
    case protocolError(String)
    case server(String)
    case invalidKey
    /// Every node is out of the ring.
    case noNodeAvailable
}
