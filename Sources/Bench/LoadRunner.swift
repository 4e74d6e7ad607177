import Histogram
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// How to load a server.
public struct LoadOptions: Sendable {
    public var host = "127.0.0.1"
    public var port: Int
    public var connections = 32
    public var duration: TimeAmount = .seconds(10)
    /// Requests per second for an open-loop run; nil runs closed-loop (every connection
    /// sends its next request as soon as the previous answer is in).
    public var rate: Double? = nil
    public var timeout: TimeAmount = .seconds(5)

    public init(port: Int) { self.port = port }
}

/// Latencies and errors recorded on one event loop (no locks: only that loop touches it).
final class LoopRecorder {
    var all = Histogram<UInt64>(highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three)
    var perSecond: [Histogram<UInt64>] = []
    var errors: [String: Int] = [:]
    var backlog = 0
    let start: NIODeadline

    init(start: NIODeadline) { self.start = start }

    func record(latency: TimeAmount, at now: NIODeadline) {
        let micros = UInt64(max(1, latency.nanoseconds / 1000))
        _ = all.record(micros)
        let second = Int((now - start).nanoseconds / 1_000_000_000)
        while perSecond.count <= second {
            perSecond.append(Histogram<UInt64>(highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .two))
        }
        _ = perSecond[second].record(micros)
    }

    func error(_ kind: String) { errors[kind, default: 0] += 1 }
}

/// How many connections of a run have finished their source.
final class Finished: Sendable {
    let value = Atomic<Int>(0)
}

/// One keep-alive connection's loop of requests; reconnects when the server closes it.
/// Every method runs on `loop`.
final class Slot {
    let loop: any EventLoop
    let options: LoadOptions
    let recorder: LoopRecorder
    var source: any RequestSource
    let end: NIODeadline
    var channel: (any Channel)? = nil
    var connecting = false
    var stopped = false
    /// The intended start of the request on the wire (open loop: its slot in the schedule).
    var inFlight: NIODeadline? = nil
    var status: UInt = 0
    /// False when the answer said `Connection: close`: the next request needs a new connection.
    var keepAlive = true
    var timeoutTask: Scheduled<Void>? = nil
    /// For sources that want answers: the answer's headers and body so far.
    let wantsAnswers: Bool
    var answerHeaders = HTTPHeaders()
    var answerBody = ByteBuffer()
    /// Open loop: requests whose time has come while the connection was busy.
    var waiting = CircularBuffer<NIODeadline>()
    var idleWaiters: [EventLoopPromise<Void>] = []
    /// Connections whose source finished, across the run.
    let done: Finished

    init(loop: any EventLoop, options: LoadOptions, recorder: LoopRecorder, source: any RequestSource, end: NIODeadline, done: Finished) {
        self.loop = loop
        self.done = done
        self.options = options
        self.recorder = recorder
        self.source = source
        self.end = end
        self.wantsAnswers = source.wantsAnswers
    }

    var closedLoop: Bool { options.rate == nil }

