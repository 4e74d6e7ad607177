import ArgumentParser
import Configuration
import DataTier
import Engines
import Hummingbird
import Logging
import MillionsCore
import NIOCore
import Observability
import ServiceLifecycle
import UnixSignals
import WebTier

/// `millions serve`: the web tier.
struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the web server (the web tier).")

    @OptionGroup var options: ConfigOptions

    func run() async throws {
        let settings = try Settings(try await options.reader())
        let logger = bootstrapLogging(settings.logLevel)
        let components = try await Components.build(settings: settings, logger: logger)
        let drain = DrainService(state: components.drain, seconds: settings.http.drain.inSeconds, logger: logger)
        let app = try buildApplication(components, withEngineServices: false) { channel in
            // Tests and scripts read the real port from this line when --port 0.
            logger.info(
                "listening",
                metadata: [
                    "host": "\(settings.http.host)", "port": "\(channel.localAddress?.port ?? settings.http.port)",
                    "data": "\(settings.data.directory)",
                ])
        }
        // The drain runs first at SIGTERM (services stop in reverse order), then the
        // server, then the engines it uses.
        try await components.engines.serviceGroup(webServices(components) + [WebServerService(app), drain]).run()
        logger.info("stopped")
    }
}

/// `millions migrate`: applies pending schema migrations and exits.
struct Migrate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Apply pending database migrations.")

    @OptionGroup var options: ConfigOptions

    func run() async throws {
        let settings = try EngineSettings(try await options.reader())
        let logger = bootstrapLogging(settings.logLevel)
        let engines = try Engines(settings: settings, logger: logger)
        let applied = try await engines.withRunning { $0 }
        logger.info("migrations applied", metadata: ["migrations": .array(applied.map { .string($0) })])
    }
}

func bootstrapLogging(_ level: Logger.Level) -> Logger {
    LoggingSystem.bootstrap { label in JSONLogHandler(label: label, level: level) }
    var logger = Logger(label: "millions")
    logger.logLevel = level
    return logger
}
