import Hummingbird
import Logging
import NIOCore
import ServiceLifecycle
import Synchronization

/// Whether this server is draining before it stops, and its listening socket (to close
/// when the drain starts).
public final class DrainState: Sendable {
    private let flag = Atomic<Bool>(false)
    private let listener = Mutex<(any Channel)?>(nil)
    public init() {}
    public var isDraining: Bool { flag.load(ordering: .relaxed) }

    /// Called with the listening channel once the server is up.
    func listening(on channel: any Channel) { listener.withLock { $0 = channel } }

    /// Starts the drain: answers say `Connection: close` from now on, and the listening
    /// socket closes, so a new connection is refused rather than accepted and later closed.
    func start() async {
        flag.store(true, ordering: .relaxed)
        let channel = listener.withLock { $0 }
        try? await channel?.close()
    }
}

/// Lets a load balancer move off this server before it stops, with no request lost.
///
/// The race to avoid is the proxy (nginx) sending a request on a connection at the moment
/// the server closes it: the request is lost, and nginx does not resend a POST elsewhere.
/// So the server never closes a connection the proxy may still use:
/// - At SIGTERM the listening socket closes first. nginx's next connect is refused before
///   any byte of the request is sent, which nginx retries on another server, POST included.
/// - On the connections already open, every answer says `Connection: close`, so nginx
///   closes each after its answer; idle ones nginx retires itself after its upstream
///   `keepalive_timeout` (1 s in the cluster). `/readyz` answers 503 meanwhile.
/// - `seconds` must exceed that timeout (the cluster uses 3 s), and the server's own idle
///   timeout (`http.idleTimeoutSeconds`) must too, so it is always nginx that closes an
///   idle connection. Only then does the server's graceful shutdown close what is left
///   (clients that are not the proxy) and finish requests in flight.
///
/// Listed after the HTTP server in the service group, so it runs first at SIGTERM.
public final class DrainService: Service {
    let state: DrainState
    let seconds: Double
    let logger: Logger

    public init(state: DrainState, seconds: Double, logger: Logger) {
        self.state = state
        self.seconds = seconds
        self.logger = logger
    }

    public func run() async throws {
        try? await gracefulShutdown()
        guard seconds > 0 else { return }
        await state.start()
        logger.info("draining", metadata: ["seconds": "\(seconds)"])
        try? await Task.sleep(for: .milliseconds(Int(seconds * 1000)))
    }
}

/// Runs the web application as a service that, once its listener has closed for a drain
/// and its last connection has ended, waits for its turn to stop instead of returning
/// early (a service that returns early would stop the whole group, drain included).
public struct WebServerService<App: ApplicationProtocol>: Service {
    let app: App
    public init(_ app: App) { self.app = app }

    public func run() async throws {
        try await app.run()
        try? await gracefulShutdown()
    }
}
