import Foundation
import Histogram
import NIOCore

/// What a run measured. Latencies in milliseconds.
public struct BenchResult: Codable, Sendable {
    public struct Latency: Codable, Sendable {
        public var p50, p90, p99, p999, max, mean: Double
    }
    public struct Second: Codable, Sendable {
        public var second: Int
        public var requests: Int
        public var p50, p99: Double
    }

    public var scenario: String
    /// closed or open
    public var mode: String
    public var connections: Int
    public var rate: Double?
    public var durationSeconds: Double
    /// Answers received within the duration (any status).
    public var requests: Int
    public var requestsPerSecond: Double
    public var latencyMs: Latency
    /// connect, timeout, io (closed mid-request), status 4xx, status 5xx.
    public var errors: [String: Int]
    /// Open loop: requests that were due but never sent (the server could not keep up).
    public var backlog: Int
    public var timeline: [Second]
    /// The photos scenario: uploads, jobs, and upload → ready times.
    public var photos: PhotoSummary?

    init(scenario: String, options: LoadOptions, histogram h: Histogram<UInt64>, perSecond: [Histogram<UInt64>], errors: [String: Int], backlog: Int) {
        self.scenario = scenario
        mode = options.rate == nil ? "closed" : "open"
        connections = options.connections
        rate = options.rate
        durationSeconds = Double(options.duration.nanoseconds) / 1e9
        requests = Int(h.totalCount)
        requestsPerSecond = Double(h.totalCount) / durationSeconds
        func ms(_ v: UInt64) -> Double { Double(v) / 1000 }
        latencyMs = Latency(
            p50: ms(h.valueAtPercentile(50)), p90: ms(h.valueAtPercentile(90)), p99: ms(h.valueAtPercentile(99)),
            p999: ms(h.valueAtPercentile(99.9)), max: ms(h.max), mean: h.totalCount > 0 ? h.mean / 1000 : 0)
        self.errors = errors
        self.backlog = backlog
        timeline = perSecond.enumerated().map { i, s in
            Second(second: i + 1, requests: Int(s.totalCount), p50: ms(s.valueAtPercentile(50)), p99: ms(s.valueAtPercentile(99)))
        }
    }

    public var errorCount: Int { errors.values.reduce(0, +) }

    /// The human-readable summary.
    public var table: String {
        var out = """
            scenario \(scenario), \(mode) loop, \(connections) connections\(rate.map { ", \(Int($0)) req/s offered" } ?? ""), \(Format.number(durationSeconds)) s
              requests     \(requests)
              requests/s   \(Format.number(requestsPerSecond))
              latency ms   p50 \(Format.ms(latencyMs.p50))  p90 \(Format.ms(latencyMs.p90))  p99 \(Format.ms(latencyMs.p99))  p99.9 \(Format.ms(latencyMs.p999))  max \(Format.ms(latencyMs.max))
              errors       \(errors.isEmpty ? "0" : errors.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))

            """
        if backlog > 0 { out += "  backlog      \(backlog) requests never sent (the server fell behind the offered rate)\n" }
        if let photos { out += photos.table }
        return out
    }

    public func json() throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        return try encoder.encode(self)
    }

    /// Throughput and latency percentiles over time, as one SVG.
    public var svg: String {
        let seconds = timeline.map { Double($0.second) }
        return SVGChart.render(
            title: "millions bench \(scenario), \(mode) loop, \(connections) connections — \(Format.number(requestsPerSecond)) req/s, p99 \(Format.ms(latencyMs.p99)) ms",
            panels: [
                .init(yLabel: "requests/s", series: [.init(name: "requests/s", color: "#2f6fb0", points: Array(zip(seconds, timeline.map { Double($0.requests) })))]),
                .init(
                    yLabel: "latency ms",
                    series: [
                        .init(name: "p50", color: "#3a9d5d", points: Array(zip(seconds, timeline.map(\.p50)))),
                        .init(name: "p99", color: "#c0392b", points: Array(zip(seconds, timeline.map(\.p99)))),
                    ]),
            ], xLabel: "second")
    }
}

enum Format {
    static func number(_ v: Double) -> String {
        v >= 100 ? String(Int(v.rounded())) : String(format: "%.1f", v)
    }
    static func ms(_ v: Double) -> String { String(format: v < 10 ? "%.2f" : "%.1f", v) }
}

/// Line charts in plain SVG: one panel per measure, stacked, sharing the x axis.
public enum SVGChart {
    public struct Series: Sendable {
        public var name: String
        public var color: String
        public var points: [(Double, Double)]
        public init(name: String, color: String, points: [(Double, Double)]) {
            self.name = name
            self.color = color
            self.points = points
        }
    }
    public struct Panel: Sendable {
        public var yLabel: String
        public var series: [Series]
        public init(yLabel: String, series: [Series]) {
            self.yLabel = yLabel
            self.series = series
        }
    }

