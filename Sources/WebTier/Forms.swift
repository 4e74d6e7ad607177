import MillionsCore
import NIOCore

/// An `application/x-www-form-urlencoded` body as a dictionary (last value wins).
struct FormFields {
    private(set) var values: [String: String] = [:]

    init(_ buffer: ByteBuffer) throws {
        let text = String(buffer: buffer)
        for pair in text.split(separator: "&", omittingEmptySubsequences: true) {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard let key = Self.decode(parts[0]) else {
                throw MillionsError(.badRequest, "malformed form body")
            }
            guard let value = parts.count > 1 ? Self.decode(parts[1]) : "" else {
                throw MillionsError(.badRequest, "malformed form body")
            }
            values[key] = value
        }
    }

    subscript(_ key: String) -> String? { values[key] }

    /// Percent-decoding with `+` as space; nil for bad escapes or invalid UTF-8.
    static func decode(_ s: Substring) -> String? {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(s.utf8.count)
        var it = s.utf8.makeIterator()
        while let b = it.next() {
            switch b {
            case UInt8(ascii: "+"): bytes.append(0x20)
            case UInt8(ascii: "%"):
                guard let h = it.next(), let l = it.next(), let hi = hex(h), let lo = hex(l) else { return nil }
                bytes.append(hi << 4 | lo)
            default: bytes.append(b)
            }
        }
        return String(validating: bytes, as: UTF8.self)
    }

    static func hex(_ c: UInt8) -> UInt8? {
        switch c {
        case 0x30...0x39: c - 0x30
        case 0x41...0x46: c - 0x41 + 10
        case 0x61...0x66: c - 0x61 + 10
        default: nil
        }
    }
}
