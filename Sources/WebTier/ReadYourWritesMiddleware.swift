import DataTier
import Hummingbird

/// Carries a client's last write positions (timeline and WAL position, `LSN.position`; one
/// per cluster when users are sharded) between requests in the `millions_lsn` cookie, so its reads go only to replicas that have
/// replayed its writes (or to the primary). The value only affects the client that sends it:
/// a stale one gives it stale reads, an inflated position sends its reads to the primary, an
/// inflated timeline gets it 503s (no node has that history) until the cookie expires.
struct ReadYourWritesMiddleware: RouterMiddleware {
    typealias Context = AppRequestContext
    static let cookie = "millions_lsn"
    /// After this long every replica within the lag bound has the write anyway.
    static let maxAge = 300

    func handle(
        _ request: Request, context: AppRequestContext,
        next: (Request, AppRequestContext) async throws -> Response
    ) async throws -> Response {
        let incoming = request.cookies[Self.cookie].map { ReadYourWrites.positions(cookie: $0.value) } ?? [:]
        let ryw = ReadYourWrites(positions: incoming)
        var response = try await ReadYourWrites.$current.withValue(ryw) { try await next(request, context) }
        if ryw.advanced {
            response.setCookie(
                Cookie(
                    name: Self.cookie, value: ryw.cookieValue, maxAge: Self.maxAge, path: "/",
                    httpOnly: true, sameSite: .lax))
        }
        return response
    }
}
