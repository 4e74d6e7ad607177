import Hummingbird
import Logging
import ServiceLifecycle
import Synchronization

/// Whether this server is draining before it stops.
public final class DrainState: Sendable {
    private let flag = Atomic<Bool>(false)
    public init() {}
    public var isDraining: Bool { flag.load(ordering: .relaxed) }
    func start() { flag.store(true, ordering: .relaxed) }
}

/// Lets a load balancer move off this server before it stops, with no request lost.
///
/// Listed after the HTTP server in the service group, so at SIGTERM it runs first: for
/// `seconds` it answers every request with `Connection: close` and reports not ready. The
/// client (nginx) then closes each connection after its answer, so none is left idle for
/// this server to close under a request in flight; nginx's own idle timeout (1 s in the
/// cluster) retires the rest. Then the server's graceful shutdown stops listening and
/// closes what is left. (Closing the listener first would refuse new connections sooner,
/// but Hummingbird treats a closed listener as the server ending, and stops everything.)
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
        state.start()
        logger.info("draining", metadata: ["seconds": "\(seconds)"])
        try? await Task.sleep(for: .milliseconds(Int(seconds * 1000)))
    }
}
