import ArgumentParser
import Configuration
import DataTier
import Engines
import Foundation
import HummingbirdBcrypt
import Logging
import MillionsCore
import Observability
import WebTier

/// `millions seed`: inserts many users for benchmarks.
struct Seed: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Insert N generated users (password \"\(Seeder.password)\") for benchmarks.")

    @OptionGroup var options: ConfigOptions

    @Option(name: .long, help: "How many users.")
    var users: Int = 10_000

    @Option(name: .long, help: "Seed of the generated users: the same seed gives the same users.")
    var seed: UInt64 = 1

    @Option(name: .customLong("ids-file"), help: "Write the seeded ids here, one per line, most popular first for Zipf runs.")
    var idsFile: String?

    func validate() throws {
        guard users > 0 && users <= 10_000_000 else { throw ValidationError("--users must be 1...10000000") }
    }

    func run() async throws {
        var settings = try EngineSettings(try await options.reader())
        // A bulk load, not a request: a batch on a small database host may rightly take
        // longer than the request path's bound.
        settings.data.postgres.queryTimeout = max(settings.data.postgres.queryTimeout, .seconds(120))
        let logger = bootstrapLogging(settings.logLevel)
        let engines = try Engines(settings: settings, logger: logger)
        // The web tier's cost, so seeded users log in as fast as real ones.
        let cost = try AuthSettings(try await options.reader().scoped(to: "auth")).bcryptCost
        let seeder = Seeder(
            passwordHash: Bcrypt.hash(Seeder.password, cost: UInt8(cost)),
            startSeconds: Int64(Clock.secondsSince1970()), seed: seed)
        let start = ContinuousClock.now
        let store = engines.users
        let count = users
        let progress = Progress(total: count, noun: "users")
        let ids = try await engines.withRunning { _ in
            try await seeder.seed(0..<count, into: store) { progress.update($0) }
        }
        let elapsed = ContinuousClock.now - start
        if let idsFile {
            try ids.map(\.description).joined(separator: "\n").appending("\n").write(
                toFile: idsFile, atomically: true, encoding: .utf8)
        }
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        if ids.count < users {
            logger.warning(
                "some users existed already (same email or id) and were skipped; the ids file lists only the users made now",
                metadata: ["skipped": "\(users - ids.count)"])
        }
        logger.info(
            "seeded",
            metadata: [
                "users": "\(ids.count)", "seconds": "\(String(format: "%.2f", seconds))",
                "users_per_second": "\(Int(Double(ids.count) / max(seconds, 0.001)))",
            ])
    }
}