    public static func render(title: String, panels: [Panel], xLabel: String) -> String {
        let width = 900.0, panelHeight = 240.0, left = 70.0, right = 20.0, top = 40.0, gap = 50.0
        let height = top + Double(panels.count) * (panelHeight + gap)
        var svg = header(title: title, width: width, height: height, left: left)
        let xs = panels.flatMap { $0.series.flatMap { $0.points.map(\.0) } }
        let xMin = xs.min() ?? 0, xMax = Swift.max(xs.max() ?? 1, (xs.min() ?? 0) + 1)
        for (p, panel) in panels.enumerated() {
            let y0 = top + Double(p) * (panelHeight + gap)
            let ys = panel.series.flatMap { $0.points.map(\.1) }
            let yMax = niceCeiling(Swift.max(ys.max() ?? 1, 1e-9))
            func px(_ x: Double) -> Double { left + (x - xMin) / (xMax - xMin) * (width - left - right) }
            func py(_ y: Double) -> Double { y0 + panelHeight - y / yMax * panelHeight }
            svg += "<rect x=\"\(left)\" y=\"\(y0)\" width=\"\(width - left - right)\" height=\"\(panelHeight)\" fill=\"none\" stroke=\"#999\"/>\n"
            for t in 0...4 {
                let v = yMax * Double(t) / 4
                svg += "<line x1=\"\(left)\" y1=\"\(py(v))\" x2=\"\(width - right)\" y2=\"\(py(v))\" stroke=\"#eee\"/>"
                svg += "<text x=\"\(left - 6)\" y=\"\(py(v) + 4)\" text-anchor=\"end\">\(escape(Format.number(v)))</text>\n"
            }
            svg += "<text x=\"14\" y=\"\(y0 + panelHeight / 2)\" transform=\"rotate(-90 14 \(y0 + panelHeight / 2))\" text-anchor=\"middle\">\(escape(panel.yLabel))</text>\n"
            for (k, series) in panel.series.enumerated() {
                let path = series.points.map { "\(String(format: "%.1f", px($0.0))),\(String(format: "%.1f", py($0.1)))" }.joined(separator: " ")
                if !path.isEmpty {
                    svg += "<polyline fill=\"none\" stroke=\"\(series.color)\" stroke-width=\"2\" points=\"\(path)\"/>\n"
                }
                svg += "<text x=\"\(width - right - 10)\" y=\"\(y0 + 16 + Double(k) * 15)\" text-anchor=\"end\" fill=\"\(series.color)\">\(escape(series.name))</text>\n"
            }
            svg += "<text x=\"\((left + width - right) / 2)\" y=\"\(y0 + panelHeight + 32)\" text-anchor=\"middle\">\(escape(xLabel))</text>\n"
            for t in 0...4 {
                let x = xMin + (xMax - xMin) * Double(t) / 4
                svg += "<text x=\"\(px(x))\" y=\"\(y0 + panelHeight + 16)\" text-anchor=\"middle\">\(escape(Format.number(x)))</text>\n"
            }
        }
        return svg + "</svg>\n"
    }

    /// Bars per category, one panel per measure (the journey chart).
    /// `notes[p]`, if given, replaces the numbers over panel p's bars.
    public static func bars(
        title: String, categories: [String], panels: [(label: String, color: String, values: [Double])], notes: [Int: [String]] = [:]
    ) -> String {
        let width = 900.0, panelHeight = 200.0, left = 70.0, right = 20.0, top = 64.0, gap = 70.0
        let height = top + Double(panels.count) * (panelHeight + gap)
        var svg = header(title: title, width: width, height: height, left: left)
        let slot = (width - left - right) / Double(Swift.max(categories.count, 1))
        for (p, panel) in panels.enumerated() {
            let y0 = top + Double(p) * (panelHeight + gap)
            // Headroom above the tallest bar for its value.
            let yMax = niceCeiling(Swift.max(panel.values.max() ?? 1, 1e-9) * 1.15)
            svg += "<text x=\"\(left)\" y=\"\(y0 - 14)\" font-weight=\"bold\">\(escape(panel.label))</text>\n"
            svg += "<line x1=\"\(left)\" y1=\"\(y0 + panelHeight)\" x2=\"\(width - right)\" y2=\"\(y0 + panelHeight)\" stroke=\"#999\"/>\n"
            for (i, v) in panel.values.enumerated() {
                let h = v / yMax * panelHeight
                let x = left + Double(i) * slot + slot * 0.15
                svg += "<rect x=\"\(x)\" y=\"\(y0 + panelHeight - h)\" width=\"\(slot * 0.7)\" height=\"\(h)\" fill=\"\(panel.color)\"/>"
                let note = notes[p].flatMap { i < $0.count ? $0[i] : nil } ?? Format.number(v)
                svg += "<text x=\"\(x + slot * 0.35)\" y=\"\(y0 + panelHeight - h - 4)\" text-anchor=\"middle\">\(escape(note))</text>"
                svg += "<text x=\"\(x + slot * 0.35)\" y=\"\(y0 + panelHeight + 16)\" text-anchor=\"middle\">\(escape(categories[i]))</text>\n"
            }
        }
        return svg + "</svg>\n"
    }

    /// The document's opening: size, white background, title.
    static func header(title: String, width: Double, height: Double, left: Double) -> String {
        """
        <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" viewBox="0 0 \(Int(width)) \(Int(height))" font-family="sans-serif" font-size="12">
        <rect width="100%" height="100%" fill="white"/>
        <text x="\(left)" y="22" font-size="14" font-weight="bold">\(escape(title))</text>

        """
    }

    static func niceCeiling(_ v: Double) -> Double {
        let magnitude = pow(10, floor(log10(v)))
        for step in [1.0, 2.0, 2.5, 5.0, 10.0] where step * magnitude >= v { return step * magnitude }
        return 10 * magnitude
    }

    static func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }
}
