import CacheTier
import Configuration
import DataTier
import Engines
import Foundation
import GRDB
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import MillionsCore
import MillionsTesting
import Testing
import WebTier

@Suite struct OperationsTests {
    @Test func healthAndReadiness() async throws {
        try await TestApp.run { client, components in
            #expect(try await client.send(.get, "/healthz").status == .ok)
            let ready = try await client.send(.get, "/readyz")
            #expect(ready.status == .ok)
            #expect(ready.object["status"] as? String == "ready")
            // With the database closed the process is alive but not ready.
            try components.database!.close()
            #expect(try await client.send(.get, "/healthz").status == .ok)
            let degraded = try await client.send(.get, "/readyz")
            #expect(degraded.status == .serviceUnavailable)
            #expect(degraded.object["status"] as? String == "degraded")
        }
    }

    @Test func requestIDsAreEchoedOrGenerated() async throws {
        try await TestApp.run { client, _ in
            let given = try await client.send(.get, "/healthz", headers: [HTTPField.Name("X-Request-ID")!: "abc-123"])
            #expect(given.headers[HTTPField.Name("X-Request-ID")!] == "abc-123")
            let made = try await client.send(.get, "/healthz")
            #expect(made.headers[HTTPField.Name("X-Request-ID")!]?.count == 32)
            let hostile = try await client.send(
                .get, "/healthz", headers: [HTTPField.Name("X-Request-ID")!: "x\"}{\"injected"])
            #expect(hostile.headers[HTTPField.Name("X-Request-ID")!]?.count == 32)
            let err = try await client.send(.get, "/users/1", headers: [HTTPField.Name("X-Request-ID")!: "trace-me"])
            #expect((err.object["error"] as? [String: Any])?["requestId"] as? String == "trace-me")
        }
    }

    @Test func metricsByRouteAndStatusWithLatencyAndCache() async throws {
        try await TestApp.run { client, _ in
            let (id, _) = try await signUpJohn(client)
            _ = try await client.send(.get, "/users/\(id)")
            _ = try await client.send(.get, "/users/\(id)")
            _ = try await client.send(.get, "/users/77")
            let r = try await client.send(.get, "/metrics")
            #expect(r.status == .ok)
            #expect(r.headers[.contentType]?.hasPrefix("text/plain; version=0.0.4") == true)
            let text = r.text
            #expect(text.contains(#"http_server_requests_total{method="GET",route="/users/{id}",status="200"} 2"#))
            #expect(text.contains(#"http_server_requests_total{method="GET",route="/users/{id}",status="404"} 1"#))
            #expect(text.contains(#"http_server_requests_total{method="POST",route="/users",status="201"} 1"#))
            #expect(text.contains(#"http_server_request_duration_seconds_bucket{method="GET",route="/users/{id}",le="+Inf"} 3"#))
            #expect(text.contains(#"cache_hits_total{kind="user"} 1"#))
            #expect(text.contains(#"cache_misses_total{kind="user"} 2"#))
        }
    }

    /// Every JSON route is in the OpenAPI document and every documented operation is a
    /// route; pages and assets are listed here instead.
    @Test func openAPIDocumentMatchesTheRoutes() async throws {
        try await TestApp.withTemporaryDirectory { dir in
            let settings = try TestApp.settings(dataDirectory: dir)
            let components = try await Components.build(settings: settings, logger: .init(label: "test"))
            let router = try buildRouter(components)
            let htmlAndAssets: Set<String> = [
                "GET /", "GET /signup", "POST /signup", "GET /login", "POST /login", "POST /logout",
                "GET /people/{id}", "GET /settings/profile", "POST /settings/profile", "POST /settings/delete",
                "GET /assets/{name}", "GET /favicon.ico",
            ]
            let routes = Set(router.routes.map { "\($0.method.rawValue) \($0.path)" })
            let documented = Set(try Self.operations(in: components.openAPIDocument()))
            #expect(routes.subtracting(htmlAndAssets) == documented)
            #expect(htmlAndAssets.isSubset(of: routes))
            try components.database!.close()
        }
    }

    @Test func openAPIDocumentIsServed() async throws {
        try await TestApp.run { client, components in
            let r = try await client.send(.get, "/openapi.yaml")
            #expect(r.status == .ok)
            #expect(r.text == (try components.openAPIDocument()))
            #expect(r.text.hasPrefix("openapi: 3.1"))
        }
    }

    /// "METHOD /path" for each operation under `paths:` (two-space paths, four-space methods).
    static func operations(in yaml: String) -> [String] {
        var out: [String] = []
        var inPaths = false
        var path = ""
        for line in yaml.split(separator: "\n", omittingEmptySubsequences: false) {
            if line == "paths:" { inPaths = true; continue }
            guard inPaths else { continue }
            if !line.hasPrefix(" ") && !line.isEmpty { break }
            if line.hasPrefix("  /") && !line.hasPrefix("   ") {
                path = String(line.dropFirst(2).dropLast())  // "  /users/{id}:"
            } else if line.hasPrefix("    ") && !line.hasPrefix("     ") {
                let key = line.dropFirst(4).prefix { $0 != ":" }
                if ["get", "put", "post", "patch", "delete", "head", "options"].contains(String(key)) {
                    out.append("\(key.uppercased()) \(path)")
                }
            }
        }
        return out
    }
}

@Suite struct ConfigurationTests {
    @Test func flagsBeatEnvironmentBeatsFileBeatsDefaults() async throws {
        try await TestApp.withTemporaryDirectory { dir in
            let file = dir + "/config.json"
            try #"{"http":{"port":7001,"host":"0.0.0.0"},"cache":{"ttlSeconds":42,"maxEntries":9}}"#
                .write(toFile: file, atomically: true, encoding: .utf8)
            let reader = try await ConfigSources.reader(
                flags: ["HTTP_PORT": "7003"],
                environment: ["MILLIONS_HTTP_PORT": "7002", "MILLIONS_HTTP_HOST": "127.0.0.2", "MILLIONS_CACHE_TTL_SECONDS": "43"],
                configFile: file)
            let s = try Settings(reader)
            #expect(s.http.port == 7003)  // flag
            #expect(s.http.host == "127.0.0.2")  // environment over file
            #expect(s.cache.ttl == .seconds(43))  // environment over file
            #expect(s.cache.maxEntries == 9)  // file over default
            #expect(s.data.directory == "./data")  // default
            #expect(s.http.maxBodyBytes == 64 * 1024)
        }
    }

    @Test func impossibleValuesAreRefused() async throws {
        for (key, value) in [("http.port", "70000"), ("auth.bcryptCost", "2"), ("log.level", "loud"), ("cache.maxEntries", "0")] {
            #expect(throws: SettingsError.self, "\(key)") {
                try TestApp.settings(dataDirectory: "/tmp/unused", [key: value])
            }
        }
    }

    @Test func readmeDocumentsEveryKey() throws {
        let readme = try String(
            contentsOf: URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../README.md"),
            encoding: .utf8)
        for key in Settings.documentedKeys {
            #expect(readme.contains("`\(key)`"), "README lacks \(key)")
            #expect(readme.contains("`MILLIONS_\(ConfigSources.environmentName(key))`"), "README lacks env of \(key)")
        }
    }
}
