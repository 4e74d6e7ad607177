import Edge
import Hummingbird
import MillionsCore
import NIOCore

/// Serves the content-hashed static assets: cacheable forever, with an ETag and 304s.
/// A CDN in front caches them; without one, the origin still serves every asset.
struct AssetsController {
    let catalog: AssetCatalog

    func addRoutes(to router: Router<AppRequestContext>) {
        router.get("/assets/{name}") { request, context in
            guard let name = context.parameters.get("name"), let asset = catalog.asset(hashedName: name) else {
                throw MillionsError(.notFound, "no such asset")
            }
            return Self.respond(asset, request: request, cacheControl: AssetCatalog.immutable)
        }
        router.get("/favicon.ico") { request, _ in
            guard let asset = catalog.asset(logicalName: "favicon.svg") else {
                throw MillionsError(.notFound, "no favicon")
            }
            // Browsers ask for this fixed URL, so it cannot be immutable.
            return Self.respond(asset, request: request, cacheControl: "public, max-age=86400")
        }
    }

    static func respond(_ asset: Asset, request: Request, cacheControl: String) -> Response {
        var headers: HTTPFields = [.eTag: asset.etag, .cacheControl: cacheControl]
        if AssetCatalog.ifNoneMatch(request.headers[.ifNoneMatch], matches: asset.etag) {
            return Response(status: .notModified, headers: headers)
        }
        headers[.contentType] = asset.contentType
        return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: asset.bytes)))
    }
}
