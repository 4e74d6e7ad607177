import CVips
import NIOPosix
import Synchronization

/// The formats accepted, detected from the bytes (never from a name or a header a client sends).
public enum ImageFormat: String, Sendable, Codable, CaseIterable {
    case jpeg, png, webp

    public static func detect<Bytes: RandomAccessCollection<UInt8>>(_ b: Bytes) -> ImageFormat? where Bytes.Index == Int {
        if b.count >= 3, b[0] == 0xFF, b[1] == 0xD8, b[2] == 0xFF { return .jpeg }
        if b.count >= 8, b[0..<8].elementsEqual([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]) { return .png }
        if b.count >= 12, b[0..<4].elementsEqual(Array("RIFF".utf8)), b[8..<12].elementsEqual(Array("WEBP".utf8)) { return .webp }
        return nil
    }

    public var contentType: String { "image/\(rawValue)" }
    public var fileExtension: String { self == .jpeg ? "jpg" : rawValue }
}

/// Bounds on untrusted images, checked from the header before any pixel is decoded.
public struct ImageLimits: Sendable {
    public var maxBytes = 20 * 1024 * 1024
    public var maxPixels = 50_000_000
    public var maxSide = 20_000
    public init() {}
}

public struct ImageError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: String, Sendable { case notAnImage, tooLarge, corrupt, badEdit }
    public var code: Code
    public var message: String
    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }
    public var description: String { message }
}

public struct ImageInfo: Sendable, Equatable {
    public var format: ImageFormat
    public var width: Int
    public var height: Int
    public init(format: ImageFormat, width: Int, height: Int) {
        self.format = format
        self.width = width
        self.height = height
    }
}

/// The chapter's "photo customization": crop, resize, sharpen, blur, in that order.
public struct Edits: Sendable, Codable, Equatable {
    public struct Rect: Sendable, Codable, Equatable {
        public var x, y, width, height: Int
        public init(x: Int, y: Int, width: Int, height: Int) {
            self.x = x
            self.y = y
            self.width = width
            self.height = height
        }
    }
    public struct Size: Sendable, Codable, Equatable {
        public var width, height: Int
        public init(width: Int, height: Int) {
            self.width = width
            self.height = height
        }
    }
    public struct Sigma: Sendable, Codable, Equatable {
        public var sigma: Double
        public init(sigma: Double) { self.sigma = sigma }
    }
    public var crop: Rect?
    public var resize: Size?
    public var sharpen: Sigma?
    public var blur: Sigma?

    public init(crop: Rect? = nil, resize: Size? = nil, sharpen: Sigma? = nil, blur: Sigma? = nil) {
        self.crop = crop
        self.resize = resize
        self.sharpen = sharpen
        self.blur = blur
    }

    /// Checks the edits against the (upright) image they will apply to.
    public func validate(width: Int, height: Int) throws {
        if let c = crop {
            // No addition: x + width of client-sent values could overflow (and trap).
            guard c.x >= 0, c.y >= 0, c.width >= 1, c.height >= 1, c.x < width, c.y < height, c.width <= width - c.x,
                c.height <= height - c.y
            else {
                throw ImageError(.badEdit, "crop must lie inside the \(width)×\(height) image")
            }
        }
        if let r = resize, !(1...4096).contains(r.width) || !(1...4096).contains(r.height) {
            throw ImageError(.badEdit, "resize width and height must be 1…4096")
        }
        for (name, s) in [("sharpen", sharpen), ("blur", blur)] {
            if let s, !(0.1...20).contains(s.sigma) { throw ImageError(.badEdit, "\(name).sigma must be 0.1…20") }
        }
    }
}

/// libvips through C: every image pointer is owned by one `VipsRef`, released in `deinit`.
/// All work here is blocking C; callers run it on `ImageProcessor`'s threads.
public enum Imaging {
    private static let started: Bool = {
        let ok = mv_init() == 0
        // Each operation on one thread: the processor's pool bounds the CPU used.
        mv_concurrency(1)
        mv_cache_off()
        mv_malloc_tune()
        return ok
    }()

