import Foundation
import MillionsCore

/// One static file under a content-hashed name.
public struct Asset: Sendable {
    /// The name in the source folder, e.g. `app.css`.
    public let logicalName: String
    /// The name it is served under, e.g. `app.3f2a9c1b7d0e.css`: new content, new URL.
    public let hashedName: String
    public let bytes: [UInt8]
    public let contentType: String
    /// Strong validator derived from the content.
    public let etag: String
}

/// The static assets of the site under content-hashed URLs, so a CDN or browser may cache
/// each one forever and a deploy never serves a stale stylesheet.
///
/// Files are read once at start-up; requests are answered from memory by exact name, so a
/// client-supplied path never reaches the file system.
public struct AssetCatalog: Sendable {
    public let urlPrefix: String
    private let byHashedName: [String: Asset]
    private let byLogicalName: [String: Asset]

    /// `Cache-Control` for hashed assets.
    public static let immutable = "public, max-age=31536000, immutable"

    public init(directory: String, urlPrefix: String = "/assets/") throws {
        self.urlPrefix = urlPrefix
        var hashed: [String: Asset] = [:]
        var logical: [String: Asset] = [:]
        let fm = FileManager.default
        for name in try fm.contentsOfDirectory(atPath: directory).sorted() where !name.hasPrefix(".") {
            let path = directory + "/" + name
            var isDir: ObjCBool = false
            guard fm.fileExists(atPath: path, isDirectory: &isDir), !isDir.boolValue else { continue }
            let bytes = Array(try Data(contentsOf: URL(fileURLWithPath: path)))
            let asset = Self.asset(named: name, bytes: bytes)
            hashed[asset.hashedName] = asset
            logical[name] = asset
        }
        self.byHashedName = hashed
        self.byLogicalName = logical
    }

    static func asset(named name: String, bytes: [UInt8]) -> Asset {
        let digest = SHA256.hex(bytes)
        let dot = name.lastIndex(of: ".")
        let stem = dot.map { String(name[..<$0]) } ?? name
        let ext = dot.map { String(name[name.index(after: $0)...]) } ?? ""
        // 12 hex digits (48 bits) is plenty to tell versions of one file apart.
        let hashedName = ext.isEmpty ? "\(stem).\(digest.prefix(12))" : "\(stem).\(digest.prefix(12)).\(ext)"
        return Asset(
            logicalName: name, hashedName: hashedName, bytes: bytes, contentType: contentType(ext: ext),
            etag: "\"\(digest.prefix(32))\"")
    }

    /// The URL to put in pages for a source file name. Crashes on an unknown name: a
    /// template naming a missing asset is a bug to catch at the first render.
    public func url(_ logicalName: String) -> String {
        guard let asset = byLogicalName[logicalName] else { preconditionFailure("unknown asset \(logicalName)") }
        return urlPrefix + asset.hashedName
    }

    public func asset(hashedName: String) -> Asset? { byHashedName[hashedName] }
    public func asset(logicalName: String) -> Asset? { byLogicalName[logicalName] }

    /// Source name → served name.
    public var manifest: [String: String] { byLogicalName.mapValues(\.hashedName) }

    static func contentType(ext: String) -> String {
        switch ext.lowercased() {
        case "css": "text/css; charset=utf-8"
        case "js": "text/javascript; charset=utf-8"
        case "svg": "image/svg+xml"
        case "png": "image/png"
        case "jpg", "jpeg": "image/jpeg"
        case "webp": "image/webp"
        case "ico": "image/x-icon"
        case "woff2": "font/woff2"
        case "txt": "text/plain; charset=utf-8"
        default: "application/octet-stream"
        }
    }

    /// True if an `If-None-Match` header value matches `etag` (handles lists, `*` and weak tags).
    public static func ifNoneMatch(_ header: String?, matches etag: String) -> Bool {
        guard let header else { return false }
        for part in header.split(separator: ",") {
            var tag = part.trimmingCharacters(in: .whitespaces)
            if tag == "*" { return true }
            if tag.hasPrefix("W/") { tag.removeFirst(2) }
            if tag == etag { return true }
        }
        return false
    }
}
