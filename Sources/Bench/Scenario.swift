import DataTier
import Foundation
import NIOCore
import NIOHTTP1

/// One request a benchmark sends.
public struct BenchRequest: Sendable {
    public var method: HTTPMethod
    public var path: String
    public var headers: [(String, String)]
    public var body: ByteBuffer?

    public init(_ method: HTTPMethod, _ path: String, headers: [(String, String)] = [], body: ByteBuffer? = nil) {
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body
    }
}

/// Makes the requests of one connection, one after another. Lives on that connection's
/// event loop, so it may keep mutable state (a random generator, a session) without locks.
public protocol RequestSource {
    mutating func next() -> BenchRequest
    /// True if the source follows up on answers (`received` gets each one, with its body).
    var wantsAnswers: Bool { get }
    /// The answer to the last request; returns how long to wait before the next one
    /// (closed loop), e.g. between polls of a job.
    mutating func received(status: UInt, headers: HTTPHeaders, body: ByteBuffer) -> TimeAmount
    /// True when the source has nothing more to send (a scan); its connection then stops,
    /// and the run ends early once every connection has.
    var finished: Bool { get }
}

extension RequestSource {
    public var wantsAnswers: Bool { false }
    public var finished: Bool { false }
    public mutating func received(status: UInt, headers: HTTPHeaders, body: ByteBuffer) -> TimeAmount { .zero }
}

/// A kind of traffic. To add one: conform to this, and name it in `millions bench`.
public protocol Scenario: Sendable {
    var name: String { get }
    /// The request source of connection `index` (0-based).
    func source(connection index: Int) -> any RequestSource
}

/// Draws indexes 0..<n uniformly or by Zipf's law (index 0 the most popular).
public struct KeySampler: Sendable {
    public enum Distribution: Sendable, Equatable {
        case uniform
        case zipf(exponent: Double)
    }

    public let count: Int
    public let distribution: Distribution
    /// Cumulative probabilities, for Zipf.
    private let cdf: [Double]

    public init(count: Int, distribution: Distribution) {
        precondition(count > 0)
        self.count = count
        self.distribution = distribution
        if case .zipf(let s) = distribution {
            var weights = (1...count).map { 1 / pow(Double($0), s) }
            let total = weights.reduce(0, +)
            var running = 0.0
            for i in weights.indices {
                running += weights[i] / total
                weights[i] = running
            }
            weights[count - 1] = 1
            cdf = weights
        } else {
            cdf = []
        }
    }

    /// The share of draws that land on the `k` most popular indexes.
    public func mass(ofMostPopular k: Int) -> Double {
        guard k > 0 else { return 0 }
        if k >= count { return 1 }
        if case .zipf = distribution { return cdf[k - 1] }
        return Double(k) / Double(count)
    }

    public func sample(_ rng: inout SplitMix64) -> Int {
        switch distribution {
        case .uniform:
            return rng.below(count)
        case .zipf:
            let u = Double(rng.next() >> 11) / Double(1 << 53)
            var lo = 0
            var hi = count - 1
            while lo < hi {
                let mid = (lo + hi) / 2
                if cdf[mid] < u { lo = mid + 1 } else { hi = mid }
            }
            return lo
        }
    }
}


/// `read`: `GET /users/{id}` over the seeded ids.
public struct ReadScenario: Scenario {
    public let name = "read"
    let ids: [Int64]
    let sampler: KeySampler
    let seed: UInt64

    public init(ids: [Int64], distribution: KeySampler.Distribution, seed: UInt64 = 1) {
        self.ids = ids
        self.sampler = KeySampler(count: ids.count, distribution: distribution)
        self.seed = seed
    }

    struct Source: RequestSource {
        let scenario: ReadScenario
        var rng: SplitMix64
        mutating func next() -> BenchRequest {
            BenchRequest(.GET, "/users/\(scenario.ids[scenario.sampler.sample(&rng)])")
        }
    }

    public func source(connection index: Int) -> any RequestSource {
        Source(scenario: self, rng: SplitMix64(seed: seed &+ UInt64(index) &* 7919))
    }
}

/// `GET /users/{id}` for every id once, the ids shared out among the connections: warms
/// every cache the way a site that has run for a while is warm (what was read within a
/// TTL is cached), so a short measured run does not count first reads of the tail.
public struct ScanScenario: Scenario {
    public let name = "scan"
    let ids: [Int64]
    let connections: Int

    public init(ids: [Int64], connections: Int) {
        self.ids = ids
        self.connections = max(1, connections)
    }

    struct Source: RequestSource {
        let scenario: ScanScenario
        var index: Int
        var finished: Bool { index >= scenario.ids.count }
        mutating func next() -> BenchRequest {
            defer { index += scenario.connections }
            return BenchRequest(.GET, "/users/\(scenario.ids[index])")
        }
    }

    public func source(connection index: Int) -> any RequestSource { Source(scenario: self, index: index) }
}

/// `mixed`: reads of other users, updates of one's own profile through a logged-in
/// session, and log-ins, in the given proportions. Each connection acts as one user.
public struct MixedScenario: Scenario {
    public let name = "mixed"
    /// A logged-in user: its seed index (for its email), id and session cookie.
    public struct LoggedIn: Sendable {
        public var index: Int
        public var id: Int64
        public var cookie: String
        public init(index: Int, id: Int64, cookie: String) {
            self.index = index
            self.id = id
            self.cookie = cookie
        }
    }

    let reads: ReadScenario
    let users: [LoggedIn]
    /// Percentages of updates and log-ins; the rest are reads.
    let updatePercent: Int
    let loginPercent: Int

    public init(reads: ReadScenario, users: [LoggedIn], updatePercent: Int, loginPercent: Int) {
        precondition(!users.isEmpty)
        self.reads = reads
        self.users = users
        self.updatePercent = updatePercent
        self.loginPercent = loginPercent
    }

    struct Source: RequestSource {
        var read: any RequestSource
        let user: LoggedIn
        let updatePercent: Int
        let loginPercent: Int
        var rng: SplitMix64
        var edits = 0

        mutating func next() -> BenchRequest {
            let roll = rng.below(100)
            if roll < updatePercent {
                edits += 1
                return BenchRequest(
                    .PATCH, "/users/\(user.id)",
                    headers: [("Content-Type", "application/json"), ("Cookie", "millions_session=\(user.cookie)")],
                    body: ByteBuffer(string: #"{"address":{"streetAddress":"\#(edits) Bench Street"}}"#))
            }
            if roll < updatePercent + loginPercent {
                return BenchRequest(
                    .POST, "/sessions", headers: [("Content-Type", "application/json")],
                    body: ByteBuffer(string: #"{"email":"\#(Seeder.email(user.index))","password":"\#(Seeder.password)"}"#))
            }
            return read.next()
        }
    }

    public func source(connection index: Int) -> any RequestSource {
        Source(
            read: reads.source(connection: index), user: users[index % users.count], updatePercent: updatePercent,
            loginPercent: loginPercent, rng: SplitMix64(seed: UInt64(index) &+ 99))
    }
}
