import DataTier
import GRDB
import Imaging
import Logging
import MessageQueue
import MillionsCore
import PostgresNIO

/// Takes a new photo version for a user and queues the job that makes it, and, for an
/// upload, the job that forgets the original it replaced. Where the queue lives in the
/// data engine, all happen in one transaction: a version without its job (or a job
/// without its version) never exists.
public protocol PhotoRequests: Sendable {
    /// nil if there is no such user, or (`source` nil: an edit) no photo to edit.
    func request(user: UserID, source: String?, edits: Edits?, maxAttempts: Int) async throws
        -> (payload: PhotoJobs.Payload, job: Int64)?
}

extension PhotoJobs.Payload {
    init(_ user: UserID, _ ticket: PhotoTicket, _ edits: Edits?) {
        self.init(user: user.rawValue, version: ticket.version, source: ticket.source, edits: edits)
    }
}

extension PhotoTicket {
    /// The replaced original, to forget. Safe at once: edits now start from the new upload,
    /// and a job of an older version finds itself superseded before it reads its original.
    var forget: ForgetPhotos.Payload? {
        replaced.map { ForgetPhotos.Payload(originals: [$0], variants: []) }
    }
}

/// The embedded default: one SQLite write transaction.
public struct SQLitePhotoRequests: PhotoRequests {
    let database: SQLiteDatabase
    public init(database: SQLiteDatabase) { self.database = database }

    public func request(user: UserID, source: String?, edits: Edits?, maxAttempts: Int) async throws
        -> (payload: PhotoJobs.Payload, job: Int64)?
    {
        let now = Clock.secondsSince1970()
        return try await database.write { db in
            guard let ticket = try SQLiteUserStore.beginPhoto(db, id: user, source: source) else { return nil }
            let payload = PhotoJobs.Payload(user, ticket, edits)
            let job = try SQLiteJobQueue.enqueue(
                db, queue: PhotoJobs.queue, payload: payload.json, maxAttempts: maxAttempts, runAt: now, now: now)
            if let forget = ticket.forget {
                _ = try SQLiteJobQueue.enqueue(
                    db, queue: ForgetPhotos.queue, payload: forget.json, maxAttempts: maxAttempts, runAt: now, now: now)
            }
            return (payload, job)
        }
    }
}

/// PostgreSQL: one transaction on the primary (the NOTIFY to idle workers goes at commit).
public struct PostgresPhotoRequests: PhotoRequests {
    let set: ReplicaSet
    public init(replicaSet: ReplicaSet) { self.set = replicaSet }

    public func request(user: UserID, source: String?, edits: Edits?, maxAttempts: Int) async throws
        -> (payload: PhotoJobs.Payload, job: Int64)?
    {
        let now = Clock.secondsSince1970()
        return try await set.write("photo_request") { c in
            guard let ticket = try await PostgresUserStore.beginPhoto(c, id: user, source: source, logger: c.logger)
            else { return nil }
            let payload = PhotoJobs.Payload(user, ticket, edits)
            let job = try await PostgresJobQueue.enqueue(
                c, queue: PhotoJobs.queue, payload: payload.json, maxAttempts: maxAttempts, runAt: now, now: now)
            if let forget = ticket.forget {
                _ = try await PostgresJobQueue.enqueue(
                    c, queue: ForgetPhotos.queue, payload: forget.json, maxAttempts: maxAttempts, runAt: now, now: now)
            }
            return (payload, job)
        }
    }
}

/// A sharded tier: the version and its jobs in one transaction on the user's cluster, whose
/// part of the queue the job's id then names (`ShardedJobQueue`). A shard moving meanwhile
/// is retried as any write to it (`ShardedUserStore.onOwner`).
public struct ShardedPhotoRequests: PhotoRequests {
    let users: ShardedUserStore
    let jobs: ShardedJobQueue
    public init(users: ShardedUserStore, jobs: ShardedJobQueue) {
        self.users = users
        self.jobs = jobs
    }

    public func request(user: UserID, source: String?, edits: Edits?, maxAttempts: Int) async throws
        -> (payload: PhotoJobs.Payload, job: Int64)?
    {
        let made = try await users.onOwner(of: user) { name, set in
            try await PostgresPhotoRequests(replicaSet: set).request(user: user, source: source, edits: edits, maxAttempts: maxAttempts)
                .map { ($0.payload, $0.job, name) }
        }
        guard let (payload, local, cluster) = made else { return nil }
        return (payload, try await jobs.id(local: local, on: cluster))
    }
}

/// A queue in another store (Redis): the version, then the jobs. If an enqueue fails the
/// version is skipped, which is harmless (versions only need to grow); an upload's new
/// original then waits for the next upload or edit to be processed, and a replaced one
/// stays on disk (`millions images` lists it).
public struct SeparatePhotoRequests: PhotoRequests {
    let users: any UserStore
    let jobs: any JobQueue
    public init(users: any UserStore, jobs: any JobQueue) {
        self.users = users
        self.jobs = jobs
    }

    public func request(user: UserID, source: String?, edits: Edits?, maxAttempts: Int) async throws
        -> (payload: PhotoJobs.Payload, job: Int64)?
    {
        guard let ticket = try await users.beginPhoto(id: user, source: source) else { return nil }
        let payload = PhotoJobs.Payload(user, ticket, edits)
        let job = try await PhotoJobs.enqueue(payload, on: jobs, maxAttempts: maxAttempts)
        if let forget = ticket.forget {
            _ = try await jobs.enqueue(queue: ForgetPhotos.queue, payload: forget.json, maxAttempts: maxAttempts, delaySeconds: 0)
        }
        return (payload, job)
    }
}
