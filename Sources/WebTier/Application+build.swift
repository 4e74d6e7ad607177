import CacheTier
import Configuration
import DataTier
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

/// The object graph of one web server, built from settings. `millions serve` and the
/// tests both go through here, with different configuration.
public struct Components: Sendable {
    public let settings: Settings
    public let logger: Logger
    public let metrics: AppMetrics
    /// The embedded database, when `data.engine` is `sqlite`.
    public let database: SQLiteDatabase?
    /// The PostgreSQL primary and replicas, when `data.engine` is `postgres`.
    public let replicaSet: ReplicaSet?
    public let users: any UserStore
    public let sessions: any SessionStore
    /// The Redis client, when `session.store` or `queue.engine` is `redis`.
    public let redis: RedisClient?
    /// The in-process cache, when `cache.backend` is `memory`.
    public let memory: (any InProcessCache)?
    /// The memcached pool, when `cache.backend` is `memcached`.
    public let memcached: MemcachedCache?
    public let userCache: ReadThrough<User>?
    public let assets: AssetCatalog
    /// The job queue: in the data engine (SQLite or PostgreSQL), or Redis Streams.
    public let jobs: any JobQueue
    /// Photo originals and variants.
    public let photos: any PhotoStore
    /// New photo versions and their jobs, in one transaction where the queue allows.
    public let photoRequests: any PhotoRequests
    /// Bounded threads for image work (uploads' header checks, photo jobs).
    public let images: ImageProcessor
    /// Set while the server drains at shutdown.
    public let drain = DrainState()
    let templates: MustacheLibrary
    let decoyHash: String
    let limits: RateLimits
    let passwords: PasswordChecks

    /// Opens the stores (creating the data directory and applying migrations) and loads
    /// templates and assets.
    /// `decorateUsers` wraps the user store (tests count and slow its reads with it).
    public static func build(
        settings: Settings, logger: Logger, metrics: AppMetrics = AppMetrics(),
        decorateUsers: (any UserStore) -> any UserStore = { $0 }
    ) async throws -> Components {
        var database: SQLiteDatabase? = nil
        var replicaSet: ReplicaSet? = nil
        let baseUsers: any UserStore
        var sessions: any SessionStore
        if settings.dataEngine == "postgres" {
            let set = try ReplicaSet(settings: settings.postgres, metrics: metrics, logger: logger)
            replicaSet = set
            baseUsers = PostgresUserStore(replicaSet: set)
            sessions = PostgresSessionStore(replicaSet: set)
        } else {
            try FileManager.default.createDirectory(atPath: settings.dataDirectory, withIntermediateDirectories: true)
            let db = try SQLiteDatabase(path: settings.databasePath, logger: logger)
            database = db
            baseUsers = SQLiteUserStore(database: db)
            sessions = SQLiteSessionStore(database: db)
        }
        var redis: RedisClient? = nil
        if settings.sessionStore == "redis" || settings.queueEngine == "redis" {
            var config = try RedisClient.Configuration(address: settings.redisAddress)
            config.password = settings.redisPassword
            config.database = settings.redisDatabase
            config.protocolVersion = settings.redisProtocol
            config.connections = settings.redisConnections
            config.timeout = .milliseconds(Int64(settings.redisTimeoutMS))
            config.connectTimeout = config.timeout
            config.sentinels = settings.redisSentinels
            config.masterName = settings.redisMasterName
            config.waitReplicas = settings.redisWaitReplicas
            config.waitTimeout = .milliseconds(Int64(settings.redisWaitTimeoutMS))
            let client = RedisClient(configuration: config, metrics: metrics, logger: logger)
            redis = client
            if settings.sessionStore == "redis" { sessions = RedisSessionStore(redis: client) }
        }
        var memory: (any InProcessCache)? = nil
        var memcached: MemcachedCache? = nil
        switch settings.cacheBackend {
        case "memory":
            let now: @Sendable () -> Double = { Clock.secondsSince1970() }
            memory =
                settings.cachePolicy == "lru"
                ? LRUCache(maxEntries: settings.cacheMaxEntries, maxBytes: settings.cacheMaxBytes, now: now)
                : TinyLFUCache(maxEntries: settings.cacheMaxEntries, maxBytes: settings.cacheMaxBytes, now: now)
        case "memcached":
            var options = MemcachedCache.Options()
            options.connectionsPerNode = settings.memcachedConnectionsPerNode
            options.timeout = .milliseconds(Int64(settings.memcachedTimeoutMS))
            options.failureThreshold = settings.memcachedFailureThreshold
            options.retrySeconds = settings.memcachedRetrySeconds
            options.password = settings.memcachedPassword
            options.leaseSeconds = settings.memcachedLeaseSeconds
            options.fallbackTTLSeconds = settings.memcachedFallbackTTLSeconds
            memcached = try MemcachedCache(
                nodes: settings.memcachedNodes, gutter: settings.memcachedGutter, options: options, metrics: metrics,
                logger: logger)
        default:
            break
        }
        let cache: (any Cache)? = memory ?? memcached
        let users = decorateUsers(MeteredUserStore(baseUsers, metrics: metrics))
        var readOptions = ReadThrough<User>.Options()
        readOptions.stampedeProtection = settings.stampedeProtection
        readOptions.leaseWaitAttempts = settings.leaseWaitMS / 20
        let userCache = cache.map {
            ReadThrough<User>(
                kind: "user", cache: $0, ttl: .seconds(settings.cacheTTLSeconds),
                negativeTTL: .seconds(settings.cacheNegativeTTLSeconds), metrics: metrics, logger: logger,
                options: readOptions, encode: { $0.json })
        }
        let resources = try Self.resourceDirectory()
        let cost = UInt8(settings.bcryptCost)
        let jobs: any JobQueue = redis.flatMap { r in settings.queueEngine == "redis" ? RedisJobQueue(redis: r) : nil }
            ?? replicaSet.map { PostgresJobQueue(replicaSet: $0) as any JobQueue } ?? SQLiteJobQueue(database: database!)
        let photoRequests: any PhotoRequests =
            if jobs is RedisJobQueue { SeparatePhotoRequests(users: users, jobs: jobs) }
            else if let replicaSet { PostgresPhotoRequests(replicaSet: replicaSet) }
            else { SQLitePhotoRequests(database: database!) }
        return Components(
            settings: settings, logger: logger, metrics: metrics, database: database, replicaSet: replicaSet,
            users: users, sessions: sessions, redis: redis, memory: memory,
            memcached: memcached,
            userCache: userCache, assets: try AssetCatalog(directory: resources + "/public"),
            jobs: jobs,
            photos: try replicaSet.flatMap { settings.photosStore == "postgres" ? PostgresPhotoStore(replicaSet: $0, logger: logger) : nil }
                ?? FolderPhotoStore(directory: settings.photosDirectory),
            photoRequests: photoRequests,
            images: ImageProcessor.shared(threads: settings.photosThreads),
            templates: try await MustacheLibrary(directory: resources + "/templates"),
            decoyHash: Bcrypt.hash(Token.random(bytes: 16), cost: cost),
            limits: RateLimits(
                // Shared by every web server when there is a Redis; else per process.
                buckets: redis.map { RedisBuckets(redis: $0) as any TokenBuckets } ?? MemoryBuckets(),
                logInPerAddress: settings.logInPerAddress, logInPerAccount: settings.logInPerAccount,
                signUpPerAddress: settings.signUpPerAddress, uploadsPerAccount: settings.uploadsPerAccount,
                editsPerAccount: settings.editsPerAccount, exempt: try AddressRange.list(settings.limitsExempt)),
            passwords: PasswordChecks(maxPending: settings.maxPendingPasswordChecks))
    }

