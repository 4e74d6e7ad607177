import Cluster
import DataTier
import Engines
import Foundation
import GRDB
import Logging
@testable import MessageQueue
import WebTier
import Photos
import Imaging
import MillionsCore
import MillionsTesting
import Observability
import PostgresNIO
import RedisClient
import ServiceLifecycle
import Synchronization
import Testing

/// A clock the tests move by hand.
final class QueueClock: Sendable {
    private let value = Mutex(Clock.secondsSince1970())
    var now: Double { value.withLock { $0 } }
    func advance(_ s: Double) { value.withLock { $0 += s } }
}

/// The queue drivers. `Engine` stays the SQL engines: the store suites use it too, and
/// `enqueueJoinsTheCallersTransaction` has no Redis form. Redis runs over RESP3 (what the
/// client asks for) and RESP2, whose replies have other shapes.
enum QueueEngine: String, CaseIterable, Sendable { case sqlite, postgres, redis, redisResp2 }

/// Every driver through one suite: SQLite, PostgreSQL on the shared real topology, and
/// Redis (a fresh server per test). Each test uses queues of its own, so runs can share a
/// database.
@Suite struct QueueDriverSuite {
    static func withQueue(
        _ engine: QueueEngine, now: @escaping @Sendable () -> Double = { Clock.secondsSince1970() },
        _ body: @escaping @Sendable (any JobQueue, String) async throws -> Void
    ) async throws {
        let q = "q-\(UUID().uuidString.prefix(8))"
        switch engine {
        case .sqlite:
            try await SQLiteStoreTests.withDatabase { db in try await body(SQLiteJobQueue(database: db, now: now), q) }
        case .postgres:
            try await withSharedReplicaSet { set in try await body(PostgresJobQueue(replicaSet: set, now: now), q) }
        case .redis, .redisResp2:
            try await withRedis(protocolVersion: engine == .redis ? 3 : 2) { redis in
                try await body(RedisJobQueue(redis: redis, prefix: "mq-\(q)", now: now), q)
            }
        }
    }

    /// A fresh Redis server (appendonly, as `scripts/redis` starts it) and a client with
    /// four pipelined connections, for one test.
    static func withRedis(protocolVersion: Int = 3, _ body: (RedisClient) async throws -> Void) async throws {
        try await RedisServer.with { server in
            var config = try RedisClient.Configuration.forTests(server)
            config.protocolVersion = protocolVersion
            let redis = RedisClient(configuration: config, metrics: AppMetrics(), logger: quietLogger)
            defer { redis.close() }
            #expect(try await redis.negotiatedProtocol() == protocolVersion)
            try await body(redis)
        }
    }

