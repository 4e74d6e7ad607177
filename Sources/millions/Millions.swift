import ArgumentParser
import Foundation
import NIOCore
import NIOPosix

/// `millions`: one binary, many roles.
@main
struct Millions: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "millions",
        abstract: "The scale-from-zero-to-millions architecture, built for real.",
        subcommands: [Serve.self, Migrate.self, Seed.self, Database.self, ShardsCommand.self, ClusterCommand.self, BenchCommand.self, WorkerCommand.self, JobsCommand.self, ImagesCommand.self, RelayCommand.self],
        defaultSubcommand: Serve.self
    )

    static func main() async {
        sizeThreadsForHost()
        do {
            var command = try parseAsRoot()
            if var async = command as? any AsyncParsableCommand {
                try await async.run()
            } else {
                try command.run()
            }
        } catch {
            exit(withError: error)
        }
    }

    /// On a cluster host (`MILLIONS_CPUS`, set by its wrapper), event loops and the
    /// blocking pool get one thread per core of the budget, as on a machine that size;
    /// elsewhere NIO's defaults (one per core).
    static func sizeThreadsForHost() {
        guard let text = ProcessInfo.processInfo.environment["MILLIONS_CPUS"], let cpus = Double(text), cpus > 0 else { return }
        let threads = max(1, Int(cpus.rounded(.up)))
        NIOSingletons.groupLoopCountSuggestion = threads
        NIOSingletons.blockingPoolThreadCountSuggestion = threads
    }
}
