import Cluster
import Foundation
import NIOCore
import NIOPosix
import Testing

/// The delaying relay that emulates a WAN link: bytes arrive intact and in order, and no
/// earlier than the delay allows (a lower bound only: a busy machine is only ever slower).
@Suite struct RelayTests {
    /// Echoes every byte back.
    final class Echo: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        func channelRead(context: ChannelHandlerContext, data: NIOAny) { context.writeAndFlush(data, promise: nil) }
    }

    /// Collects `expected` bytes, then fulfils `done`.
    final class Collect: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = ByteBuffer
        var bytes: [UInt8] = []
        var finished = false
        let expected: Int
        let done: EventLoopPromise<[UInt8]>
        init(expected: Int, done: EventLoopPromise<[UInt8]>) {
            self.expected = expected
            self.done = done
        }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var buffer = unwrapInboundIn(data)
            bytes += buffer.readBytes(length: buffer.readableBytes) ?? []
            if bytes.count >= expected && !finished {
                finished = true
                done.succeed(bytes)
            }
        }
        func channelInactive(context: ChannelHandlerContext) {
            if !finished {
                finished = true
                done.fail(ChannelError.eof)
            }
        }
    }

    /// Sends `payload` through the relay to the echo server; returns what came back and
    /// the seconds from the first byte sent to the last byte back.
    static func roundTrip(_ payload: [UInt8], delayMs: Double, jitterMs: Double) async throws -> ([UInt8], Double) {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let echo = try await ServerBootstrap(group: group)
            .childChannelInitializer { $0.pipeline.addHandler(Echo()) }
            .bind(host: "127.0.0.1", port: 0).get()
        let relay = try await DelayRelay(
            .init(listenHost: "127.0.0.1", listenPort: 0, targetHost: "127.0.0.1", targetPort: echo.localAddress!.port!,
                  delayMs: delayMs, jitterMs: jitterMs))
        let done = group.next().makePromise(of: [UInt8].self)
        let collect = Collect(expected: payload.count, done: done)
        let client = try await ClientBootstrap(group: group)
            .channelInitializer { $0.pipeline.addHandler(collect) }
            .connect(host: "127.0.0.1", port: relay.port).get()
        let start = ContinuousClock.now
        // In 64 KiB writes, so the relay sees many chunks to keep in order.
        for offset in stride(from: 0, to: payload.count, by: 65536) {
            let sent: EventLoopFuture<Void> = client.writeAndFlush(ByteBuffer(bytes: payload[offset..<min(offset + 65536, payload.count)]))
            try await sent.get()
        }
        let back = try await done.futureResult.get()
        let elapsed = ContinuousClock.now - start
        try await client.close()
        try await relay.close()
        try await echo.close()
        try await group.shutdownGracefully()
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        return (back, seconds)
    }

    @Test func aRoundTripTakesAtLeastTwiceTheDelay() async throws {
        let (back, seconds) = try await Self.roundTrip(Array("ping".utf8), delayMs: 150, jitterMs: 0)
        #expect(back == Array("ping".utf8))
        #expect(seconds >= 0.3, "round trip \(seconds) s through a 150 ms link")
    }

    @Test func jitterNeverReordersBytes() async throws {
        var rng = SystemRandomNumberGenerator()
        let payload = (0..<(2 << 20)).map { _ in UInt8.random(in: 0...255, using: &rng) }
        let (back, seconds) = try await Self.roundTrip(payload, delayMs: 20, jitterMs: 30)
        #expect(back.count == payload.count)
        #expect(back == payload, "bytes intact and in order")
        #expect(seconds >= 0.04)
    }
}
