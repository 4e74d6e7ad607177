import ArgumentParser
import Foundation
import Imaging

/// `millions images thumbnail`: the worker's thumbnail path over files, for comparison
/// with `vipsthumbnail` on the same images and size.
struct ImagesCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "images", abstract: "Image tools (libvips through the project's C shim).", subcommands: [Thumbnail.self])

    struct Thumbnail: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Thumbnail files into a folder: type from the bytes, bounded size, shrink-on-load, metadata stripped.")
        @Option(name: .long, help: "Fit inside SIZE×SIZE pixels.") var size = 300
        @Option(name: .long, help: "Images processed at once (one libvips thread each).") var threads = 2
        @Option(name: .long, help: "Output folder.") var out: String
        @Option(name: .long, help: "jpeg or webp.") var format = "jpeg"
        @Argument var files: [String]

        func run() async throws {
            guard let format = ImageFormat(rawValue: format), format != .png else { throw ValidationError("--format is jpeg or webp") }
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            let processor = ImageProcessor(threads: threads)
            let start = Date()
            let (size, out) = (self.size, self.out)
            let failures = try await withThrowingTaskGroup(of: String?.self) { group in
                var next = files.makeIterator()
                func add() {
                    guard let file = next.next() else { return }
                    group.addTask {
                        do {
                            // Mapped and read in place by libvips, as vipsthumbnail reads its files:
                            // a copy would hold a second image in memory per file in flight.
                            let data = try Data(contentsOf: URL(fileURLWithPath: file), options: .alwaysMapped)
                            let thumb = try await processor.run {
                                try data.withUnsafeBytes { try Imaging.thumbnail(raw: $0, width: size, height: size, format: format) }
                            }
                            let name = URL(fileURLWithPath: file).deletingPathExtension().lastPathComponent + "." + format.fileExtension
                            try Data(thumb).write(to: URL(fileURLWithPath: out + "/" + name))
                            return nil
                        } catch {
                            return "\(file): \(error)"
                        }
                    }
                }
                for _ in 0..<(threads * 2) { add() }
                var failures: [String] = []
                while let result = try await group.next() {
                    if let result { failures.append(result) }
                    add()
                }
                return failures
            }
            try await processor.shutdown()
            let seconds = Date().timeIntervalSince(start)
            for f in failures { FileHandle.standardError.write(Data("failed: \(f)\n".utf8)) }
            print(String(format: "%d images in %.2f s: %.1f images/s (%d failed)", files.count, seconds, Double(files.count) / seconds, failures.count))
        }
    }
}
