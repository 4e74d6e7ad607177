import Foundation
import NIOCore
import NIOHTTP1
import Synchronization

/// `photos`: each connection is one logged-in user who uploads a photo, polls its job
/// until it is done, and uploads the next. Besides the requests' own latency it measures
/// what a user waits for: upload sent → variants ready.
public struct PhotosScenario: Scenario {
    public let name = "photos"
    let users: [MixedScenario.LoggedIn]
    let images: [ByteBuffer]
    let pollInterval: TimeAmount
    public let outcomes = PhotoOutcomes()

    /// `images` are uploaded in turn (JPEG, PNG or WebP bytes).
    public init(users: [MixedScenario.LoggedIn], images: [ByteBuffer], pollInterval: TimeAmount = .milliseconds(100)) {
        precondition(!users.isEmpty && !images.isEmpty)
        self.users = users
        self.images = images
        self.pollInterval = pollInterval
    }

    struct Source: RequestSource {
        enum Phase {
            case upload
            case uploading(since: NIODeadline)
            case polling(url: String, since: NIODeadline)
        }
        let scenario: PhotosScenario
        let user: MixedScenario.LoggedIn
        var turn: Int
        var phase = Phase.upload

        var wantsAnswers: Bool { true }

        mutating func next() -> BenchRequest {
            let cookie = ("Cookie", "millions_session=\(user.cookie)")
            if case .polling(let url, _) = phase { return BenchRequest(.GET, url, headers: [cookie]) }
            let image = scenario.images[turn % scenario.images.count]
            turn += 1
            phase = .uploading(since: .now())
            return BenchRequest(
                .POST, "/users/\(user.id)/photo", headers: [("Content-Type", "application/octet-stream"), cookie], body: image)
        }

        mutating func received(status: UInt, headers: HTTPHeaders, body: ByteBuffer) -> TimeAmount {
            switch phase {
            case .uploading(let since):
                guard status == 202, let url = headers.first(name: "Location") else {
                    scenario.outcomes.record(.refused)
                    phase = .upload
                    return .zero
                }
                scenario.outcomes.record(.accepted)
                phase = .polling(url: url, since: since)
                return scenario.pollInterval
            case .polling(_, let since):
                let text = String(buffer: body)
                if text.contains(#""state":"done""#) {
                    scenario.outcomes.record(.done(.now() - since))
                } else if text.contains(#""state":"failed""#) || status >= 400 {
                    scenario.outcomes.record(.failed)
                } else {
                    return scenario.pollInterval
                }
                phase = .upload
                return .zero
            case .upload:
                return .zero
            }
        }
    }

    public func source(connection index: Int) -> any RequestSource {
        Source(scenario: self, user: users[index % users.count], turn: index)
    }
}

/// What happened to the photos of a run, shared by every connection.
public final class PhotoOutcomes: Sendable {
    enum Event {
        case accepted, refused, failed
        case done(TimeAmount)
    }

    private struct Counts {
        var accepted = 0, refused = 0, failed = 0
        var readyMs: [Double] = []
    }
    private let counts = Mutex(Counts())

    func record(_ e: Event) {
        counts.withLock { c in
            switch e {
            case .accepted: c.accepted += 1
            case .refused: c.refused += 1
            case .failed: c.failed += 1
            case .done(let t): c.readyMs.append(Double(t.nanoseconds) / 1e6)
            }
        }
    }

    /// Uploads accepted and refused, jobs done and failed, and the upload → ready time.
    public func summary(seconds: Double) -> PhotoSummary {
        counts.withLock { c in
            let sorted = c.readyMs.sorted()
            func pct(_ p: Double) -> Double { sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, Int(Double(sorted.count) * p / 100))] }
            return PhotoSummary(
                accepted: c.accepted, refused: c.refused, done: sorted.count, failed: c.failed,
                donePerSecond: Double(sorted.count) / seconds, readyP50Ms: pct(50), readyP90Ms: pct(90), readyP99Ms: pct(99),
                readyMaxMs: sorted.last ?? 0)
        }
    }
}

public struct PhotoSummary: Codable, Sendable {
    public var accepted, refused, done, failed: Int
    public var donePerSecond: Double
    public var readyP50Ms, readyP90Ms, readyP99Ms, readyMaxMs: Double

    public var table: String {
        """
          photos       \(accepted) uploads accepted, \(refused) refused; \(done) ready, \(failed) failed; \(Format.number(donePerSecond)) photos/s
          ready ms     upload → variants: p50 \(Format.ms(readyP50Ms))  p90 \(Format.ms(readyP90Ms))  p99 \(Format.ms(readyP99Ms))  max \(Format.ms(readyMaxMs))

        """
    }
}
