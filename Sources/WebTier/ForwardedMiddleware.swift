import HTTPTypes
import Hummingbird
import Logging
import MillionsCore
import Observability

/// Believes `X-Forwarded-For` and `X-Forwarded-Proto` only from trusted peers (the load
/// balancer), so a client cannot claim another address by sending the headers itself.
/// Behind an HTTPS-terminating proxy the session cookies gain `Secure`.
struct ForwardedMiddleware: RouterMiddleware {
    typealias Context = AppRequestContext
    let trustedProxies: Set<String>

    func handle(
        _ request: Request, context: AppRequestContext,
        next: (Request, AppRequestContext) async throws -> Response
    ) async throws -> Response {
        var context = context
        let resolved = Forwarded.resolve(
            peer: context.peerAddress, forwardedFor: request.headers[values: .xForwardedFor],
            forwardedProto: request.headers[.xForwardedProto], trusted: trustedProxies)
        context.clientAddress = resolved.client
        context.isHTTPS = resolved.https
        context.logger[metadataKey: LogKey.client] = .string(resolved.client)
        var response = try await next(request, context)
        if resolved.https {
            let cookies = response.headers[values: .setCookie]
            if cookies.contains(where: { !$0.lowercased().contains("; secure") }) {
                response.headers[values: .setCookie] = cookies.map { $0.lowercased().contains("; secure") ? $0 : $0 + "; Secure" }
            }
        }
        return response
    }
}

/// The pure part: who the client is and how it connected.
enum Forwarded {
    /// Walks `X-Forwarded-For` from the right (the hop nearest us) past trusted proxies;
    /// the first untrusted address is the client. Only a trusted peer's headers count.
    static func resolve(peer: String?, forwardedFor: [String], forwardedProto: String?, trusted: Set<String>)
        -> (client: String, https: Bool)
    {
        let peer = peer ?? "unknown"
        guard trusted.contains(peer) else { return (peer, false) }
        let hops = forwardedFor.flatMap { $0.split(separator: ",") }.map { String($0).trimmed }
            .filter { !$0.isEmpty }
        var client = peer
        for hop in hops.reversed() {
            client = hop
            if !trusted.contains(hop) { break }
        }
        let proto = forwardedProto?.split(separator: ",").first.map { String($0).trimmed.lowercased() }
        return (client, proto == "https")
    }
}

extension HTTPField.Name {
    static let xForwardedFor = Self("X-Forwarded-For")!
    static let xForwardedProto = Self("X-Forwarded-Proto")!
}
