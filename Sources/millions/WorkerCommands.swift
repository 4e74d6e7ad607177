import ArgumentParser
import DataTier
import Engines
import Foundation
import Hummingbird
import Logging
import MessageQueue
import NIOCore
import Observability
import RedisClient
import ServiceLifecycle
import UnixSignals
import WebTier

/// `millions worker`: only consumers, no web server.
struct WorkerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "worker", abstract: "Run queue consumers (the worker tier) on the configured data engine.")
    @OptionGroup var options: ConfigOptions
    @Option(name: .long, help: "Jobs run at once.") var concurrency = 4
    @Option(name: .long, help: "Serve /metrics and /healthz on this port, for scraping.") var metricsPort: Int?
    @Option(name: .long, help: "The address the metrics port listens on.") var metricsHost = "127.0.0.1"

    func validate() throws {
        guard concurrency >= 1 && concurrency <= 256 else { throw ValidationError("--concurrency must be 1...256") }
        if let p = metricsPort, !(1...65535).contains(p) { throw ValidationError("--metrics-port must be 1...65535") }
    }

    func run() async throws {
        let settings = try EngineSettings(try await options.reader())
        let logger = bootstrapLogging(settings.logLevel)
        let engines = try Engines(settings: settings, logger: logger)
        let worker = engines.worker(concurrency: concurrency)
        var services: [any Service] = []
        services += try engines.changeFollowers()
        if let port = metricsPort {
            // Before the worker, so it stops after it: it answers while jobs drain.
            services.append(Self.metricsServer(engines.metrics, worker: worker, host: metricsHost, port: port, logger: logger))
        }
        services.append(worker)
        logger.info("worker started", metadata: ["worker": "\(worker.name)", "concurrency": "\(concurrency)"])
        try await engines.serviceGroup(services).run()
    }
}

extension WorkerCommand {
    /// A small HTTP server with the worker's own figures: jobs by outcome, durations,
    /// busy slots, queue depth, images processed; and liveness.
    static func metricsServer(_ metrics: AppMetrics, worker: Worker, host: String, port: Int, logger: Logger) -> some Service {
        let router = Router()
        router.get("/metrics") { _, _ in
            Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: .init(byteBuffer: ByteBuffer(bytes: metrics.exposition())))
        }
        router.get("/healthz") { _, _ in
            Response(
                status: .ok, headers: [.contentType: "application/json"],
                body: .init(byteBuffer: ByteBuffer(string: #"{"status":"ok","worker":"\#(worker.name)"}"#)))
        }
        return Application(
            router: router, configuration: .init(address: .hostname(host, port: port), serverName: "millions-worker"),
            logger: logger)
    }
}

/// `millions jobs …`: look at and operate the queues.
struct JobsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "jobs", abstract: "List queues and dead jobs, retry a dead job, enqueue diagnostic jobs.",
        subcommands: [List.self, Dead.self, Retry.self, Enqueue.self], defaultSubcommand: List.self)

    /// Runs `body` with the queue of the configured engine (PostgreSQL pools running).
    static func withQueue<T: Sendable>(_ options: ConfigOptions, _ body: @escaping @Sendable (any JobQueue) async throws -> T) async throws -> T {
        let settings = try EngineSettings(try await options.reader())
        let engines = try Engines(settings: settings, logger: bootstrapLogging(.warning))
        return try await engines.withRunning { _ in try await body(engines.jobs) }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Each queue: ready, running, dead, done, oldest ready age.")
        @OptionGroup var options: ConfigOptions
        func run() async throws {
            let stats = try await JobsCommand.withQueue(options) { try await $0.stats() }
            print("queue             ready  running     dead      done  oldest_ready_s")
            for s in stats {
                print(
                    s.queue.padding(toLength: 16, withPad: " ", startingAt: 0), String(format: "%6d %8d %8d %9d %15.1f", s.ready, s.running, s.dead, s.done, s.oldestReadyAgeSeconds))
            }
        }
    }

    struct Dead: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Dead jobs, newest first, with their last error.")
        @OptionGroup var options: ConfigOptions
        @Option(name: .long) var limit = 50
        func run() async throws {
            let jobs = try await JobsCommand.withQueue(options) { try await $0.deadJobs(limit: limit) }
            print("id        queue            attempts  last_error")
            for j in jobs {
                print(String(j.id).padding(toLength: 10, withPad: " ", startingAt: 0) + j.queue.padding(toLength: 17, withPad: " ", startingAt: 0) + String(j.attempts).padding(toLength: 10, withPad: " ", startingAt: 0) + (j.lastError ?? ""))
            }
        }
    }

    struct Retry: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Put a dead job back in its queue with fresh attempts.")
        @OptionGroup var options: ConfigOptions
        @Argument var id: Int64
        func run() async throws {
            let id = self.id
            guard try await JobsCommand.withQueue(options, { try await $0.retryDead(id: id) }) else {
                throw ValidationError("job \(id) is not dead (or does not exist)")
            }
            print("job \(id) is ready again")
        }
    }

    struct Enqueue: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Enqueue diagnostic jobs: noop (throughput), touch {\"path\",\"ms\"} (idempotent file), fail (dead letters).")
        @OptionGroup var options: ConfigOptions
        @Argument var queue: String
        @Argument var payload: String = "{}"
        @Option(name: .long) var count = 1
        @Option(name: .long, help: "Clients enqueueing at once (each job is its own enqueue).") var concurrency = 1
        @Option(name: .customLong("max-attempts")) var maxAttempts: Int?

        func validate() throws {
            guard StandardHandlers.names.contains(queue) else { throw ValidationError("unknown queue \(queue); known: noop, touch, fail") }
            guard count >= 1 && count <= 10_000_000 else { throw ValidationError("--count must be 1...10000000") }
            guard concurrency >= 1 && concurrency <= 256 else { throw ValidationError("--concurrency must be 1...256") }
            guard (try? JSONSerialization.jsonObject(with: Data(payload.utf8))) != nil else { throw ValidationError("payload must be JSON") }
        }

        func run() async throws {
            let (queue, payload, count, clients) = (self.queue, self.payload, self.count, self.concurrency)
            let settings = try EngineSettings(try await options.reader())
            let attempts = maxAttempts ?? settings.queue.maxAttempts
            let ids = try await JobsCommand.withQueue(options) { jobs in
                try await withThrowingTaskGroup(of: [Int64].self) { group in
                    for client in 0..<clients {
                        group.addTask {
                            var ids: [Int64] = []
                            for _ in stride(from: client, to: count, by: clients) {
                                ids.append(try await jobs.enqueue(queue: queue, payload: payload, maxAttempts: attempts, delaySeconds: 0))
                            }
                            return ids
                        }
                    }
                    return try await group.reduce(into: [Int64]()) { $0 += $1 }.sorted()
                }
            }
            print(ids.count == 1 ? "job \(ids[0])" : "jobs \(ids.first!)…\(ids.last!)")
        }
    }
}
