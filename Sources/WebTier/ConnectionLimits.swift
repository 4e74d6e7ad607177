import HTTPTypes
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOHTTPTypes
import Observability
import Prometheus
import Synchronization

/// What one client connection may hold. Hummingbird's own HTTP/1 channel has only an idle
/// timeout, which a client that trickles a body keeps resetting; these add deadlines on a
/// request's head and body and a cap on connections per client address.
public struct ConnectionLimits: Sendable {
    /// From a request's first byte to the end of its head.
    public var headerTimeout: TimeAmount
    /// From the end of a request's head to the end of its body.
    public var bodyTimeout: TimeAmount
    /// Open connections one address may hold (0: no cap).
    public var maxPerAddress: Int
    /// Addresses without a per-address cap: the load balancer carries every client on a
    /// few connections of its own.
    public var exempt: Set<String>

    public init(headerTimeout: TimeAmount, bodyTimeout: TimeAmount, maxPerAddress: Int, exempt: Set<String>) {
        self.headerTimeout = headerTimeout
        self.bodyTimeout = bodyTimeout
        self.maxPerAddress = maxPerAddress
        self.exempt = exempt
    }
}

/// Open connections by client address, shared by every event loop.
final class ConnectionsByAddress: Sendable {
    private let counts = Mutex<[String: Int]>([:])

    /// Counts one more for `address` unless it already holds `limit`.
    func open(_ address: String, limit: Int) -> Bool {
        counts.withLock { counts in
            let n = counts[address, default: 0]
            guard limit == 0 || n < limit else { return false }
            counts[address] = n + 1
            return true
        }
    }

    func close(_ address: String) {
        counts.withLock { counts in
            let n = counts[address, default: 1] - 1
            counts[address] = n > 0 ? n : nil
        }
    }
}

/// The counters the limits report on `/metrics`.
struct ConnectionLimitMetrics: Sendable {
    let headerTimeouts: Counter
    let bodyTimeouts: Counter
    let refused: Counter

    init(_ metrics: AppMetrics) {
        let help = "Connections the server closed because of a limit, by reason"
        let name = "http_server_connections_closed"
        headerTimeouts = metrics.counter(name, help, [("reason", "header_timeout")])
        bodyTimeouts = metrics.counter(name, help, [("reason", "body_timeout")])
        refused = metrics.counter(name, help, [("reason", "per_address_limit")])
    }
}

/// Hummingbird's HTTP/1 channel with the limits above around it.
struct LimitedHTTP1Channel: ServerChildChannel {
    typealias Value = HTTP1Channel.Value
    let inner: HTTP1Channel
    let limits: ConnectionLimits
    let byAddress = ConnectionsByAddress()
    let metrics: ConnectionLimitMetrics
    let cachedReads: CachedReads?

    init(
        responder: @escaping HTTPChannelHandler.Responder, configuration: HTTP1Channel.Configuration,
        limits: ConnectionLimits, metrics: AppMetrics, logger: Logger, cachedReads: CachedReads? = nil
    ) {
        let counters = ConnectionLimitMetrics(metrics)
        var configuration = configuration
        // After the HTTP decoding, before Hummingbird's idle handling; it installs its
        // byte-level half in front of the decoder itself.
        configuration.additionalChannelHandlers = { [limits] in
            [RequestDeadlines(limits: limits, metrics: counters, logger: logger)]
        }
        inner = HTTP1Channel(responder: responder, configuration: configuration)
        self.cachedReads = cachedReads
        self.limits = limits
        self.metrics = counters
    }

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        let refuse = !admit(channel, logger: logger)
        return inner.setup(channel: channel, logger: logger).flatMapThrowing { value in
            // The channel is not active yet: its first request gets the 429.
            let pipeline = channel.pipeline.syncOperations
            if refuse { try pipeline.handler(type: RequestDeadlines.self).refuse = true }
            if let cachedReads {
                try pipeline.addHandler(
                    CachedReadPath(cachedReads), position: .after(try pipeline.handler(type: HTTPConnectionStateHandler.self)))
            }
            return value
        }
    }

    /// Counts the connection against its address; false when the address holds its cap.
    private func admit(_ channel: any Channel, logger: Logger) -> Bool {
        guard limits.maxPerAddress > 0, let address = channel.remoteAddress?.ipAddress, !limits.exempt.contains(address)
        else { return true }
        guard byAddress.open(address, limit: limits.maxPerAddress) else {
            metrics.refused.increment()
            logger.info("connection refused", metadata: ["client": .string(address), "reason": "per_address_limit"])
            return false
        }
        channel.closeFuture.whenComplete { [byAddress] _ in byAddress.close(address) }
        return true
    }

    func handle(value: Value, logger: Logger) async {
        await inner.handle(value: value, logger: logger)
    }
}