    @Test(arguments: QueueEngine.allCases) func claimsInOrderAndCompletes(engine: QueueEngine) async throws {
        try await Self.withQueue(engine) { jobs, q in
            let a = try await jobs.enqueue(queue: q, payload: #"{"n":1}"#)
            let b = try await jobs.enqueue(queue: q, payload: #"{"n":2}"#)
            let first = try #require(try await jobs.claim(queues: [q], worker: "w1", leaseSeconds: 30))
            #expect(first.id == a && first.state == .running && first.attempts == 1 && first.worker == "w1")
            #expect(first.payload == #"{"n":1}"#)
            #expect(try await jobs.claim(queues: [q], worker: "w2", leaseSeconds: 30)?.id == b)
            #expect(try await jobs.claim(queues: [q], worker: "w3", leaseSeconds: 30) == nil)
            try await jobs.complete(id: a, worker: "w1")
            #expect(try await jobs.job(id: a)?.state == .done)
            #expect(try await jobs.job(id: a)?.resultPositions == [:])
            // The result's commit positions are kept with the job, all 64 bits of each, by
            // cluster: an unsharded tier's ("") and a sharded tier's clusters' alike.
            let positions: [String: UInt64] = ["": 0xFFFF_FFF0_0000_1234, "b": 0x0001_0000_0A00_0010]
            try await jobs.complete(id: b, worker: "w2", resultPositions: positions)
            #expect(try await jobs.job(id: b)?.resultPositions == positions)
            let stats = try await jobs.stats().first { $0.queue == q }
            #expect(stats?.done == 2 && stats?.running == 0 && stats?.ready == 0)
        }
    }

    /// A worker that stops heartbeating loses its job to the next claim once the lease
    /// runs out; its late `complete` changes nothing.
    @Test(arguments: QueueEngine.allCases) func anExpiredLeaseHandsTheJobToAnotherWorker(engine: QueueEngine) async throws {
        let clock = QueueClock()
        try await Self.withQueue(engine, now: { clock.now }) { jobs, q in
            let id = try await jobs.enqueue(queue: q, payload: "{}")
            _ = try #require(try await jobs.claim(queues: [q], worker: "dies", leaseSeconds: 10))
            clock.advance(5)
            #expect(try await jobs.claim(queues: [q], worker: "other", leaseSeconds: 10) == nil)
            #expect(try await jobs.heartbeat(id: id, worker: "dies", leaseSeconds: 10))  // now until +15
            clock.advance(9)
            #expect(try await jobs.claim(queues: [q], worker: "other", leaseSeconds: 10) == nil)
            clock.advance(7)
            let again = try #require(try await jobs.claim(queues: [q], worker: "other", leaseSeconds: 10))
            #expect(again.id == id && again.attempts == 2 && again.worker == "other")
            #expect(try await !jobs.heartbeat(id: id, worker: "dies", leaseSeconds: 10))
            try await jobs.complete(id: id, worker: "dies")
            #expect(try await jobs.job(id: id)?.state == .running)
            try await jobs.complete(id: id, worker: "other")
            #expect(try await jobs.job(id: id)?.state == .done)
        }
    }

    @Test(arguments: QueueEngine.allCases) func failuresBackOffThenDieAndCanBeRetried(engine: QueueEngine) async throws {
        let clock = QueueClock()
        try await Self.withQueue(engine, now: { clock.now }) { jobs, q in
            let id = try await jobs.enqueue(queue: q, payload: "{}", maxAttempts: 2, delaySeconds: 0)
            _ = try #require(try await jobs.claim(queues: [q], worker: "w", leaseSeconds: 30))
            try await jobs.fail(id: id, worker: "w", error: "boom 1", retryAt: clock.now + 10)
            #expect(try await jobs.job(id: id)?.state == .ready)
            clock.advance(5)
            #expect(try await jobs.claim(queues: [q], worker: "w", leaseSeconds: 30) == nil)
            clock.advance(6)
            #expect(try await jobs.claim(queues: [q], worker: "w", leaseSeconds: 30)?.attempts == 2)
            try await jobs.fail(id: id, worker: "w", error: "boom 2", retryAt: clock.now + 10)
            let dead = try #require(try await jobs.job(id: id))
            #expect(dead.state == .dead && dead.lastError == "boom 2")
            #expect(try await jobs.deadJobs(limit: 1000).contains { $0.id == id })
            clock.advance(100)
            #expect(try await jobs.claim(queues: [q], worker: "w", leaseSeconds: 30) == nil)
            #expect(try await jobs.retryDead(id: id))
            #expect(try await !jobs.retryDead(id: id))
            let revived = try #require(try await jobs.claim(queues: [q], worker: "w", leaseSeconds: 30))
            #expect(revived.id == id && revived.attempts == 1)
        }
    }

    @Test(arguments: QueueEngine.allCases) func aLeaseLostOnTheLastAttemptIsDeadAndReleaseDoesNotCount(engine: QueueEngine) async throws {
        let clock = QueueClock()
        try await Self.withQueue(engine, now: { clock.now }) { jobs, q in
            let id = try await jobs.enqueue(queue: q, payload: "{}", maxAttempts: 1, delaySeconds: 0)
            _ = try #require(try await jobs.claim(queues: [q], worker: "w", leaseSeconds: 10))
            try await jobs.release(id: id, worker: "w")
            let released = try #require(try await jobs.job(id: id))
            #expect(released.state == .ready && released.attempts == 0)
            _ = try #require(try await jobs.claim(queues: [q], worker: "w", leaseSeconds: 10))
            clock.advance(11)
            #expect(try await jobs.claim(queues: [q], worker: "w2", leaseSeconds: 10) == nil)
            #expect(try await jobs.job(id: id)?.state == .dead)
        }
    }

    /// Eight workers claiming at once over 100 jobs: every job is handed out exactly once.
    @Test(arguments: QueueEngine.allCases) func concurrentClaimsNeverShareAJob(engine: QueueEngine) async throws {
        try await Self.withQueue(engine) { jobs, q in
            for i in 0..<100 { try await jobs.enqueue(queue: q, payload: "{\"i\":\(i)}") }
            let claimed = try await withThrowingTaskGroup(of: [Int64].self) { group in
                for w in 0..<8 {
                    group.addTask {
                        var mine: [Int64] = []
                        while let job = try await jobs.claim(queues: [q], worker: "w\(w)", leaseSeconds: 30) { mine.append(job.id) }
                        return mine
                    }
                }
                return try await group.reduce(into: [Int64]()) { $0 += $1 }
            }
            #expect(claimed.count == 100)
            #expect(Set(claimed).count == 100)
        }
    }

    /// Many callers at once (the PostgreSQL queue batches them into shared statements):
    /// each enqueue gets its own job's id, each claim one job, each completion its own result.
    @Test(arguments: QueueEngine.allCases) func concurrentCallersEachGetTheirOwnAnswer(engine: QueueEngine) async throws {
        try await Self.withQueue(engine) { jobs, q in
            let ids = try await withThrowingTaskGroup(of: (Int, Int64).self) { group in
                for i in 0..<200 {
                    group.addTask { (i, try await jobs.enqueue(queue: q, payload: "{\"i\":\(i)}", maxAttempts: 3, delaySeconds: 0)) }
                }
                return try await group.reduce(into: [Int: Int64]()) { $0[$1.0] = $1.1 }
            }
            #expect(Set(ids.values).count == 200)
            for (i, id) in ids { #expect(try await jobs.job(id: id)?.payload == "{\"i\":\(i)}") }
            let claimed = try await withThrowingTaskGroup(of: [Int64].self) { group in
                for w in 0..<16 {
                    group.addTask {
                        var mine: [Int64] = []
                        while let job = try await jobs.claim(queues: [q], worker: "w\(w % 4)", leaseSeconds: 30) {
                            #expect(job.state == .running && job.worker == "w\(w % 4)")
                            try await jobs.complete(id: job.id, worker: "w\(w % 4)", resultPositions: ["": UInt64(job.id) * 7])
                            mine.append(job.id)
                        }
                        return mine
                    }
                }
                return try await group.reduce(into: [Int64]()) { $0 += $1 }
            }
            #expect(claimed.count == 200 && Set(claimed) == Set(ids.values))
            for id in ids.values {
                let job = try await jobs.job(id: id)
                #expect(job?.state == .done && job?.resultPositions == ["": UInt64(id) * 7])
            }
        }
    }

    /// The job commits or rolls back with the write that causes it. SQL only: a Redis job
    /// cannot join a transaction of the database the user's write goes to.
    @Test(arguments: Engine.allCases) func enqueueJoinsTheCallersTransaction(engine: Engine) async throws {
        struct Rollback: Error {}
        let q = "tx-\(UUID().uuidString.prefix(8))"
        switch engine {
        case .sqlite:
            try await SQLiteStoreTests.withDatabase { db in
                let now = Clock.secondsSince1970()
                _ = try? await db.write { d -> Int64 in
                    _ = try SQLiteJobQueue.enqueue(d, queue: q, payload: "{}", maxAttempts: 1, runAt: now, now: now)
                    throw Rollback()
                }
                let kept = try await db.write { d in try SQLiteJobQueue.enqueue(d, queue: q, payload: "{}", maxAttempts: 1, runAt: now, now: now) }
                let jobs = SQLiteJobQueue(database: db)
                #expect(try await jobs.stats().first { $0.queue == q }?.ready == 1)
                #expect(try await jobs.job(id: kept) != nil)
            }
        case .postgres:
            try await withSharedReplicaSet { set in
                let now = Clock.secondsSince1970()
                _ = try? await set.write("test") { c -> Int64 in
                    _ = try await PostgresJobQueue.enqueue(c, queue: q, payload: "{}", maxAttempts: 1, runAt: now, now: now)
                    throw Rollback()
                }
                _ = try await set.write("test") { c in try await PostgresJobQueue.enqueue(c, queue: q, payload: "{}", maxAttempts: 1, runAt: now, now: now) }
                #expect(try await PostgresJobQueue(replicaSet: set).stats().first { $0.queue == q }?.ready == 1)
            }
        }
    }

    /// An idle PostgreSQL worker waiting on LISTEN wakes when a job is enqueued, long
    /// before its timeout. Jobs are enqueued once a second until it wakes, since the test
    /// cannot see when LISTEN has begun (a notify before it is not delivered; the worker's
    /// claim after the wait covers that case).
    @Test func postgresWakesIdleWorkersByNotify() async throws {
        try await Self.withQueue(.postgres) { jobs, q in
            let start = ContinuousClock.now
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await jobs.waitForWork(timeoutSeconds: 120) }
                group.addTask {
                    while !Task.isCancelled {
                        try await jobs.enqueue(queue: q, payload: "{}")
                        try await Task.sleep(for: .seconds(1))
                    }
                }
                _ = try await group.next()
                group.cancelAll()
            }
            #expect(ContinuousClock.now - start < .seconds(60))
        }
    }

    /// Redis: a consumer that claims a job and stalls (no heartbeat, no outcome) keeps its
    /// stream entry pending; once the lease has run out, the next claim moves that same
    /// pending entry to the new consumer (XCLAIM, a second delivery, attempt 2), and the
    /// stalled consumer, holding nothing any more, leaves the group. Its late calls change
    /// nothing.
    @Test func redisReclaimsAStalledConsumersPendingEntry() async throws {
        let clock = QueueClock()
        try await Self.withRedis { redis in
            let jobs = RedisJobQueue(redis: redis, prefix: "stall", now: { clock.now })
            let q = "images"
            let stream = jobs.streamKey(q)
            /// Every pending entry of the queue's group: (entry id, consumer, deliveries).
            func pending() async throws -> [(entry: String, consumer: String, deliveries: Int64)] {
                let reply = try await redis.send(RedisCommand("XPENDING", stream, RedisJobQueue.group, "-", "+", "10"))
                var out: [(entry: String, consumer: String, deliveries: Int64)] = []
                for item in reply.elements ?? [] {
                    let f = item.elements ?? []
                    guard f.count == 4, let entry = f[0].string, let consumer = f[1].string, let deliveries = f[3].int else {
                        Issue.record("unexpected XPENDING entry \(item)")
                        continue
                    }
                    out.append((entry, consumer, deliveries))
                }
                return out
            }
            func consumers() async throws -> [String] {
                let reply = try await redis.send(RedisCommand("XINFO", "CONSUMERS", stream, RedisJobQueue.group))
                return (reply.elements ?? []).compactMap { $0["name"]?.string }
            }

            let id = try await jobs.enqueue(queue: q, payload: "{}")
            let first = try #require(try await jobs.claim(queues: [q], worker: "stalled", leaseSeconds: 10))
            #expect(first.id == id && first.attempts == 1)
            let before = try await pending()
            #expect(before.count == 1 && before.first?.consumer == "stalled" && before.first?.deliveries == 1)
            clock.advance(5)
            #expect(try await jobs.claim(queues: [q], worker: "rescuer", leaseSeconds: 10) == nil)
            clock.advance(6)
            let again = try #require(try await jobs.claim(queues: [q], worker: "rescuer", leaseSeconds: 10))
            #expect(again.id == id && again.attempts == 2 && again.worker == "rescuer")
            let after = try await pending()
            #expect(after.count == 1 && after.first?.entry == before.first?.entry)
            #expect(after.first?.consumer == "rescuer" && after.first?.deliveries == 2)
            #expect(try await consumers() == ["rescuer"])

            #expect(try await !jobs.heartbeat(id: id, worker: "stalled", leaseSeconds: 10))
            try await jobs.complete(id: id, worker: "stalled")
            try await jobs.fail(id: id, worker: "stalled", error: "late", retryAt: nil)
            try await jobs.release(id: id, worker: "stalled")
            let running = try #require(try await jobs.job(id: id))
            #expect(running.state == .running && running.worker == "rescuer" && running.attempts == 2)

            try await jobs.complete(id: id, worker: "rescuer")
            #expect(try await jobs.job(id: id)?.state == .done)
            #expect(try await pending().isEmpty)
            #expect(try await redis.send(RedisCommand("XLEN", stream)).int == 0)
            #expect(try await consumers().isEmpty)
        }
    }

    /// Redis: a worker with several queues gets the oldest entry over all of them, as the SQL
    /// drivers hand out the oldest due row, not its queues one after the other.
    @Test func redisClaimsTheOldestEntryOverAllItsQueues() async throws {
        try await Self.withRedis { redis in
            let jobs = RedisJobQueue(redis: redis, prefix: "order")
            var enqueued: [Int64] = []
            for q in ["b", "a", "b", "a", "a", "b"] { enqueued.append(try await jobs.enqueue(queue: q, payload: "{}")) }
            var claimed: [Int64] = []
            while let job = try await jobs.claim(queues: ["a", "b"], worker: "w", leaseSeconds: 30) { claimed.append(job.id) }
            #expect(claimed == enqueued)
            let stats = try await jobs.stats()
            #expect(stats.map(\.queue) == ["a", "b"] && stats.allSatisfy { $0.running == 3 && $0.ready == 0 })
        }
    }
}

/// The worker runtime in process, on SQLite.
@Suite struct WorkerTests {
    static func run(_ worker: Worker, until done: @escaping @Sendable () async throws -> Bool) async throws {
        let group = ServiceGroup(configuration: .init(services: [worker], logger: quietLogger))
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            for _ in 0..<1200 {  // a minute at most, however loaded the machine
                if try await done() { break }
                try await Task.sleep(for: .milliseconds(50))
            }
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
        }
    }

