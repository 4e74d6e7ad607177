import CacheTier
import DataTier
import Foundation
import HTTPTypes
import HummingbirdCore
import Logging
import MillionsCore
import NIOCore
import NIOHTTPTypes
import Observability
import Prometheus

/// What every connection's `CachedReadPath` shares: the profile cache or the database's
/// event-loop reads, the metric handles (resolved once) and the log.
final class CachedReads: Sendable {
    static let route = "/users/{id}"
    /// The in-process cache, whose hits are answered at once.
    let cache: ReadThrough<User>?
    /// With no cache tier at all: misses read the database on the event loop.
    let loopReads: LoopReads?
    let drain: DrainState
    let trustedProxies: Set<String>
    let accessLog: AccessLog
    let requests: Prometheus.Counter
    let latency: DurationHistogram
    let answered: Prometheus.Counter

    init(
        cache: ReadThrough<User>?, loopReads: LoopReads?, drain: DrainState, trustedProxies: Set<String>,
        metrics: AppMetrics, logger: Logger
    ) {
        self.cache = cache
        self.loopReads = loopReads
        self.drain = drain
        self.trustedProxies = trustedProxies
        accessLog = AccessLog(logger)
        // The same series the middleware records for this route.
        requests = metrics.cachedCounter(
            "http_server_requests", "HTTP requests by method, route and status",
            [("method", "GET"), ("route", Self.route), ("status", "200")])
        latency = metrics.cachedLatency(
            "http_server_request_duration", "HTTP request latency by method and route",
            [("method", "GET"), ("route", Self.route)])
        answered = metrics.counter(
            "http_server_cached_reads_early", "Cached reads answered on the event loop, before the router", [])
    }
}