/// Closes a connection whose request head or body does not arrive in time. A head that
/// is late gets a 408 first (no request is being answered yet); a late body just closes,
/// since the application may already be answering that request.
final class RequestDeadlines: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    private enum Phase { case waiting, head, body, answering }
    private var phase = Phase.waiting
    private var unanswered = 0
    private var timer: Scheduled<Void>?
    /// When the current phase (head or body) must be over; the timer is armed only at the
    /// end of a read, so a request that arrives whole in one read never schedules one.
    private var deadline: NIODeadline?
    private var timedPhase: Phase?
    private var context: ChannelHandlerContext?
    /// Dropping the rest of an answered request's body (bounded by `maxDiscardBytes`).
    private var discarding = false
    private var discarded = 0
    /// The most of an answered request's body read and dropped before closing instead.
    static let maxDiscardBytes = 64 << 20
    /// Set for a connection over its address's cap: its first request is answered 429.
    var refuse = false
    private var refused = false
    private let limits: ConnectionLimits
    private let metrics: ConnectionLimitMetrics
    private let logger: Logger

    init(limits: ConnectionLimits, metrics: ConnectionLimitMetrics, logger: Logger) {
        self.limits = limits
        self.metrics = metrics
        self.logger = logger
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        do {
            try context.pipeline.syncOperations.addHandler(FirstByte(self), position: .first)
        } catch {
            context.fireErrorCaught(error)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        cancelTimer()
        self.context = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        cancelTimer()
        context.fireChannelInactive()
    }

    /// Bytes arrived: the first ones of a request start the head's clock.
    fileprivate func bytesArrived() {
        guard phase == .waiting else { return }
        phase = .head
        deadline = .now() + limits.headerTimeout
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if refuse {
            // Answered here; the application never sees this connection's requests.
            if case .head = unwrapInboundIn(data), !refused {
                refused = true
                answer(context, .tooManyRequests, "too_many_requests", "too many connections from your address", retryAfter: 1)
            }
            return
        }
        switch unwrapInboundIn(data) {
        case .head:
            unanswered += 1
            phase = .body
            deadline = .now() + limits.bodyTimeout
        case .body(let chunk):
            if discarding {
                discarded += chunk.readableBytes
                if discarded > Self.maxDiscardBytes { context.close(promise: nil) }
                return
            }
        case .end:
            discarding = false
            phase = unanswered == 0 ? .waiting : .answering
            deadline = nil
            cancelTimer()
        }
        context.fireChannelRead(data)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        // The application has stopped reading (it answered): keep the socket read here.
        if discarding { context.read() }
        if deadline != nil, timedPhase != phase, phase == .head || phase == .body { arm() }
        context.fireChannelReadComplete()
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if case .end = unwrapOutboundIn(data) {
            unanswered = max(0, unanswered - 1)
            if unanswered == 0, phase == .answering { phase = .waiting }
            // Answered before its body arrived (a 401, 403 or 413 on an upload): read the
            // rest and drop it, so a client that reads only after sending everything (as
            // Python's urllib does, with `Connection: close`) gets the answer instead of
            // waiting on a server that has stopped reading.
            if phase == .body, !discarding {
                discarding = true
                discarded = 0
                context.write(data, promise: promise)
                context.read()
                return
            }
        }
        context.write(data, promise: promise)
    }

    private func arm() {
        cancelTimer()
        guard let context, let deadline else { return }
        timedPhase = phase
        timer = context.eventLoop.assumeIsolatedUnsafeUnchecked().scheduleTask(deadline: deadline) { [self] in
            timer = nil
            timedPhase = nil
            // Armed for the head, and the body's clock is running now: wait for that one.
            if let current = self.deadline, current > .now() { arm() } else { expired() }
        }
    }

    private func cancelTimer() {
        timer?.cancel()
        timer = nil
        timedPhase = nil
    }

    private func expired() {
        guard let context else { return }
        switch phase {
        case .head where unanswered == 0:
            metrics.headerTimeouts.increment()
            logger.info("request head timed out", metadata: ["reason": "header_timeout"])
            answer(context, .requestTimeout, "request_timeout", "the request's head did not arrive in time")
        case .head, .body:
            (phase == .body ? metrics.bodyTimeouts : metrics.headerTimeouts).increment()
            logger.info("request timed out", metadata: ["reason": phase == .body ? "body_timeout" : "header_timeout"])
            context.close(promise: nil)
        case .waiting, .answering:
            break
        }
    }

    /// A JSON error answer written here, then the connection closes.
    private func answer(
        _ context: ChannelHandlerContext, _ status: HTTPResponse.Status, _ code: String, _ message: String,
        retryAfter: Int? = nil
    ) {
        let body = ByteBuffer(string: #"{"error":{"code":"\#(code)","message":"\#(message)"}}"#)
        var head = HTTPResponse(status: status)
        head.headerFields = [.contentType: "application/json; charset=utf-8", .connection: "close", .contentLength: String(body.readableBytes)]
        if let retryAfter { head.headerFields[.retryAfter] = String(retryAfter) }
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.write(wrapOutboundOut(.body(body)), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        context.close(promise: nil)
    }

    /// Tells its owner when bytes arrive, before the HTTP decoder sees them.
    final class FirstByte: ChannelInboundHandler, RemovableChannelHandler {
        typealias InboundIn = ByteBuffer
        typealias InboundOut = ByteBuffer
        private let owner: RequestDeadlines
        init(_ owner: RequestDeadlines) { self.owner = owner }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            owner.bytesArrived()
            context.fireChannelRead(data)
        }
    }
}
