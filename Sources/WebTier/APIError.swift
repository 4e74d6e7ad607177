import DataTier
import Foundation
import Hummingbird
import MillionsCore
import RedisClient

extension MillionsError.Code {
    var status: HTTPResponse.Status {
        switch self {
        case .badRequest, .malformedJSON, .unknownField, .invalidID: .badRequest
        case .unsupportedMediaType: .unsupportedMediaType
        case .validation: .unprocessableContent
        case .unauthenticated: .unauthorized
        case .forbidden, .csrf: .forbidden
        case .notFound: .notFound
        case .methodNotAllowed: .methodNotAllowed
        case .conflict: .conflict
        case .payloadTooLarge: .contentTooLarge
        case .tooManyRequests: .tooManyRequests
        case .unavailable: .serviceUnavailable
        case .internalError: .internalServerError
        }
    }
}

extension MillionsError {
    /// Maps anything a handler throws to the error the client sees. Unknown errors become
    /// an opaque `internal` error; their detail stays in the logs.
    static func from(_ error: any Error) -> MillionsError {
        switch error {
        case let e as MillionsError:
            return e
        case let e as HTTPError:
            switch e.status {
            case .notFound: return MillionsError(.notFound, "no such resource")
            case .methodNotAllowed: return MillionsError(.methodNotAllowed, "method not allowed on this resource")
            case .contentTooLarge: return MillionsError(.payloadTooLarge, "request body is too large")
            case .unsupportedMediaType: return MillionsError(.unsupportedMediaType, e.body ?? "unsupported media type")
            case .badRequest: return MillionsError(.badRequest, e.body ?? "bad request")
            case .unauthorized: return MillionsError(.unauthenticated, "log in first")
            case .forbidden: return MillionsError(.forbidden, "forbidden")
            default:
                if (400..<500).contains(e.status.code) {
                    return MillionsError(.badRequest, e.body ?? e.status.reasonPhrase)
                }
                return MillionsError(.internalError, "internal error", underlying: e)
            }
        case let e as RedisError where e.code != .server:
            // Redis down, or a failover under way (Sentinel names the next master in a
            // second or two): the client may retry; the detail stays in the logs.
            var unavailable = MillionsError(.unavailable, "the session and queue store is unavailable", retryAfter: 2)
            unavailable.underlying = e
            return unavailable
        default:
            return MillionsError(.internalError, "internal error", underlying: SendableDescription(error))
        }
    }
}

/// An error's description, for errors that are not `Sendable`.
struct SendableDescription: Error, Sendable, CustomStringConvertible {
    let description: String
    init(_ error: any Error) { description = postgresErrorDetail(error) ?? String(describing: error) }
}

extension Response {
    /// The one JSON shape of every error: `{"error":{"code":"…","message":"…"}}`, with
    /// `fields` for validation errors and `requestId` so a user's report finds the log line.
    static func error(_ e: MillionsError, requestID: String?) -> Response {
        var w = JSONWriter()
        w.beginObject()
        w.key("error")
        w.beginObject()
        w.field("code", e.code.rawValue)
        w.field("message", e.message)
        if !e.fields.isEmpty {
            w.key("fields")
            w.beginArray()
            for f in e.fields {
                w.beginObject()
                w.field("field", f.field)
                w.field("message", f.message)
                w.endObject()
            }
            w.endArray()
        }
        if let requestID { w.field("requestId", requestID) }
        w.endObject()
        w.endObject()
        var headers: HTTPFields = [.contentType: "application/json; charset=utf-8", .cacheControl: "no-store"]
        if let retry = e.retryAfter { headers[.retryAfter] = String(retry) }
        if e.code == .unauthenticated { headers[.wwwAuthenticate] = "Cookie realm=\"millions\"" }
        return Response(status: e.code.status, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: w.bytes)))
    }

    /// A user as the chapter's JSON object.
    static func user(_ user: User, status: HTTPResponse.Status = .ok, headers extra: HTTPFields = [:]) -> Response {
        var headers = extra
        headers[.contentType] = "application/json; charset=utf-8"
        if headers[.cacheControl] == nil { headers[.cacheControl] = "no-cache" }
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: user.json)))
    }

    /// A JSON response with no caching by shared caches.
    static func json(
        _ value: some Encodable, status: HTTPResponse.Status = .ok, headers extra: HTTPFields = [:]
    ) throws -> Response {
        let data = try JSONEncoder().encode(value)
        var headers = extra
        headers[.contentType] = "application/json; charset=utf-8"
        if headers[.cacheControl] == nil { headers[.cacheControl] = "no-cache" }
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }
}
