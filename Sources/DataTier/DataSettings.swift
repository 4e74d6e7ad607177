import Configuration
import MillionsCore

/// Which engine holds users (and, with `queue.engine=sql` / `session.store=sql`, jobs and
/// sessions): the embedded SQLite file, PostgreSQL primary + replicas, or users sharded
/// over several such clusters (`data.shards.clusters`).
public enum DataEngineKind: String, Sendable, CaseIterable {
    case sqlite, postgres, sharded
}

/// How a sharded tier finds the people of a city (`GET /users?city=`): from every cluster
/// at once (`scatter`), or from the city directory, a denormalized copy on the cluster that
/// owns the city's logical shard (`directory`; one cluster per read, written with each
/// sign-up, name or city change and deletion).
public enum CityLookup: String, Sendable, CaseIterable {
    case directory, scatter
}

/// The data tier's keys (`data.*`).
public struct DataSettings: Sendable {
    public var engine: DataEngineKind
    /// Folder of the SQLite file (and the default photos folder).
    public var directory: String
    public var postgres: PostgresSettings
    /// With `sharded`: each cluster's name and nodes, in map order; the first also keeps the
    /// shard map, sessions and jobs. Connection settings are `postgres`'s.
    public var shardClusters: [(name: String, nodes: [String])]
    /// How long a cross-shard read (the newest users) waits for each cluster.
    public var shardGatherDeadline: Duration
    /// With `sharded`: where the people of a city are read from (`data.shards.cityLookup`).
    public var cityLookup: CityLookup

    public var databasePath: String { directory + "/millions.sqlite" }

    /// `config` is scoped to `data`.
    public init(_ config: ConfigReader) throws {
        directory = config.string(forKey: "directory", default: "./data")
        engine = try settingChoice(config.string(forKey: "engine", default: "sqlite"), key: "data.engine")
        postgres = PostgresSettings(nodes: config.string(forKey: "postgres.nodes", default: "").commaSeparated)
        postgres.remoteNodes = config.string(forKey: "postgres.remoteNodes", default: "").commaSeparated
        postgres.user = config.string(forKey: "postgres.user", default: "postgres")
        postgres.password = config.string(forKey: "postgres.password", isSecret: true)
        postgres.database = config.string(forKey: "postgres.database", default: "millions")
        postgres.connectionsPerNode = config.int(forKey: "postgres.connectionsPerNode", default: 10)
        postgres.queryTimeout = .milliseconds(config.int(forKey: "postgres.timeoutMs", default: 2000))
        postgres.discoveryInterval = .milliseconds(config.int(forKey: "postgres.discoveryMs", default: 500))
        postgres.maxLagBytes = UInt64(max(0, config.int(forKey: "postgres.maxLagBytes", default: 16 * 1024 * 1024)))
        postgres.maxLagSeconds = config.double(forKey: "postgres.maxLagSeconds", default: 10)
        try checkSetting(engine != .postgres || !postgres.nodes.isEmpty, "data.postgres.nodes must list host:port pairs")
        let gatherMs = config.int(forKey: "shards.gatherMs", default: 500)
        try checkSetting(gatherMs >= 1 && gatherMs <= 60_000, "data.shards.gatherMs must be 1...60000")
        shardGatherDeadline = .milliseconds(gatherMs)
        cityLookup = try settingChoice(config.string(forKey: "shards.cityLookup", default: "directory"), key: "data.shards.cityLookup")
        // `a=host:port,host:port;b=host:port`
        let clusters = config.string(forKey: "shards.clusters", default: "")
        shardClusters = try clusters.split(separator: ";").map { part in
            let pieces = part.split(separator: "=", maxSplits: 1).map { String($0).trimmed }
            guard pieces.count == 2, !pieces[0].isEmpty, pieces[0].allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" }),
                !pieces[1].commaSeparated.isEmpty
            else { throw SettingsError("data.shards.clusters must be name=host:port,…;name=host:port,…, not \(clusters)") }
            return (pieces[0], pieces[1].commaSeparated)
        }
        try checkSetting(
            engine != .sharded || !shardClusters.isEmpty, "data.engine=sharded needs data.shards.clusters (name=host:port,…;…)")
        try checkSetting(
            Set(shardClusters.map(\.name)).count == shardClusters.count, "data.shards.clusters names each cluster once")
        try checkSetting(postgres.connectionsPerNode >= 1, "data.postgres.connectionsPerNode must be positive")
    }
}