    static func options(_ concurrency: Int = 4) -> Worker.Options {
        var o = Worker.Options()
        o.concurrency = concurrency
        o.backoff = Backoff(baseSeconds: 0.02, maxSeconds: 0.1)
        o.idleWaitSeconds = 0.05
        o.graceSeconds = 0.3
        o.leaseSeconds = 5
        return o
    }

    @Test func runsJobsRetriesFailuresAndDeadLettersThem() async throws {
        try await SQLiteStoreTests.withDatabase { db in
            let jobs = SQLiteJobQueue(database: db)
            let ran = Atomic<Int>(0)
            let handlers: [String: JobHandler] = [
                "count": { _ in ran.add(1, ordering: .relaxed) },
                "flaky": { job in if job.attempts < 3 { throw JobFailure("not yet") } },
                "fail": StandardHandlers.fail,
                "corrupt": { _ in throw JobFailure("not an image", permanent: true) },
            ]
            for _ in 0..<200 { try await jobs.enqueue(queue: "count", payload: "{}") }
            let flaky = try await jobs.enqueue(queue: "flaky", payload: "{}", maxAttempts: 5, delaySeconds: 0)
            let failing = try await jobs.enqueue(queue: "fail", payload: "{}", maxAttempts: 3, delaySeconds: 0)
            let corrupt = try await jobs.enqueue(queue: "corrupt", payload: "{}", maxAttempts: 5, delaySeconds: 0)
            let metrics = AppMetrics()
            let worker = Worker(queue: jobs, handlers: handlers, options: Self.options(), metrics: metrics, logger: quietLogger)
            try await Self.run(worker) {
                let s = try await jobs.stats()
                return s.reduce(0) { $0 + $1.done + $1.dead } == 203
            }
            #expect(ran.load(ordering: .relaxed) == 200)
            let f = try #require(try await jobs.job(id: flaky))
            #expect(f.state == .done && f.attempts == 3)
            let d = try #require(try await jobs.job(id: failing))
            #expect(d.state == .dead && d.attempts == 3 && d.lastError?.contains("fails on purpose") == true)
            let c = try #require(try await jobs.job(id: corrupt))
            #expect(c.state == .dead && c.attempts == 1 && c.lastError == "not an image")
            let text = String(decoding: metrics.exposition(), as: UTF8.self)
            #expect(text.contains(#"jobs_total{queue="count",outcome="done"} 200"#))
            #expect(text.contains(#"jobs_total{queue="fail",outcome="dead"} 1"#))
            #expect(text.contains("job_duration_seconds"))
        }
    }

