/// An error with a code, a message a client may read, and the underlying cause for the logs.
///
/// Only the web tier maps codes to HTTP statuses.
public struct MillionsError: Error, Sendable, CustomStringConvertible {
    public enum Code: String, Sendable {
        case badRequest = "bad_request"
        case malformedJSON = "malformed_json"
        case unknownField = "unknown_field"
        case unsupportedMediaType = "unsupported_media_type"
        case invalidID = "invalid_id"
        case validation = "validation_failed"
        case unauthenticated
        case forbidden
        case notFound = "not_found"
        case methodNotAllowed = "method_not_allowed"
        case conflict
        case payloadTooLarge = "payload_too_large"
        case tooManyRequests = "too_many_requests"
        case csrf = "csrf_failed"
        case unavailable
        case internalError = "internal"
    }

    public var code: Code
    public var message: String
    /// Field-level problems, for validation errors.
    public var fields: [FieldError]
    /// Seconds a client should wait, for rate limits and unavailability.
    public var retryAfter: Int?
    public var underlying: (any Error & Sendable)?

    public init(
        _ code: Code, _ message: String, fields: [FieldError] = [], retryAfter: Int? = nil,
        underlying: (any Error & Sendable)? = nil
    ) {
        self.code = code
        self.message = message
        self.fields = fields
        self.retryAfter = retryAfter
        self.underlying = underlying
    }

    public var description: String {
        if let underlying { return "\(code.rawValue): \(message) (\(underlying))" }
        return "\(code.rawValue): \(message)"
    }
}

/// One invalid field: which, and why.
public struct FieldError: Sendable, Equatable, Codable {
    public var field: String
    public var message: String
    public init(_ field: String, _ message: String) {
        self.field = field
        self.message = message
    }
}
