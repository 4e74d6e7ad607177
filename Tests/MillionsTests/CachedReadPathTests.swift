import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import MillionsCore
import MillionsTesting
import Synchronization
import Testing
@testable import WebTier

/// `GET /users/{id}` answered from the in-process cache before the router: the same answer
/// as the route's, in order on a connection, and only when it may.
@Suite struct CachedReadPathTests {
    /// A live server (the early path exists only on real connections) whose log lines are kept.
    static func live(
        _ overrides: [String: String] = [:], _ body: @escaping @Sendable (any TestClientProtocol, Int, KeptLines) async throws -> Void
    ) async throws {
        try await TestApp.withTemporaryDirectory { dir in
            let settings = try TestApp.settings(dataDirectory: dir, ["log.level": "info"].merging(overrides) { _, new in new })
            let lines = KeptLines()
            var logger = Logger(label: "test") { _ in KeepingHandler(lines: lines) }
            logger.logLevel = .info
            let components = try await Components.build(settings: settings, logger: logger)
            try await buildApplication(components).test(.live) { client in
                try await body(client, try #require(client.port), lines)
            }
        }
    }

    static func metric(_ port: Int, _ name: String) async throws -> Double {
        let text = try await RawConnection.exchange(port: port, send: "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        let line = text.split(separator: "\n").first { $0.hasPrefix(name + " ") || $0.hasPrefix(name + "{") }
        return line.flatMap { Double($0.split(separator: " ").last ?? "") } ?? 0
    }

    /// The head's fields by lower-cased name, and the body.
    static func parse(_ answer: String) -> (status: String, headers: [String: String], body: String) {
        let parts = answer.components(separatedBy: "\r\n\r\n")
        let lines = parts[0].components(separatedBy: "\r\n")
        var headers: [String: String] = [:]
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        return (lines[0], headers, parts.dropFirst().joined(separator: "\r\n\r\n"))
    }

    @Test func aCachedProfileIsAnsweredEarlyWithTheRoutesAnswer() async throws {
        try await Self.live { client, port, lines in
            let (id, _) = try await signUpJohn(client)
            let c = try await RawConnection.open(port: port)
            // The first read misses and takes the route (which fills the cache); the second hits.
            let viaRoute = Self.parse(try await c.request("GET /users/\(id) HTTP/1.1\r\nHost: x\r\nX-Request-ID: probe-1\r\n\r\n"))
            #expect(try await Self.metric(port, "http_server_cached_reads_early_total") == 0)
            let early = Self.parse(try await c.request("GET /users/\(id)?fields=all HTTP/1.1\r\nHost: x\r\nX-Request-ID: probe-2\r\n\r\n"))
            #expect(try await Self.metric(port, "http_server_cached_reads_early_total") == 1)
            try await c.close()

            #expect(early.status == "HTTP/1.1 200 OK" && viaRoute.status == early.status)
            #expect(early.body == viaRoute.body && early.body.contains(#""firstName":"John""#))
            #expect(Set(early.headers.keys) == Set(viaRoute.headers.keys), "\(early.headers) vs \(viaRoute.headers)")
            for name in ["content-type", "cache-control", "content-length", "x-content-type-options", "server"] {
                #expect(early.headers[name] == viaRoute.headers[name], "\(name)")
            }
            #expect(viaRoute.headers["x-request-id"] == "probe-1" && early.headers["x-request-id"] == "probe-2")
            // The same access-log line, request id and client included; both counted.
            let logged = try await lines.waitFor { $0.contains(#""request_id":"probe-2""#) }
            for field in [#""msg":"request""#, #""route":"/users/{id}""#, #""path":"/users/\#(id)""#, #""status":200"#, #""client":"127.0.0.1""#] {
                #expect(logged.contains(field), "\(field) in \(logged)")
            }
            #expect(try await Self.metric(port, #"http_server_requests_total{method="GET",route="/users/{id}",status="200"}"#) == 2)
            #expect(try await Self.metric(port, #"cache_hits_total{kind="user"}"#) == 1)
        }
    }

    /// Pipelined requests are answered in order: a cached read behind one the application
    /// is still answering waits for it (it goes to the application too).
    @Test func pipelinedRequestsKeepTheirOrder() async throws {
        try await Self.live { client, port, _ in
            let (id, _) = try await signUpJohn(client)
            _ = try await client.execute(uri: "/users/\(id)", method: .get)  // cached now
            // Sent in one write, so all of it is decoded before the application answers
            // the first: answering the cached reads at once would put them ahead of it.
            let requests = [
                "GET /users/1 HTTP/1.1\r\nHost: x\r\nX-Request-ID: r1\r\n\r\n",
                "GET /users/\(id) HTTP/1.1\r\nHost: x\r\nX-Request-ID: r2\r\n\r\n",
                "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Request-ID: r3\r\n\r\n",
                "GET /users/\(id) HTTP/1.1\r\nHost: x\r\nX-Request-ID: r4\r\nConnection: close\r\n\r\n",
            ]
            let answer = try await RawConnection.exchange(port: port, send: requests.joined())
            let ids = answer.components(separatedBy: "\r\n").filter { $0.lowercased().hasPrefix("x-request-id:") }
                .map { $0.split(separator: ":")[1].trimmingCharacters(in: .whitespaces) }
            #expect(ids == ["r1", "r2", "r3", "r4"], "\(answer)")
            #expect(answer.hasPrefix("HTTP/1.1 404"))
            #expect(answer.components(separatedBy: "HTTP/1.1 200 OK").count == 4)
            // Then a kept-alive connection with nothing outstanding is answered early again.
            let before = try await Self.metric(port, "http_server_cached_reads_early_total")
            let c = try await RawConnection.open(port: port)
            for _ in 0..<3 { #expect(try await c.request("GET /users/\(id) HTTP/1.1\r\nHost: x\r\n\r\n").hasPrefix("HTTP/1.1 200")) }
            try await c.close()
            #expect(try await Self.metric(port, "http_server_cached_reads_early_total") == before + 3)
        }
    }

    /// What must take the route: a change (the cache is invalidated, so the next read
    /// loads again), a deleted user (404), HEAD, and everything when the setting is off.
    @Test func writesAndOtherMethodsTakeTheRoute() async throws {
        try await Self.live { client, port, _ in
            let (id, session) = try await signUpJohn(client)
            let cookie: HTTPFields = [.cookie: "millions_session=\(session)", .contentType: "application/json"]
            _ = try await client.execute(uri: "/users/\(id)", method: .get)
            let patched = try await client.execute(
                uri: "/users/\(id)", method: .patch, headers: cookie, body: ByteBuffer(string: #"{"firstName":"Jack"}"#))
            #expect(patched.status == .ok)
            let c = try await RawConnection.open(port: port)
            #expect(try await c.request("GET /users/\(id) HTTP/1.1\r\nHost: x\r\n\r\n").contains(#""firstName":"Jack""#))
            #expect(try await c.request("GET /users/\(id) HTTP/1.1\r\nHost: x\r\n\r\n").contains(#""firstName":"Jack""#))
            // HEAD (no body follows, so read until the server closes).
            let head = try await RawConnection.exchange(port: port, send: "HEAD /users/\(id) HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            #expect(head.hasPrefix("HTTP/1.1 200") && !head.contains("firstName"), "\(head)")
            #expect(try await Self.metric(port, "http_server_cached_reads_early_total") == 1)
            let deleted = try await client.execute(uri: "/users/\(id)", method: .delete, headers: cookie)
            #expect(deleted.status == .noContent)
            #expect(try await c.request("GET /users/\(id) HTTP/1.1\r\nHost: x\r\n\r\n").hasPrefix("HTTP/1.1 404"))
            try await c.close()
        }
        try await Self.live(["http.cachedReadFastPath": "false"]) { client, port, _ in
            let (id, _) = try await signUpJohn(client)
            for _ in 0..<3 { #expect(try await client.execute(uri: "/users/\(id)", method: .get).status == .ok) }
            #expect(try await Self.metric(port, "http_server_cached_reads_early_total") == 0)
            #expect(try await Self.metric(port, #"cache_hits_total{kind="user"}"#) == 2)
        }
    }

    @Test func onlyUserPathsAreTaken() {
        #expect(CachedReadPath.userID(inPath: "/users/123")?.rawValue == 123)
        #expect(CachedReadPath.userID(inPath: "/users/123?x=1")?.rawValue == 123)
        for path in ["/users/", "/users/abc", "/users/12a", "/users/123/photo", "/users/0", "/users/-1", "/users/99999999999999999999999", "/user/1", "/users/1%32"] {
            #expect(CachedReadPath.userID(inPath: path) == nil, "\(path)")
        }
    }
}

/// Log lines kept for a test to look at.
final class KeptLines: Sendable {
    let lines = Mutex<[String]>([])

    func waitFor(_ match: (String) -> Bool) async throws -> String {
        for _ in 0..<600 {
            if let line = lines.withLock({ $0.first(where: match) }) { return line }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw RawConnectionError(description: "no such log line")
    }
}

/// A log handler that keeps each line as the JSON handler would write it.
struct KeepingHandler: LogHandler {
    let lines: KeptLines
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var all = metadata
        if let extra = event.metadata { all.merge(extra) { _, new in new } }
        var fields = [#""msg":"\#(event.message)""#]
        for (key, value) in all.sorted(by: { $0.key < $1.key }) {
            if case .stringConvertible(let n) = value, n is Int || n is Double {
                fields.append(#""\#(key)":\#(n)"#)
            } else {
                fields.append(#""\#(key)":"\#(value)""#)
            }
        }
        lines.lines.withLock { $0.append("{" + fields.joined(separator: ",") + "}") }
    }
}
