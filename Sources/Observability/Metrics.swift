import Prometheus
import Synchronization

/// One Prometheus registry per process (or per test app), with the metric names this
/// project uses. Names follow `<tier>_<thing>_<unit>`, labels are low-cardinality.
public final class AppMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry

    /// Latency buckets from 0.5 ms to 10 s.
    public static let latencyBuckets: [Duration] = [
        .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10),
        .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500),
        .seconds(1), .seconds(2.5), .seconds(5), .seconds(10),
    ]

    public init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
        self.registry = registry
    }

    private let counters = Mutex<[HandleKey: Counter]>([:])
    private let latencies = Mutex<[HandleKey: DurationHistogram]>([:])
    private let gauges = Mutex<[HandleKey: Gauge]>([:])

    /// A metric's name and label values: hashed once per call instead of the registry's
    /// lock, label array and descriptor on every lookup.
    struct HandleKey: Hashable {
        var name: String
        var values: [String]
        init(_ name: String, _ labels: [(String, String)]) {
            self.name = name
            values = labels.map(\.1)
        }
    }

    /// Like `counter`, for hot paths: resolved through the registry once per label set.
    /// A metric's label names must not vary between calls.
    public func cachedCounter(_ name: String, _ help: String, _ labels: [(String, String)]) -> Counter {
        let key = HandleKey(name, labels)
        if let c = counters.withLock({ $0[key] }) { return c }
        let c = counter(name, help, labels)
        counters.withLock { $0[key] = c }
        return c
    }

    /// Like `latency`, resolved once per label set.
    public func cachedLatency(_ name: String, _ help: String, _ labels: [(String, String)]) -> DurationHistogram {
        let key = HandleKey(name, labels)
        if let h = latencies.withLock({ $0[key] }) { return h }
        let h = latency(name, help, labels)
        latencies.withLock { $0[key] = h }
        return h
    }

    /// Like `gauge`, resolved once per label set.
    public func cachedGauge(_ name: String, _ help: String, _ labels: [(String, String)]) -> Gauge {
        let key = HandleKey(name, labels)
        if let g = gauges.withLock({ $0[key] }) { return g }
        let g = gauge(name, help, labels)
        gauges.withLock { $0[key] = g }
        return g
    }

    public func counter(_ name: String, _ help: String, _ labels: [(String, String)] = []) -> Counter {
        registry.makeCounter(descriptor: .init(metricName: name, unitName: "total", helpText: help), labels: labels)
    }

    public func gauge(_ name: String, _ help: String, _ labels: [(String, String)] = []) -> Gauge {
        registry.makeGauge(descriptor: .init(metricName: name, unitName: "", helpText: help), labels: labels)
    }

    public func latency(_ name: String, _ help: String, _ labels: [(String, String)] = []) -> DurationHistogram {
        registry.makeDurationHistogram(
            descriptor: .init(metricName: name, unitName: "seconds", helpText: help), labels: labels,
            buckets: Self.latencyBuckets)
    }

    /// The Prometheus text exposition of every metric, with the process's own figures.
    public func exposition() -> [UInt8] {
        updateProcessFigures()
        return registry.emitToBuffer()
    }
}
