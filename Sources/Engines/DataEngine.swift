import DataTier
import Foundation
import Logging
import MessageQueue
import MillionsCore
import Observability
import Photos
import ServiceLifecycle
import SessionTier

/// One data engine and everything it supplies to the tiers that keep their state in it:
/// users, SQL sessions, the SQL job queue, photo versions with their jobs, photo files
/// (where the engine can hold them), the services that must run while it is used, and
/// the schema.
public protocol DataEngine: Sendable {
    var users: any UserStore { get }
    /// Sessions in the engine's `sessions` table (`session.store=sql`).
    var sessions: any SessionStore { get }
    /// Jobs in the engine's `jobs` table (`queue.engine=sql`).
    var jobs: any JobQueue { get }
    /// New photo versions and their jobs in one transaction (`queue.engine=sql`).
    var photoRequests: any PhotoRequests { get }
    /// Photo files kept in the engine itself (`photos.store=postgres`), if it can.
    func photoFiles(logger: Logger) -> (any PhotoStore)?
    /// What runs while the engine is used (pools), in start order.
    var services: [any Service] { get }
    /// Waits until the engine takes writes, then applies pending migrations; returns the
    /// names of every applied migration. Needs `services` running.
    func prepare() async throws -> [String]
    /// Whether writes can be taken now (readiness), where the engine can tell.
    var writesAvailable: (@Sendable () -> Bool)? { get }
}

/// The embedded default: one SQLite file.
public struct SQLiteEngine: DataEngine {
    public let database: SQLiteDatabase

    /// Opens (creating the folder and file if needed) and migrates the database.
    public init(settings: DataSettings, logger: Logger) throws {
        try FileManager.default.createDirectory(atPath: settings.directory, withIntermediateDirectories: true)
        database = try SQLiteDatabase(path: settings.databasePath, migrations: Schema.sqlite, logger: logger)
    }

    public var users: any UserStore { SQLiteUserStore(database: database) }
    public var sessions: any SessionStore { SQLiteSessionStore(database: database) }
    public var jobs: any JobQueue { SQLiteJobQueue(database: database) }
    public var photoRequests: any PhotoRequests { SQLitePhotoRequests(database: database) }
    public func photoFiles(logger: Logger) -> (any PhotoStore)? { nil }
    public var services: [any Service] { [database] }
    public func prepare() async throws -> [String] { try database.appliedMigrations() }
    public var writesAvailable: (@Sendable () -> Bool)? { nil }
}

/// PostgreSQL primary + streaming replicas.
public struct PostgresEngine: DataEngine {
    public let replicaSet: ReplicaSet

    public init(settings: DataSettings, metrics: AppMetrics, logger: Logger) throws {
        replicaSet = try ReplicaSet(settings: settings.postgres, metrics: metrics, logger: logger)
    }

    public var users: any UserStore { PostgresUserStore(replicaSet: replicaSet) }
    public var sessions: any SessionStore { PostgresSessionStore(replicaSet: replicaSet) }
    public var jobs: any JobQueue { PostgresJobQueue(replicaSet: replicaSet) }
    public var photoRequests: any PhotoRequests { PostgresPhotoRequests(replicaSet: replicaSet) }
    public func photoFiles(logger: Logger) -> (any PhotoStore)? { PostgresPhotoStore(replicaSet: replicaSet, logger: logger) }
    public var services: [any Service] { [replicaSet] }

    public func prepare() async throws -> [String] {
        try await replicaSet.waitUntilDiscovered()
        return try await Self.migrate(replicaSet)
    }

    public var writesAvailable: (@Sendable () -> Bool)? {
        { [replicaSet] in replicaSet.primaryIndex != nil }
    }
}

/// Users sharded over several PostgreSQL clusters (each a primary and its replicas) by
/// the logical shard in their ids (`ShardedUserStore`). The first cluster is the directory:
/// it keeps the shard map. SQL sessions live with their user (`ShardedSessionRows`); jobs
/// are spread over every cluster's queue, a photo's job on its user's cluster (`ShardedJobQueue`).
public struct ShardedEngine: DataEngine {
    public let clusters: [String: ReplicaSet]
    public let order: [String]
    public let store: ShardedUserStore
    public let queue: ShardedJobQueue
    public let logger: Logger
    /// The first cluster.
    let directory: ReplicaSet

    public init(settings: DataSettings, metrics: AppMetrics, logger: Logger) throws {
        var clusters: [String: ReplicaSet] = [:]
        for (name, nodes) in settings.shardClusters {
            var postgres = settings.postgres
            postgres.nodes = nodes
            clusters[name] = try ReplicaSet(settings: postgres, metrics: metrics, logger: logger, scope: name)
        }
        self.clusters = clusters
        self.logger = logger
        order = settings.shardClusters.map(\.name)
        guard let first = order.first, let directory = clusters[first] else {
            throw SettingsError("data.engine=sharded needs data.shards.clusters")
        }
        self.directory = directory
        store = ShardedUserStore(
            clusters: clusters, directory: ShardDirectory(set: directory), metrics: metrics, logger: logger,
            gatherDeadline: settings.shardGatherDeadline, cityLookup: settings.cityLookup)
        queue = ShardedJobQueue(clusters: clusters, order: order, directory: store.directory, logger: logger)
    }
    public var users: any UserStore { store }
    public var sessions: any SessionStore { PostgresSessionStore(rows: ShardedSessionRows(users: store)) }
    public var jobs: any JobQueue { queue }
    public var photoRequests: any PhotoRequests { ShardedPhotoRequests(users: store, jobs: queue) }
    public func photoFiles(logger: Logger) -> (any PhotoStore)? { nil }
    public var services: [any Service] { order.compactMap { clusters[$0] } }

    /// Every cluster up and migrated, then the map (version 1 on a new tier).
    public func prepare() async throws -> [String] {
        var applied: [String] = []
        for name in order {
            guard let set = clusters[name] else { continue }
            try await set.waitUntilDiscovered()
            applied += try await PostgresMigrations.migrate(set, Schema.shardedCluster(directory: set === directory)).map { "\(name): \($0)" }
        }
        try await store.directory.initialize(clusters: clusters, order: order)
        // Before any job is enqueued: a job's id names its cluster by number. Numbering
        // locks the table, so only a start that brings a new cluster does it.
        if !Set(order).isSubset(of: try await store.directory.clusterNumbers(refresh: true).keys) {
            try await store.directory.number(order)
        }
        return applied
    }

    public var writesAvailable: (@Sendable () -> Bool)? {
        { [clusters] in clusters.values.allSatisfy { $0.primaryIndex != nil } }
    }
}
