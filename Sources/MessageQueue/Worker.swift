import DataTier
import Foundation
import Logging
import Observability
import Prometheus
import ServiceLifecycle
import Synchronization

/// What a job runs. Throwing retries it (with backoff) until its attempts run out;
/// throwing `JobFailure(permanent: true)` sends it to the dead letters at once.
public typealias JobHandler = @Sendable (Job) async throws -> Void

/// A failure with a reason; permanent ones (a corrupt input) are not retried.
public struct JobFailure: Error, CustomStringConvertible {
    public var description: String
    public var permanent: Bool
    public init(_ description: String, permanent: Bool = false) {
        self.description = description
        self.permanent = permanent
    }
}

/// Consumers: `concurrency` loops that claim jobs of the queues they have handlers for,
/// keep each one's lease alive by heartbeat while it runs, and record the outcome.
///
/// At graceful shutdown they stop claiming; running jobs get `graceSeconds` to finish,
/// then are cancelled and released for another worker (their run does not count).
public final class Worker: Service, Sendable {
    public struct Options: Sendable {
        public var concurrency = 2
        public var leaseSeconds = 30.0
        public var graceSeconds = 10.0
        public var backoff = Backoff()
        public var idleWaitSeconds = 1.0
        public init() {}
    }

    let queue: any JobQueue
    let handlers: [String: JobHandler]
    let options: Options
    public let name: String
    let logger: Logger
    let metrics: AppMetrics
    private let stopping = Atomic<Bool>(false)
    private let busy = Atomic<Int>(0)
    private let busyGauge: Gauge

    public init(queue: any JobQueue, handlers: [String: JobHandler], options: Options, metrics: AppMetrics, logger: Logger) {
        self.queue = queue
        self.handlers = handlers
        self.options = options
        self.metrics = metrics
        self.logger = logger
        self.name = "\(ProcessInfo.processInfo.hostName)-\(getpid())-\(UInt16.random(in: 0...UInt16.max))"
        busyGauge = metrics.gauge("worker_busy", "Worker slots running a job")
        metrics.gauge("worker_concurrency", "Worker slots").set(to: Double(options.concurrency))
    }

    public func run() async throws {
        await withGracefulShutdownHandler {
            await withTaskGroup(of: Void.self) { group in
                for _ in 0..<options.concurrency { group.addTask { await self.loop() } }
                group.addTask { await self.publishStats() }
                await group.waitForAll()
            }
        } onGracefulShutdown: {
            self.stopping.store(true, ordering: .relaxed)
        }
        logger.info("worker stopped", metadata: ["worker": "\(name)"])
    }

    /// Shutdown has begun (or the task was cancelled, in which case every sleep would
    /// return at once: loops must end rather than spin).
    var isStopping: Bool { stopping.load(ordering: .relaxed) || Task.isCancelled }

    private func loop() async {
        let queues = handlers.keys.sorted()
        while !isStopping {
            do {
                guard let job = try await queue.claim(queues: queues, worker: name, leaseSeconds: options.leaseSeconds) else {
                    try await queue.waitForWork(timeoutSeconds: options.idleWaitSeconds)
                    continue
                }
                await execute(job)
            } catch {
                logger.warning("queue unavailable", metadata: ["error": "\(error)"])
                try? await Task.sleep(for: .milliseconds(500))
            }
        }
    }

    enum Outcome { case done, failed(any Error), interrupted }

