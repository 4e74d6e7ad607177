import DataTier
import Logging
import MillionsCore
import NIOCore
import PostgresNIO

/// Photo files in PostgreSQL (`photos.store=postgres`, the multi-dc stage): each file a
/// large object, named in `photo_files`. Streaming replication then carries every photo to
/// every site with the rest of the data, a failover keeps them, and a site that rejoins
/// (pg_rewind) gets them back, with no second replication system to run. Large objects
/// rather than a bytea column: they are catalog rows, which logical decoding skips, so the
/// caches' change feed never carries image bytes across the WAN. The trade-offs: every
/// upload crosses the WAN to the primary and back to each replica, and photos take room in
/// the database (a site of millions would use an object store with cross-region copies).
public struct PostgresPhotoStore: PhotoStore {
    let replicaSet: ReplicaSet
    let logger: Logger

    public init(replicaSet: ReplicaSet, logger: Logger) {
        self.replicaSet = replicaSet
        self.logger = logger
    }

    public func put(_ bytes: [UInt8], name: String, kind: PhotoKind) async throws {
        guard PhotoName.isValid(name) else { throw MillionsError(.badRequest, "not a photo file name") }
        let k = kind.rawValue
        let logger = self.logger
        try await replicaSet.write("photo_put") { connection in
            // One writer per name at a time, so a name never gets two objects.
            try await connection.query("SELECT pg_advisory_xact_lock(hashtext(\(k) || '/' || \(name)))", logger: logger)
            var exists = false
            for try await _ in try await connection.query("SELECT 1 FROM photo_files WHERE kind = \(k) AND name = \(name)", logger: logger).decode(Int32.self) {
                exists = true
            }
            if exists { return }
            try await connection.query(
                "INSERT INTO photo_files (kind, name, object, bytes) VALUES (\(k), \(name), lo_from_bytea(0, \(ByteBuffer(bytes: bytes))), \(bytes.count))", logger: logger)
        }
    }

    public func get(name: String, kind: PhotoKind) async throws -> [UInt8]? {
        guard PhotoName.isValid(name) else { throw MillionsError(.badRequest, "not a photo file name") }
        let k = kind.rawValue
        let fetch: @Sendable (PostgresClient) async throws -> [UInt8]? = { client in
            for try await buffer in try await client.query("SELECT lo_get(object) FROM photo_files WHERE kind = \(k) AND name = \(name)")
                .decode(ByteBuffer.self)
            {
                return Array(buffer.readableBytesView)
            }
            return nil
        }
        if let bytes = try await replicaSet.read("photo_get", fetch) { return bytes }
        // Names never change, so a replica without the file has not replayed it yet.
        return try await replicaSet.readPrimary("photo_get", fetch)
    }

    public func delete(name: String, kind: PhotoKind) async throws {
        guard PhotoName.isValid(name) else { throw MillionsError(.badRequest, "not a photo file name") }
        let k = kind.rawValue
        let logger = self.logger
        try await replicaSet.write("photo_delete") { connection in
            try await connection.query(
                "SELECT lo_unlink(object) FROM photo_files WHERE kind = \(k) AND name = \(name)", logger: logger)
            try await connection.query("DELETE FROM photo_files WHERE kind = \(k) AND name = \(name)", logger: logger)
        }
    }

    public func list(kind: PhotoKind) async throws -> [String] {
        let k = kind.rawValue
        return try await replicaSet.readPrimary("photo_list") { client in
            var names: [String] = []
            for try await name in try await client.query("SELECT name FROM photo_files WHERE kind = \(k) ORDER BY name").decode(String.self) {
                names.append(name)
            }
            return names
        }
    }
}
