import Foundation
import HTTPTypes
import HummingbirdTesting
import Imaging
import MillionsTesting
import Observability
import RedisClient
import Synchronization
import Testing
@testable import WebTier

/// Token buckets per client address and per account: log-in, sign-up, uploads, edits.
@Suite struct RateLimitTests {
    @Test func aBucketRefillsAtItsRate() async throws {
        let clock = Mutex<Double>(1000)
        let buckets = MemoryBuckets(now: { clock.withLock { $0 } })
        let rate = try #require(Rate("3/60"))
        for _ in 0..<3 { #expect(try await buckets.take("k", rate) == nil) }
        #expect(try await buckets.take("k", rate) == 20)
        #expect(try await buckets.take("other", rate) == nil)
        clock.withLock { $0 += 20 }
        #expect(try await buckets.take("k", rate) == nil)
        #expect(try await buckets.take("k", rate) != nil)
        #expect(Rate("0/60") == nil && Rate("5") == nil && Rate("5/0") == nil)
    }

    /// Past the per-address log-in rate every attempt from that address gets 429 with
    /// `Retry-After`, whichever account it names, before any password is checked.
    @Test func logInsPerAddressAreLimited() async throws {
        try await TestApp.run(["limits.logInPerAddress": "5/60", "auth.freeFailedLogins": "50"]) { client, _ in
            _ = try await signUpJohn(client)
            for i in 0..<5 {
                let r = try await client.send(.post, "/sessions", json: #"{"email":"someone\#(i)@example.com","password":"x"}"#)
                #expect(r.status == .unauthorized)
            }
            let limited = try await client.send(.post, "/sessions", json: #"{"email":"john@example.com","password":"correct horse"}"#)
            #expect(limited.status == .tooManyRequests)
            #expect(limited.errorCode == "too_many_requests")
            #expect(Int(limited.headers[.retryAfter] ?? "") ?? 0 >= 1)
        }
    }

    /// One account's log-ins are limited wherever they come from (the throttle's lock is
    /// off here: 50 free failures).
    @Test func logInsPerAccountAreLimited() async throws {
        try await TestApp.run(["limits.logInPerAccount": "3/600", "auth.freeFailedLogins": "50"]) { client, _ in
            _ = try await signUpJohn(client)
            for _ in 0..<3 {
                #expect(try await client.send(.post, "/sessions", json: #"{"email":"john@example.com","password":"nope"}"#).status == .unauthorized)
            }
            let right = try await client.send(.post, "/sessions", json: #"{"email":"JOHN@example.com","password":"correct horse"}"#)
            #expect(right.status == .tooManyRequests)
            // Another account is not affected.
            _ = try await signUpJohn(client, email: "jane@example.com")
            #expect(try await client.send(.post, "/sessions", json: #"{"email":"jane@example.com","password":"correct horse"}"#).status == .created)
        }
    }

    @Test func signUpsUploadsAndEditsAreLimited() async throws {
        try await TestApp.run([
            "limits.signUpPerAddress": "2/3600", "limits.uploadsPerAccount": "1/3600", "limits.editsPerAccount": "1/3600",
        ]) { client, _ in
            let (id, session) = try await signUpJohn(client)
            _ = try await signUpJohn(client, email: "second@example.com")
            let third = try await client.send(.post, "/users", json: john.replacingOccurrences(of: "john@", with: "third@"))
            #expect(third.status == .tooManyRequests && third.headers[.retryAfter] != nil)

            let image = try Imaging.testImage(width: 300, height: 200, format: .png)
            let upload = try await uploadPhoto(client, user: id, session: session, image)
            #expect(upload.status == .accepted)
            _ = try await waitForJob(client, try #require(upload.headers[.location]), session: session)
            #expect(try await uploadPhoto(client, user: id, session: session, image).status == .tooManyRequests)
            let edit = #"{"blur":{"sigma":2}}"#
            #expect(try await client.send(.post, "/users/\(id)/photo/edits", json: edit, cookies: ["millions_session": session]).status == .accepted)
            #expect(try await client.send(.post, "/users/\(id)/photo/edits", json: edit, cookies: ["millions_session": session]).status == .tooManyRequests)
        }
    }

    /// bcrypt runs on threads of its own with a bounded queue: a burst of log-ins past it is
    /// refused at once (503, `Retry-After`) rather than queued behind each other.
    @Test func passwordChecksPastTheQueueAreRefusedAtOnce() async throws {
        try await TestApp.run(["auth.maxPendingPasswordChecks": "2", "auth.bcryptCost": "12", "auth.freeFailedLogins": "50"]) { client, _ in
            let statuses = try await withThrowingTaskGroup(of: (HTTPResponse.Status, String?).self) { group in
                for i in 0..<12 {
                    group.addTask {
                        let r = try await client.send(.post, "/sessions", json: #"{"email":"nobody\#(i)@example.com","password":"x"}"#)
                        return (r.status, r.headers[.retryAfter])
                    }
                }
                return try await group.reduce(into: [(HTTPResponse.Status, String?)]()) { $0.append($1) }
            }
            let refused = statuses.filter { $0.0 == .serviceUnavailable }
            #expect(!refused.isEmpty && refused.allSatisfy { $0.1 == "1" }, "\(statuses)")
            #expect(statuses.filter { $0.0 == .unauthorized }.count >= 2, "\(statuses)")
            #expect(statuses.allSatisfy { $0.0 == .unauthorized || $0.0 == .serviceUnavailable })
        }
    }

    /// In Redis, every web server draws from the same bucket.
    @Test func redisBucketsAreSharedByEveryServer() async throws {
        try await RedisServer.with { server in
            let a = RedisClient(configuration: try .forTests(server), metrics: AppMetrics(), logger: RedisClientTests.logger)
            let b = RedisClient(configuration: try .forTests(server), metrics: AppMetrics(), logger: RedisClientTests.logger)
            defer {
                a.close()
                b.close()
            }
            let rate = try #require(Rate("2/3600"))
            #expect(try await RedisBuckets(redis: a).take("login:ip:203.0.113.7", rate) == nil)
            #expect(try await RedisBuckets(redis: b).take("login:ip:203.0.113.7", rate) == nil)
            let wait = try #require(try await RedisBuckets(redis: a).take("login:ip:203.0.113.7", rate))
            #expect(wait > 1000 && wait <= 1800)
            #expect(try await RedisBuckets(redis: b).take("login:ip:198.51.100.1", rate) == nil)
            let ttl = try await a.send(RedisCommand("PTTL", "millions:rate:login:ip:203.0.113.7")).int ?? 0
            #expect(ttl > 0 && ttl <= 3_601_000)
        }
    }
}
