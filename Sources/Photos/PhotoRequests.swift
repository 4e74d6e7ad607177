import DataTier
import GRDB
import Imaging
import Logging
import MessageQueue
import MillionsCore
import PostgresNIO

/// Takes a new photo version for a user and queues the job that makes it. Where the queue
/// lives in the data engine, both happen in one transaction: a version without its job
/// (or a job without its version) never exists.
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

/// The embedded default: one SQLite write transaction.
public struct SQLitePhotoRequests: PhotoRequests {
    let database: SQLiteDatabase
    public init(database: SQLiteDatabase) { self.database = database }

    public func request(user: UserID, source: String?, edits: Edits?, maxAttempts: Int) async throws
        -> (payload: PhotoJobs.Payload, job: Int64)?
    {
        let now = Clock.secondsSince1970()
        return try await database.pool.write { db in
            guard let ticket = try SQLiteUserStore.beginPhoto(db, id: user, source: source) else { return nil }
            let payload = PhotoJobs.Payload(user, ticket, edits)
            let job = try SQLiteJobQueue.enqueue(
                db, queue: PhotoJobs.queue, payload: payload.json, maxAttempts: maxAttempts, runAt: now, now: now)
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
            guard let ticket = try await PostgresUserStore.beginPhoto(c, id: user, source: source, logger: Logger(label: "millions.photos"))
            else { return nil }
            let payload = PhotoJobs.Payload(user, ticket, edits)
            let job = try await PostgresJobQueue.enqueue(
                c, queue: PhotoJobs.queue, payload: payload.json, maxAttempts: maxAttempts, runAt: now, now: now)
            return (payload, job)
        }
    }
}

/// A queue in another store (Redis): the version, then the job. If the enqueue fails the
/// version is skipped, which is harmless (versions only need to grow); an upload's new
/// original then waits for the next upload or edit to be processed.
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
        return (payload, try await PhotoJobs.enqueue(payload, on: jobs, maxAttempts: maxAttempts))
    }
}
