import ArgumentParser
import DataTier
import Engines
import Foundation
import Logging
import MillionsCore

/// `millions shards …`: the sharded data tier's map and clusters.
struct ShardsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "shards", abstract: "The shard map and what each cluster holds (data.engine=sharded).",
        subcommands: [Status.self, Move.self, Rebalance.self, Clean.self, ReindexCities.self], defaultSubcommand: Status.self)

    /// Runs `body` with the sharded engine's clusters running and migrated.
    static func withSharded<T: Sendable>(_ options: ConfigOptions, _ body: (ShardedEngine) async throws -> T) async throws -> T {
        let settings = try EngineSettings(try await options.reader())
        guard settings.data.engine == .sharded else { throw ValidationError("shards needs data.engine=sharded") }
        let engines = try Engines(settings: settings, logger: bootstrapLogging(settings.logLevel))
        guard let sharded = engines.data as? ShardedEngine else { throw ValidationError("shards needs data.engine=sharded") }
        return try await engines.withRunning { _ in try await body(sharded) }
    }

    static func report(_ moves: [ShardMover.Move]) {
        for m in moves {
            print(
                "logical \(m.logical): \(m.from) → \(m.to), \(m.users) users, \(m.emails) emails, \(m.sessions) sessions, writes fenced \(m.fenced.inMilliseconds) ms, map v\(m.version)")
        }
        let fences = moves.map(\.fenced).sorted()
        if let longest = fences.last {
            print("\(moves.count) moved; fence p50 \(fences[fences.count / 2].inMilliseconds) ms, longest \(longest.inMilliseconds) ms")
        }
    }

    struct Move: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Move logical shards to a cluster while the site runs (fence, copy, verify, switch, clean).")
        @OptionGroup var options: ConfigOptions
        @Argument(help: "Logical shards, 0...1023.") var logicals: [Int]
        @Option(name: .long, help: "The cluster that will own them.") var to: String

        func validate() throws {
            guard !logicals.isEmpty, logicals.allSatisfy({ (0..<1024).contains($0) }) else {
                throw ValidationError("logical shards are 0...1023")
            }
        }

        func run() async throws {
            let (logicals, target) = (self.logicals, to)
            let moves = try await ShardsCommand.withSharded(options) { sharded in
                let mover = ShardMover(clusters: sharded.clusters, directory: sharded.store.directory, logger: sharded.logger)
                var moves: [ShardMover.Move] = []
                for l in logicals { if let m = try await mover.move(l, to: target) { moves.append(m) } }
                return moves
            }
            ShardsCommand.report(moves)
        }
    }

    struct Rebalance: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Give every configured cluster its even share of the shards (after adding one), moving as few as that takes.",
            discussion: "With --drain, the clusters named give all their shards to the others (before taking a cluster away); they stay configured until it is done.")
        @OptionGroup var options: ConfigOptions
        @Option(name: .long, help: ArgumentHelp("A cluster to empty (repeatable).", valueName: "name")) var drain: [String] = []

        func run() async throws {
            let drain = Set(self.drain)
            let moves = try await ShardsCommand.withSharded(options) { sharded in
                guard drain.isSubset(of: sharded.order) else {
                    throw ValidationError("--drain names a cluster that is not configured: \(drain.subtracting(sharded.order).sorted())")
                }
                let keep = sharded.order.filter { !drain.contains($0) }
                guard !keep.isEmpty else { throw ValidationError("--drain cannot empty every cluster") }
                return try await ShardMover(clusters: sharded.clusters, directory: sharded.store.directory, logger: sharded.logger)
                    .rebalance(keep)
            }
            ShardsCommand.report(moves)
        }
    }

    struct Clean: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Remove rows a cluster keeps of shards moved away from it (left when a move's clean failed).")
        @OptionGroup var options: ConfigOptions
        @Flag(name: .long, help: "Count them; remove nothing.") var dryRun = false

        func run() async throws {
            let dryRun = self.dryRun
            let found = try await ShardsCommand.withSharded(options) { sharded in
                try await ShardMover(clusters: sharded.clusters, directory: sharded.store.directory, logger: sharded.logger)
                    .clean(dryRun: dryRun)
            }
            for f in found {
                let rows = f.rows.sorted { $0.key < $1.key }.map { "\($0.value) \($0.key)" }.joined(separator: ", ")
                print("cluster \(f.cluster): \(dryRun ? "" : "removed ")\(rows) rows of shards it no longer has")
            }
        }
    }

    struct ReindexCities: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "reindex-cities",
            abstract: "Rebuild the city directory from the users: repairs writes that failed after a user's commit, or fills it when data.shards.cityLookup becomes directory.")
        @OptionGroup var options: ConfigOptions

        func run() async throws {
            let started = ContinuousClock.now
            let done = try await ShardsCommand.withSharded(options) { try await $0.store.reindexCities() }
            print("city directory: \(done.entries) entries written from users, \(done.tombstones) stale entries made tombstones, in \(ContinuousClock.now - started)")
        }
    }

    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "The map's version, and per cluster: logical shards owned, users, email entries.")
        @OptionGroup var options: ConfigOptions

        func run() async throws {
            let (version, clusters) = try await ShardsCommand.withSharded(options) { try await $0.store.status(order: $0.order) }
            print("shard map version \(version)")
            print("cluster           shards     users   emails")
            for c in clusters {
                print(c.cluster.padding(toLength: 16, withPad: " ", startingAt: 0), String(format: "%7d %9d %8d", c.shards, c.users, c.emails))
            }
        }
    }
}
