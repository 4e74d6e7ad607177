import Logging

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Metadata keys used across tiers, so every log line names things the same way.
public enum LogKey {
    public static let requestID = "request_id"
    public static let method = "method"
    public static let path = "path"
    public static let route = "route"
    public static let status = "status"
    public static let durationMS = "duration_ms"
    public static let userID = "user_id"
    public static let error = "error"
    public static let client = "client"
}

/// The request a task is serving. Every line written while serving it names it, whichever
/// logger wrote it (a store's, the pool's, the queue's), without threading the request's
/// logger through every call.
public enum RequestScope {
    @TaskLocal public static var requestID: String?
}

/// Writes one JSON object per line to standard error:
/// `{"ts":"…","level":"info","logger":"…","msg":"…", <metadata>…}`.
public struct JSONLogHandler: LogHandler {
    public var logLevel: Logger.Level
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    private let label: String

    public init(label: String, level: Logger.Level = .info, metadataProvider: Logger.MetadataProvider? = nil) {
        self.label = label
        self.logLevel = level
        self.metadataProvider = metadataProvider
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        LogSink.standardError.append(format(level: event.level, message: event.message, metadata: event.metadata))
        if event.level >= .error { LogSink.standardError.flush() }
    }

    /// One line, as written.
    func format(level: Logger.Level, message: Logger.Message, metadata extra: Logger.Metadata?) -> [UInt8] {
        var merged = metadata
        if let provided = metadataProvider?.get() { merged.merge(provided) { _, new in new } }
        if let extra { merged.merge(extra) { _, new in new } }
        if merged[LogKey.requestID] == nil, let id = RequestScope.requestID { merged[LogKey.requestID] = .string(id) }

        // Bytes, not String appends: this runs for every request's access-log line.
        var line: [UInt8] = []
        line.reserveCapacity(320)
        line.append(contentsOf: #"{"ts":""#.utf8)
        Self.appendTimestamp(to: &line)
        line.append(contentsOf: #"","level":""#.utf8)
        line.append(contentsOf: Self.levelName(level).utf8)
        line.append(contentsOf: #"","logger":"#.utf8)
        JSON.appendString(label, to: &line)
        line.append(contentsOf: #","msg":"#.utf8)
        JSON.appendString(message.description, to: &line)
        for key in merged.keys.sorted() where !Self.reserved(key) {
            line.append(UInt8(ascii: ","))
            JSON.appendString(key, to: &line)
            line.append(UInt8(ascii: ":"))
            JSON.append(merged[key]!, to: &line)
        }
        line.append(contentsOf: "}\n".utf8)
        return line
    }

    /// The access-log line of one answered request, written as `log` would write
    /// `info("request", metadata: [client, duration_ms, method, path, request_id, route,
    /// status])` but without building a metadata dictionary, which cost as much as the rest
    /// of a cached read. False (nothing written) when this handler carries metadata of its
    /// own or the level is above info: then the caller logs the usual way.
    public func logRequest(
        method: String, path: String, route: String, status: Int, durationMS: Double, requestID: String, client: String
    ) -> Bool {
        guard logLevel <= .info,
            let line = requestLine(
                method: method, path: path, route: route, status: status, durationMS: durationMS, requestID: requestID,
                client: client)
        else { return false }
        LogSink.standardError.append(line)
        return true
    }

    func requestLine(
        method: String, path: String, route: String, status: Int, durationMS: Double, requestID: String, client: String
    ) -> [UInt8]? {
        guard metadata.isEmpty, metadataProvider == nil else { return nil }
        var line: [UInt8] = []
        line.reserveCapacity(320)
        line.append(contentsOf: #"{"ts":""#.utf8)
        Self.appendTimestamp(to: &line)
        line.append(contentsOf: #"","level":"info","logger":"#.utf8)
        JSON.appendString(label, to: &line)
        line.append(contentsOf: #","msg":"request","client":"#.utf8)
        JSON.appendString(client, to: &line)
        line.append(contentsOf: #","duration_ms":"#.utf8)
        line.append(contentsOf: durationMS.description.utf8)
        line.append(contentsOf: #","method":"#.utf8)
        JSON.appendString(method, to: &line)
        line.append(contentsOf: #","path":"#.utf8)
        JSON.appendString(path, to: &line)
        line.append(contentsOf: #","request_id":"#.utf8)
        JSON.appendString(requestID, to: &line)
        line.append(contentsOf: #","route":"#.utf8)
        JSON.appendString(route, to: &line)
        line.append(contentsOf: #","status":"#.utf8)
        line.append(contentsOf: status.description.utf8)
        line.append(contentsOf: "}\n".utf8)
        return line
    }

    private static func levelName(_ level: Logger.Level) -> String {
        switch level {
        case .trace: "trace"
        case .debug: "debug"
        case .info: "info"
        case .notice: "notice"
        case .warning: "warning"
        case .error: "error"
        case .critical: "critical"
        }
    }

    private static func reserved(_ key: String) -> Bool {
        switch key {
        case "ts", "level", "logger", "msg": true
        default: false
        }
    }

    @available(*, deprecated, message: "use log(event:)")
    public func log(
        level: Logger.Level, message: Logger.Message, metadata: Logger.Metadata?, source: String, file: String,
        function: String, line: UInt
    ) {
        log(
            event: LogEvent(
                level: level, message: message, metadata: metadata, source: source, file: file, function: function,
                line: line))
    }

    /// RFC 3339 UTC with milliseconds.
    static func timestamp() -> String {
        var out: [UInt8] = []
        appendTimestamp(to: &out)
        return String(decoding: out, as: UTF8.self)
    }

    static func appendTimestamp(to out: inout [UInt8]) {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        var t = ts.tv_sec
        var tmv = tm()
        gmtime_r(&t, &tmv)
        func digits(_ v: Int, _ width: Int) {
            var divisor = 1
            for _ in 1..<width { divisor *= 10 }
            var v = v
            while divisor > 0 {
                out.append(UInt8(ascii: "0") + UInt8(v / divisor % 10))
                v %= divisor
                divisor /= 10
            }
        }
        digits(Int(tmv.tm_year) + 1900, 4)
        out.append(UInt8(ascii: "-"))
        digits(Int(tmv.tm_mon) + 1, 2)
        out.append(UInt8(ascii: "-"))
        digits(Int(tmv.tm_mday), 2)
        out.append(UInt8(ascii: "T"))
        digits(Int(tmv.tm_hour), 2)
        out.append(UInt8(ascii: ":"))
        digits(Int(tmv.tm_min), 2)
        out.append(UInt8(ascii: ":"))
        digits(Int(tmv.tm_sec), 2)
        out.append(UInt8(ascii: "."))
        digits(Int(ts.tv_nsec / 1_000_000), 3)
        out.append(UInt8(ascii: "Z"))
    }
}

/// Minimal JSON text writer for log lines.
enum JSON {
    static func append(_ value: Logger.Metadata.Value, to out: inout [UInt8]) {
        switch value {
        case .string(let s): appendString(s, to: &out)
        case .stringConvertible(let c):
            // Numbers stay numbers so log queries can compare them. Concrete types first:
            // a cast to `any BinaryInteger` costs a metadata lookup on every call.
            if c is Int || c is Double || c is Bool || c is UInt || c is Int64 || c is UInt64 || c is Int32
                || c is UInt32 || c is UInt16 || c is any BinaryInteger
            {
                out.append(contentsOf: c.description.utf8)
            } else {
                appendString(c.description, to: &out)
            }
        case .array(let items):
            out.append(UInt8(ascii: "["))
            for (i, item) in items.enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                append(item, to: &out)
            }
            out.append(UInt8(ascii: "]"))
        case .dictionary(let dict):
            out.append(UInt8(ascii: "{"))
            for (i, key) in dict.keys.sorted().enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                appendString(key, to: &out)
                out.append(UInt8(ascii: ":"))
                append(dict[key]!, to: &out)
            }
            out.append(UInt8(ascii: "}"))
        }
    }

    /// A JSON string: quotes, backslashes and control characters escaped; other UTF-8
    /// bytes copied as they are.
    static func appendString(_ s: String, to out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        for byte in s.utf8 {
            switch byte {
            case UInt8(ascii: "\""): out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\"")])
            case UInt8(ascii: "\\"): out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\\")])
            case UInt8(ascii: "\n"): out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "n")])
            case UInt8(ascii: "\r"): out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "r")])
            case UInt8(ascii: "\t"): out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "t")])
            case 0..<0x20:
                out.append(contentsOf: "\\u00".utf8)
                let low = byte & 0xF
                out.append(UInt8(ascii: "0") + (byte >> 4))
                out.append(low < 10 ? UInt8(ascii: "0") + low : UInt8(ascii: "a") + low - 10)
            default: out.append(byte)
            }
        }
        out.append(UInt8(ascii: "\""))
    }
}
