import Foundation
import Imaging
import Synchronization
import Testing

/// libvips through the project's C shim, on images the tests make with libvips itself.
@Suite struct ImagingTests {
    @Test func typesAreDetectedFromTheBytes() throws {
        #expect(ImageFormat.detect(try Imaging.testImage(width: 8, height: 8, format: .jpeg)) == .jpeg)
        #expect(ImageFormat.detect(try Imaging.testImage(width: 8, height: 8, format: .png)) == .png)
        #expect(ImageFormat.detect(try Imaging.testImage(width: 8, height: 8, format: .webp)) == .webp)
        #expect(ImageFormat.detect(Array("GIF89a......".utf8)) == nil)
        #expect(ImageFormat.detect(Array("<svg xmlns=".utf8)) == nil)
        #expect(ImageFormat.detect([]) == nil)
        #expect(throws: ImageError(.notAnImage, "send a JPEG, PNG or WebP image")) {
            try Imaging.probe(Array("%PDF-1.7 not a picture".utf8))
        }
    }

    @Test(arguments: ImageFormat.allCases) func everyOperationGivesTheExpectedSizeAndFormat(input: ImageFormat) throws {
        let original = try Imaging.testImage(width: 1200, height: 800, format: input)
        #expect(try Imaging.probe(original) == ImageInfo(format: input, width: 1200, height: 800))

        let thumb = try Imaging.thumbnail(original, width: 300, height: 300)
        #expect(try Imaging.probe(thumb) == ImageInfo(format: .jpeg, width: 300, height: 200))
        let webp = try Imaging.thumbnail(original, width: 96, height: 96, format: .webp, quality: 70)
        #expect(try Imaging.probe(webp) == ImageInfo(format: .webp, width: 96, height: 64))
        // Never enlarged.
        let small = try Imaging.testImage(width: 40, height: 30, format: input)
        #expect(try Imaging.probe(try Imaging.thumbnail(small, width: 300, height: 300)).width == 40)

        let cropped = try Imaging.edit(original, Edits(crop: .init(x: 100, y: 50, width: 400, height: 300)))
        #expect(try Imaging.probe(cropped) == ImageInfo(format: .jpeg, width: 400, height: 300))
        let resized = try Imaging.edit(original, Edits(resize: .init(width: 200, height: 100)), format: .webp)
        #expect(try Imaging.probe(resized) == ImageInfo(format: .webp, width: 200, height: 100))
        let sharpened = try Imaging.edit(original, Edits(sharpen: .init(sigma: 1.5)))
        #expect(try Imaging.probe(sharpened).width == 1200)
        let blurred = try Imaging.edit(original, Edits(blur: .init(sigma: 4)))
        #expect(try Imaging.probe(blurred).height == 800)
        // Blur removes noise: the blurred JPEG compresses far smaller than the sharpened one.
        #expect(blurred.count < sharpened.count / 2)
        let all = try Imaging.edit(
            original,
            Edits(crop: .init(x: 0, y: 0, width: 800, height: 800), resize: .init(width: 256, height: 256), sharpen: .init(sigma: 1), blur: .init(sigma: 1)))
        #expect(try Imaging.probe(all) == ImageInfo(format: .jpeg, width: 256, height: 256))
    }

    @Test func badEditsAreRefused() throws {
        let original = try Imaging.testImage(width: 100, height: 80, format: .png)
        for edits in [
            Edits(crop: .init(x: 50, y: 0, width: 60, height: 10)), Edits(crop: .init(x: -1, y: 0, width: 10, height: 10)),
            Edits(resize: .init(width: 0, height: 10)), Edits(resize: .init(width: 5000, height: 10)),
            Edits(sharpen: .init(sigma: 0)), Edits(blur: .init(sigma: 50)),
        ] {
            #expect(throws: ImageError.self) { try Imaging.edit(original, edits) }
            do { _ = try Imaging.edit(original, edits) } catch let e as ImageError { #expect(e.code == .badEdit) }
        }
    }

    /// A 60-byte PNG that declares 50,000 × 50,000 pixels is refused from its header.
    @Test func aDecompressionBombIsRefusedFromItsHeader() throws {
        let bomb = PNGBomb.make(width: 50_000, height: 50_000)
        #expect(bomb.count < 100)
        #expect(ImageFormat.detect(bomb) == .png)
        do {
            _ = try Imaging.thumbnail(bomb, width: 100, height: 100)
            Issue.record("the bomb was accepted")
        } catch let e as ImageError {
            #expect(e.code == .tooLarge)
        }
        var tight = ImageLimits()
        tight.maxBytes = 1000
        #expect(throws: ImageError.self) { try Imaging.probe(try Imaging.testImage(width: 200, height: 200, format: .png), limits: tight) }
    }

    /// A truncated or garbled file fails with a reason; it never crashes the process.
    @Test(arguments: ImageFormat.allCases) func corruptImagesFailCleanly(format: ImageFormat) throws {
        let good = try Imaging.testImage(width: 640, height: 480, format: format)
        let truncated = Array(good.prefix(good.count / 3))
        var garbled = good
        for i in stride(from: 64, to: garbled.count, by: 7) { garbled[i] ^= 0x5A }
        for (i, bad) in [truncated, garbled, Array(good.prefix(16))].enumerated() {
            // Each operation on its own must refuse the file, not make a grey picture of it.
            let operations: [(String, () throws -> [UInt8])] = [
                ("thumbnail", { try Imaging.thumbnail(bad, width: 100, height: 100) }),
                ("edit", { try Imaging.edit(bad, Edits(blur: .init(sigma: 1))) }),
            ]
            for (name, operation) in operations {
                do {
                    _ = try operation()
                    // Lossy WebP has no checksum: garbled data can decode, to noise. It
                    // must not crash; truncation and a bare header must fail.
                    if format == .webp && i == 1 { continue }
                    Issue.record("\(name) processed corrupt \(format) #\(i)")
                } catch let e as ImageError {
                    #expect([.corrupt, .tooLarge].contains(e.code), "\(e)")
                }
            }
        }
    }

    @Test func theProcessorRunsWorkOffThePoolWithBoundedThreads() async throws {
        let processor = ImageProcessor(threads: 2)
        let original = try Imaging.testImage(width: 800, height: 600, format: .jpeg)
        let sizes = try await withThrowingTaskGroup(of: Int.self) { group in
            for _ in 0..<8 {
                group.addTask { try await processor.run { try Imaging.probe(try Imaging.thumbnail(original, width: 64, height: 64)).width } }
            }
            return try await group.reduce(into: [Int]()) { $0.append($1) }
        }
        #expect(sizes == Array(repeating: 64, count: 8))
        try await processor.shutdown()
    }
}

/// A PNG with a valid signature and IHDR for any size, and a one-byte IDAT.
enum PNGBomb {
    static func make(width: UInt32, height: UInt32) -> [UInt8] {
        var out: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]
        func be(_ v: UInt32) -> [UInt8] { [UInt8(v >> 24), UInt8(v >> 16 & 0xFF), UInt8(v >> 8 & 0xFF), UInt8(v & 0xFF)] }
        func chunk(_ type: String, _ data: [UInt8]) {
            let body = Array(type.utf8) + data
            out += be(UInt32(data.count)) + body + be(crc32(body))
        }
        chunk("IHDR", be(width) + be(height) + [8, 2, 0, 0, 0])
        chunk("IDAT", [0x78, 0x9C, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01])
        chunk("IEND", [])
        return out
    }

    static func crc32(_ data: [UInt8]) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        for byte in data {
            crc ^= UInt32(byte)
            for _ in 0..<8 { crc = crc & 1 == 1 ? (crc >> 1) ^ 0xEDB8_8320 : crc >> 1 }
        }
        return ~crc
    }
}