    func execute(_ job: Job) async {
        guard let handler = handlers[job.queue] else { return }
        let nowBusy = busy.wrappingAdd(1, ordering: .relaxed).newValue
        busyGauge.set(to: Double(nowBusy))
        defer { busyGauge.set(to: Double(busy.wrappingSubtract(1, ordering: .relaxed).newValue)) }
        var log = logger
        log[metadataKey: "job_id"] = "\(job.id)"
        log[metadataKey: "queue"] = "\(job.queue)"
        let start = ContinuousClock.now
        // The handler's writes record their commit positions here; the job keeps the last.
        let written = ReadYourWrites()
        let work = Task { try await ReadYourWrites.$current.withValue(written) { try await handler(job) } }
        let heartbeat = Task {
            while !Task.isCancelled {
                try await Task.sleep(for: .milliseconds(Int(options.leaseSeconds * 1000 / 3)))
                if try await !queue.heartbeat(id: job.id, worker: name, leaseSeconds: options.leaseSeconds) {
                    log.warning("lease lost; another worker may run the job too")
                    return
                }
            }
        }
        let outcome: Outcome = await withTaskGroup(of: Outcome?.self) { group in
            group.addTask {
                switch await work.result {
                case .success: return .done
                case .failure(let e): return .failed(e)
                }
            }
            group.addTask {
                // Once shutdown starts, the job has graceSeconds left.
                while !self.isStopping && !Task.isCancelled { try? await Task.sleep(for: .milliseconds(100)) }
                if Task.isCancelled { return nil }
                try? await Task.sleep(for: .milliseconds(Int(self.options.graceSeconds * 1000)))
                return Task.isCancelled ? nil : .interrupted
            }
            let first = await group.next() ?? nil
            // The handler runs in its own task: stop it too, or the group waits for it.
            if case .interrupted = first { work.cancel() }
            group.cancelAll()
            return first ?? .interrupted
        }
        heartbeat.cancel()
        let elapsed = ContinuousClock.now - start
        metrics.cachedLatency("job_duration", "Job run time by queue", [("queue", job.queue)]).record(elapsed)
        func count(_ outcome: String) {
            metrics.cachedCounter("jobs", "Job runs by queue and outcome", [("queue", job.queue), ("outcome", outcome)]).increment()
        }
        do {
            switch outcome {
            case .done:
                try await queue.complete(id: job.id, worker: name, resultPositions: written.advanced ? written.positions : [:])
                count("done")
                log.info("job done", metadata: ["attempt": "\(job.attempts)"])
            case .failed(let error):
                let permanent = (error as? JobFailure)?.permanent ?? false
                let last = permanent || job.attempts >= job.maxAttempts
                let retryAt = last ? nil : Date().timeIntervalSince1970 + options.backoff.delay(afterAttempt: job.attempts, random: Double.random(in: 0...1))
                try await queue.fail(id: job.id, worker: name, error: "\(error)", retryAt: retryAt)
                count(last ? "dead" : "retry")
                log.warning("job failed", metadata: ["attempt": "\(job.attempts)", "error": "\(error)", "dead": "\(last)"])
            case .interrupted:
                try await queue.release(id: job.id, worker: name)
                count("released")
                log.info("job released at shutdown")
            }
        } catch {
            // The lease will run out and another worker will take the job.
            log.error("could not record the job's outcome", metadata: ["error": "\(error)"])
        }
    }

    /// Queue depth and the age of the oldest ready job, as gauges.
    private func publishStats() async {
        while !isStopping {
            if let stats = try? await queue.stats() {
                for s in stats {
                    metrics.gauge("queue_depth", "Ready jobs by queue", [("queue", s.queue)]).set(to: Double(s.ready))
                    metrics.gauge("queue_dead", "Dead jobs by queue", [("queue", s.queue)]).set(to: Double(s.dead))
                    metrics.gauge("queue_oldest_ready_seconds", "Age of the oldest due job by queue", [("queue", s.queue)])
                        .set(to: s.oldestReadyAgeSeconds)
                }
            }
            for _ in 0..<20 where !isStopping { try? await Task.sleep(for: .milliseconds(100)) }
        }
    }
}

/// Diagnostic job kinds, enqueued from the command line (`millions jobs enqueue`) to
/// measure the queue and to drill failures. Photo processing brings the real ones.
public enum StandardHandlers {
    /// The diagnostic kinds. `touch` writes files, so it runs only where the operator named
    /// a folder for it (`touchDirectory`); elsewhere it fails at once, permanently.
    public static func all(touchDirectory: String?) -> [String: JobHandler] {
        ["noop": noop, "touch": touch(in: touchDirectory), "fail": fail]
    }

    /// The kinds `millions jobs enqueue` knows.
    public static let names = ["noop", "touch", "fail"]

    /// Does nothing: queue throughput.
    public static let noop: JobHandler = { _ in }

    /// `{"path": "/abs/file", "ms": 500}`: waits, then writes the file atomically (temp
    /// file + rename), so running twice leaves the same single file — an idempotent job.
    /// The file must be directly in `directory`.
    public static func touch(in directory: String?) -> JobHandler { { job in
        guard let directory, !directory.isEmpty else {
            throw JobFailure("touch is a diagnostic job: this worker has no queue.touchDirectory", permanent: true)
        }
        let object = (try? JSONSerialization.jsonObject(with: Data(job.payload.utf8))) as? [String: Any] ?? [:]
        let folder = directory.hasSuffix("/") ? String(directory.dropLast()) : directory
        guard let path = object["path"] as? String, path.hasPrefix(folder + "/"),
            let name = path.split(separator: "/").last, path == folder + "/" + name, name != "..", name != "."
        else {
            throw JobFailure("touch needs a \"path\" directly in \(folder)", permanent: true)
        }
        let ms = min(max(object["ms"] as? Int ?? 0, 0), 600_000)
        try await Task.sleep(for: .milliseconds(ms))
        let temp = path + ".tmp-\(getpid())-\(job.id)"
        try Data("job \(job.id)\n".utf8).write(to: URL(fileURLWithPath: temp))
        if rename(temp, path) != 0 { throw JobFailure("rename failed: \(errno)") }
    } }

    /// Always fails (retried with backoff until dead): dead-letter drills.
    public static let fail: JobHandler = { job in throw JobFailure("fails on purpose (attempt \(job.attempts))") }
}
