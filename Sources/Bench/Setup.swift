import AsyncHTTPClient
import DataTier
import Foundation
import NIOCore
import NIOHTTP1

/// What a run needs before it starts: the seeded ids, and logged-in users for `mixed`.
public enum Setup {
    /// The ids `millions seed --ids-file` wrote, one per line, in seeding order.
    public static func ids(file: String) throws -> [Int64] {
        let text = try String(contentsOfFile: file, encoding: .utf8)
        let ids = text.split(whereSeparator: \.isNewline).compactMap { Int64($0) }
        guard !ids.isEmpty else { throw BenchError("no ids in \(file)") }
        return ids
    }

    /// Logs in `count` seeded users (email `seed-<i>@example.com`) spread evenly over the
    /// seeding order, and keeps their session cookies. Seeded user i is on logical shard
    /// i % 1024, so the first few would all live on one cluster of a sharded tier and
    /// every update would go to it.
    public static func logIn(host: String, port: Int, ids: [Int64], count: Int) async throws -> [MixedScenario.LoggedIn] {
        var users: [MixedScenario.LoggedIn] = []
        let n = min(count, ids.count)
        for i in (0..<n).map({ $0 * ids.count / n }) {
            var request = HTTPClientRequest(url: "http://\(host):\(port)/sessions")
            request.method = .POST
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(string: #"{"email":"\#(Seeder.email(i))","password":"\#(Seeder.password)"}"#))
            let response = try await HTTPClient.shared.execute(request, timeout: .seconds(30))
            _ = try await response.body.collect(upTo: 1 << 20)
            guard response.status == .ok || response.status == .created,
                let cookie = response.headers["Set-Cookie"].first(where: { $0.hasPrefix("millions_session=") })
            else { throw BenchError("log-in of \(Seeder.email(i)) answered \(response.status.code); were the users seeded?") }
            users.append(.init(index: i, id: ids[i], cookie: String(cookie.dropFirst("millions_session=".count).prefix { $0 != ";" })))
        }
        return users
    }
}

public struct BenchError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
