import MillionsCore

/// A `multipart/form-data` body (RFC 7578), as the page's upload form sends it. The
/// body is already bounded by the caller; parts are capped too.
struct MultipartForm {
    struct Part {
        var name: String
        var filename: String?
        var contentType: String?
        var body: ArraySlice<UInt8>
    }

    private(set) var parts: [Part] = []
    static let maxParts = 16

    subscript(_ name: String) -> Part? { parts.first { $0.name == name } }

    func text(_ name: String) -> String? { self[name].map { String(decoding: $0.body, as: UTF8.self) } }

    /// The boundary from a `multipart/form-data; boundary=…` content type.
    static func boundary(contentType: String) -> String? {
        for param in contentType.split(separator: ";").dropFirst() {
            let kv = param.split(separator: "=", maxSplits: 1).map { String($0).trimmed }
            guard kv.count == 2, kv[0].lowercased() == "boundary" else { continue }
            var value = kv[1]
            if value.hasPrefix("\""), value.hasSuffix("\""), value.count >= 2 { value = String(value.dropFirst().dropLast()) }
            return (1...70).contains(value.utf8.count) ? value : nil
        }
        return nil
    }

    init(_ body: [UInt8], boundary: String) throws {
        let bad = MillionsError(.badRequest, "malformed multipart body")
        let delimiter = Array("--\(boundary)".utf8)
        guard var start = Self.find(delimiter, in: body, from: 0) else { throw bad }
        while true {
            start += delimiter.count
            // "--" after a delimiter ends the body.
            if body.count >= start + 2, body[start] == 0x2D, body[start + 1] == 0x2D { break }
            guard body.count >= start + 2, body[start] == 0x0D, body[start + 1] == 0x0A else { throw bad }
            start += 2
            guard let headerEnd = Self.find([0x0D, 0x0A, 0x0D, 0x0A], in: body, from: start) else { throw bad }
            guard let next = Self.find([0x0D, 0x0A] + delimiter, in: body, from: headerEnd + 4) else { throw bad }
            guard parts.count < Self.maxParts else { throw MillionsError(.badRequest, "too many parts in the form") }
            var part = Part(name: "", body: body[(headerEnd + 4)..<next])
            let headers = String(decoding: body[start..<headerEnd], as: UTF8.self)
            for line in headers.split(separator: "\r\n") {
                let kv = line.split(separator: ":", maxSplits: 1).map { String($0).trimmed }
                guard kv.count == 2 else { throw bad }
                switch kv[0].lowercased() {
                case "content-disposition":
                    part.name = Self.parameter("name", in: kv[1]) ?? ""
                    part.filename = Self.parameter("filename", in: kv[1])
                case "content-type":
                    part.contentType = kv[1]
                default:
                    break
                }
            }
            guard !part.name.isEmpty else { throw bad }
            parts.append(part)
            start = next + 2
        }
    }

    static func parameter(_ key: String, in header: String) -> String? {
        for param in header.split(separator: ";").dropFirst() {
            let kv = param.split(separator: "=", maxSplits: 1).map { String($0).trimmed }
            guard kv.count == 2, kv[0].lowercased() == key else { continue }
            var value = kv[1]
            if value.hasPrefix("\""), value.hasSuffix("\""), value.count >= 2 { value = String(value.dropFirst().dropLast()) }
            return value
        }
        return nil
    }

    static func find(_ needle: [UInt8], in haystack: [UInt8], from: Int) -> Int? {
        guard let first = needle.first, haystack.count >= needle.count else { return nil }
        var i = from
        let last = haystack.count - needle.count
        while i <= last {
            if haystack[i] == first {
                var j = 1
                while j < needle.count, haystack[i + j] == needle[j] { j += 1 }
                if j == needle.count { return i }
            }
            i += 1
        }
        return nil
    }
}
