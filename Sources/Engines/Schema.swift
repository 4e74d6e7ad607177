import DataTier
import MessageQueue
import Photos
import SessionTier

/// Every tier's schema steps for each data engine, in the order they are applied: users
/// first (the photo columns extend their table), then sessions, jobs and photos.
public enum Schema {
    public static let sqlite = UserSchema.sqlite + SessionSchema.sqlite + JobSchema.sqlite + PhotoSchema.sqlite
    public static let postgres = UserSchema.postgres + SessionSchema.postgres + JobSchema.postgres + PhotoSchema.postgres

    /// A cluster of a sharded data tier: the tiers' steps, then the shard fence and the email
    /// directory; the directory cluster also keeps the shard maps.
    public static func shardedCluster(directory: Bool) -> [Migration] {
        postgres + ShardSchema.cluster + (directory ? ShardSchema.directory : [])
    }
}

extension PostgresEngine {
    /// Applies every tier's pending steps on `set`'s primary (tests and tools that hold a
    /// replica set of their own).
    @discardableResult
    public static func migrate(_ set: ReplicaSet) async throws -> [String] {
        try await PostgresMigrations.migrate(set, Schema.postgres)
    }
}
