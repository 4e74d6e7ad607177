import AsyncHTTPClient
import Foundation
import MillionsTesting
import NIOCore
import NIOHTTP1
import Testing

/// Starts the real `millions serve` binary on a free port and drives it over real HTTP.
@Suite(.serialized) struct EndToEndTests {
    /// The built binary: `MILLIONS_BINARY`, else next to the test bundle.
    static func binary() throws -> String {
        if let path = ProcessInfo.processInfo.environment["MILLIONS_BINARY"] { return path }
        var candidates: [String] = []
        if let exe = Bundle.main.executableURL {
            candidates.append(exe.deletingLastPathComponent().appendingPathComponent("millions").path)
        }
        candidates += [
            URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("millions").path,
            URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../.build/debug/millions").path,
        ]
        guard let found = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            throw TestFailure("millions binary not found (build it first, or set MILLIONS_BINARY); looked in \(candidates)")
        }
        return found
    }

    struct TestFailure: Error, CustomStringConvertible {
        let description: String
        init(_ d: String) { description = d }
    }

    /// A running server process, its port and its log.
    struct Server {
        let process: Process
        let port: Int
        let log: String

        var logText: String { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }

        static func start(dataDirectory: String, extra: [String] = []) async throws -> Server {
            let log = dataDirectory + "/server.log"
            _ = FileManager.default.createFile(atPath: log, contents: nil)
            let process = Process()
            process.executableURL = URL(fileURLWithPath: try EndToEndTests.binary())
            process.arguments = ["serve", "--port", "0", "--data-dir", dataDirectory] + extra
            process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
            process.standardOutput = FileHandle.nullDevice
            try process.run()
            // The server logs the port it bound; wait for that line.
            for _ in 0..<600 {
                let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
                for line in text.split(separator: "\n") where line.contains("\"msg\":\"listening\"") {
                    let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
                    if let port = (object?["port"] as? String).flatMap(Int.init) {
                        return Server(process: process, port: port, log: log)
                    }
                }
                if !process.isRunning { throw TestFailure("server exited early: \(text)") }
                try await Task.sleep(for: .milliseconds(100))
            }
            process.terminate()
            throw TestFailure("server did not report its port within 60 s")
        }

        /// Waits for the process to exit; returns its status.
        func waitForExit(seconds: Int = 60) async throws -> Int32 {
            for _ in 0..<(seconds * 10) {
                if !process.isRunning { return process.terminationStatus }
                try await Task.sleep(for: .milliseconds(100))
            }
            process.interrupt()
            throw TestFailure("server did not exit within \(seconds) s")
        }
    }

    static func request(
        _ port: Int, _ method: HTTPMethod, _ path: String, json: String? = nil, cookie: String? = nil,
        client: HTTPClient = .shared, host: String = "127.0.0.1"
    ) async throws -> (status: UInt, headers: HTTPHeaders, body: String) {
        var request = HTTPClientRequest(url: "http://\(host):\(port)\(path)")
        request.method = method
        if let json {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(string: json))
        }
        if let cookie { request.headers.add(name: "Cookie", value: "millions_session=\(cookie)") }
        let response = try await client.execute(request, timeout: .seconds(30))
        let body = try await response.body.collect(upTo: 1 << 20)
        return (response.status.code, response.headers, String(buffer: body))
    }

    @Test func servesTheSiteOverRealHTTPAndDrainsOnSIGTERM() async throws {
        try await TestApp.withTemporaryDirectory { dir in
            // A costly bcrypt makes sign-up slow enough to be in flight when SIGTERM lands.
            let server = try await Server.start(dataDirectory: dir, extra: ["--set", "auth.bcryptCost=12"])
            let port = server.port
            do {
                let health = try await Self.request(port, .GET, "/healthz")
                #expect(health.status == 200)
                #expect(health.headers.first(name: "X-Request-ID")?.count == 32)
                #expect(try await Self.request(port, .GET, "/readyz").status == 200)

                let created = try await Self.request(port, .POST, "/users", json: john)
                #expect(created.status == 201)
                let location = try #require(created.headers.first(name: "Location"))
                let setCookie = try #require(created.headers.first(name: "Set-Cookie"))
                let session = String(setCookie.dropFirst("millions_session=".count).prefix { $0 != ";" })

                let user = try await Self.request(port, .GET, location)
                #expect(user.status == 200)
                #expect(user.body.contains(#""firstName":"John","lastName":"Smith","address":{"streetAddress":"21 2nd Street""#))
                #expect(try await Self.request(port, .GET, "/me", cookie: session).status == 200)
                let page = try await Self.request(port, .GET, "/")
                #expect(page.status == 200 && page.body.contains("John Smith"))
                #expect(try await Self.request(port, .GET, "/users/oops").status == 400)

                let metrics = try await Self.request(port, .GET, "/metrics")
                #expect(metrics.body.contains("http_server_requests_total"))

                // Graceful shutdown: a request in flight when SIGTERM arrives still completes.
                async let inFlight = Self.request(
                    port, .POST, "/users", json: john.replacingOccurrences(of: "john@", with: "late@"))
                // SIGTERM once the server is handling it (the metrics request itself is one
                // more), not after a guessed delay that a loaded machine can outlast.
                for _ in 0..<6000 {  // bounded: a minute
                    let text = try await Self.request(port, .GET, "/metrics").body
                    if text.contains("http_server_requests_in_flight 2") { break }
                    try await Task.sleep(for: .milliseconds(10))
                }
                server.process.terminate()  // SIGTERM
                #expect(try await inFlight.status == 201)
                #expect(try await server.waitForExit() == 0)
                let log = server.logText
                #expect(log.contains("\"msg\":\"stopped\""))
                #expect(log.contains("\"msg\":\"database closed\""))
                // Every log line is JSON and requests carry their id.
                for line in log.split(separator: "\n") {
                    #expect((try? JSONSerialization.jsonObject(with: Data(line.utf8))) != nil, "not JSON: \(line)")
                }
                #expect(log.contains("\"request_id\":"))
            } catch {
                server.process.terminate()
                throw error
            }

            // The data outlives the process: a new server sees the users.
            let again = try await Server.start(dataDirectory: dir)
            let after = try await Self.request(again.port, .GET, "/")
            #expect(after.body.contains("John Smith"))
            again.process.interrupt()  // SIGINT also drains
            #expect(try await again.waitForExit() == 0)
        }
    }
}
