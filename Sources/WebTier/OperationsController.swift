import DataTier
import HTTPTypes
import Hummingbird
import Logging
import MillionsCore
import NIOCore
import Observability
import SessionTier

/// Liveness, readiness, metrics, and the API's own description.
struct OperationsController {
    let users: any UserStore
    let sessions: any SessionStore
    let metrics: AppMetrics
    let openAPI: ByteBuffer
    /// With a primary/replica data tier: whether writes can be served right now.
    let writesAvailable: (@Sendable () -> Bool)?
    let drain: DrainState
    /// Who may read `/metrics` (see `http.metricsAllow`).
    let metricsAllow: [AddressRange]

    func addRoutes(to router: Router<AppRequestContext>) {
        router.get("/healthz") { _, _ in
            try Response.json(["status": "ok"], headers: [.cacheControl: "no-store"])
        }
        router.get("/readyz", use: ready)
        router.get("/metrics") { [metrics, metricsAllow] _, context in
            // The figures describe the system's inside: only for the operators' networks.
            // No peer at all means an in-process test client.
            guard context.peerAddress == nil || metricsAllow.contains(where: { $0.contains(context.clientAddress) }) else {
                throw MillionsError(.notFound, "no such resource")
            }
            return Response(
                status: .ok,
                headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8", .cacheControl: "no-store"],
                body: .init(byteBuffer: ByteBuffer(bytes: metrics.exposition())))
        }
        router.get("/openapi.yaml") { [openAPI] _, _ in
            Response(
                status: .ok, headers: [.contentType: "application/yaml; charset=utf-8", .cacheControl: "no-cache"],
                body: .init(byteBuffer: openAPI))
        }
    }

    /// 200 when every dependency answers, else 503 naming the ones that did not.
    @Sendable func ready(_ request: Request, context: AppRequestContext) async throws -> Response {
        var checks: [String: String] = [:]
        var ok = true
        do { try await users.ping(); checks["users"] = "ok" } catch {
            ok = false
            checks["users"] = "unreachable"
            context.logger.warning("readiness: user store", metadata: ["error": "\(error)"])
        }
        do { try await sessions.ping(); checks["sessions"] = "ok" } catch {
            ok = false
            checks["sessions"] = "unreachable"
            context.logger.warning("readiness: session store", metadata: ["error": "\(error)"])
        }
        if drain.isDraining {
            ok = false
            checks["server"] = "draining"
        }
        // Reads working but no primary: still serving (reads), but say so.
        var degraded = !ok
        if let writesAvailable {
            let writable = writesAvailable()
            checks["primary"] = writable ? "ok" : "unreachable"
            degraded = degraded || !writable
        }
        struct Body: Encodable {
            let status: String
            let checks: [String: String]
        }
        return try Response.json(
            Body(status: degraded ? "degraded" : "ready", checks: checks), status: ok ? .ok : .serviceUnavailable,
            headers: [.cacheControl: "no-store"])
    }
}
