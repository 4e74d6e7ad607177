import Foundation
import Hummingbird
import MillionsCore
import NIOCore

/// Reading untrusted JSON bodies: bounded size, JSON content type, no unknown fields, and
/// type errors reported as 400 with the offending field.
struct JSONBody {
    let maxBytes: Int

    /// The request body, refusing anything over `maxBytes` (declared or actual) with 413.
    func collect(_ request: Request) async throws -> ByteBuffer {
        if let declared = request.headers[.contentLength].flatMap(Int.init), declared > maxBytes {
            throw MillionsError(.payloadTooLarge, "request body is larger than \(maxBytes) bytes")
        }
        do {
            return try await request.body.collect(upTo: maxBytes)
        } catch let e as HTTPError where e.status == .contentTooLarge {
            throw MillionsError(.payloadTooLarge, "request body is larger than \(maxBytes) bytes")
        }
    }

    /// Decodes `T` from a JSON body whose keys are all in `T.allowedKeys`.
    func decode<T: StrictJSON>(_: T.Type, from request: Request) async throws -> T {
        let contentType = request.headers[.contentType]?.lowercased() ?? ""
        guard contentType.hasPrefix("application/json") else {
            throw MillionsError(.unsupportedMediaType, "send the body as application/json")
        }
        let buffer = try await collect(request)
        let data = Data(buffer.readableBytesView)
        let object: Any
        do {
            object = try JSONSerialization.jsonObject(with: data, options: [])
        } catch {
            throw MillionsError(.malformedJSON, "the body is not valid JSON")
        }
        guard let dict = object as? [String: Any] else {
            throw MillionsError(.malformedJSON, "the body must be a JSON object")
        }
        try Self.checkKeys(dict, allowed: T.allowedKeys, path: "")
        do {
            return try JSONDecoder().decode(T.self, from: data)
        } catch let error as DecodingError {
            throw MillionsError(.malformedJSON, Self.describe(error))
        }
    }

    static func checkKeys(_ dict: [String: Any], allowed: [String: Set<String>], path: String) throws {
        let here = allowed[path] ?? []
        for (key, value) in dict {
            let full = path.isEmpty ? key : path + "." + key
            guard here.contains(key) else {
                throw MillionsError(.unknownField, "unknown field \"\(full)\"")
            }
            // The document allows no null: leave a field out instead.
            if value is NSNull { throw MillionsError(.malformedJSON, "\"\(full)\" must not be null") }
            if let nested = value as? [String: Any], allowed[full] != nil {
                try checkKeys(nested, allowed: allowed, path: full)
            }
        }
    }

    static func describe(_ error: DecodingError) -> String {
        func path(_ c: DecodingError.Context) -> String {
            let p = c.codingPath.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".")
                .replacingOccurrences(of: ".[", with: "[")
            return p.isEmpty ? "body" : p
        }
        switch error {
        case .typeMismatch(let type, let c): return "\(path(c)): expected \(Self.name(of: type))"
        case .valueNotFound(let type, let c): return "\(path(c)): expected \(Self.name(of: type)), found null"
        case .keyNotFound(let key, _): return "\(key.stringValue) is required"
        case .dataCorrupted(let c): return "\(path(c)): invalid value"
        @unknown default: return "invalid body"
        }
    }

    static func name(of type: Any.Type) -> String {
        switch type {
        case is String.Type: "a string"
        case is [String].Type: "an array of strings"
        case is Int.Type, is Int64.Type: "an integer"
        case is Bool.Type: "a boolean"
        default: "an object"
        }
    }
}

/// A request body type that lists the keys it accepts, per nesting level ("" is the top).
protocol StrictJSON: Decodable {
    static var allowedKeys: [String: Set<String>] { get }
}
