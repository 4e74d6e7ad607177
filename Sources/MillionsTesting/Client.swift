import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import NIOCore

/// Test-side helpers for talking to the app like a browser or API client would.
extension TestClientProtocol {
    /// Sends a request; `json` and `form` set the body and its content type.
    @discardableResult
    public func send(
        _ method: HTTPRequest.Method, _ uri: String, json: String? = nil, form: [String: String]? = nil,
        cookies: [String: String] = [:], headers: HTTPFields = [:]
    ) async throws -> TestResponse {
        var headers = headers
        var body: ByteBuffer? = nil
        if let json {
            if headers[.contentType] == nil { headers[.contentType] = "application/json" }
            body = ByteBuffer(string: json)
        }
        if let form {
            headers[.contentType] = "application/x-www-form-urlencoded"
            body = ByteBuffer(string: FormEncoding.encode(form))
        }
        if !cookies.isEmpty {
            headers[.cookie] = cookies.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: "; ")
        }
        return try await execute(uri: uri, method: method, headers: headers, body: body)
    }
}

extension TestResponse {
    public var text: String { String(buffer: body) }
    /// The body parsed as a JSON object.
    public var object: [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data(body.readableBytesView))) as? [String: Any] ?? [:]
    }
    /// `error.code` of a JSON error body.
    public var errorCode: String? { (object["error"] as? [String: Any])?["code"] as? String }
    /// Every Set-Cookie header, by cookie name, with its attributes.
    public var setCookies: [String: String] {
        var out: [String: String] = [:]
        for value in headers[values: .setCookie] {
            let name = String(value.prefix { $0 != "=" })
            out[name] = value
        }
        return out
    }
    /// The value of a cookie set by this response.
    public func cookie(_ name: String) -> String? {
        guard let header = setCookies[name] else { return nil }
        let afterName = header.dropFirst(name.count + 1)
        return String(afterName.prefix { $0 != ";" })
    }
}

public enum FormEncoding {
    public static func encode(_ form: [String: String]) -> String {
        var allowed = CharacterSet.alphanumerics
        allowed.insert(charactersIn: "-._~")
        return form.sorted { $0.key < $1.key }.map {
            "\($0.key.addingPercentEncoding(withAllowedCharacters: allowed)!)=\($0.value.addingPercentEncoding(withAllowedCharacters: allowed)!)"
        }.joined(separator: "&")
    }
}
