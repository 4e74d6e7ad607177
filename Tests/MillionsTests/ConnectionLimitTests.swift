import Foundation
import Hummingbird
import HummingbirdTesting
import Logging
import MillionsCore
import MillionsTesting
import NIOCore
import NIOPosix
import Synchronization
import Testing
@testable import WebTier

/// Slow and greedy clients against a live server: a head or body that never finishes,
/// and one address opening more connections than it may.
@Suite struct ConnectionLimitTests {
    /// Short deadlines, an idle timeout far longer than the test (so only the new deadlines
    /// can close these connections), and no trusted proxy on loopback (so the per-address
    /// cap applies to the test's own connections).
    static let limits = [
        "http.headerTimeoutSeconds": "1", "http.bodyTimeoutSeconds": "2", "http.idleTimeoutSeconds": "3600",
        "http.maxConnectionsPerAddress": "4", "http.trustedProxies": "192.0.2.1",
    ]

    static func live(
        _ overrides: [String: String] = limits, _ body: @escaping @Sendable (Int) async throws -> Void
    ) async throws {
        try await TestApp.withTemporaryDirectory { dir in
            let settings = try TestApp.settings(dataDirectory: dir, overrides)
            let components = try await Components.build(settings: settings, logger: Logger(label: "test"))
            try await buildApplication(components).test(.live) { client in try await body(try #require(client.port)) }
        }
    }

    @Test func aHeadThatNeverEndsGets408AndTheConnectionCloses() async throws {
        try await Self.live { port in
            let answer = try await RawConnection.exchange(port: port, send: "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            #expect(answer.hasPrefix("HTTP/1.1 408"), "\(answer)")
            #expect(answer.contains(#""code":"request_timeout""#))
            // A whole request on a new connection is still served.
            #expect(try await RawConnection.exchange(port: port, send: "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").hasPrefix("HTTP/1.1 200"))
        }
    }

    @Test func aTrickledBodyIsCutOffThoughBytesKeepComing() async throws {
        try await Self.live { port in
            // One byte every 100 ms keeps an idle timeout from ever firing; the body's
            // deadline closes the connection anyway.
            let head = "POST /users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n"
            let answer = try await RawConnection.exchange(port: port, send: head, trickle: "{")
            #expect(!answer.contains("HTTP/1.1 201"))
            let metrics = try await RawConnection.exchange(port: port, send: "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            #expect(metrics.contains(#"http_server_connections_closed_total{reason="body_timeout"} 1"#), "\(metrics.suffix(2000))")
        }
    }

    @Test func oneAddressGetsNoMoreThanItsConnections() async throws {
        try await Self.live { port in
            // Kept-alive connections, each having had an answer, until the address's cap
            // (4, one of which the test harness's own client may hold) refuses one.
            var held: [RawConnection] = []
            var refusal = ""
            for _ in 0..<6 {
                let c = try await RawConnection.open(port: port)
                let answer = try await c.request("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                if answer.hasPrefix("HTTP/1.1 200") {
                    held.append(c)
                } else {
                    refusal = answer
                    try await c.close()
                    break
                }
            }
            #expect(refusal.hasPrefix("HTTP/1.1 429"), "\(refusal)")
            #expect(refusal.lowercased().contains("retry-after: 1"))
            #expect((3...4).contains(held.count))
            // One closes: a new connection is served again (once the server has seen the close).
            try await held.removeLast().close()
            var served = false
            for _ in 0..<600 where !served {
                served = try await RawConnection.exchange(port: port, send: "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").hasPrefix("HTTP/1.1 200")
                if !served { try await Task.sleep(for: .milliseconds(100)) }
            }
            #expect(served)
            for c in held { try await c.close() }
        }
    }

    /// An upload answered before its body is read (no session: 401), from a client that
    /// sends the whole body before reading (Python's urllib, with `Connection: close`):
    /// the server reads and drops the rest, so the client gets its answer. 16 MiB is more
    /// than loopback's socket buffers hold, so a server that stopped reading would stall it.
    @Test func anEarlyAnswerToAnUploadStillReachesAClientThatSendsEverythingFirst() async throws {
        try await Self.live([:]) { port in
            let size = 16 << 20
            let c = try await RawConnection.open(port: port)
            try await c.send(
                "POST /users/1/photo HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: \(size)\r\nConnection: close\r\n\r\n")
            // Completes only once the server has taken every byte.
            try await c.send(String(repeating: "x", count: size))
            let answer = try await c.wait()
            #expect(answer.hasPrefix("HTTP/1.1 401"), "\(answer.prefix(200))")
            try await c.close()
        }
    }

    /// `/metrics` answers only the operators' networks: the forwarded client behind a
    /// trusted proxy is what counts, and everyone else gets the 404 of a page that is not there.
    @Test func metricsAnswerOnlyTheOperatorsNetworks() async throws {
        try await Self.live(["http.metricsAllow": "10.0.0.0/8", "http.trustedProxies": "127.0.0.1"]) { port in
            let fromOperators = try await Self.metrics(port, forwardedFor: "10.1.2.3")
            let outsider = try await Self.metrics(port, forwardedFor: "203.0.113.9")
            let proxyItself = try await Self.metrics(port, forwardedFor: nil)
            #expect(fromOperators.hasPrefix("HTTP/1.1 200") && fromOperators.contains("http_server_requests_in_flight"))
            #expect(outsider.hasPrefix("HTTP/1.1 404") && proxyItself.hasPrefix("HTTP/1.1 404"))
        }
    }

    static func metrics(_ port: Int, forwardedFor: String?) async throws -> String {
        let header = forwardedFor.map { "X-Forwarded-For: \($0)\r\n" } ?? ""
        return try await RawConnection.exchange(
            port: port, send: "GET /metrics HTTP/1.1\r\nHost: x\r\n\(header)Connection: close\r\n\r\n")
    }

    @Test func addressRangesMatchByPrefix() throws {
        let net = try #require(AddressRange("198.18.0.0/15"))
        #expect(net.contains("198.19.255.1") && net.contains("198.18.0.1") && !net.contains("198.20.0.1"))
        let loop6 = try #require(AddressRange("::1"))
        #expect(loop6.contains("::1") && !loop6.contains("127.0.0.1"))
        let unique = try #require(AddressRange("fd00::/8"))
        #expect(unique.contains("fd12:3456::1") && !unique.contains("fe80::1"))
        let any = try #require(AddressRange("0.0.0.0/0"))
        #expect(any.contains("8.8.8.8"))
        #expect(AddressRange("10.0.0.0/33") == nil && AddressRange("example.com") == nil)
        #expect(throws: SettingsError.self) { try AddressRange.list("127.0.0.0/8, nonsense") }
    }
}

/// A bare TCP connection, to send what no HTTP client would.
final class RawConnection: Sendable {
    let channel: any Channel
    private let received: Received

    private init(channel: any Channel, received: Received) {
        self.channel = channel
        self.received = received
    }

    static func open(port: Int) async throws -> RawConnection {
        let received = Received()
        // Like a plain socket: the server's FIN ends what we read, not what we may send.
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(Collector(received)) }
            }
            .connect(host: "127.0.0.1", port: port).get()
        return RawConnection(channel: channel, received: received)
    }

    func send(_ text: String) async throws {
        try await channel.writeAndFlush(ByteBuffer(string: text))
    }

    /// Waits (up to a minute: the limits under test are seconds) until `done` holds for
    /// what has arrived, or the server closes.
    func wait(until done: (String) -> Bool = { _ in false }) async throws -> String {
        for _ in 0..<600 {
            let (bytes, closed) = received.state.withLock { ($0.bytes, $0.closed) }
            let text = String(decoding: bytes, as: UTF8.self)
            if closed || done(text) { return text }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw RawConnectionError(description: "still open after a minute")
    }

    var isClosed: Bool { received.state.withLock { $0.closed } }

    /// Sends a request and returns its answer (one whose length is known).
    func request(_ text: String) async throws -> String {
        received.state.withLock { $0.bytes = [] }
        try await send(text)
        return try await wait { answer in
            guard let end = answer.range(of: "\r\n\r\n") else { return false }
            let length = answer[..<end.lowerBound].split(separator: "\r\n")
                .first { $0.lowercased().hasPrefix("content-length:") }
                .flatMap { Int($0.split(separator: ":")[1].trimmingCharacters(in: .whitespaces)) } ?? 0
            return answer.utf8.count - answer[..<end.upperBound].utf8.count >= length
        }
    }

    func close() async throws {
        try? await channel.close()
    }

    /// Opens a connection, sends `send`, then `trickle` one byte every 100 ms while it
    /// stays open; returns everything received once the server closes it.
    static func exchange(port: Int, send text: String, trickle: String? = nil) async throws -> String {
        let c = try await open(port: port)
        try await c.send(text)
        if let trickle {
            for _ in 0..<600 where !c.isClosed {
                try? await c.send(trickle)
                try await Task.sleep(for: .milliseconds(100))
            }
        }
        let answer = try await c.wait()
        try await c.close()
        return answer
    }

    private final class Collector: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        let received: Received
        init(_ received: Received) { self.received = received }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let buffer = unwrapInboundIn(data)
            received.state.withLock { $0.bytes += buffer.readableBytesView }
        }

        func channelInactive(context: ChannelHandlerContext) {
            received.state.withLock { $0.closed = true }
        }

        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if case .some(.inputClosed) = event as? ChannelEvent { received.state.withLock { $0.closed = true } }
            context.fireUserInboundEventTriggered(event)
        }
    }
}

/// What a raw connection has received, and whether the server closed it.
final class Received: Sendable {
    let state = Mutex<(bytes: [UInt8], closed: Bool)>(([], false))
}

struct RawConnectionError: Error, CustomStringConvertible {
    let description: String
}
