#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import MillionsCore

/// An IPv4 or IPv6 network (`127.0.0.0/8`, `::1`, `198.18.0.0/15`) and whether an address
/// is in it.
struct AddressRange: Sendable, Equatable {
    let bytes: [UInt8]
    let prefix: Int

    /// Parses `address` or `address/prefix`; nil for anything else.
    init?(_ text: some StringProtocol) {
        let parts = text.split(separator: "/", maxSplits: 1)
        guard let first = parts.first, let bytes = Self.parse(String(first)) else { return nil }
        let bits = bytes.count * 8
        if parts.count == 2 {
            guard let p = Int(parts[1]), (0...bits).contains(p) else { return nil }
            prefix = p
        } else {
            prefix = bits
        }
        self.bytes = bytes
    }

    func contains(_ address: String) -> Bool {
        guard let other = Self.parse(address), other.count == bytes.count else { return false }
        var left = prefix
        for (a, b) in zip(bytes, other) where left > 0 {
            let mask: UInt8 = left >= 8 ? 0xff : ~(0xff >> UInt8(left))
            if a & mask != b & mask { return false }
            left -= 8
        }
        return true
    }

    /// The address's bytes: 4 for IPv4, 16 for IPv6.
    static func parse(_ text: String) -> [UInt8]? {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 { return withUnsafeBytes(of: &v4) { Array($0) } }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 { return withUnsafeBytes(of: &v6) { Array($0) } }
        return nil
    }

    /// Parses a comma-separated list; throws naming the first entry that is not a range.
    static func list(_ text: String) throws -> [AddressRange] {
        try text.split(separator: ",").map { String($0).trimmed }.filter { !$0.isEmpty }.map {
            guard let range = AddressRange($0) else { throw SettingsError("not an address or CIDR range: \($0)") }
            return range
        }
    }
}