    func connect() {
        guard !stopped, !connecting else { return }
        connecting = true
        let slot = NIOLoopBound(self, eventLoop: loop)
        ClientBootstrap(group: loop)
            .connectTimeout(options.timeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(SlotHandler(slot: slot.value))
                }
            }
            .connect(host: options.host, port: options.port)
            .hop(to: loop)
            .whenComplete { result in
                let me = slot.value
                me.connecting = false
                switch result {
                case .success(let channel):
                    me.channel = channel
                    if me.stopped {
                        channel.close(promise: nil)
                    } else if me.closedLoop {
                        me.send(intended: .now())
                    } else if let next = me.waiting.popFirst() {
                        me.send(intended: next)
                    }
                case .failure:
                    me.recorder.error("connect")
                    // Try again shortly rather than spin on a server that is down.
                    me.loop.scheduleTask(in: .milliseconds(100)) { slot.value.connect() }
                }
            }
    }

    func send(intended: NIODeadline) {
        if source.finished {
            finish()
            return
        }
        guard let channel, channel.isActive, inFlight == nil else {
            if !closedLoop { waiting.append(intended) }
            return
        }
        let request = source.next()
        var head = HTTPRequestHead(version: .http1_1, method: request.method, uri: request.path)
        head.headers.add(name: "Host", value: "\(options.host):\(options.port)")
        for (name, value) in request.headers { head.headers.add(name: name, value: value) }
        if let body = request.body { head.headers.add(name: "Content-Length", value: String(body.readableBytes)) }
        inFlight = intended
        status = 0
        if wantsAnswers { answerBody.clear() }
        channel.write(HTTPClientRequestPart.head(head), promise: nil)
        if let body = request.body { channel.write(HTTPClientRequestPart.body(.byteBuffer(body)), promise: nil) }
        channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
        let slot = NIOLoopBound(self, eventLoop: loop)
        timeoutTask = loop.scheduleTask(in: options.timeout) {
            let me = slot.value
            me.recorder.error("timeout")
            me.inFlight = nil
            me.channel?.close(promise: nil)
        }
    }

    func responded(at now: NIODeadline) {
        timeoutTask?.cancel()
        guard let intended = inFlight else { return }
        inFlight = nil
        if now <= end {
            recorder.record(latency: now - intended, at: now)
            switch status {
            case 200..<400: break
            case 400..<500: recorder.error("status 4xx")
            default: recorder.error("status 5xx")
            }
        }
        let pause = wantsAnswers ? source.received(status: status, headers: answerHeaders, body: answerBody) : .zero
        next(after: pause)
    }

    private func next(after pause: TimeAmount = .zero) {
        if !keepAlive {
            // The server is closing this connection (nginx does after `keepalive_requests`);
            // `closed()` reconnects and carries on.
            keepAlive = true
            channel?.close(promise: nil)
            return
        }
        if stopped {
            channel?.close(promise: nil)
            for p in idleWaiters { p.succeed() }
            idleWaiters = []
        } else if closedLoop {
            if pause > .zero {
                let slot = NIOLoopBound(self, eventLoop: loop)
                loop.scheduleTask(in: pause) {
                    let me = slot.value
                    if !me.stopped { me.send(intended: .now()) }
                }
            } else {
                send(intended: .now())
            }
        } else if let next = waiting.popFirst() {
            send(intended: next)
        }
    }

    func closed() {
        timeoutTask?.cancel()
        channel = nil
        if inFlight != nil {
            inFlight = nil
            if NIODeadline.now() <= end { recorder.error("io") }
        }
        if stopped {
            for p in idleWaiters { p.succeed() }
            idleWaiters = []
        } else {
            connect()
        }
    }

    /// Open loop: the request schedule of this connection, from `first` every `interval`.
    var tick: Int64 = 0
    func schedule(from first: NIODeadline, every interval: TimeAmount) {
        let at = first + .nanoseconds(interval.nanoseconds * tick)
        guard at < end else { return }
        let slot = NIOLoopBound(self, eventLoop: loop)
        loop.scheduleTask(deadline: at) {
            let me = slot.value
            guard !me.stopped else { return }
            if me.inFlight == nil, me.channel != nil, me.waiting.isEmpty {
                me.send(intended: at)
            } else {
                me.waiting.append(at)
            }
            me.tick += 1
            me.schedule(from: first, every: interval)
        }
    }

    /// The source is done: this connection stops, and counts itself done.
    func finish() {
        guard !stopped else { return }
        stopped = true
        channel?.close(promise: nil)
        for p in idleWaiters { p.succeed() }
        idleWaiters = []
        done.value.add(1, ordering: .relaxed)
    }

    /// Stops sending; completes once the request in flight (if any) is answered or closed.
    func stop() -> EventLoopFuture<Void> {
        stopped = true
        recorder.backlog += waiting.count
        waiting.removeAll()
        if inFlight == nil || channel == nil {
            channel?.close(promise: nil)
            return loop.makeSucceededVoidFuture()
        }
        let p = loop.makePromise(of: Void.self)
        idleWaiters.append(p)
        return p.futureResult
    }
}

final class SlotHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart
    let slot: Slot

    init(slot: Slot) { self.slot = slot }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            slot.status = head.status.code
            slot.keepAlive = head.isKeepAlive
            if slot.wantsAnswers { slot.answerHeaders = head.headers }
        case .body(var part):
            if slot.wantsAnswers { slot.answerBody.writeBuffer(&part) }
        case .end: slot.responded(at: .now())
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        slot.closed()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

