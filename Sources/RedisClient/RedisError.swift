/// A failed Redis call. `server` carries the server's own error line (e.g. `WRONGTYPE …`):
/// the connection is fine and the command was wrong; every other code means the
/// connection can no longer be trusted.
public struct RedisError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: Sendable, Equatable {
        case server
        case timeout
        case connectionClosed
        case protocolError
        case authentication
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "redis \(code): \(message)" }

    /// An error reply: `.authentication` for NOAUTH / WRONGPASS / NOPERM, else `.server`.
    static func reply(_ message: String) -> RedisError {
        let auth = message.hasPrefix("WRONGPASS") || message.hasPrefix("NOAUTH") || message.hasPrefix("NOPERM")
        return RedisError(auth ? .authentication : .server, message)
    }

    static let timeout = RedisError(.timeout, "no reply in time")
    static let closed = RedisError(.connectionClosed, "connection closed")
}
