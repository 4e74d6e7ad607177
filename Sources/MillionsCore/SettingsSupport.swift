/// A configuration value that cannot work.
public struct SettingsError: Error, CustomStringConvertible {
    public let description: String
    public init(_ message: String) { description = message }
}

/// Throws `SettingsError(message)` unless `ok`. Each tier checks its own keys with it.
public func checkSetting(_ ok: Bool, _ message: @autoclosure () -> String) throws {
    if !ok { throw SettingsError(message()) }
}

/// The case of `E` named by `text`, or an error that names the key and every choice.
public func settingChoice<E: RawRepresentable & CaseIterable>(_ text: String, key: String) throws -> E
where E.RawValue == String {
    guard let value = E(rawValue: text) else {
        throw SettingsError("\(key) must be one of \(E.allCases.map(\.rawValue).joined(separator: ", ")), not \(text)")
    }
    return value
}

extension String {
    /// `"a, b,,c"` → `["a", "b", "c"]`: how list settings are written.
    public var commaSeparated: [String] { split(separator: ",").map { String($0).trimmed }.filter { !$0.isEmpty } }
}

extension Duration {
    /// Whole and fractional seconds, for the places that count in seconds (timestamps).
    public var inSeconds: Double {
        Double(components.seconds) + Double(components.attoseconds) / 1e18
    }

    /// Whole milliseconds, rounded down.
    public var inMilliseconds: Int64 {
        components.seconds * 1000 + components.attoseconds / 1_000_000_000_000_000
    }
}
