import CacheTier
import DataTier
import Imaging
import Logging
import MessageQueue
import MillionsCore
import Observability
import Photos
import RedisClient
import ServiceLifecycle
import SessionTier
import UnixSignals

/// The engines of every tier below the web tier, built from settings: the data engine,
/// sessions, cache, queue, photo files and image threads. A web server wraps them in its
/// `Components`; a worker, `seed`, `migrate` and `jobs` use them alone.
public struct Engines: Sendable {
    public let settings: EngineSettings
    public let logger: Logger
    public let metrics: AppMetrics
    public let data: any DataEngine
    public let users: any UserStore
    public let sessions: any SessionStore
    /// The Redis client, when `session.store` or `queue.engine` is `redis`.
    public let redis: RedisClient?
    /// The in-process cache, when `cache.backend` is `memory`.
    public let memory: (any InProcessCache)?
    /// The memcached pool, when `cache.backend` is `memcached`.
    public let memcached: MemcachedCache?
    public let userCache: ReadThrough<User>?
    /// The job queue: in the data engine, or Redis Streams.
    public let jobs: any JobQueue
    /// Photo originals and variants.
    public let photos: any PhotoStore
    /// New photo versions and their jobs, in one transaction where the queue allows.
    public let photoRequests: any PhotoRequests
    /// Bounded threads for image work (uploads' header checks, photo jobs).
    public let images: ImageProcessor

    /// The SQLite database, when `data.engine` is `sqlite`.
    public var database: SQLiteDatabase? { (data as? SQLiteEngine)?.database }
    /// The PostgreSQL primary and replicas, when `data.engine` is `postgres`.
    public var replicaSet: ReplicaSet? { (data as? PostgresEngine)?.replicaSet }

    /// Opens every configured engine (SQLite is migrated here; PostgreSQL in `prepare`).
    /// `decorateUsers` wraps the user store (tests count and slow its reads with it).
    public init(
        settings: EngineSettings, logger: Logger, metrics: AppMetrics = AppMetrics(),
        decorateUsers: (any UserStore) -> any UserStore = { $0 }
    ) throws {
        self.settings = settings
        self.logger = logger
        self.metrics = metrics
        let data: any DataEngine =
            switch settings.data.engine {
            case .sqlite: try SQLiteEngine(settings: settings.data, logger: logger)
            case .postgres: try PostgresEngine(settings: settings.data, metrics: metrics, logger: logger)
            case .sharded: try ShardedEngine(settings: settings.data, metrics: metrics, logger: logger)
            }
        self.data = data
        let redis = settings.usesRedis ? RedisClient(configuration: settings.redis, metrics: metrics, logger: logger) : nil
        self.redis = redis
        let users = decorateUsers(MeteredUserStore(data.users, metrics: metrics))
        self.users = users

        switch (settings.session.store, redis) {
        case (.redis, let redis?): sessions = RedisSessionStore(redis: redis)
        default: sessions = data.sessions
        }
        switch (settings.queue.engine, redis) {
        case (.redis, let redis?):
            jobs = RedisJobQueue(redis: redis)
            // Redis holds the jobs and the data engine the users: two separate writes.
            photoRequests = SeparatePhotoRequests(users: users, jobs: jobs)
        default:
            jobs = data.jobs
            photoRequests = data.photoRequests
        }
        switch settings.photos.store {
        case .postgres:
            guard let files = data.photoFiles(logger: logger) else {
                throw SettingsError("photos.store=postgres needs data.engine=postgres")
            }
            photos = files
        case .folder:
            photos = try FolderPhotoStore(directory: settings.photos.directory)
        }
        images = ImageProcessor.shared(threads: settings.photos.threads)

        let cache = settings.cache
        switch cache.backend {
        case .memory:
            let now: @Sendable () -> Double = { Clock.secondsSince1970() }
            memory =
                switch cache.policy {
                case .lru: LRUCache(maxEntries: cache.maxEntries, maxBytes: cache.maxBytes, now: now)
                case .tinylfu: TinyLFUCache(maxEntries: cache.maxEntries, maxBytes: cache.maxBytes, now: now)
                }
            memcached = nil
        case .memcached:
            memory = nil
            memcached = try MemcachedCache(
                nodes: cache.memcachedNodes, gutter: cache.memcachedGutter, options: cache.memcached, metrics: metrics,
                logger: logger)
        case .none:
            memory = nil
            memcached = nil
        }
        var readOptions = ReadThrough<User>.Options()
        readOptions.stampedeProtection = cache.stampedeProtection
        readOptions.leaseWaitAttempts = Int(cache.leaseWait.inMilliseconds / 20)
        // A shared cache gets the celebrity's reads on one node: count keys, and keep hot
        // ones here too when configured. A request that has written reads past the copy.
        let hot = memcached.map { _ in
            ReadThrough<User>.HotSpots(
                keys: HotKeys(metrics: metrics, hotShare: cache.hotKeyShare), near: cache.nearTTL.map { NearCache(ttl: $0) },
                bypass: { !(ReadYourWrites.current?.positions.isEmpty ?? true) })
        }
        let shared: (any Cache)? = memory ?? memcached
        userCache = shared.map {
            ReadThrough<User>(
                kind: "user", cache: $0, ttl: cache.ttl, negativeTTL: cache.negativeTTL, metrics: metrics, logger: logger,
                options: readOptions, hot: hot, encode: { $0.json })
        }
    }

