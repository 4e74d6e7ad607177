import Cluster
import NIOPosix

/// Runs a command to completion (posix_spawn and waitpid, through `Processes.run`).
public enum Command {
    /// The command's exit status (128 + signal if it was killed). Blocks the calling thread.
    @discardableResult
    public static func run(_ argv: [String]) throws -> Int32 { try Processes.run(argv) }

    /// The same, waiting on NIO's thread pool: a long command must not hold one of the
    /// few cooperative threads that the test's servers and clients need meanwhile.
    @discardableResult
    public static func runOffPool(_ argv: [String], environment: [String: String] = [:]) async throws -> Int32 {
        try await NIOThreadPool.singleton.runIfActive { try Processes.run(argv, environment: environment) }
    }
}
