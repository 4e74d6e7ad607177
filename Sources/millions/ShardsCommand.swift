import ArgumentParser
import DataTier
import Engines
import Foundation
import Logging

/// `millions shards …`: the sharded data tier's map and clusters.
struct ShardsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "shards", abstract: "The shard map and what each cluster holds (data.engine=sharded).",
        subcommands: [Status.self], defaultSubcommand: Status.self)

    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "The map's version, and per cluster: logical shards owned, users, email entries.")
        @OptionGroup var options: ConfigOptions

        func run() async throws {
            let settings = try EngineSettings(try await options.reader())
            guard settings.data.engine == .sharded else { throw ValidationError("shards needs data.engine=sharded") }
            let engines = try Engines(settings: settings, logger: bootstrapLogging(.warning))
            guard let sharded = engines.data as? ShardedEngine else { throw ValidationError("shards needs data.engine=sharded") }
            let (version, clusters) = try await engines.withRunning { _ in try await sharded.store.status(order: sharded.order) }
            print("shard map version \(version)")
            print("cluster           shards     users   emails")
            for c in clusters {
                print(c.cluster.padding(toLength: 16, withPad: " ", startingAt: 0), String(format: "%7d %9d %8d", c.shards, c.users, c.emails))
            }
        }
    }
}
