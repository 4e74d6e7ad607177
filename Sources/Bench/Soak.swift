import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import Synchronization

/// `millions bench soak`: a long open-loop run at a fraction of the measured capacity,
/// with each server's resident memory and open files sampled from its `/metrics` as it
/// goes. Memory that keeps growing under a steady load is a leak; errors at half capacity
/// are a bug.
public enum Soak {
    public struct Options: Sendable {
        public var load: LoadOptions
        public var capacitySeconds = 10
        public var fraction = 0.5
        public var sampleSeconds = 10
        public var warmupSeconds = 60
        /// Largest allowed growth of resident memory after the warm-up, as a fraction.
        public var maxGrowth = 0.10
        /// `host:port` of every `/metrics` to sample.
        public var metrics: [String]

        public init(load: LoadOptions, metrics: [String]) {
            self.load = load
            self.metrics = metrics
        }
    }

    /// One sampling instant: seconds since the soak began; per endpoint, bytes and files.
    public struct Sample: Codable, Sendable {
        public var second: Int
        public var residentBytes: [String: Int]
        public var openFiles: [String: Int]
    }

    public struct Report: Codable, Sendable {
        public var capacityRPS: Double
        public var offeredRPS: Double
        public var load: BenchResult
        public var samples: [Sample]
        public var warmupSeconds: Int
        /// Per endpoint: the highest resident memory after the warm-up over the first
        /// sample after it, minus one.
        public var growth: [String: Double]
        public var maxGrowth: Double
        public var errors: Int
        public var passed: Bool

        public var table: String {
            let names = growth.keys.sorted()
            var out = "soak: capacity \(Format.number(capacityRPS)) req/s (closed loop), offered \(Format.number(offeredRPS)) req/s for \(Format.number(load.durationSeconds)) s\n"
            out += "  second  " + names.map { "\($0) RSS MB / fds".padding(toLength: 34, withPad: " ", startingAt: 0) }.joined() + "\n"
            for s in samples {
                out += String(format: "  %6d  ", s.second)
                for n in names {
                    let mb = Double(s.residentBytes[n] ?? 0) / 1_048_576
                    out += String(format: "%8.1f / %-5d", mb, s.openFiles[n] ?? 0).padding(toLength: 34, withPad: " ", startingAt: 0)
                }
                out += "\n"
            }
            for n in names {
                out += "  \(n): memory after the \(warmupSeconds) s warm-up grew " + String(format: "%+.1f%% (limit %.0f%%)\n", growth[n]! * 100, maxGrowth * 100)
            }
            out += "  answered \(load.requests), errors \(errors), backlog \(load.backlog), p99 \(Format.ms(load.latencyMs.p99)) ms\n"
            out += passed ? "  PASS: memory flat, no errors\n" : "  FAIL: memory grew past the limit, or requests failed\n"
            return out
        }

        public func json() throws -> Data {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            return try encoder.encode(self)
        }
    }

    /// The process figures in a Prometheus text exposition.
    public static func figures(inMetrics text: String) -> (residentBytes: Int, openFiles: Int)? {
        var rss: Int? = nil, fds: Int? = nil
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            let parts = line.split(separator: " ")
            guard parts.count == 2, let value = Double(parts[1]) else { continue }
            if parts[0] == "process_resident_memory_bytes" { rss = Int(value) }
            if parts[0] == "process_open_fds" { fds = Int(value) }
        }
        guard let rss, let fds else { return nil }
        return (rss, fds)
    }

    /// Growth after the warm-up: the highest sample over the first one at or past
    /// `warmup`, minus one; nil with no sample past it.
    public static func growth(_ samples: [(second: Int, bytes: Int)], warmup: Int) -> Double? {
        let after = samples.filter { $0.second >= warmup }
        guard let first = after.first, first.bytes > 0, let peak = after.map(\.bytes).max() else { return nil }
        return Double(peak) / Double(first.bytes) - 1
    }

    static func sample(_ endpoints: [String], at second: Int) async throws -> Sample {
        var sample = Sample(second: second, residentBytes: [:], openFiles: [:])
        for endpoint in endpoints {
            let response = try await HTTPClient.shared.execute(HTTPClientRequest(url: "http://\(endpoint)/metrics"), timeout: .seconds(10))
            let body = try await response.body.collect(upTo: 16 << 20)
            guard response.status == .ok, let f = figures(inMetrics: String(buffer: body)) else {
                throw BenchError("\(endpoint)/metrics answered \(response.status.code) without process_resident_memory_bytes")
            }
            sample.residentBytes[endpoint] = f.residentBytes
            sample.openFiles[endpoint] = f.openFiles
        }
        return sample
    }

    /// Measures capacity (closed loop), then soaks at `fraction` of it, sampling memory.
    public static func run(
        _ options: Options, scenario: any Scenario, progress: @escaping @Sendable (String) -> Void
    ) async throws -> Report {
        var capacity = options.load
        capacity.rate = nil
        capacity.duration = .seconds(Int64(options.capacitySeconds))
        let measured = try await LoadRunner.run(capacity, scenario: scenario)
        guard measured.requestsPerSecond > 0 else { throw BenchError("no answers while measuring capacity") }
        progress("capacity \(Format.number(measured.requestsPerSecond)) req/s; soaking at \(Int(options.fraction * 100))%")

        var soak = options.load
        soak.rate = measured.requestsPerSecond * options.fraction
        let samples = Mutex<[Sample]>([])
        let start = ContinuousClock.now
        func elapsed() -> Int { Int((ContinuousClock.now - start).components.seconds) }
        let first = try await sample(options.metrics, at: 0)
        samples.withLock { $0.append(first) }
        let sampler = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(options.sampleSeconds))
                if Task.isCancelled { break }
                if let s = try? await sample(options.metrics, at: elapsed()) {
                    samples.withLock { $0.append(s) }
                    let rss = s.residentBytes.values.reduce(0, +)
                    progress(String(format: "%4ds  RSS %.1f MB", s.second, Double(rss) / 1_048_576))
                }
            }
        }
        let result = try await LoadRunner.run(soak, scenario: scenario)
        sampler.cancel()
        _ = await sampler.result
        let last = try await sample(options.metrics, at: elapsed())
        let all = samples.withLock { $0 } + [last]
        var growth: [String: Double] = [:]
        for endpoint in options.metrics {
            growth[endpoint] = Self.growth(all.map { ($0.second, $0.residentBytes[endpoint] ?? 0) }, warmup: options.warmupSeconds) ?? 0
        }
        let errors = result.errorCount
        return Report(
            capacityRPS: measured.requestsPerSecond, offeredRPS: soak.rate!, load: result, samples: all,
            warmupSeconds: options.warmupSeconds, growth: growth, maxGrowth: options.maxGrowth, errors: errors,
            passed: errors == 0 && growth.values.allSatisfy { $0 <= options.maxGrowth })
    }
}