    /// Shutdown while a long job runs: it gets the grace period, then goes back to the
    /// queue without its run counting.
    @Test func shutdownReleasesAJobThatOutlivesTheGracePeriod() async throws {
        try await SQLiteStoreTests.withDatabase { db in
            let jobs = SQLiteJobQueue(database: db)
            let started = Atomic<Bool>(false)
            let handlers: [String: JobHandler] = [
                "long": { _ in
                    started.store(true, ordering: .relaxed)
                    try await Task.sleep(for: .seconds(30))
                }
            ]
            let id = try await jobs.enqueue(queue: "long", payload: "{}")
            let worker = Worker(queue: jobs, handlers: handlers, options: Self.options(1), metrics: AppMetrics(), logger: quietLogger)
            try await Self.run(worker) { started.load(ordering: .relaxed) }
            let job = try #require(try await jobs.job(id: id))
            #expect(job.state == .ready && job.attempts == 0)
        }
    }
}

/// `millions worker` and `millions jobs` as processes, on one SQLite file.
@Suite(.serialized) struct QueueCommandTests {
    static func state(_ dir: String, _ id: Int64) throws -> (state: String, attempts: Int) {
        let db = try DatabaseQueue(path: dir + "/millions.sqlite")
        return try db.read { d in
            let row = try #require(try Row.fetchOne(d, sql: "SELECT state, attempts FROM jobs WHERE id = ?", arguments: [id]))
            return (row["state"], row["attempts"])
        }
    }

