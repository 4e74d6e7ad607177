import ArgumentParser

/// `millions`: one binary, many roles.
@main
struct Millions: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "millions",
        abstract: "The scale-from-zero-to-millions architecture, built for real.",
        subcommands: [Serve.self, Migrate.self, Seed.self, Database.self, ClusterCommand.self, BenchCommand.self, WorkerCommand.self, JobsCommand.self, ImagesCommand.self, RelayCommand.self],
        defaultSubcommand: Serve.self
    )
}
