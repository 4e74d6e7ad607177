import MillionsCore
import NIOCore
import NIOPosix

/// Tells the edge caches (Varnish) to drop a photo URL: variants are served as immutable
/// for a year, so a deleted photo stays public at the edge until each edge purges it.
public struct EdgePurge: Sendable {
    /// `host:port` of every edge.
    public let edges: [String]
    public let timeout: TimeAmount

    public init(edges: [String], timeout: TimeAmount = .seconds(5)) {
        self.edges = edges
        self.timeout = timeout
    }

    /// Sends `PURGE path` to every edge; throws naming the first edge that did not answer 200.
    public func purge(_ path: String) async throws {
        for edge in edges {
            let status = try await Self.send(method: "PURGE", path: path, to: edge, timeout: timeout)
            guard status == 200 else { throw PhotoStoreError("edge \(edge) answered \(status) to PURGE \(path)") }
        }
    }

    /// One request with `Connection: close`; returns the status code.
    static func send(method: String, path: String, to edge: String, timeout: TimeAmount) async throws -> Int {
        guard let colon = edge.lastIndex(of: ":"), let port = Int(edge[edge.index(after: colon)...]) else {
            throw PhotoStoreError("not host:port: \(edge)")
        }
        let host = String(edge[..<colon])
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connectTimeout(timeout)
            .connect(host: host, port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                }
            }
        return try await withThrowingTaskGroup(of: Int.self) { group in
            group.addTask {
                try await channel.executeThenClose { inbound, outbound in
                    try await outbound.write(ByteBuffer(string: "\(method) \(path) HTTP/1.1\r\nHost: \(host)\r\nConnection: close\r\n\r\n"))
                    var head: [UInt8] = []
                    for try await chunk in inbound {
                        head += chunk.readableBytesView
                        if head.count >= 12 { break }
                    }
                    // "HTTP/1.1 200 …"
                    let parts = String(decoding: head, as: UTF8.self).split(separator: " ", maxSplits: 2)
                    guard parts.count >= 2, let status = Int(parts[1]) else {
                        throw PhotoStoreError("edge \(edge) gave no HTTP answer")
                    }
                    return status
                }
            }
            group.addTask {
                try await Task.sleep(for: .nanoseconds(timeout.nanoseconds))
                try? await channel.channel.close()
                throw PhotoStoreError("edge \(edge) did not answer PURGE within \(timeout.nanoseconds / 1_000_000) ms")
            }
            defer { group.cancelAll() }
            return try await group.next()!
        }
    }
}