    static func waitFor(_ seconds: Double, _ condition: () throws -> Bool) async throws -> Bool {
        for _ in 0..<Int(seconds * 10) {
            if try condition() { return true }
            try await Task.sleep(for: .milliseconds(100))
        }
        return try condition()
    }

    static func startWorker(_ binary: String, _ dir: String, log: String) throws -> Int32 {
        try Processes.spawnDetached(
            [binary, "worker", "--concurrency", "1", "--data-dir", dir, "--log-level", "info", "--set", "queue.leaseSeconds=1.5",
             "--set", "queue.touchDirectory=\(dir)",
             "--set", "queue.backoffBaseSeconds=0.05"], log: dir + "/" + log)
    }

    /// The diagnostic `touch` job writes only directly in the folder the operator named;
    /// without one (production) it fails at once, for good.
    @Test func touchWritesOnlyInItsFolder() async throws {
        try await TestApp.withTemporaryDirectory { dir in
            func job(_ path: String) -> Job {
                Job(id: 7, queue: "touch", payload: #"{"path":"\#(path)"}"#, state: .running, attempts: 1, maxAttempts: 1,
                    runAt: 0, leaseUntil: nil, worker: nil, lastError: nil, createdAt: 0)
            }
            for (folder, path) in [(nil, dir + "/a"), (dir, "/etc/millions-touched"), (dir, dir + "/../escaped"), (dir, dir + "/sub/b")] {
                await #expect(throws: JobFailure.self) { try await StandardHandlers.touch(in: folder)(job(path)) }
            }
            #expect(!FileManager.default.fileExists(atPath: "/etc/millions-touched"))
            try await StandardHandlers.touch(in: dir)(job(dir + "/ok"))
            #expect(try String(contentsOfFile: dir + "/ok", encoding: .utf8) == "job 7\n")
        }
    }

