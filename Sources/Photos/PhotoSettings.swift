import Configuration
import DataTier
import Foundation
import Imaging
import MillionsCore

/// Where photo files live.
public enum PhotoStoreKind: String, Sendable, CaseIterable {
    /// `photos.directory`: one shared folder for a whole cluster.
    case folder
    /// Large objects in PostgreSQL, replicated with the data (the multi-dc stage).
    case postgres
}

/// The photo tier's keys (`photos.*`).
public struct PhotoSettings: Sendable {
    public var directory: String
    public var store: PhotoStoreKind
    /// Largest upload accepted, in bytes (the rest of the API keeps `http.maxBodyBytes`).
    public var maxBytes: Int
    /// Largest image accepted, in pixels, judged from its header before decoding.
    public var maxPixels: Int
    /// Threads for image work in this process (bounds its CPU and memory use).
    public var threads: Int
    /// `host:port` of every edge cache a deleted photo is purged from.
    public var purgeEdges: [String]
    /// How long a replaced photo's variants stay servable before they are deleted.
    public var replacedGrace: Duration

    /// `config` is scoped to `photos`.
    public init(_ config: ConfigReader, data: DataSettings) throws {
        directory = config.string(forKey: "directory", default: data.directory + "/photos")
        store = try settingChoice(config.string(forKey: "store", default: "folder"), key: "photos.store")
        maxBytes = config.int(forKey: "maxBytes", default: 10 * 1024 * 1024)
        maxPixels = config.int(forKey: "maxPixels", default: 40_000_000)
        threads = config.int(forKey: "threads", default: ProcessInfo.processInfo.activeProcessorCount)
        purgeEdges = config.string(forKey: "purgeEdges", default: "").commaSeparated
        let graceSeconds = config.double(forKey: "replacedGraceSeconds", default: 60)
        try checkSetting(graceSeconds >= 0, "photos.replacedGraceSeconds must not be negative")
        replacedGrace = .seconds(graceSeconds)
        try checkSetting(maxBytes >= 1024 && maxBytes <= 64 * 1024 * 1024, "photos.maxBytes must be 1 KiB...64 MiB")
        try checkSetting(maxPixels >= 1 && maxPixels <= 200_000_000, "photos.maxPixels must be 1...200000000")
        try checkSetting(threads >= 1 && threads <= 64, "photos.threads must be 1...64")
        try checkSetting(store == .folder || data.engine == .postgres, "photos.store=postgres needs data.engine=postgres")
    }

    /// Bounds on uploaded images.
    public var imageLimits: ImageLimits {
        var limits = ImageLimits()
        limits.maxBytes = maxBytes
        limits.maxPixels = maxPixels
        return limits
    }
}