    /// Where templates, static files and the OpenAPI document are; `MILLIONS_RESOURCES`
    /// overrides the bundle (for an installed binary).
    static func resourceDirectory() throws -> String {
        if let dir = ProcessInfo.processInfo.environment["MILLIONS_RESOURCES"] { return dir }
        guard let path = Bundle.module.resourcePath else { throw SettingsError("resource bundle not found") }
        return path
    }

    /// Queues the deletion of photo files nothing names any more.
    public var forgetPhotos: ForgetPhotos.Scheduler {
        ForgetPhotos.Scheduler(jobs: jobs, maxAttempts: settings.queueMaxAttempts, graceSeconds: settings.photosReplacedGraceSeconds)
    }

    /// Consumers for every job kind this build knows, with the configured lease and grace.
    public func worker(concurrency: Int) -> Worker {
        var options = Worker.Options()
        options.concurrency = concurrency
        options.leaseSeconds = settings.queueLeaseSeconds
        options.graceSeconds = settings.queueGraceSeconds
        options.backoff = Backoff(baseSeconds: settings.queueBackoffBaseSeconds)
        var handlers = StandardHandlers.all(touchDirectory: settings.queueTouchDirectory)
        handlers[PhotoJobs.queue] = PhotoJobs.handler(
            store: photos, users: users, processor: images, limits: settings.imageLimits, metrics: metrics,
            forget: forgetPhotos, refresh: { [userCache, users] id in
                guard let userCache else { return }
                await userCache.invalidate(id)
                // Fill it again at once, from a node that has the photo (the job's
                // read-your-writes scope), before a reader fills it from a replica that has
                // not replayed the write yet.
                _ = try? await userCache.get(id) { try await users.user(id: id) }
            })
        handlers[ForgetPhotos.queue] = ForgetPhotos.handler(
            store: photos, edges: EdgePurge(edges: settings.photosPurgeEdges), metrics: metrics)
        return Worker(queue: jobs, handlers: handlers, options: options, metrics: metrics, logger: logger)
    }