/// Runs a scenario against a server and measures it: HDR histograms of latency (from
/// each request's intended start in an open-loop run, so a stall is not hidden), errors
/// by kind, and a per-second timeline.
public enum LoadRunner {
    public static func run(
        _ options: LoadOptions, scenario: any Scenario,
        progress: @escaping @Sendable (Int, Int, Double, Int) -> Void = { _, _, _, _ in }
    ) async throws -> BenchResult {
        let group = MultiThreadedEventLoopGroup.singleton
        let loops = Array(group.makeIterator())
        let start = NIODeadline.now() + .milliseconds(50)
        let end = start + options.duration
        // One recorder per loop, created on it.
        var recorders: [NIOLoopBound<LoopRecorder>] = []
        for loop in loops {
            recorders.append(try await loop.submit { NIOLoopBound(LoopRecorder(start: start), eventLoop: loop) }.get())
        }
        let done = Finished()
        var slots: [NIOLoopBound<Slot>] = []
        for i in 0..<options.connections {
            let loop = loops[i % loops.count]
            let recorder = recorders[i % loops.count]
            let slot = try await loop.submit {
                let slot = Slot(
                    loop: loop, options: options, recorder: recorder.value, source: scenario.source(connection: i), end: end, done: done)
                return NIOLoopBound(slot, eventLoop: loop)
            }.get()
            slots.append(slot)
        }
        for (i, slot) in slots.enumerated() {
            let loop = loops[i % loops.count]
            try await loop.submit {
                let s = slot.value
                if let rate = options.rate {
                    // Each connection takes an equal share of the rate, staggered.
                    let interval = TimeAmount.nanoseconds(Int64(Double(options.connections) / rate * 1e9))
                    let offset = TimeAmount.nanoseconds(interval.nanoseconds * Int64(i) / Int64(options.connections))
                    s.connect()
                    s.schedule(from: start + offset, every: interval)
                } else {
                    s.loop.scheduleTask(deadline: start) { slot.value.connect() }
                }
            }.get()
        }
        // A live line per second, once that second is over.
        let runSeconds = Int((options.duration.nanoseconds + 999_999_999) / 1_000_000_000)
        for second in 1...runSeconds {
            let due = min(start + .seconds(Int64(second)), end) + .milliseconds(20)
            let wait = due - .now()
            if wait.nanoseconds > 0 { try await Task.sleep(for: .nanoseconds(wait.nanoseconds)) }
            var count = 0
            var p99: UInt64 = 0
            var errors = 0
            for (i, recorder) in recorders.enumerated() {
                let s = second - 1
                let (c, p, e) = try await loops[i].submit {
                    let r = recorder.value
                    let h = s < r.perSecond.count ? r.perSecond[s] : nil
                    return (Int(h?.totalCount ?? 0), h?.valueAtPercentile(99) ?? 0, r.errors.values.reduce(0, +))
                }.get()
                count += c
                p99 = max(p99, p)
                errors += e
            }
            progress(second, count, Double(p99) / 1000, errors)
            if done.value.load(ordering: .relaxed) == options.connections { break }
        }
        for (i, slot) in slots.enumerated() {
            let loop = loops[i % loops.count]
            let stopped = try await loop.submit { slot.value.stop() }.get()
            _ = try? await stopped.get()
        }
        // Merge the loops' recorders.
        var all = Histogram<UInt64>(highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three)
        var seconds: [Histogram<UInt64>] = []
        var errors: [String: Int] = [:]
        var backlog = 0
        for (i, recorder) in recorders.enumerated() {
            let (h, ps, e, b) = try await loops[i].submit {
                let r = recorder.value
                return (r.all, r.perSecond, r.errors, r.backlog)
            }.get()
            all.add(h)
            for (k, s) in ps.enumerated() {
                if seconds.count <= k { seconds.append(s) } else { seconds[k].add(s) }
            }
            errors.merge(e, uniquingKeysWith: +)
            backlog += b
        }
        return BenchResult(
            scenario: scenario.name, options: options, histogram: all, perSecond: seconds, errors: errors, backlog: backlog)
    }
}
