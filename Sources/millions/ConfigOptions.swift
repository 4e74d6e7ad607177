import ArgumentParser
import Configuration
import WebTier

#if canImport(Glibc)
import Glibc
#endif

/// Options every command shares: where configuration comes from.
///
/// Precedence, highest first: these flags, `MILLIONS_*` environment variables, the JSON
/// file named by `--config` (or `MILLIONS_CONFIG`), then built-in defaults.
struct ConfigOptions: ParsableArguments {
    @Option(name: .long, help: "Address to listen on (http.host).")
    var host: String?

    @Option(name: .long, help: "Port to listen on; 0 picks a free one (http.port).")
    var port: Int?

    @Option(name: .customLong("data-dir"), help: "Folder for the SQLite database (data.directory).")
    var dataDirectory: String?

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error (log.level).")
    var logLevel: String?

    @Option(name: .long, help: "A JSON configuration file, e.g. {\"http\":{\"port\":8080}}.")
    var config: String?

    @Option(name: .customLong("set"), help: ArgumentHelp("Any configuration key, e.g. --set cache.ttlSeconds=60.", valueName: "key=value"))
    var settings: [String] = []

    func reader() async throws -> ConfigReader {
        var flags: [String: String] = [:]
        for item in settings {
            guard let eq = item.firstIndex(of: "="), eq != item.startIndex else {
                throw ValidationError("--set takes key=value, got \(item)")
            }
            flags[Self.environmentName(String(item[..<eq]))] = String(item[item.index(after: eq)...])
        }
        if let host { flags["HTTP_HOST"] = host }
        if let port { flags["HTTP_PORT"] = String(port) }
        if let dataDirectory { flags["DATA_DIRECTORY"] = dataDirectory }
        if let logLevel { flags["LOG_LEVEL"] = logLevel }

        let env = getenv("MILLIONS_CONFIG").map { String(cString: $0) }
        return try await ConfigSources.reader(flags: flags, configFile: config ?? env)
    }

    static func environmentName(_ key: String) -> String { ConfigSources.environmentName(key) }
}
