import Foundation
import NIOCore
import NIOPosix

/// A TCP relay that delays every byte by a one-way delay (plus jitter) in each direction:
/// a WAN link between two sites, emulated in user space (this kernel has no netem).
/// Order is kept: a chunk is never delivered before the one read ahead of it, so jitter
/// only ever stretches the gaps. A close travels with the same delay, after the data.
public final class DelayRelay: Sendable {
    public struct Link: Codable, Sendable, Equatable {
        public var listenHost: String
        public var listenPort: Int
        public var targetHost: String
        public var targetPort: Int
        /// One-way delay, and the most a chunk may be delayed beyond it (uniform).
        public var delayMs: Double
        public var jitterMs: Double

        public init(listenHost: String, listenPort: Int, targetHost: String, targetPort: Int, delayMs: Double, jitterMs: Double = 0) {
            self.listenHost = listenHost
            self.listenPort = listenPort
            self.targetHost = targetHost
            self.targetPort = targetPort
            self.delayMs = delayMs
            self.jitterMs = jitterMs
        }
    }

    public let link: Link
    let group: MultiThreadedEventLoopGroup
    let channel: any Channel

    /// Starts listening; connections are relayed until `close`.
    public init(_ link: Link, threads: Int = 1) async throws {
        guard link.delayMs >= 0, link.jitterMs >= 0, link.delayMs + link.jitterMs <= 10_000 else {
            throw Processes.Failure("delay and jitter must be 0…10000 ms")
        }
        self.link = link
        let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
        self.group = group
        do {
            channel = try await ServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: 256)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.autoRead, value: false)
                .childChannelInitializer { inbound in
                    Self.connect(inbound, link: link, group: group)
                }
                .bind(host: link.listenHost, port: link.listenPort).get()
        } catch {
            try? await group.shutdownGracefully()
            throw error
        }
    }

    /// The port it listens on (useful with port 0).
    public var port: Int { channel.localAddress?.port ?? link.listenPort }

    public func close() async throws {
        try? await channel.close()
        try await group.shutdownGracefully()
    }

    /// Connects to the target for each accepted connection and pairs the two.
    static func connect(_ inbound: any Channel, link: Link, group: MultiThreadedEventLoopGroup) -> EventLoopFuture<Void> {
        ClientBootstrap(group: inbound.eventLoop)
            .channelOption(.autoRead, value: false)
            .connectTimeout(.seconds(5))
            .connect(host: link.targetHost, port: link.targetPort)
            .flatMap { outbound in
                let delay = TimeAmount.nanoseconds(Int64(link.delayMs * 1_000_000))
                let jitter = Int64(link.jitterMs * 1_000_000)
                let toTarget = DelayingForwarder(peer: outbound, delay: delay, jitterNanos: jitter)
                let toClient = DelayingForwarder(peer: inbound, delay: delay, jitterNanos: jitter)
                do {
                    try inbound.pipeline.syncOperations.addHandler(toTarget)
                    try outbound.pipeline.syncOperations.addHandler(toClient)
                } catch {
                    return inbound.eventLoop.makeFailedFuture(error)
                }
                return inbound.eventLoop.makeSucceededVoidFuture()
            }
            .flatMapError { _ in inbound.close() }
    }
}

/// Reads from its own channel and writes each chunk to `peer` after the delay. Both
/// channels of a pair share one event loop, so no locking is needed. At most
/// `maxPending` bytes wait in flight per direction: reading pauses beyond that.
final class DelayingForwarder: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer

    let peer: any Channel
    let delay: TimeAmount
    let jitterNanos: Int64
    var lastDelivery = NIODeadline.uptimeNanoseconds(0)
    var pending = 0
    let maxPending = 1 << 20
    var closed = false

    init(peer: any Channel, delay: TimeAmount, jitterNanos: Int64) {
        self.peer = peer
        self.delay = delay
        self.jitterNanos = jitterNanos
    }

    /// Never before the previous chunk: the link keeps order.
    func nextDeadline() -> NIODeadline {
        let jitter = jitterNanos > 0 ? TimeAmount.nanoseconds(Int64.random(in: 0...jitterNanos)) : .zero
        lastDelivery = max(lastDelivery, .now() + delay + jitter)
        return lastDelivery
    }

    // Reading is by hand (autoRead off, for the in-flight bound): start once connected.
    // The outbound side is connected when the handler is added; the inbound side becomes
    // active only after the initializer, when it is registered.
    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { context.read() }
    }

    func channelActive(context: ChannelHandlerContext) {
        context.read()
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        let size = buffer.readableBytes
        pending += size
        let peer = self.peer
        let loop = context.eventLoop
        let channel = context.channel
        loop.scheduleTask(deadline: nextDeadline()) {
            peer.writeAndFlush(buffer).whenComplete { _ in
                self.pending -= size
                if self.pending < self.maxPending / 2, !self.closed { channel.read() }
            }
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if pending < maxPending { context.read() }
    }

    func channelInactive(context: ChannelHandlerContext) {
        closed = true
        let peer = self.peer
        context.eventLoop.scheduleTask(deadline: nextDeadline()) { peer.close(promise: nil) }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