    static func start() throws {
        guard started else { throw ImageError(.corrupt, "libvips failed to start") }
    }

    final class VipsRef {
        let pointer: UnsafeMutablePointer<VipsImage>
        init(_ pointer: UnsafeMutablePointer<VipsImage>) { self.pointer = pointer }
        deinit { mv_unref(pointer) }
        var width: Int { Int(mv_width(pointer)) }
        var height: Int { Int(mv_height(pointer)) }
    }

    /// libvips keeps one error buffer per process: take a copy and clear it under its lock.
    static func lastError() -> String {
        guard let copy = mv_error_copy() else { return "unknown libvips error" }
        defer { mv_free(copy) }
        return String(cString: copy).split(separator: "\n").first.map(String.init) ?? "unknown libvips error"
    }

    /// Runs an operation that writes a new image to `out`.
    static func make(_ op: (UnsafeMutablePointer<UnsafeMutablePointer<VipsImage>?>) -> Int32) throws -> VipsRef {
        var out: UnsafeMutablePointer<VipsImage>? = nil
        guard op(&out) == 0, let out else { throw ImageError(.corrupt, lastError()) }
        return VipsRef(out)
    }

    /// Format and size from the header, within `limits`; nothing is decoded.
    public static func probe(_ data: [UInt8], limits: ImageLimits = ImageLimits()) throws -> ImageInfo {
        try data.withUnsafeBytes { try probe(raw: $0, limits: limits) }
    }

    /// `probe` of bytes held elsewhere (a mapped file).
    public static func probe(raw: UnsafeRawBufferPointer, limits: ImageLimits = ImageLimits()) throws -> ImageInfo {
        try start()
        guard raw.count <= limits.maxBytes else { throw ImageError(.tooLarge, "images are limited to \(limits.maxBytes) bytes") }
        guard let format = ImageFormat.detect(raw) else { throw ImageError(.notAnImage, "send a JPEG, PNG or WebP image") }
        guard let p = mv_new_from_buffer(raw.baseAddress, raw.count) else {
            throw ImageError(.corrupt, "unreadable \(format.rawValue): \(lastError())")
        }
        let image = VipsRef(p)
        // The size as displayed: EXIF orientations 5–8 swap the sides, and edits apply
        // to the upright image.
        let swap = mv_orientation_swap(image.pointer) != 0
        let (w, h) = swap ? (image.height, image.width) : (image.width, image.height)
        guard w <= limits.maxSide, h <= limits.maxSide, w * h <= limits.maxPixels else {
            throw ImageError(.tooLarge, "\(w)×\(h) is more than \(limits.maxPixels) pixels or \(limits.maxSide) on a side")
        }
        return ImageInfo(format: format, width: w, height: h)
    }

    /// Fits the image inside width × height (never enlarging), upright, without metadata.
    public static func thumbnail(
        _ data: [UInt8], width: Int, height: Int, format: ImageFormat = .jpeg, quality: Int = 82,
        limits: ImageLimits = ImageLimits()
    ) throws -> [UInt8] {
        try data.withUnsafeBytes { try thumbnail(raw: $0, width: width, height: height, format: format, quality: quality, limits: limits) }
    }

    /// `thumbnail` of bytes held elsewhere (a mapped file), which libvips reads in place,
    /// without writing to them: no copy of the image.
    public static func thumbnail(
        raw: UnsafeRawBufferPointer, width: Int, height: Int, format: ImageFormat = .jpeg, quality: Int = 82,
        limits: ImageLimits = ImageLimits()
    ) throws -> [UInt8] {
        _ = try probe(raw: raw, limits: limits)
        let image = try make {
            mv_thumbnail_buffer(UnsafeMutableRawPointer(mutating: raw.baseAddress), raw.count, $0, Int32(width), Int32(height))
        }
        return try encode(image, format: format, quality: quality)
    }

