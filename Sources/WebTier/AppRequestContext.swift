import Hummingbird
import Logging

/// Per-request state shared by middleware and handlers.
public struct AppRequestContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    /// Taken from `X-Request-ID` when well formed, else generated; echoed on the response.
    public var requestID: String = ""
    /// The TCP peer: the client itself, or the load balancer in front of it.
    public let peerAddress: String?
    /// The client as far as trusted proxies tell (`X-Forwarded-For`), else the peer.
    public var clientAddress: String = ""
    /// True when the client's own connection is HTTPS (`X-Forwarded-Proto` from a trusted proxy).
    public var isHTTPS = false

    public init(source: ApplicationRequestContextSource) {
        self.coreContext = .init(source: source)
        self.peerAddress = source.channel.remoteAddress?.ipAddress
    }
}