    /// The engines' long-running parts in start order (they stop in reverse): the data
    /// engine's pools first, so they close last.
    public var services: [any Service] {
        var services = data.services
        if let redis { services.append(redis) }
        // Its background loop brings failed nodes back.
        if let memcached { services.append(memcached) }
        return services
    }

    /// Waits until the data engine takes writes and brings the schema up to date; returns
    /// every applied migration's name. Needs `services` running.
    @discardableResult
    public func prepare() async throws -> [String] { try await data.prepare() }

    /// Runs `body` with the engines' services running and the schema up to date (it is
    /// given every applied migration's name), then stops them: the lifecycle of a command
    /// that does one thing and exits.
    public func withRunning<T: Sendable>(_ body: ([String]) async throws -> T) async throws -> T {
        let group = ServiceGroup(configuration: .init(services: services, logger: logger))
        return try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            let result: Result<T, any Error>
            do {
                let migrations = try await prepare()
                result = .success(try await body(migrations))
            } catch {
                result = .failure(error)
            }
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
            return try result.get()
        }
    }

    /// The lifecycle of a long-running role (`serve`, `worker`): the engines' services,
    /// then `roleServices` (started in order, stopped in reverse, so they stop before the
    /// engines they use), until SIGTERM or SIGINT.
    public func serviceGroup(_ roleServices: [any Service]) -> ServiceGroup {
        ServiceGroup(
            configuration: .init(
                services: services + roleServices, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
    }

    /// Queues the deletion of photo files nothing names any more.
    public var forgetPhotos: ForgetPhotos.Scheduler {
        ForgetPhotos.Scheduler(
            jobs: jobs, maxAttempts: settings.queue.maxAttempts, graceSeconds: settings.photos.replacedGrace.inSeconds)
    }

    /// Consumers for every job kind this build knows, with the configured lease and grace.
    public func worker(concurrency: Int) -> Worker {
        var handlers = StandardHandlers.all(touchDirectory: settings.queue.touchDirectory)
        handlers[PhotoJobs.queue] = PhotoJobs.handler(
            store: photos, users: users, processor: images, limits: settings.photos.imageLimits, metrics: metrics,
            forget: forgetPhotos,
            refresh: { [userCache, users] id in
                guard let userCache else { return }
                await userCache.invalidate(id)
                // Fill it again at once, from a node that has the photo (the job's
                // read-your-writes scope), before a reader fills it from a replica that has
                // not replayed the write yet.
                _ = try? await userCache.get(id) { try await users.user(id: id) }
            })
        handlers[ForgetPhotos.queue] = ForgetPhotos.handler(
            store: photos, edges: EdgePurge(edges: settings.photos.purgeEdges), metrics: metrics)
        return Worker(
            queue: jobs, handlers: handlers, options: settings.queue.workerOptions(concurrency: concurrency), metrics: metrics,
            logger: logger)
    }

    /// The worker's followers of the primaries' change feeds (`cache.followSlot`), which
    /// delete cached profiles once this site's replicas have replayed their writes: one per
    /// cluster (a sharded tier has a primary per shard cluster).
    public func changeFollowers() throws -> [any Service] {
        guard !settings.cache.followSlot.isEmpty, let userCache else { return [] }
        let sets: [ReplicaSet] =
            if let replicaSet { [replicaSet] } else if let sharded = data as? ShardedEngine { sharded.order.compactMap { sharded.clusters[$0] } } else { [] }
        return try sets.map { set in
            let feed = try ChangeFeed(set: set, slot: settings.cache.followSlot, logger: logger)
            return ChangeFollower(changes: feed, cache: userCache, metrics: metrics, logger: logger)
        }
    }
}

/// The data tier's change feed is what the cache tier's follower reads.
extension ChangeFeed: CommittedChanges {
    public func prepare() async throws -> UInt64? { try await ensureSlot() }

    public func next(limit: Int) async throws -> (commits: [(position: UInt64, ids: [Int64])], through: UInt64)? {
        try await peek(limit: limit).map { batch in (batch.commits.map { ($0.position, $0.userIDs) }, batch.through) }
    }
}
