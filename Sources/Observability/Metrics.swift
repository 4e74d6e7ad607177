import Prometheus

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
