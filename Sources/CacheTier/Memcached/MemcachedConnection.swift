import NIOCore
import NIOPosix

/// Matches responses to requests in order, so many requests can be in flight on one
/// connection (pipelining). Any error or close fails every waiting request.
final class MemcachedClientHandler: ChannelDuplexHandler {
    typealias InboundIn = MemcachedResponse
    typealias OutboundIn = (MemcachedRequest, EventLoopPromise<MemcachedResponse>)
    typealias OutboundOut = MemcachedRequest

    private var waiting = CircularBuffer<EventLoopPromise<MemcachedResponse>>()
    private var failure: MemcachedError? = nil

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let (request, responsePromise) = unwrapOutboundIn(data)
        if let failure {
            responsePromise.fail(failure)
            promise?.fail(failure)
            return
        }
        waiting.append(responsePromise)
        context.write(wrapOutboundOut(request), promise: promise)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let response = unwrapInboundIn(data)
        guard let promise = waiting.popFirst() else {
            failAll(context, .protocolError("response without a request"))
            return
        }
        promise.succeed(response)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        failAll(context, error as? MemcachedError ?? .protocolError("\(error)"))
    }

    func channelInactive(context: ChannelHandlerContext) {
        failAll(context, failure ?? .connectionClosed)
        context.fireChannelInactive()
    }

    private func failAll(_ context: ChannelHandlerContext, _ error: MemcachedError) {
        if failure == nil { failure = error }
        while let p = waiting.popFirst() { p.fail(error) }
        context.close(promise: nil)
    }
}

/// One TCP connection to one memcached server.
final class MemcachedConnection: Sendable {
    let channel: any Channel

    private init(channel: any Channel) { self.channel = channel }

    static func connect(host: String, port: Int, timeout: TimeAmount) async throws -> MemcachedConnection {
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connectTimeout(timeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandlers(
                        ByteToMessageHandler(MemcachedResponseDecoder()),
                        MessageToByteHandler(MemcachedRequestEncoder()),
                        MemcachedClientHandler())
                }
            }
            .connect(host: host, port: port)
            .get()
        return MemcachedConnection(channel: channel)
    }

    var isActive: Bool { channel.isActive }

    /// Sends one request; a response not back within `timeout` closes the connection
    /// (the stream can no longer be trusted to line up) and fails every waiting request.
    func send(_ request: MemcachedRequest, timeout: TimeAmount) async throws -> MemcachedResponse {
        let promise = channel.eventLoop.makePromise(of: MemcachedResponse.self)
        let channel = self.channel
        let timer = channel.eventLoop.scheduleTask(in: timeout) {
            channel.pipeline.fireErrorCaught(MemcachedError.timeout)
        }
        // A write that fails (closed channel) must fail the request too; completing a
        // promise twice is a no-op, so the handler and this may both try.
        let written = channel.eventLoop.makePromise(of: Void.self)
        written.futureResult.whenFailure { _ in promise.fail(MemcachedError.connectionClosed) }
        channel.writeAndFlush((request, promise), promise: written)
        defer { timer.cancel() }
        return try await promise.futureResult.get()
    }

    func close() {
        channel.close(promise: nil)
    }
}
