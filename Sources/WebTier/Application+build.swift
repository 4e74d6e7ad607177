import CacheTier
import Configuration
import DataTier
import Engines
import Edge
import Foundation
import Hummingbird
import HummingbirdCore
import HummingbirdBcrypt
import Logging
import Imaging
import MessageQueue
import Photos
import MillionsCore
import Mustache
import NIOCore
import Observability
import RedisClient
import ServiceLifecycle
import SessionTier

/// The object graph of one web server: the engines below it (`Engines`, which a worker
/// uses alone) and what only a web server needs (templates, assets, rate limits, the
/// password checks). `millions serve` and the tests both go through here.
@dynamicMemberLookup
public struct Components: Sendable {
    public let settings: Settings
    public let engines: Engines
    public let assets: AssetCatalog
    /// Set while the server drains at shutdown.
    public let drain = DrainState()
    let templates: MustacheLibrary
    let decoyHash: String
    let limits: RateLimits
    let passwords: PasswordChecks
    /// Uncached profile reads on the event loop (PostgreSQL, no cache tier, the setting on).
    let loopReads: LoopReads?

    /// `c.users`, `c.jobs`, `c.replicaSet`, …: the engines' parts.
    public subscript<T>(dynamicMember path: KeyPath<Engines, T>) -> T { engines[keyPath: path] }

    /// Opens the engines (creating the data directory and applying SQLite's migrations)
    /// and loads templates and assets.
    /// `decorateUsers` wraps the user store (tests count and slow its reads with it).
    public static func build(
        settings: Settings, logger: Logger, metrics: AppMetrics = AppMetrics(),
        decorateUsers: (any UserStore) -> any UserStore = { $0 }
    ) async throws -> Components {
        let engines = try Engines(settings: settings.engines, logger: logger, metrics: metrics, decorateUsers: decorateUsers)
        let resources = try Self.resourceDirectory()
        let limits = settings.limits
        return Components(
            settings: settings, engines: engines, assets: try AssetCatalog(directory: resources + "/public"),
            templates: try await MustacheLibrary(directory: resources + "/templates"),
            decoyHash: Bcrypt.hash(Token.random(bytes: 16), cost: UInt8(settings.auth.bcryptCost)),
            limits: RateLimits(
                // Shared by every web server when there is a Redis; else per process.
                buckets: engines.redis.map { RedisBuckets(redis: $0) as any TokenBuckets } ?? MemoryBuckets(),
                logInPerAddress: limits.logInPerAddress, logInPerAccount: limits.logInPerAccount,
                signUpPerAddress: limits.signUpPerAddress, uploadsPerAccount: limits.uploadsPerAccount,
                editsPerAccount: limits.editsPerAccount, exempt: try AddressRange.list(limits.exempt)),
            passwords: PasswordChecks(maxPending: settings.auth.maxPendingPasswordChecks),
            loopReads: settings.http.uncachedReadFastPath && engines.userCache == nil
                ? engines.replicaSet.map {
                    // The routed pool's connections, spread over the loops that serve requests.
                    LoopReads(
                        replicaSet: $0,
                        connectionsPerLoop: max(2, settings.engines.data.postgres.connectionsPerNode / System.coreCount),
                        batchLimit: settings.http.uncachedReadBatch)
                } : nil)
    }

    /// Where templates, static files and the OpenAPI document are; `MILLIONS_RESOURCES`
    /// overrides the bundle (for an installed binary).
    static func resourceDirectory() throws -> String {
        if let dir = ProcessInfo.processInfo.environment["MILLIONS_RESOURCES"] { return dir }
        guard let path = Bundle.module.resourcePath else { throw SettingsError("resource bundle not found") }
        return path
    }

    var service: UserService {
        UserService(
            users: engines.users, sessions: engines.sessions, cache: engines.userCache, settings: settings, ids: UserIDGenerator(),
            decoyHash: decoyHash, forget: engines.forgetPhotos, limits: limits, passwords: passwords)
    }

    /// The OpenAPI document served at `/openapi.yaml`.
    public func openAPIDocument() throws -> String {
        try String(contentsOfFile: Self.resourceDirectory() + "/openapi.yaml", encoding: .utf8)
    }
}

