import Foundation
import MillionsCore
import NIOPosix

/// The two kinds of stored photo file: uploaded originals (private: they may carry EXIF
/// and GPS) and the processed variants (public, immutable, served at `/photos/NAME`).
public enum PhotoKind: String, Sendable {
    case original = "originals"
    case variant = "variants"
}

/// Where photo files live. Names are content hashes, so a file never changes once
/// written and writing it twice is harmless.
public protocol PhotoStore: Sendable {
    /// Stores `bytes` as `name` unless it exists; atomic (readers never see half a file).
    func put(_ bytes: [UInt8], name: String, kind: PhotoKind) async throws
    /// The file's bytes; nil if there is none.
    func get(name: String, kind: PhotoKind) async throws -> [UInt8]?
    /// Every stored name of `kind` (tests and `millions` tooling; not for request paths).
    func list(kind: PhotoKind) async throws -> [String]
    /// Removes the file; nothing happens if there is none.
    func delete(name: String, kind: PhotoKind) async throws
}

/// File names the store accepts: 64 lowercase hex digits and a known extension, so no
/// name from a URL can reach outside the store's folder.
public enum PhotoName {
    public static let extensions: Set<String> = ["jpg", "png", "webp"]

    public static func isValid(_ name: String) -> Bool {
        let parts = name.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 2, extensions.contains(String(parts[1])), parts[0].utf8.count == 64 else { return false }
        return parts[0].utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) }
    }

    /// A new original's name: random, one per upload, so a name is never used again once
    /// forgotten (the same bytes uploaded again are a new file), and deleting one
    /// upload's file can never take a later one's.
    public static func original(fileExtension: String) -> String {
        Token.random(bytes: 32) + "." + fileExtension
    }

    public static func contentType(_ name: String) -> String {
        switch name.split(separator: ".").last {
        case "png": "image/png"
        case "webp": "image/webp"
        default: "image/jpeg"
        }
    }
}

/// Photos in a folder: the embedded default, and, pointed at one folder shared by every
/// web server and worker (`photos.directory`), the cluster's store.
public struct FolderPhotoStore: PhotoStore {
    public let directory: String

    public init(directory: String) throws {
        self.directory = directory
        for sub in [PhotoKind.original.rawValue, PhotoKind.variant.rawValue, "tmp"] {
            try FileManager.default.createDirectory(atPath: directory + "/" + sub, withIntermediateDirectories: true)
        }
    }

    func path(_ name: String, _ kind: PhotoKind) throws -> String {
        guard PhotoName.isValid(name) else { throw MillionsError(.badRequest, "not a photo file name") }
        return "\(directory)/\(kind.rawValue)/\(name)"
    }

    public func put(_ bytes: [UInt8], name: String, kind: PhotoKind) async throws {
        let target = try path(name, kind)
        let temp = "\(directory)/tmp/\(name).\(getpid()).\(UInt32.random(in: 0...UInt32.max))"
        try await NIOThreadPool.singleton.runIfActive {
            if FileManager.default.fileExists(atPath: target) { return }
            guard FileManager.default.createFile(atPath: temp, contents: nil),
                let handle = FileHandle(forWritingAtPath: temp)
            else { throw PhotoStoreError("cannot create a photo file (errno \(errno))") }
            do {
                try handle.write(contentsOf: bytes)
                // On disk before the name appears: a name is never replaced, so it must
                // never point at a file a power loss left empty.
                try handle.synchronize()
                try handle.close()
            } catch {
                try? handle.close()
                unlink(temp)
                throw PhotoStoreError("cannot write a photo file: \(error.localizedDescription)")
            }
            // rename is atomic within one file system: the name appears complete or not at all.
            guard rename(temp, target) == 0 else {
                let code = errno
                unlink(temp)
                throw PhotoStoreError("cannot store a photo file (errno \(code))")
            }
        }
    }

    public func get(name: String, kind: PhotoKind) async throws -> [UInt8]? {
        let p = try path(name, kind)
        return try await NIOThreadPool.singleton.runIfActive {
            guard let handle = FileHandle(forReadingAtPath: p) else { return nil }
            defer { try? handle.close() }
            return try handle.readToEnd().map { [UInt8]($0) } ?? []
        }
    }

    public func delete(name: String, kind: PhotoKind) async throws {
        let p = try path(name, kind)
        try await NIOThreadPool.singleton.runIfActive {
            guard unlink(p) == 0 || errno == ENOENT else { throw PhotoStoreError("cannot delete a photo file (errno \(errno))") }
        }
    }

    public func list(kind: PhotoKind) async throws -> [String] {
        let dir = "\(directory)/\(kind.rawValue)"
        return try await NIOThreadPool.singleton.runIfActive {
            try FileManager.default.contentsOfDirectory(atPath: dir).filter(PhotoName.isValid).sorted()
        }
    }
}

public struct PhotoStoreError: Error, CustomStringConvertible {
    public let description: String
    init(_ d: String) { description = d }
}
