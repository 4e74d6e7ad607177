import Foundation
import MessageQueue
import MillionsCore
import Observability
import Prometheus

/// The job that forgets a user's photo files once nothing names them (an account deleted,
/// a photo replaced): deletes the originals (which may carry EXIF and GPS) and the variants,
/// then purges the variants' URLs from every edge. Failures retry with the queue's backoff,
/// so an edge that is down is purged when it is back.
public enum ForgetPhotos {
    public static let queue = "photo.forget"

    public struct Payload: Codable, Sendable, Equatable {
        public var originals: [String]
        public var variants: [String]

        public init(originals: [String], variants: [String]) {
            self.originals = originals
            self.variants = variants
        }

        public var json: String { PhotoJobs.canonicalJSON(self) }
        public var isEmpty: Bool { originals.isEmpty && variants.isEmpty }
    }

    /// Queues a forget job, `after` seconds from now.
    public struct Scheduler: Sendable {
        let jobs: any JobQueue
        let maxAttempts: Int
        /// How long a replaced photo's variants stay servable: a page rendered just before
        /// the swap may still name them.
        public let graceSeconds: Double

        public init(jobs: any JobQueue, maxAttempts: Int, graceSeconds: Double) {
            self.jobs = jobs
            self.maxAttempts = maxAttempts
            self.graceSeconds = graceSeconds
        }

        public func schedule(_ files: Payload, after seconds: Double = 0) async throws {
            guard !files.isEmpty else { return }
            _ = try await jobs.enqueue(queue: queue, payload: files.json, maxAttempts: maxAttempts, delaySeconds: seconds)
        }
    }

    public static func handler(store: any PhotoStore, edges: EdgePurge, metrics: AppMetrics) -> JobHandler {
        { job in
            guard let p = try? JSONDecoder().decode(Payload.self, from: Data(job.payload.utf8)),
                (p.originals + p.variants).allSatisfy(PhotoName.isValid)
            else { throw JobFailure("malformed photo.forget payload", permanent: true) }
            for name in p.originals { try await store.delete(name: name, kind: .original) }
            for name in p.variants { try await store.delete(name: name, kind: .variant) }
            // After the files: an edge that fetches again between the two gets a 404.
            for name in p.variants { try await edges.purge("/photos/" + name) }
            metrics.counter("photo_files_forgotten", "Photo files deleted because nothing names them any more", [])
                .increment(by: Int64(p.originals.count + p.variants.count))
        }
    }
}
