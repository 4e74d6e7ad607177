import Cluster

/// Runs a command to completion (posix_spawn and waitpid, through `Processes.run`).
public enum Command {
    /// The command's exit status (128 + signal if it was killed).
    @discardableResult
    public static func run(_ argv: [String]) throws -> Int32 { try Processes.run(argv) }
}
