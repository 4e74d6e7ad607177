import DataTier
import Foundation
import Imaging
import MessageQueue
import MillionsCore
import Observability
import Prometheus

/// The photo job kind: from a stored original (and optional edits) make the variants,
/// store them, and make them the user's current photo.
public enum PhotoJobs {
    public static let queue = "photo"

    /// What a photo job carries: whose photo, which version of it, which stored original,
    /// which edits.
    public struct Payload: Codable, Sendable, Equatable {
        public var user: Int64
        public var version: Int64
        public var source: String
        public var edits: Edits?

        public init(user: Int64, version: Int64, source: String, edits: Edits? = nil) {
            self.user = user
            self.version = version
            self.source = source
            self.edits = edits
        }

        public var json: String { PhotoJobs.canonicalJSON(self) }

        public static func parse(_ text: String) -> Payload? {
            try? JSONDecoder().decode(Payload.self, from: Data(text.utf8))
        }
    }

    /// Every photo gets these, each fitted inside a square of `size` pixels; an edit job
    /// also keeps the full edited image as `edited`.
    public static let sizes: [(name: String, size: Int)] = [("large", 1024), ("medium", 320), ("small", 96)]
    public static let jpegQuality = 82
    /// Part of every variant's name: change it when the output of a recipe changes.
    static let recipeVersion = "millions-photo-1"

    /// The variant names a job writes, fixed by its input before it runs: the SHA-256 of
    /// the original's name, the edits, the version and the variant. A retried or duplicated
    /// run writes the same names, so each variant exists once; a new version gets new names,
    /// so a URL's content never changes (safe to cache forever) and a name, once forgotten,
    /// is never written again.
    public static func variantFiles(_ p: Payload) -> [String: String] {
        let edits = p.edits.map(canonicalJSON) ?? "-"
        var names = (p.edits == nil ? [] : ["edited"]) + sizes.map(\.name)
        names.sort()
        var out: [String: String] = [:]
        for name in names {
            let size = sizes.first { $0.name == name }.map { String($0.size) } ?? "full"
            out[name] = SHA256.hex("\(recipeVersion)\n\(p.source)\n\(edits)\nv\(p.version)\n\(name)\n\(size)\nq\(jpegQuality)") + ".jpg"
        }
        return out
    }

    /// JSON with sorted keys: the same value always gives the same text (variant names
    /// hash it).
    static func canonicalJSON(_ value: some Encodable) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        return String(decoding: (try? encoder.encode(value)) ?? Data(), as: UTF8.self)
    }

    /// The variants as the user object shows them: name → URL path.
    public static func photo(_ p: Payload) -> Photo {
        Photo(variants: variantFiles(p).mapValues { "/photos/" + $0 })
    }

    @discardableResult
    public static func enqueue(_ p: Payload, on jobs: any JobQueue, maxAttempts: Int) async throws -> Int64 {
        try await jobs.enqueue(queue: queue, payload: p.json, maxAttempts: maxAttempts, delaySeconds: 0)
    }

    /// The image work, blocking C: run it on an `ImageProcessor`.
    static func render(_ original: [UInt8], _ p: Payload, limits: ImageLimits) throws -> [(String, [UInt8])] {
        var base = original
        var out: [(String, [UInt8])] = []
        if let edits = p.edits {
            base = try Imaging.edit(original, edits, format: .jpeg, quality: 90, limits: limits)
            out.append(("edited", base))
        }
        for (name, size) in sizes {
            out.append((name, try Imaging.thumbnail(base, width: size, height: size, format: .jpeg, quality: jpegQuality, limits: limits)))
        }
        return out
    }

    /// The handler for the `photo` queue. `refresh` replaces the user's cached profile once
    /// the new photo is recorded; it runs in the write's read-your-writes scope, so it reads
    /// the profile from a node that has the write.
    /// The photo it replaces is forgotten (`forget`) after the scheduler's grace period.
    public static func handler(
        store: any PhotoStore, users: any UserStore, processor: ImageProcessor, limits: ImageLimits,
        metrics: AppMetrics, forget: ForgetPhotos.Scheduler, refresh: @escaping @Sendable (UserID) async -> Void
    ) -> JobHandler {
        { job in
            guard let p = Payload.parse(job.payload), PhotoName.isValid(p.source), let user = UserID(rawValue: p.user) else {
                throw JobFailure("malformed photo job payload", permanent: true)
            }
            // A newer version was asked for since: render nothing (an edit costs a full decode
            // and encode), and forget an original nothing will use again.
            guard let newest = try await users.newestPhoto(id: user) else {
                // The account is gone (or never had this photo): its original goes too.
                try await store.delete(name: p.source, kind: .original)
                return
            }
            if newest.version > p.version {
                metrics.counter("photo_jobs_superseded", "Photo jobs skipped because a newer version was asked for", [])
                    .increment()
                if newest.source != p.source { try await store.delete(name: p.source, kind: .original) }
                return
            }
            guard let original = try await store.get(name: p.source, kind: .original) else {
                throw JobFailure("the original photo \(p.source) is missing", permanent: true)
            }
            let outputs: [(String, [UInt8])]
            do {
                outputs = try await processor.run { try render(original, p, limits: limits) }
            } catch let e as ImageError {
                metrics.counter("image_failures", "Images that could not be processed, by reason", [("reason", e.code.rawValue)])
                    .increment()
                // The same bytes will fail the same way: no retry.
                throw JobFailure("\(e.code.rawValue): \(e.message)", permanent: true)
            }
            let files = variantFiles(p)
            for (variant, bytes) in outputs {
                guard let name = files[variant] else { continue }
                try await store.put(bytes, name: name, kind: .variant)
            }
            func processed(_ operation: String, _ n: Int = 1) {
                metrics.counter("images_processed", "Image operations done by workers", [("operation", operation)])
                    .increment(by: Int64(n))
            }
            if let e = p.edits {
                if e.crop != nil { processed("crop") }
                if e.resize != nil { processed("resize") }
                if e.sharpen != nil { processed("sharpen") }
                if e.blur != nil { processed("blur") }
            }
            processed("thumbnail", sizes.count)
            // The worker's scope when there is one, so the job records the write's position.
            try await ReadYourWrites.$current.withValue(ReadYourWrites.current ?? ReadYourWrites()) {
                switch try await users.setPhoto(id: user, photo: photo(p), version: p.version) {
                case .shown(let replaced):
                    await refresh(user)
                    // A retry replaces its own photo: forget only names the new one lacks.
                    let gone = (replaced?.files ?? []).filter { !files.values.contains($0) }
                    try await forget.schedule(ForgetPhotos.Payload(originals: [], variants: gone), after: forget.graceSeconds)
                case .notShown:
                    // A newer version is shown, or the account was deleted while this ran:
                    // nothing will ever name these variants.
                    for name in files.values { try await store.delete(name: name, kind: .variant) }
                    if try await users.photoSource(id: user) == nil {
                        try await store.delete(name: p.source, kind: .original)
                    }
                }
            }
        }
    }
}
