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

    private let counters = HandleTable<Counter>()
    private let latencies = HandleTable<DurationHistogram>()
    private let gauges = HandleTable<Gauge>()

    /// Like `counter`, for hot paths: resolved through the registry once per label set
    /// (the registry takes a lock and builds a descriptor on every lookup). A metric's label
    /// names must not vary between calls.
    public func cachedCounter(_ name: String, _ help: String, _ labels: [(String, String)]) -> Counter {
        counters.handle(name, labels) { counter(name, help, labels) }
    }

    /// Like `latency`, resolved once per label set.
    public func cachedLatency(_ name: String, _ help: String, _ labels: [(String, String)]) -> DurationHistogram {
        latencies.handle(name, labels) { latency(name, help, labels) }
    }

    /// Like `gauge`, resolved once per label set.
    public func cachedGauge(_ name: String, _ help: String, _ labels: [(String, String)]) -> Gauge {
        gauges.handle(name, labels) { gauge(name, help, labels) }
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

/// Metric handles by name and label values.
private final class HandleTable<Handle: Sendable>: Sendable {
    private struct Key: Hashable {
        var name: String
        var values: [String]
    }

    private let handles = Mutex<[Key: Handle]>([:])

    func handle(_ name: String, _ labels: [(String, String)], make: () -> Handle) -> Handle {
        let key = Key(name: name, values: labels.map(\.1))
        if let found = handles.withLock({ $0[key] }) { return found }
        let made = make()
        handles.withLock { $0[key] = made }
        return made
    }
}
