import Configuration
import Foundation
import Hummingbird
import HummingbirdTesting
import DataTier
import Engines
import Logging
import WebTier

/// A web tier on a fresh temporary data folder, configured like production except for a
/// cheap bcrypt cost; removed again when the test body returns.
public enum TestApp {
    /// Settings for a test: defaults, a temp data folder, port 0, and `overrides`
    /// (configuration keys to values).
    public static func settings(dataDirectory: String, _ overrides: [String: String] = [:]) throws -> Settings {
        // Timeouts wide enough that a machine busy with the rest of the suite (or a CPU hog)
        // is not taken for a dead server; failure tests kill servers, which fails fast.
        var values: [String: String] = [
            "data.directory": dataDirectory, "http.port": "0", "auth.bcryptCost": "4", "log.level": "warning",
            "redis.timeoutMs": "5000", "cache.memcached.timeoutMs": "3000",
        ]
        values.merge(overrides) { _, new in new }
        let flags = Dictionary(uniqueKeysWithValues: values.map { (ConfigSources.environmentName($0.key), $0.value) })
        return try Settings(ConfigReader(provider: EnvironmentVariablesProvider(environmentVariables: flags)))
    }

    /// A fresh temporary folder, removed after `body`.
    public static func withTemporaryDirectory<T>(_ body: (String) async throws -> T) async throws -> T {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("millions-test-\(UUID().uuidString)")
            .path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        return try await body(dir)
    }

    /// Settings for the PostgreSQL engine on a topology (quick discovery for tests).
    public static func postgresSettings(
        dataDirectory: String, _ topology: PostgresTopology, _ overrides: [String: String] = [:]
    ) throws -> Settings {
        var o = [
            "data.engine": "postgres", "data.postgres.nodes": topology.addresses.joined(separator: ","),
            "data.postgres.discoveryMs": "200", "data.postgres.timeoutMs": "5000",
        ]
        if let password = topology.password { o["data.postgres.password"] = password }
        o.merge(overrides) { _, new in new }
        return try settings(dataDirectory: dataDirectory, o)
    }

    /// Builds components for `settings` (one "web server").
    public static func components(
        _ settings: Settings, decorateUsers: (any UserStore) -> any UserStore = { $0 }
    ) async throws -> Components {
        var logger = Logger(label: "test")
        logger.logLevel = settings.logLevel
        return try await Components.build(settings: settings, logger: logger, decorateUsers: decorateUsers)
    }

    /// Builds the app on the PostgreSQL `topology` (schema migrated, primary discovered)
    /// and runs `body` with an in-process test client.
    public static func runPostgres(
        _ topology: PostgresTopology, _ overrides: [String: String] = [:],
        _ body: @escaping @Sendable (any TestClientProtocol, Components) async throws -> Void
    ) async throws {
        try await withTemporaryDirectory { dir in
            let components = try await components(try postgresSettings(dataDirectory: dir, topology, overrides))
            let set = components.replicaSet!
            // The app's services run the pools (a client runs once); then discover and migrate.
            try await buildApplication(components).test(.router) { client in
                try await set.waitUntilDiscovered()
                try await PostgresEngine.migrate(set)
                try await body(client, components)
            }
        }
    }

    /// Builds the app on a temp folder and runs `body` with an in-process test client.
    public static func run(
        _ overrides: [String: String] = [:],
        _ body: @escaping @Sendable (any TestClientProtocol, Components) async throws -> Void
    ) async throws {
        try await withTemporaryDirectory { dir in
            let settings = try settings(dataDirectory: dir, overrides)
            var logger = Logger(label: "test")
            logger.logLevel = settings.logLevel
            let components = try await Components.build(settings: settings, logger: logger)
            let app = try buildApplication(components)
            try await app.test(.router) { client in try await body(client, components) }
        }
    }
}