/// Builds the router with every route of the web tier.
public func buildRouter(_ c: Components) throws -> Router<AppRequestContext> {
    let router = Router(context: AppRequestContext.self, options: .autoGenerateHeadEndpoints)
    // Outermost, so the access log and everything after it see the real client.
    router.add(middleware: ForwardedMiddleware(trustedProxies: Set(c.settings.http.trustedProxies)))
    let allowed = AllowedMethods()
    router.add(middleware: ObservabilityMiddleware(metrics: c.metrics, drain: c.drain, allowed: allowed, logger: c.logger))
    router.add(middleware: ReadYourWritesMiddleware())
    let body = JSONBody(maxBytes: c.settings.http.maxBodyBytes)
    let service = c.service
    UsersController(service: service, body: body).addRoutes(to: router)
    PagesController(service: service, templates: c.templates, assets: c.assets, body: body).addRoutes(to: router)
    AssetsController(catalog: c.assets).addRoutes(to: router)
    PhotosController(
        service: service, jobs: c.jobs, requests: c.photoRequests, photos: c.photos, images: c.images, settings: c.settings,
        metrics: c.metrics, body: body
    ).addRoutes(to: router)
    OperationsController(
        users: c.users, sessions: c.sessions, metrics: c.metrics,
        openAPI: ByteBuffer(string: try c.openAPIDocument()), writesAvailable: c.data.writesAvailable, drain: c.drain,
        metricsAllow: try AddressRange.list(c.settings.http.metricsAllow)
    ).addRoutes(to: router)
    allowed.load(from: router)
    return router
}

/// What a web server runs beside the engines' own services (sweeper, in-process
/// workers), in the order they start; they stop in reverse, after the server has drained.
public func webServices(_ c: Components) -> [any Service] {
    var services: [any Service] = []
    // First, so it stops last: its connections close once nothing can read through them.
    if let reads = c.loopReads { services.append(reads) }
    // Redis expires its sessions itself; SQL sessions need sweeping. Failed log-ins are
    // forgotten once the throttle would ignore them.
    var sweeps: [Sweeper.Sweep] = []
    if c.settings.session.store == .sql {
        sweeps.append(Sweeper.Sweep("sessions") { [sessions = c.sessions] in try await sessions.purgeExpired() })
    }
    sweeps.append(
        Sweeper.Sweep("login failures") { [users = c.users, forget = c.settings.auth.loginThrottle.forgetAfterSeconds] in
            try await users.forgetLoginFailures(before: Clock.secondsSince1970() - forget)
        })
    // A city directory's tombstones need to outlive only the writes they race (seconds).
    if let sharded = c.engines.data as? ShardedEngine, c.settings.data.cityLookup == .directory {
        sweeps.append(
            Sweeper.Sweep("city directory tombstones") { [store = sharded.store] in
                try await store.purgeCityTombstones(before: Clock.secondsSince1970() - 86_400)
            })
    }
    services.append(Sweeper(sweeps, interval: c.settings.session.sweepInterval, logger: c.logger))
    // Stops after the server and before the database closes.
    let slots = c.settings.queue.inProcessWorkers
    if slots > 0 { services.append(c.engines.worker(concurrency: slots)) }
    return services
}

/// The web server: Hummingbird on the configured address. With `withEngineServices` (tests),
/// the engines' services run inside the application; `millions serve` runs them beside it
/// in its own group, so the server can close its listener for a drain without stopping them.
public func buildApplication(
    _ c: Components, withEngineServices: Bool = true,
    onServerRunning: @escaping @Sendable (any Channel) async -> Void = { _ in }
) throws -> some ApplicationProtocol {
    let router = try buildRouter(c)
    let services = withEngineServices ? c.engines.services + webServices(c) : []
    let drain = c.drain
    let s = c.settings.http
    let http1 = HTTP1Channel.Configuration(idleTimeout: s.idleTimeout.map { .milliseconds($0.inMilliseconds) })
    let limits = ConnectionLimits(
        headerTimeout: .milliseconds(s.headerTimeout.inMilliseconds),
        bodyTimeout: .milliseconds(s.bodyTimeout.inMilliseconds),
        maxPerAddress: s.maxConnectionsPerAddress, exempt: Set(s.trustedProxies))
    let (metrics, logger) = (c.metrics, c.logger)
    let earlyCache = c.userCache.flatMap { s.cachedReadFastPath && $0.isInProcess ? $0 : nil }
    let cachedReads =
        earlyCache != nil || c.loopReads != nil
        ? CachedReads(
            cache: earlyCache, loopReads: c.loopReads, drain: c.drain, trustedProxies: Set(s.trustedProxies),
            metrics: metrics, logger: logger)
        : nil
    var app = Application(
        router: router,
        server: HTTPServerBuilder { responder in
            LimitedHTTP1Channel(
                responder: responder, configuration: http1, limits: limits, metrics: metrics, logger: logger,
                cachedReads: cachedReads)
        },
        configuration: .init(
            address: .hostname(s.host, port: s.port), serverName: "millions",
            availableConnectionsDelegate: MaximumAvailableConnections(s.maxConnections, logger: logger)),
        services: services,
        onServerRunning: { channel in
            drain.listening(on: channel)
            await onServerRunning(channel)
        },
        logger: c.logger)
    // Services are running by now: wait for the data engine, then bring the schema up to date.
    app.beforeServerStarts { [engines = c.engines] in try await engines.prepare() }
    return app
}