/// Answers `GET /users/{id}` on the event loop when the profile is in the in-process cache,
/// before the request becomes a task and walks the router and the middleware chain: on a
/// hit that path costs about as much again as everything else (issue 16, P1). With no cache
/// tier, the profile is read from PostgreSQL on this same loop (`LoopReads`, P2): the
/// request is held, later requests on the connection wait behind it, and when the read
/// finds nothing or fails the request goes on to the router as if it had never stopped
/// here (the route answers 404, retries elsewhere or answers 503).
/// The answer is the route's own: same bytes and headers, the same access-log line,
/// metrics and request id. Anything else passes on unchanged: a miss (with a cache),
/// another route, a request with a body or `Connection: close`, a server that is draining,
/// and any request that arrives while the application still owes this connection an answer
/// (pipelined requests are answered in order). Sits after Hummingbird's connection-state
/// handler, so idle timeouts and graceful shutdown see these requests too.
final class CachedReadPath: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    private struct Answer {
        var head: HTTPResponse
        var body: [UInt8]
        var path: String
        var requestID: String
        var client: String
        var start: ContinuousClock.Instant
    }

    /// A request whose database read is in flight.
    private struct Pending {
        var request: HTTPRequest
        var id: UserID
        var sawEnd = false
        var start: ContinuousClock.Instant
    }

    private let shared: CachedReads
    private var peer = "unknown"
    /// Requests passed on to the application and not answered yet.
    private var unanswered = 0
    /// A request answered here whose end has not arrived yet.
    private var answer: Answer?
    /// A request waiting for its database read, and what arrived behind it meanwhile.
    private var pending: Pending?
    /// What arrived behind a pending request, replayed in order once it is answered: the
    /// client's later requests, and events such as its half-close (which must not overtake
    /// the request it follows, or the application would end the connection unanswered).
    private enum Held {
        case read(NIOAny)
        case event(Any)
        case error(any Error)
    }
    private var held: [Held] = []
    /// A read from the socket asked for while requests waited behind a pending one (held
    /// back, so a client cannot pile up requests in memory behind it).
    private var readWanted = false
    private var needsFlush = false
    private var date = (second: -1, text: "")

    init(_ shared: CachedReads) { self.shared = shared }

    func handlerAdded(context: ChannelHandlerContext) {
        peer = context.channel.remoteAddress?.ipAddress ?? "unknown"
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if pending != nil {
            // The pending request's own end (it has no body), then whatever follows it.
            if pending?.sawEnd == false, held.isEmpty, case .end = unwrapInboundIn(data) {
                pending?.sawEnd = true
            } else {
                held.append(.read(data))
            }
            return
        }
        switch unwrapInboundIn(data) {
        case .head(let request):
            if unanswered == 0, let found = prepare(request) {
                answer = found
                return
            }
            if unanswered == 0, startRead(request, context) { return }
            unanswered += 1
        case .body:
            if answer != nil { return }
        case .end:
            if let found = answer {
                answer = nil
                send(found, context)
                return
            }
        }
        context.fireChannelRead(data)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if pending != nil || !held.isEmpty {
            held.append(.event(event))
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if pending != nil || !held.isEmpty {
            held.append(.error(error))
            return
        }
        context.fireErrorCaught(error)
    }

    func read(context: ChannelHandlerContext) {
        // Reading stops only once something waits behind a pending request (a client that
        // pipelines): stopping on every pending read would cost two epoll changes a request.
        if pending != nil && !held.isEmpty {
            readWanted = true
            return
        }
        context.read()
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if needsFlush {
            needsFlush = false
            context.flush()
        }
        context.fireChannelReadComplete()
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if case .end = unwrapOutboundIn(data) { unanswered = max(0, unanswered - 1) }
        context.write(data, promise: promise)
    }

    /// The profile's id when this request is one this handler may answer.
    private func candidate(_ request: HTTPRequest) -> UserID? {
        guard request.method == .get, let target = request.path, let id = Self.userID(inPath: target),
            request.headerFields[.contentLength] == nil, request.headerFields[.transferEncoding] == nil,
            !(request.headerFields[.connection]?.lowercased().contains("close") ?? false),
            !shared.drain.isDraining
        else { return nil }
        return id
    }

    /// The answer for a cached profile, or nil to pass the request on.
    private func prepare(_ request: HTTPRequest) -> Answer? {
        guard let id = candidate(request), let body = shared.cache?.cachedBytes(id) else { return nil }
        return makeAnswer(request, body: body, start: ContinuousClock.now)
    }

    /// Starts the database read of an uncached profile on this loop; false to pass the
    /// request on (a cache tier is configured, the read is declined, or another route).
    private func startRead(_ request: HTTPRequest, _ context: ChannelHandlerContext) -> Bool {
        guard shared.cache == nil, let reads = shared.loopReads, let id = candidate(request),
            let position = Self.writePosition(request.headerFields[values: .cookie])
        else { return false }
        let start = ContinuousClock.now
        guard let read = reads.user(id: id, position: position, on: context.eventLoop) else { return false }
        pending = Pending(request: request, id: id, start: start)
        let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
        read.whenComplete { result in handler.value.finish(result, bound.value) }
        return true
    }

    /// The pending read's end: its answer, or the request passed on; then what waited.
    private func finish(_ result: Result<User?, any Error>, _ context: ChannelHandlerContext) {
        guard let done = pending else { return }
        pending = nil
        guard context.channel.isActive else {
            held = []
            return
        }
        if case .success(let user?) = result, let body = try? UserService.encode(user) {
            let found = makeAnswer(done.request, body: body, start: done.start)
            if done.sawEnd {
                send(found, context)
            } else {
                answer = found
            }
        } else {
            unanswered += 1
            context.fireChannelRead(wrapInboundOut(.head(done.request)))
            if done.sawEnd { context.fireChannelRead(wrapInboundOut(.end(nil))) }
        }
        while pending == nil, !held.isEmpty {
            switch held.removeFirst() {
            case .read(let data): channelRead(context: context, data: data)
            case .event(let event): userInboundEventTriggered(context: context, event: event)
            case .error(let error): errorCaught(context: context, error: error)
            }
        }
        channelReadComplete(context: context)
        if pending == nil, readWanted {
            readWanted = false
            context.read()
        }
    }

    /// The client's write position on the one cluster, from its `millions_lsn` cookie (0:
    /// none); nil when the cookie names other clusters (sharded positions: the route decides).
    static func writePosition(_ cookieHeaders: [String]) -> UInt64? {
        var position: UInt64 = 0
        for header in cookieHeaders {
            for pair in header.split(separator: ";") {
                let trimmed = pair.drop { $0 == " " }
                guard trimmed.hasPrefix(ReadYourWritesMiddleware.cookie + "=") else { continue }
                let value = trimmed.dropFirst(ReadYourWritesMiddleware.cookie.count + 1)
                let positions = ReadYourWrites.positions(cookie: String(value))
                guard positions.keys.allSatisfy(\.isEmpty) else { return nil }
                position = max(position, positions[""] ?? 0)
            }
        }
        return position
    }

    private func makeAnswer(_ request: HTTPRequest, body: [UInt8], start: ContinuousClock.Instant) -> Answer {
        let target = request.path ?? "/"
        let requestID = ObservabilityMiddleware.requestID(from: request.headerFields[.xRequestID])
        let client = Forwarded.resolve(
            peer: peer, forwardedFor: request.headerFields[values: .xForwardedFor], forwardedProto: nil,
            trusted: shared.trustedProxies
        ).client
        var head = HTTPResponse(status: .ok)
        head.headerFields = [
            .contentType: "application/json; charset=utf-8", .cacheControl: "no-cache",
            .contentLength: String(body.count), .xRequestID: requestID,
        ]
        SecurityHeaders.apply(to: &head.headerFields)
        head.headerFields[.date] = httpDate()
        head.headerFields[.server] = "millions"
        let path = target.firstIndex(of: "?").map { String(target[..<$0]) } ?? target
        return Answer(head: head, body: body, path: path, requestID: requestID, client: client, start: start)
    }

    private func send(_ answer: Answer, _ context: ChannelHandlerContext) {
        context.write(wrapOutboundOut(.head(answer.head)), promise: nil)
        context.write(wrapOutboundOut(.body(ByteBuffer(bytes: answer.body))), promise: nil)
        context.write(wrapOutboundOut(.end(nil)), promise: nil)
        needsFlush = true
        let elapsed = ContinuousClock.now - answer.start
        shared.requests.increment()
        shared.answered.increment()
        shared.latency.record(elapsed)
        shared.accessLog.record(
            method: "GET", path: answer.path, route: CachedReads.route, status: 200, elapsed: elapsed,
            requestID: answer.requestID, client: answer.client)
    }

    /// The id in `/users/{id}` (a query is ignored, as the router does); nil for any other path.
    static func userID(inPath target: String) -> UserID? {
        var bytes = target.utf8.makeIterator()
        for expected in "/users/".utf8 where bytes.next() != expected { return nil }
        var value: Int64 = 0
        var digits = 0
        while let b = bytes.next(), b != UInt8(ascii: "?") {
            // 16 digits hold every id below 2^53; UserID checks the bound.
            guard b >= UInt8(ascii: "0"), b <= UInt8(ascii: "9"), digits < 16 else { return nil }
            value = value * 10 + Int64(b - UInt8(ascii: "0"))
            digits += 1
        }
        return digits > 0 ? UserID(rawValue: value) : nil
    }

    /// The `Date` header, formatted once a second per connection.
    private func httpDate() -> String {
        var now = time(nil)
        if now != date.second {
            var parts = tm()
            gmtime_r(&now, &parts)
            let days = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
            let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
            func two(_ n: Int32) -> String { n < 10 ? "0\(n)" : "\(n)" }
            date = (
                now,
                "\(days[Int(parts.tm_wday)]), \(two(parts.tm_mday)) \(months[Int(parts.tm_mon)]) \(parts.tm_year + 1900) "
                    + "\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec)) GMT"
            )
        }
        return date.text
    }
}
