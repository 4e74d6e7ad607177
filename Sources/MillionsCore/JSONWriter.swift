/// Writes JSON with keys in the order given. Foundation's encoder on Linux does not keep
/// declaration order, and the chapter's user object has a reading order worth keeping;
/// writing the bytes directly is also the cheapest thing on the hottest path.
public struct JSONWriter: Sendable {
    public private(set) var bytes: [UInt8] = []
    private var needsComma: [Bool] = [false]

    public init(capacity: Int = 256) { bytes.reserveCapacity(capacity) }

    public mutating func beginObject() { value(); bytes.append(UInt8(ascii: "{")); needsComma.append(false) }
    public mutating func endObject() { bytes.append(UInt8(ascii: "}")); needsComma.removeLast() }
    public mutating func beginArray() { value(); bytes.append(UInt8(ascii: "[")); needsComma.append(false) }
    public mutating func endArray() { bytes.append(UInt8(ascii: "]")); needsComma.removeLast() }

    /// Writes `"name":`; the next call writes its value.
    public mutating func key(_ name: String) {
        value()
        string(name, asValue: false)
        bytes.append(UInt8(ascii: ":"))
        needsComma[needsComma.count - 1] = false
    }

    public mutating func string(_ s: String) { value(); string(s, asValue: true) }
    public mutating func int(_ n: Int64) { value(); bytes.append(contentsOf: String(n).utf8) }
    public mutating func bool(_ b: Bool) { value(); bytes.append(contentsOf: (b ? "true" : "false").utf8) }
    public mutating func null() { value(); bytes.append(contentsOf: "null".utf8) }

    public mutating func field(_ name: String, _ s: String) { key(name); string(s) }
    public mutating func field(_ name: String, _ n: Int64) { key(name); int(n) }

    private mutating func value() {
        if needsComma[needsComma.count - 1] { bytes.append(UInt8(ascii: ",")) }
        needsComma[needsComma.count - 1] = true
    }

    private mutating func string(_ s: String, asValue: Bool) {
        bytes.append(UInt8(ascii: "\""))
        for b in s.utf8 {
            switch b {
            case UInt8(ascii: "\""): bytes.append(contentsOf: [0x5c, 0x22])
            case UInt8(ascii: "\\"): bytes.append(contentsOf: [0x5c, 0x5c])
            case 0x0a: bytes.append(contentsOf: [0x5c, UInt8(ascii: "n")])
            case 0x0d: bytes.append(contentsOf: [0x5c, UInt8(ascii: "r")])
            case 0x09: bytes.append(contentsOf: [0x5c, UInt8(ascii: "t")])
            case 0..<0x20:
                let hex = Array("0123456789abcdef".utf8)
                bytes.append(contentsOf: [0x5c, UInt8(ascii: "u"), 0x30, 0x30, hex[Int(b >> 4)], hex[Int(b & 0xf)]])
            default: bytes.append(b)
            }
        }
        bytes.append(UInt8(ascii: "\""))
    }
}

extension User {
    /// The chapter's user object, in the chapter's key order.
    public var json: [UInt8] {
        var w = JSONWriter()
        w.beginObject()
        w.field("id", id.rawValue)
        w.field("firstName", firstName)
        w.field("lastName", lastName)
        w.key("address")
        w.beginObject()
        w.field("streetAddress", address.streetAddress)
        w.field("city", address.city)
        w.field("state", address.state)
        w.field("postalCode", address.postalCode)
        w.endObject()
        w.key("phoneNumbers")
        w.beginArray()
        for p in phoneNumbers { w.string(p) }
        w.endArray()
        if let photo {
            w.key("photo")
            photo.write(into: &w)
        }
        w.endObject()
        return w.bytes
    }
}
