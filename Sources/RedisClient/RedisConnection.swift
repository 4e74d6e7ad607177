import NIOCore
import NIOPosix
import Synchronization

/// Matches replies to commands in order, so many commands can be in flight on one
/// connection (pipelining). Pushes are out of band and skipped. Any error or close fails
/// every waiting command.
final class RedisClientHandler: ChannelDuplexHandler {
    typealias InboundIn = RESPValue
    typealias OutboundIn = (RedisCommand, EventLoopPromise<RESPValue>)
    typealias OutboundOut = RedisCommand

    private var waiting = CircularBuffer<EventLoopPromise<RESPValue>>()
    private var failure: RedisError? = nil

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let (command, reply) = unwrapOutboundIn(data)
        if let failure {
            reply.fail(failure)
            promise?.fail(failure)
            return
        }
        waiting.append(reply)
        context.write(wrapOutboundOut(command), promise: promise)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let value = unwrapInboundIn(data)
        if case .push = value { return }
        guard let promise = waiting.popFirst() else {
            failAll(context, RedisError(.protocolError, "reply without a command"))
            return
        }
        promise.succeed(value)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        failAll(context, error as? RedisError ?? RedisError(.protocolError, "\(error)"))
    }

    func channelInactive(context: ChannelHandlerContext) {
        failAll(context, failure ?? .closed)
        context.fireChannelInactive()
    }

    private func failAll(_ context: ChannelHandlerContext, _ error: RedisError) {
        if failure == nil { failure = error }
        while let p = waiting.popFirst() { p.fail(error) }
        context.close(promise: nil)
    }
}

/// A one-way flag shared between the event loop and the caller.
final class Flag: Sendable {
    private let value = Atomic<Bool>(false)
    func set() { value.store(true, ordering: .relaxed) }
    var isSet: Bool { value.load(ordering: .relaxed) }
}

/// One TCP connection to a Redis server, after the handshake (protocol, AUTH, SELECT).
final class RedisConnection: Sendable {
    let channel: any Channel
    /// 3 when the server accepted `HELLO 3`, else 2.
    let protocolVersion: Int

    private init(channel: any Channel, protocolVersion: Int) {
        self.channel = channel
        self.protocolVersion = protocolVersion
    }

    static func connect(_ config: RedisClient.Configuration) async throws -> RedisConnection {
        let limits = config.limits
        let channel: any Channel
        do {
            channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connectTimeout(config.connectTimeout)
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandlers(
                            ByteToMessageHandler(RESPValueDecoder(limits: limits)),
                            MessageToByteHandler(RedisCommandEncoder()),
                            RedisClientHandler())
                    }
                }
                .connect(host: config.host, port: config.port)
                .get()
        } catch {
            throw RedisError(.connectionClosed, "cannot connect to \(config.host):\(config.port): \(error)")
        }
        do {
            let version = try await handshake(channel, config)
            return RedisConnection(channel: channel, protocolVersion: version)
        } catch {
            channel.close(promise: nil)
            throw error
        }
    }

    /// `HELLO 3 [AUTH user pass]`; a server without RESP3 (before Redis 6) answers with an
    /// error, and the connection stays on RESP2 with a plain `AUTH`.
    private static func handshake(_ channel: any Channel, _ config: RedisClient.Configuration) async throws -> Int {
        func call(_ command: RedisCommand) async throws -> RESPValue {
            let reply = try await send([command], on: channel, timeout: config.timeout)[0]
            if case .error(let message) = reply { throw RedisError.reply(message) }
            return reply
        }
        var version = 2
        if config.protocolVersion == 3 {
            var hello = ["3"]
            if let password = config.password { hello += ["AUTH", config.username ?? "default", password] }
            do {
                _ = try await call(RedisCommand("HELLO", arguments: hello.map { ByteBuffer(string: $0) }))
                version = 3
            } catch let error as RedisError where error.code == .server {
                version = 2  // NOPROTO or unknown command: fall through to RESP2
            }
        }
        if version == 2, let password = config.password {
            let args = (config.username.map { [$0] } ?? []) + [password]
            _ = try await call(RedisCommand("AUTH", arguments: args.map { ByteBuffer(string: $0) }))
        }
        if config.database != 0 {
            _ = try await call(RedisCommand("SELECT", String(config.database)))
        }
        return version
    }

    var isActive: Bool { channel.isActive }

    /// Writes every command with one flush and waits for all replies. A reply that has
    /// not arrived within `timeout` closes the connection (the stream can no longer be
    /// trusted to line up) and fails every waiting command.
    func send(_ commands: [RedisCommand], timeout: TimeAmount) async throws -> [RESPValue] {
        try await Self.send(commands, on: channel, timeout: timeout)
    }

    private static func send(_ commands: [RedisCommand], on channel: any Channel, timeout: TimeAmount) async throws -> [RESPValue] {
        let timedOut = Flag()
        let timer = channel.eventLoop.scheduleTask(in: timeout) {
            timedOut.set()
            channel.pipeline.fireErrorCaught(RedisError.timeout)
        }
        defer { timer.cancel() }
        var replies: [EventLoopFuture<RESPValue>] = []
        replies.reserveCapacity(commands.count)
        for command in commands {
            let reply = channel.eventLoop.makePromise(of: RESPValue.self)
            // A write that fails (closed channel) must fail the command too; completing a
            // promise twice is a no-op, so the handler and this may both try.
            let written = channel.eventLoop.makePromise(of: Void.self)
            // On a stalled event loop the timer can close the channel before this write
            // runs: report that as the timeout it is.
            written.futureResult.whenFailure { _ in reply.fail(timedOut.isSet ? RedisError.timeout : RedisError.closed) }
            channel.write((command, reply), promise: written)
            replies.append(reply.futureResult)
        }
        channel.flush()
        var out: [RESPValue] = []
        out.reserveCapacity(replies.count)
        for reply in replies { out.append(try await reply.get()) }
        return out
    }

    func close() { channel.close(promise: nil) }
}
