import Hummingbird
import Synchronization

/// The methods each route path accepts, read from the router once every route is added,
/// so an unmatched request on a known path answers 405 with `Allow` instead of 404.
final class AllowedMethods: Sendable {
    private struct Route: Sendable {
        let segments: [Substring]
        let methods: [String]
    }
    private let routes = Mutex<[Route]>([])

    /// Reads the routes of `router` (call after every route is added).
    func load(from router: Router<AppRequestContext>) {
        var byPath: [String: Set<String>] = [:]
        for route in router.routes { byPath["\(route.path)", default: []].insert(route.method.rawValue) }
        let list = byPath.map { path, methods in
            var all = methods
            // Hummingbird answers HEAD for GET routes; OPTIONS is answered here.
            if all.contains("GET") { all.insert("HEAD") }
            all.insert("OPTIONS")
            return Route(segments: Self.segments(path), methods: all.sorted())
        }
        routes.withLock { $0 = list }
    }

    /// The methods allowed on `path`, or nil when no route has that path.
    func methods(for path: String) -> [String]? {
        let parts = Self.segments(path)
        return routes.withLock { routes in
            routes.first { Self.matches($0.segments, parts) }?.methods
        }
    }

    private static func segments(_ path: String) -> [Substring] {
        path.split(separator: "/", omittingEmptySubsequences: true)
    }

    /// `{name}` and `*` match one segment, `**` the rest; anything else literally.
    private static func matches(_ pattern: [Substring], _ parts: [Substring]) -> Bool {
        var i = 0
        for p in pattern {
            if p == "**" { return i < parts.count }
            guard i < parts.count else { return false }
            if !(p == "*" || (p.hasPrefix("{") && p.hasSuffix("}")) || p == parts[i]) { return false }
            i += 1
        }
        return i == parts.count
    }
}