    /// kill -9 a worker in the middle of a job: once the lease runs out another worker runs
    /// it, and the job's file exists exactly once.
    @Test func aKilledWorkersJobIsFinishedByAnotherExactlyOnce() async throws {
        try await TestApp.withTemporaryDirectory { dir in
            let binary = try EndToEndTests.binary()
            let out = dir + "/out.txt"
            #expect(try await Command.runOffPool([binary, "jobs", "enqueue", "touch", #"{"path":"\#(out)","ms":2500}"#, "--data-dir", dir]) == 0)
            let a = try Self.startWorker(binary, dir, log: "a.log")
            #expect(try await Self.waitFor(60) { try Self.state(dir, 1).state == "running" })
            Processes.signal(a, SIGKILL)
            #expect(try await Self.waitFor(60) { !Processes.isAlive(a) })
            #expect(!FileManager.default.fileExists(atPath: out))
            let b = try Self.startWorker(binary, dir, log: "b.log")
            defer { Processes.stop(b, grace: 10) }
            #expect(try await Self.waitFor(60) { try Self.state(dir, 1).state == "done" })
            #expect(try Self.state(dir, 1).attempts == 2)
            #expect(try String(contentsOfFile: out, encoding: .utf8) == "job 1\n")
            let files = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasPrefix("out.txt") }
            #expect(files == ["out.txt"])
        }
    }

    /// The same for a photo job (a slow edit of a 12-megapixel photo): the second worker
    /// makes the variants, each exists once, and the profile shows them.
    @Test func aKilledWorkersPhotoJobIsFinishedByAnotherWithEachVariantOnce() async throws {
        try await TestApp.withTemporaryDirectory { dir in
            let binary = try EndToEndTests.binary()
            let settings = try TestApp.settings(dataDirectory: dir, ["queue.inProcessWorkers": "0"])
            let c = try await TestApp.components(settings)
            let (user, payload, id) = try await stagePhotoJob(
                c, try Imaging.testImage(width: 4000, height: 3000, format: .jpeg),
                edits: Edits(sharpen: .init(sigma: 2), blur: .init(sigma: 20)))
            try c.database?.close()

            let a = try Self.startWorker(binary, dir, log: "a.log")
            #expect(try await Self.waitFor(60) { try Self.state(dir, id).state == "running" })
            Processes.signal(a, SIGKILL)
            #expect(try await Self.waitFor(60) { !Processes.isAlive(a) })
            let variants = dir + "/photos/variants"
            let before = try FileManager.default.contentsOfDirectory(atPath: variants)
            let b = try Self.startWorker(binary, dir, log: "b.log")
            defer { Processes.stop(b, grace: 10) }
            #expect(try await Self.waitFor(120) { try Self.state(dir, id).state == "done" })
            #expect(try Self.state(dir, id).attempts == 2)
            let after = try FileManager.default.contentsOfDirectory(atPath: variants).sorted()
            #expect(after == PhotoJobs.variantFiles(payload).values.sorted(), "before the kill: \(before)")
            let check = try await TestApp.components(settings)
            #expect(try await check.users.user(id: user.id)?.photo == PhotoJobs.photo(payload))
            try check.database?.close()
        }
    }

    /// A handler that always fails ends dead after its attempts; `millions jobs dead`
    /// lists it and `millions jobs retry` puts it back.
    @Test func deadJobsAreListedAndRetriedFromTheCommandLine() async throws {
        try await TestApp.withTemporaryDirectory { dir in
            let binary = try EndToEndTests.binary()
            #expect(try await Command.runOffPool([binary, "jobs", "enqueue", "fail", "--max-attempts", "3", "--data-dir", dir]) == 0)
            let w = try Self.startWorker(binary, dir, log: "w.log")
            #expect(try await Self.waitFor(60) { try Self.state(dir, 1) == ("dead", 3) })
            Processes.stop(w, grace: 10)
            #expect(try await Command.runOffPool([binary, "jobs", "dead", "--data-dir", dir]) == 0)
            #expect(try await Command.runOffPool([binary, "jobs", "retry", "1", "--data-dir", dir]) == 0)
            #expect(try Self.state(dir, 1) == ("ready", 0))
            #expect(try await Command.runOffPool([binary, "jobs", "retry", "1", "--data-dir", dir]) != 0)
            let log = try String(contentsOfFile: dir + "/w.log", encoding: .utf8)
            #expect(log.components(separatedBy: "\"msg\":\"job failed\"").count - 1 == 3)
        }
    }
}

@Suite struct BatcherTests {
    /// A batch is shared by every caller in it, so it runs with none of the leading caller's
    /// task-locals (a request's read-your-writes scope would get the batch's write position
    /// and pay the query for it, while the other callers would get nothing).
    @Test func aBatchRunsWithoutItsLeadingCallersTaskLocals() async throws {
        let scopes = Mutex<[Bool]>([])
        let batcher = Batcher<Int, Int>(maxBatch: 8) { inputs in
            scopes.withLock { $0.append(ReadYourWrites.current != nil) }
            return inputs.map { $0 * 2 }
        }
        let out = try await ReadYourWrites.$current.withValue(ReadYourWrites()) { try await batcher.submit(21) }
        #expect(out == 42)
        #expect(scopes.withLock { $0 } == [false])
    }
}