    /// The worker's follower of the primary's change feed (`cache.followSlot`), which
    /// deletes cached profiles once this site's replicas have replayed their writes.
    public func changeFollower() throws -> (any Service)? {
        guard !settings.cacheFollowSlot.isEmpty, let replicaSet, let userCache else { return nil }
        let feed = try ChangeFeed(set: replicaSet, slot: settings.cacheFollowSlot, logger: logger)
        return ChangeFollower(changes: feed, cache: userCache, metrics: metrics, logger: logger)
    }

    var service: UserService {
        UserService(
            users: users, sessions: sessions, cache: userCache, settings: settings, ids: UserIDGenerator(),
            decoyHash: decoyHash, forget: forgetPhotos, limits: limits, passwords: passwords)
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
    router.add(middleware: ForwardedMiddleware(trustedProxies: Set(c.settings.trustedProxies)))
    let allowed = AllowedMethods()
    router.add(middleware: ObservabilityMiddleware(metrics: c.metrics, drain: c.drain, allowed: allowed, logger: c.logger))
    router.add(middleware: ReadYourWritesMiddleware())
    let body = JSONBody(maxBytes: c.settings.maxBodyBytes)
    let service = c.service
    UsersController(service: service, body: body).addRoutes(to: router)
    PagesController(service: service, templates: c.templates, assets: c.assets, body: body).addRoutes(to: router)
    AssetsController(catalog: c.assets).addRoutes(to: router)
    PhotosController(
        service: service, jobs: c.jobs, requests: c.photoRequests, photos: c.photos, images: c.images, settings: c.settings,
        metrics: c.metrics, body: body
    ).addRoutes(to: router)
    var writesAvailable: (@Sendable () -> Bool)? = nil
    if let set = c.replicaSet { writesAvailable = { set.primaryIndex != nil } }
    OperationsController(
        users: c.users, sessions: c.sessions, metrics: c.metrics,
        openAPI: ByteBuffer(string: try c.openAPIDocument()), writesAvailable: writesAvailable, drain: c.drain,
        metricsAllow: try AddressRange.list(c.settings.metricsAllow)
    ).addRoutes(to: router)
    allowed.load(from: router)
    return router
}

/// The services the web tier's engines run (pools, sweeper, in-process workers), in the
/// order they start; they stop in reverse, after the server has drained.
public func engineServices(_ c: Components) -> [any Service] {
    var services: [any Service] = []
    if let database = c.database { services.append(database) }
    if let set = c.replicaSet { services.append(set) }
    if let redis = c.redis { services.append(redis) }
    // Redis expires its sessions itself; SQL sessions need sweeping. Failed log-ins are
    // forgotten once the throttle would ignore them.
    var sweeps: [Sweeper.Sweep] = []
    if c.settings.sessionStore != "redis" {
        sweeps.append(Sweeper.Sweep("sessions") { [sessions = c.sessions] in try await sessions.purgeExpired() })
    }
    sweeps.append(
        Sweeper.Sweep("login failures") { [users = c.users, forget = c.settings.loginThrottle.forgetAfterSeconds] in
            try await users.forgetLoginFailures(before: Clock.secondsSince1970() - forget)
        })
    services.append(Sweeper(sweeps, interval: .seconds(c.settings.sessionSweepSeconds), logger: c.logger))
    if let memcached = c.memcached { services.append(memcached) }
    // Stops after the server and before the database closes.
    if c.settings.queueInProcessWorkers > 0 { services.append(c.worker(concurrency: c.settings.queueInProcessWorkers)) }
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
    let services = withEngineServices ? engineServices(c) : []
    let drain = c.drain
    let s = c.settings
    let http1 = HTTP1Channel.Configuration(idleTimeout: s.idleTimeoutSeconds > 0 ? .milliseconds(Int64(s.idleTimeoutSeconds * 1000)) : nil)
    let limits = ConnectionLimits(
        headerTimeout: .milliseconds(Int64(s.headerTimeoutSeconds * 1000)),
        bodyTimeout: .milliseconds(Int64(s.bodyTimeoutSeconds * 1000)),
        maxPerAddress: s.maxConnectionsPerAddress, exempt: Set(s.trustedProxies))
    let (metrics, logger) = (c.metrics, c.logger)
    let cachedReads = c.userCache.flatMap { cache in
        s.cachedReadFastPath && cache.isInProcess
            ? CachedReads(cache: cache, drain: c.drain, trustedProxies: Set(s.trustedProxies), metrics: metrics, logger: logger)
            : nil
    }
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
    if let set = c.replicaSet {
        // Services are running by now: find the primary, then bring the schema up to date.
        app.beforeServerStarts {
            try await set.waitUntilDiscovered()
            try await PostgresMigrations.migrate(set)
        }
    }
    return app
}

/// The data tier's change feed is what the cache tier's follower reads.
extension ChangeFeed: CommittedChanges {
    public func prepare() async throws -> UInt64? { try await ensureSlot() }

    public func next(limit: Int) async throws -> (commits: [(position: UInt64, ids: [Int64])], through: UInt64)? {
        try await peek(limit: limit).map { batch in (batch.commits.map { ($0.position, $0.userIDs) }, batch.through) }
    }
}