    /// Upright, then crop, resize, sharpen and blur as given, encoded without metadata.
    public static func edit(
        _ data: [UInt8], _ edits: Edits, format: ImageFormat = .jpeg, quality: Int = 82, limits: ImageLimits = ImageLimits()
    ) throws -> [UInt8] {
        _ = try probe(data, limits: limits)
        return try data.withUnsafeBytes { raw in
            guard let p = mv_new_from_buffer(raw.baseAddress, raw.count) else { throw ImageError(.corrupt, lastError()) }
            var loaded = VipsRef(p)
            // A sideways picture is rotated, which reads rows out of order: load it whole.
            if mv_orientation(loaded.pointer) > 1 {
                guard let r = mv_new_from_buffer_random(raw.baseAddress, raw.count) else { throw ImageError(.corrupt, lastError()) }
                loaded = VipsRef(r)
            }
            // ARC may release a temporary before the C call returns: keep it explicitly.
            var image = try withExtendedLifetime(loaded) { try make { mv_autorot(loaded.pointer, $0) } }
            try edits.validate(width: image.width, height: image.height)
            if let c = edits.crop {
                let input = image
                image = try make { mv_crop(input.pointer, $0, Int32(c.x), Int32(c.y), Int32(c.width), Int32(c.height)) }
            }
            if let r = edits.resize {
                let input = image
                image = try make {
                    mv_resize(input.pointer, $0, Double(r.width) / Double(input.width), Double(r.height) / Double(input.height))
                }
            }
            if let s = edits.sharpen {
                let input = image
                image = try make { mv_sharpen(input.pointer, $0, s.sigma) }
            }
            if let b = edits.blur {
                let input = image
                image = try make { mv_blur(input.pointer, $0, b.sigma) }
            }
            return try encode(image, format: format, quality: quality)
        }
    }

    static func encode(_ image: VipsRef, format: ImageFormat, quality: Int) throws -> [UInt8] {
        var buffer: UnsafeMutableRawPointer? = nil
        var length = 0
        let q = Int32(min(max(quality, 1), 100))
        let status: Int32
        switch format {
        case .jpeg: status = mv_jpeg(image.pointer, &buffer, &length, q)
        case .webp: status = mv_webp(image.pointer, &buffer, &length, q)
        case .png: status = mv_png(image.pointer, &buffer, &length)
        }
        withExtendedLifetime(image) {}
        guard status == 0, let buffer else { throw ImageError(.corrupt, lastError()) }
        defer { mv_free(buffer) }
        return Array(UnsafeRawBufferPointer(start: buffer, count: length))
    }

    /// A width × height noise picture, encoded: for tests and benchmarks. A JPEG can carry
    /// an EXIF `orientation` (1–8), as phone pictures do.
    public static func testImage(width: Int, height: Int, format: ImageFormat, orientation: Int = 1) throws -> [UInt8] {
        try start()
        let image = try make { mv_test_image($0, Int32(width), Int32(height)) }
        guard orientation != 1, format == .jpeg else { return try encode(image, format: format, quality: 90) }
        var buffer: UnsafeMutableRawPointer? = nil
        var length = 0
        let status = mv_jpeg_oriented(image.pointer, &buffer, &length, Int32(orientation))
        withExtendedLifetime(image) {}
        guard status == 0, let buffer else { throw ImageError(.corrupt, lastError()) }
        defer { mv_free(buffer) }
        return Array(UnsafeRawBufferPointer(start: buffer, count: length))
    }
}

/// Runs image work on a fixed pool of threads, off Swift's cooperative pool (C blocks),
/// and never more than `threads` images at once.
public final class ImageProcessor: Sendable {
    let pool: NIOThreadPool

    public init(threads: Int) {
        pool = NIOThreadPool(numberOfThreads: max(1, threads))
        pool.start()
    }

    public func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await pool.runIfActive(body)
    }

    public func shutdown() async throws { try await pool.shutdownGracefully() }
}

extension ImageProcessor {
    private static let sharedBox = Mutex<ImageProcessor?>(nil)

    /// One processor per process, made on first use with `threads` threads: every web
    /// server and worker in the process shares the same bound on image work.
    public static func shared(threads: Int) -> ImageProcessor {
        sharedBox.withLock { box in
            if let p = box { return p }
            let p = ImageProcessor(threads: threads)
            box = p
            return p
        }
    }
}
