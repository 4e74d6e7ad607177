import HTTPTypes
import Hummingbird
import Logging
import MillionsCore
import NIOCore
import Observability
import Prometheus
import Synchronization

/// Outermost middleware: gives each request an id (from `X-Request-ID` when well formed),
/// turns every error into the JSON error body, records metrics by route and status, and
/// writes one JSON access-log line carrying the request id.
struct ObservabilityMiddleware: RouterMiddleware {
    typealias Context = AppRequestContext
    let metrics: AppMetrics
    let drain: DrainState
    let allowed: AllowedMethods
    let inFlight: Gauge
    let accessLog: AccessLog

    init(metrics: AppMetrics, drain: DrainState, allowed: AllowedMethods, logger: Logger) {
        self.metrics = metrics
        accessLog = AccessLog(logger)
        self.drain = drain
        self.allowed = allowed
        inFlight = metrics.gauge("http_server_requests_in_flight", "Requests being handled now")
    }

    func handle(
        _ request: Request, context: AppRequestContext,
        next: (Request, AppRequestContext) async throws -> Response
    ) async throws -> Response {
        let start = ContinuousClock.now
        inFlight.increment()
        defer { inFlight.decrement() }
        var context = context
        let requestID = Self.requestID(from: request.headers[.xRequestID])
        context.requestID = requestID
        context.logger[metadataKey: "hb.request.id"] = nil
        context.logger[metadataKey: LogKey.requestID] = .string(requestID)

        var response: Response
        var failure: MillionsError? = nil
        do {
            response = try await RequestScope.$requestID.withValue(requestID) { try await next(request, context) }
        } catch {
            var e = MillionsError.from(error)
            var allow: [String]? = nil
            // No route for this method, but one for the path: 405 with the methods it takes.
            if e.code == .notFound, context.endpointPath ?? "NotFound" == "NotFound", let methods = allowed.methods(for: request.uri.path) {
                allow = methods
                e = MillionsError(.methodNotAllowed, "\(request.method.rawValue) is not allowed here; allowed: \(methods.joined(separator: ", "))")
            }
            if request.method == .options, let allow {
                response = Response(status: .noContent, headers: [.allow: allow.joined(separator: ", ")])
            } else {
                failure = e
                response = Response.error(e, requestID: requestID)
                if let allow { response.headers[.allow] = allow.joined(separator: ", ") }
            }
        }
        response.headers[.xRequestID] = requestID
        // While draining, the client closes the connection after this answer.
        if drain.isDraining { response.headers[.connection] = "close" }
        SecurityHeaders.apply(to: &response.headers)

        let route = context.endpointPath ?? "unmatched"
        let status = response.status.code
        let elapsed = ContinuousClock.now - start
        let labels = [("method", request.method.rawValue), ("route", route), ("status", String(status))]
        metrics.cachedCounter("http_server_requests", "HTTP requests by method, route and status", labels).increment()
        metrics.cachedLatency(
            "http_server_request_duration", "HTTP request latency by method and route",
            [("method", request.method.rawValue), ("route", route)]
        ).record(elapsed)

        if let failure {
            var meta = AccessLog.metadata(
                method: request.method.rawValue, path: request.uri.path, route: route, status: status, elapsed: elapsed)
            meta[LogKey.error] = .string(failure.description)
            if failure.code == .internalError {
                context.logger.error("request failed", metadata: meta)
            } else {
                context.logger.info("request", metadata: meta)
            }
        } else {
            accessLog.record(
                method: request.method.rawValue, path: request.uri.path, route: route, status: status, elapsed: elapsed,
                requestID: requestID, client: context.clientAddress)
        }
        return response
    }

    /// Accepts 1–128 characters of `[A-Za-z0-9._:-]`; anything else gets a fresh id, so a
    /// client cannot inject into log lines.
    static func requestID(from header: String?) -> String {
        if let header, !header.isEmpty, header.utf8.count <= 128,
            header.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5a) || ($0 >= 0x61 && $0 <= 0x7a) || $0 == 0x2e || $0 == 0x5f || $0 == 0x2d || $0 == 0x3a })
        {
            return header
        }
        return RequestIDs.next()
    }
}

/// The access log: one "request" line per answered request, the same from the middleware
/// and from the cached-read path.
struct AccessLog: Sendable {
    let logger: Logger
    /// The process's JSON handler, which can write the line directly (`logRequest` says when).
    let direct: JSONLogHandler?

    init(_ logger: Logger) {
        self.logger = logger
        direct = logger.handler as? JSONLogHandler
    }

    /// A successful (or client-error) request's line.
    func record(method: String, path: String, route: String, status: Int, elapsed: Duration, requestID: String, client: String) {
        let ms = Self.milliseconds(elapsed)
        if let direct,
            direct.logRequest(method: method, path: path, route: route, status: status, durationMS: ms, requestID: requestID, client: client)
        {
            return
        }
        logger.info(
            "request",
            metadata: Self.metadata(method: method, path: path, route: route, status: status, elapsed: elapsed).merging([
                LogKey.requestID: .string(requestID), LogKey.client: .string(client),
            ]) { a, _ in a })
    }

    static func metadata(method: String, path: String, route: String, status: Int, elapsed: Duration) -> Logger.Metadata {
        [
            LogKey.method: .string(method),
            LogKey.path: .string(path),
            LogKey.route: .string(route),
            LogKey.status: .stringConvertible(status),
            LogKey.durationMS: .stringConvertible(milliseconds(elapsed)),
        ]
    }

    static func milliseconds(_ d: Duration) -> Double {
        Double(d.components.attoseconds / 1_000_000_000_000) / 1000 + Double(d.components.seconds) * 1000
    }
}

/// Fresh request ids: a counter mixed with a key drawn at start, so ids differ across
/// processes and restarts, without a `getrandom` call per request. Not secrets (every
/// answer carries its id); nothing may use one as a credential.
enum RequestIDs {
    private static let key: (UInt64, UInt64) = {
        var rng = SystemRandomNumberGenerator()
        return (rng.next(), rng.next())
    }()
    private static let counter = Atomic<UInt64>(0)

    static func next() -> String {
        let n = counter.wrappingAdd(1, ordering: .relaxed).newValue
        let a = mix(n ^ key.0), b = mix(n &+ key.1)
        return Token.hex(withUnsafeBytes(of: (a, b)) { Array($0) })
    }

    /// splitmix64's finalizer.
    private static func mix(_ x: UInt64) -> UInt64 {
        var z = x &+ 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

enum SecurityHeaders {
    static func apply(to headers: inout HTTPFields) {
        headers[.xContentTypeOptions] = "nosniff"
        if headers[.contentType]?.hasPrefix("text/html") == true {
            headers[.contentSecurityPolicy] =
                "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
            headers[.xFrameOptions] = "DENY"
            headers[.referrerPolicy] = "same-origin"
        }
    }
}

extension HTTPField.Name {
    static let xRequestID = Self("X-Request-ID")!
    static let xFrameOptions = Self("X-Frame-Options")!
    static let referrerPolicy = Self("Referrer-Policy")!
}
