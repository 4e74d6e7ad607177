import ArgumentParser
import Configuration
import DataTier
import Engines
import Foundation
import Logging
import Observability
import WebTier

/// `millions db …`: operations on the data tier.
struct Database: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "db", abstract: "Operate the PostgreSQL data tier.", subcommands: [PromoteBestReplica.self, Status.self])

    /// `millions db failover`.
    struct PromoteBestReplica: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "failover",
            abstract: "Promote the most caught-up replica after the primary died, and repoint the others.")
        @OptionGroup var options: ConfigOptions

        func run() async throws {
            let settings = try EngineSettings(try await options.reader())
            let logger = bootstrapLogging(settings.logLevel)
            let set = try ReplicaSet(settings: settings.data.postgres, metrics: .init(), logger: logger)
            let start = ContinuousClock.now
            let result = try await set.withRunning(requirePrimary: false) {
                try await Failover.promoteBestReplica(set, logger: logger)
            }
            logger.info(
                "failover done",
                metadata: [
                    "primary": "\(result.promoted)", "repointed": "\(result.repointed)",
                    "seconds": "\(ContinuousClock.now - start)",
                ])
        }
    }

    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Each node's role, position and lag.")
        @OptionGroup var options: ConfigOptions

        func run() async throws {
            let settings = try DataSettings(try await options.reader().scoped(to: "data"))
            let logger = bootstrapLogging(.warning)
            let set = try ReplicaSet(settings: settings.postgres, metrics: .init(), logger: logger)
            let statuses = try await set.withRunning(requirePrimary: false) { set.statuses }
            print("node                   role      up     lsn            lag_bytes  lag_s")
            for (name, s) in zip(set.nodeNames, statuses) {
                print(
                    name.padding(toLength: 22, withPad: " ", startingAt: 0),
                    s.role.rawValue.padding(toLength: 9, withPad: " ", startingAt: 0),
                    (s.reachable ? "yes" : "no").padding(toLength: 6, withPad: " ", startingAt: 0),
                    LSN.format(s.lsn).padding(toLength: 14, withPad: " ", startingAt: 0),
                    String(s.lagBytes).padding(toLength: 10, withPad: " ", startingAt: 0), s.lagSeconds)
            }
        }
    }
}
