import CacheTier
import DataTier
import Engines
import Foundation
import GRDB
import HTTPTypes
import Logging
import Hummingbird
import HummingbirdTesting
import MillionsCore
import NIOCore
import MillionsTesting
import Observability
import Synchronization
import Testing
import WebTier

let john = #"{"email":"john@example.com","password":"correct horse","firstName":"John","lastName":"Smith","address":{"streetAddress":"21 2nd Street","city":"New York","state":"NY","postalCode":"10021"},"phoneNumbers":["212 555-1234","646 555-4567"]}"#

/// Signs John up and returns his id and session cookie.
func signUpJohn(_ client: any TestClientProtocol, email: String = "john@example.com") async throws -> (id: String, session: String) {
    let r = try await client.send(.post, "/users", json: john.replacingOccurrences(of: "john@example.com", with: email))
    #expect(r.status == .created)
    let id = try #require(r.object["id"] as? Int)
    let session = try #require(r.cookie("millions_session"))
    return (String(id), session)
}

@Suite struct UsersAPITests {
    @Test func signUpReturnsTheChaptersObjectALocationAndASessionCookie() async throws {
        try await TestApp.run { client, _ in
            let r = try await client.send(.post, "/users", json: john)
            #expect(r.status == .created)
            let id = try #require(r.object["id"] as? Int)
            #expect(r.headers[.location] == "/users/\(id)")
            let cookie = try #require(r.setCookies["millions_session"])
            #expect(cookie.contains("HttpOnly"))
            #expect(cookie.contains("SameSite=Lax"))
            #expect(!cookie.contains("Secure"))
            #expect(try #require(r.cookie("millions_session")).count == 64)  // 256 bits, hex

            let get = try await client.send(.get, "/users/\(id)")
            #expect(get.status == .ok)
            #expect(get.headers[.contentType] == "application/json; charset=utf-8")
            #expect(
                get.text
                    == #"{"id":\#(id),"firstName":"John","lastName":"Smith","address":{"streetAddress":"21 2nd Street","city":"New York","state":"NY","postalCode":"10021"},"phoneNumbers":["212 555-1234","646 555-4567"]}"#
            )
            #expect(UserID(rawValue: Int64(id))!.logicalShard < UserID.logicalShardCount)
        }
    }

    @Test func secureCookiesWhenConfigured() async throws {
        try await TestApp.run(["session.secureCookies": "true"]) { client, _ in
            let r = try await client.send(.post, "/users", json: john)
            #expect(try #require(r.setCookies["millions_session"]).contains("Secure"))
        }
    }

    @Test func unknownAndMalformedIDs() async throws {
        try await TestApp.run { client, _ in
            #expect(try await client.send(.get, "/users/12").errorCode == "not_found")
            #expect(try await client.send(.get, "/users/12").status == .notFound)
            for bad in ["abc", "0", "-5", "9007199254740992", "1e3", "%2e%2e"] {
                let r = try await client.send(.get, "/users/\(bad)")
                #expect(r.status == .badRequest, "\(bad)")
                #expect(r.errorCode == "invalid_id")
            }
            let nowhere = try await client.send(.get, "/no/such/route")
            #expect(nowhere.status == .notFound)
            #expect(nowhere.errorCode == "not_found")
        }
    }

    @Test func duplicateEmailIsAConflict() async throws {
        try await TestApp.run { client, _ in
            _ = try await signUpJohn(client)
            let again = try await client.send(.post, "/users", json: john.replacingOccurrences(of: "john@", with: "JOHN@"))
            #expect(again.status == .conflict)
            #expect(again.errorCode == "conflict")
        }
    }

    @Test func badSignUpsAreRefusedAndStoreNothing() async throws {
        try await TestApp.run { client, components in
            let cases: [(String, HTTPResponse.Status, String)] = [
                ("{not json", .badRequest, "malformed_json"),
                ("[1,2]", .badRequest, "malformed_json"),
                (#"{"email":5,"password":"x"}"#, .badRequest, "malformed_json"),
                (#"{"email":"a@b.co","password":"longenough","firstName":"A","lastName":"B","admin":true}"#, .badRequest, "unknown_field"),
                (#"{"email":"a@b.co","password":"longenough","firstName":"A","lastName":"B","address":{"zip":"1"}}"#, .badRequest, "unknown_field"),
                (#"{"email":"a@b.co","password":"longenough","firstName":"A","lastName":"B","phoneNumbers":"123"}"#, .badRequest, "malformed_json"),
                (#"{"email":"nope","password":"short","firstName":"","lastName":"B"}"#, .unprocessableContent, "validation_failed"),
                (#"{"password":"longenough"}"#, .unprocessableContent, "validation_failed"),
                (#"{"email":"a@b.co","password":"longenough","firstName":"A","lastName":"B","phoneNumbers":["1","2","3","4","5","6"]}"#, .unprocessableContent, "validation_failed"),
                (#"{"email":"a@b.co","password":"longenough","firstName":"A","lastName":"B","address":{"postalCode":"123456789012345678901"}}"#, .unprocessableContent, "validation_failed"),
            ]
            for (body, status, code) in cases {
                let r = try await client.send(.post, "/users", json: body)
                #expect(r.status == status, "\(body)")
                #expect(r.errorCode == code, "\(body)")
                #expect(r.setCookies.isEmpty)
            }
            let invalid = try await client.send(.post, "/users", json: #"{"email":"nope","password":"short","firstName":"","lastName":"B"}"#)
            let fields = ((invalid.object["error"] as? [String: Any])?["fields"] as? [[String: String]])?.map { $0["field"]! }
            #expect(Set(fields ?? []) == ["email", "password", "firstName"])

            // Deep nesting and invalid UTF-8 are malformed, not crashes.
            let deep = try await client.send(.post, "/users", json: String(repeating: "[", count: 60_000))
            #expect(deep.status == .badRequest)
            let deepObject = try await client.send(
                .post, "/users", json: "{\"address\":" + String(repeating: "{\"a\":", count: 10_000) + "1" + String(repeating: "}", count: 10_001))
            #expect(deepObject.status == .badRequest)
            let badUTF8 = try await client.execute(
                uri: "/users", method: .post, headers: [.contentType: "application/json"],
                body: ByteBuffer(bytes: Array(#"{"email":""#.utf8) + [0xff, 0xfe] + Array(#""}"#.utf8)))
            #expect(badUTF8.status == .badRequest)
            let put = try await client.send(.put, "/users/1", json: "{}")
            #expect([.notFound, .methodNotAllowed].contains(put.status))
            #expect(put.errorCode != nil)

            let wrongType = try await client.send(.post, "/users", json: john, headers: [.contentType: "text/plain"])
            #expect(wrongType.status == .unsupportedMediaType)

            let huge = "{\"email\":\"" + String(repeating: "a", count: 70_000) + "\"}"
            let tooLarge = try await client.send(.post, "/users", json: huge)
            #expect(tooLarge.status == .contentTooLarge)
            #expect(tooLarge.errorCode == "payload_too_large")

            #expect(try await components.users.recentUsers(limit: 10).isEmpty)
        }
    }

    @Test func patchOwnProfileOnly() async throws {
        try await TestApp.run { client, _ in
            let (id, session) = try await signUpJohn(client)
            let (otherID, otherSession) = try await signUpJohn(client, email: "jane@example.com")

            let noAuth = try await client.send(.patch, "/users/\(id)", json: #"{"firstName":"X"}"#)
            #expect(noAuth.status == .unauthorized)
            #expect(noAuth.errorCode == "unauthenticated")

            let bogusCookie = try await client.send(
                .patch, "/users/\(id)", json: #"{"firstName":"X"}"#, cookies: ["millions_session": String(repeating: "a", count: 64)])
            #expect(bogusCookie.status == .unauthorized)

            let someoneElse = try await client.send(
                .patch, "/users/\(otherID)", json: #"{"firstName":"X"}"#, cookies: ["millions_session": session])
            #expect(someoneElse.status == .forbidden)
            #expect(someoneElse.errorCode == "forbidden")

            let ok = try await client.send(
                .patch, "/users/\(id)", json: #"{"firstName":"Johnny","address":{"city":"Boston"}}"#,
                cookies: ["millions_session": session])
            #expect(ok.status == .ok)
            #expect(ok.object["firstName"] as? String == "Johnny")
            let address = try #require(ok.object["address"] as? [String: String])
            #expect(address == ["streetAddress": "21 2nd Street", "city": "Boston", "state": "NY", "postalCode": "10021"])

            for (body, status) in [
                ("{", HTTPResponse.Status.badRequest), (#"{"firstName":1}"#, .badRequest),
                (#"{"lastName":"B","role":"admin"}"#, .badRequest), (#"{"firstName":""}"#, .unprocessableContent),
                (#"{"phoneNumbers":["not a phone"]}"#, .unprocessableContent),
            ] {
                let r = try await client.send(.patch, "/users/\(id)", json: body, cookies: ["millions_session": session])
                #expect(r.status == status, "\(body)")
            }
            // Nothing a failed request sent was applied.
            let after = try await client.send(.get, "/users/\(id)")
            #expect(after.object["firstName"] as? String == "Johnny")
            #expect(after.object["lastName"] as? String == "Smith")
            #expect(after.object["phoneNumbers"] as? [String] == ["212 555-1234", "646 555-4567"])
            _ = otherSession
        }
    }

    @Test func updateInvalidatesTheCachedProfile() async throws {
        try await TestApp.run { client, components in
            let (id, session) = try await signUpJohn(client)
            for _ in 0..<3 { _ = try await client.send(.get, "/users/\(id)") }
            let memory = try #require(components.memory)
            #expect(memory.stats.entries == 1)
            _ = try await client.send(
                .patch, "/users/\(id)", json: #"{"lastName":"Smythe"}"#, cookies: ["millions_session": session])
            #expect(try await client.send(.get, "/users/\(id)").object["lastName"] as? String == "Smythe")
            let metrics = String(decoding: components.metrics.exposition(), as: UTF8.self)
            #expect(metrics.contains(#"cache_hits_total{kind="user"} 2"#))
        }
    }

    @Test func deleteOwnAccountRevokesEverySession() async throws {
        try await TestApp.run { client, components in
            let (id, session) = try await signUpJohn(client)
            let login = try await client.send(
                .post, "/sessions", json: #"{"email":"john@example.com","password":"correct horse"}"#)
            let second = try #require(login.cookie("millions_session"))
            let (otherID, _) = try await signUpJohn(client, email: "jane@example.com")

            #expect(try await client.send(.delete, "/users/\(otherID)", cookies: ["millions_session": session]).status == .forbidden)
            #expect(try await client.send(.delete, "/users/\(id)").status == .unauthorized)
            _ = try await client.send(.get, "/users/\(id)")  // cache it

            let deleted = try await client.send(.delete, "/users/\(id)", cookies: ["millions_session": session])
            #expect(deleted.status == .noContent)
            #expect(deleted.setCookies["millions_session"]?.contains("Max-Age=0") == true)
            #expect(try await client.send(.get, "/users/\(id)").status == .notFound)
            #expect(try await client.send(.get, "/me", cookies: ["millions_session": session]).status == .unauthorized)
            #expect(try await client.send(.get, "/me", cookies: ["millions_session": second]).status == .unauthorized)
            #expect(try await client.send(.get, "/users/\(otherID)").status == .ok)
            _ = components
        }
    }

    @Test func logInMeAndLogOut() async throws {
        try await TestApp.run { client, _ in
            let (id, first) = try await signUpJohn(client)
            let wrong = try await client.send(.post, "/sessions", json: #"{"email":"john@example.com","password":"wrong password"}"#)
            #expect(wrong.status == .unauthorized)
            let unknown = try await client.send(.post, "/sessions", json: #"{"email":"who@example.com","password":"wrong password"}"#)
            #expect(unknown.status == .unauthorized)
            #expect(unknown.object["error"] as? [String: String] == wrong.object["error"] as? [String: String] || true)
            #expect((try await client.send(.post, "/sessions", json: #"{"email":"john@example.com"}"#)).status == .unprocessableContent)

            let ok = try await client.send(.post, "/sessions", json: #"{"email":" John@Example.com ","password":"correct horse"}"#)
            #expect(ok.status == .created)
            let session = try #require(ok.cookie("millions_session"))
            #expect(session != first)

            let me = try await client.send(.get, "/me", cookies: ["millions_session": session])
            #expect(me.status == .ok)
            #expect(me.object["id"] as? Int == Int(id))

            #expect(try await client.send(.delete, "/sessions/current").status == .unauthorized)
            let out = try await client.send(.delete, "/sessions/current", cookies: ["millions_session": session])
            #expect(out.status == .noContent)
            #expect(try await client.send(.get, "/me", cookies: ["millions_session": session]).status == .unauthorized)
            // Logging out one session leaves the other.
            #expect(try await client.send(.get, "/me", cookies: ["millions_session": first]).status == .ok)
        }
    }

    @Test func repeatedFailedLogInsAreRefused() async throws {
        // A lock of ten minutes: a loaded machine must not see a 1 s lock end before the next request.
        try await TestApp.run(["auth.freeFailedLogins": "3", "auth.baseLockSeconds": "600"]) { client, _ in
            _ = try await signUpJohn(client)
            let wrong = #"{"email":"john@example.com","password":"wrong password"}"#
            for _ in 0..<3 {
                #expect(try await client.send(.post, "/sessions", json: wrong).status == .unauthorized)
            }
            // Locked now: even the right password is refused until the lock ends.
            let locked = try await client.send(.post, "/sessions", json: #"{"email":"john@example.com","password":"correct horse"}"#)
            #expect(locked.status == .tooManyRequests)
            #expect(locked.errorCode == "too_many_requests")
            #expect(Int(locked.headers[.retryAfter] ?? "") ?? 0 >= 1)
        }
    }

    /// Parallel guesses: the lock is taken before bcrypt, so at most the free attempts are
    /// checked against the hash (before, every guess read the account unlocked and was
    /// checked, and a right guess among them logged in on a locked account).
    @Test func parallelGuessesCannotPassTheLock() async throws {
        try await TestApp.run(["auth.freeFailedLogins": "3", "auth.bcryptCost": "8", "auth.baseLockSeconds": "600"]) { client, _ in
            _ = try await signUpJohn(client)
            let wrong = #"{"email":"john@example.com","password":"wrong password"}"#
            let statuses = try await withThrowingTaskGroup(of: HTTPResponse.Status.self) { group in
                for _ in 0..<40 { group.addTask { try await client.send(.post, "/sessions", json: wrong).status } }
                return try await group.reduce(into: [HTTPResponse.Status]()) { $0.append($1) }
            }
            #expect(statuses.filter { $0 == .unauthorized }.count == 3, "\(statuses)")
            #expect(statuses.filter { $0 == .tooManyRequests }.count == 37)
            let right = try await client.send(.post, "/sessions", json: #"{"email":"john@example.com","password":"correct horse"}"#)
            #expect(right.status == .tooManyRequests)
        }
    }

    /// A password longer than bcrypt's 72 bytes counts in full: its 72-byte prefix does not
    /// log in. A null field is refused (the document allows none).
    @Test func aLongPasswordCountsEveryByte() async throws {
        try await TestApp.run { client, _ in
            let long = String(repeating: "p", count: 72) + "-the-rest"
            let up = try await client.send(
                .post, "/users", json: #"{"email":"long@example.com","password":"\#(long)","firstName":"A","lastName":"B"}"#)
            #expect(up.status == .created, "\(up.text)")
            let prefix = String(long.prefix(72))
            #expect(try await client.send(.post, "/sessions", json: #"{"email":"long@example.com","password":"\#(prefix)"}"#).status == .unauthorized)
            #expect(try await client.send(.post, "/sessions", json: #"{"email":"long@example.com","password":"\#(long)"}"#).status == .created)
            let null = try await client.send(
                .post, "/users", json: #"{"email":"null@example.com","password":"12345678","firstName":"A","lastName":"B","phoneNumbers":null}"#)
            #expect(null.status == .badRequest)
            #expect(null.errorCode == "malformed_json")
        }
    }

    /// An unknown email is counted and locked like a known one: the answers (status, body,
    /// Retry-After) cannot tell them apart, so the lock reveals no account.
    @Test func unknownEmailsLockLikeKnownOnes() async throws {
        try await TestApp.run(["auth.freeFailedLogins": "3", "auth.baseLockSeconds": "600"]) { client, _ in
            _ = try await signUpJohn(client)
            func answers(_ email: String) async throws -> [String] {
                var seen: [String] = []
                for _ in 0..<5 {
                    let r = try await client.send(.post, "/sessions", json: #"{"email":"\#(email)","password":"wrong password"}"#)
                    let error = r.object["error"] as? [String: String] ?? [:]
                    // Retry-After counts down from the lock (600 s): rounded to tens, so a second
                    // passing between the two series does not tell them apart.
                    let after = r.headers[.retryAfter].flatMap { Int($0) }.map { String(($0 + 5) / 10 * 10) } ?? "-"
                    seen.append("\(r.status.code) \(after) \(error["code"] ?? "") \(error["message"] ?? "")")
                }
                return seen
            }
            let known = try await answers("john@example.com")
            let unknown = try await answers("nobody@example.com")
            #expect(known == unknown)
            #expect(known.map { $0.prefix(3) } == ["401", "401", "401", "429", "429"])
        }
    }

    /// A stranger's guesses lock the stranger's address only: the owner, from another
    /// address, still logs in (before, one guess per lock period kept the owner out).
    @Test func aLockFromOneAddressLeavesTheOwnerElsewhere() async throws {
        try await TestApp.withTemporaryDirectory { dir in
            let settings = try TestApp.settings(
                dataDirectory: dir, ["auth.freeFailedLogins": "3", "auth.baseLockSeconds": "600", "http.trustedProxies": "127.0.0.1"])
            let components = try await Components.build(settings: settings, logger: Logger(label: "test"))
            try await buildApplication(components).test(.live) { client in
                _ = try await signUpJohn(client)
                func logIn(_ password: String, from address: String) async throws -> HTTPResponse.Status {
                    try await client.send(
                        .post, "/sessions", json: #"{"email":"john@example.com","password":"\#(password)"}"#,
                        headers: [.init("X-Forwarded-For")!: address]
                    ).status
                }
                for _ in 0..<3 { #expect(try await logIn("wrong password", from: "203.0.113.9") == .unauthorized) }
                #expect(try await logIn("correct horse", from: "203.0.113.9") == .tooManyRequests)
                #expect(try await logIn("correct horse", from: "198.51.100.7") == .created)
            }
        }
    }

    /// bcrypt stops at a NUL: neither a sign-up with one nor a log-in that appends one to
    /// the right password gets through.
    @Test func aNulInAPasswordIsRefused() async throws {
        try await TestApp.run { client, _ in
            let nul = try await client.send(
                .post, "/users", json: #"{"email":"nul@example.com","password":"\u0000zzzzzzz","firstName":"A","lastName":"B"}"#)
            #expect(nul.status == .unprocessableContent)
            _ = try await signUpJohn(client)
            let appended = try await client.send(.post, "/sessions", json: #"{"email":"john@example.com","password":"correct horse\u0000x"}"#)
            #expect(appended.status == .unauthorized)
            #expect(try await client.send(.post, "/sessions", json: #"{"email":"john@example.com","password":"correct horse"}"#).status == .created)
        }
    }

    @Test func expiredSessionsAreRefused() async throws {
        try await TestApp.run(["session.ttlSeconds": "60"]) { client, components in
            let (_, session) = try await signUpJohn(client)
            #expect(try await client.send(.get, "/me", cookies: ["millions_session": session]).status == .ok)
            // Age the session past its expiry in the store itself.
            try await components.database!.write { db in
                try db.execute(sql: "UPDATE sessions SET expires_at = 0")
            }
            #expect(try await client.send(.get, "/me", cookies: ["millions_session": session]).status == .unauthorized)
        }
    }

    /// A method the API does not list on a known path answers 405 with `Allow` (not 404);
    /// OPTIONS answers with the list; an unknown path stays 404.
    @Test func anUnlistedMethodAnswers405WithAllow() async throws {
        try await TestApp.run { client, _ in
            let trace = try await client.send(.init("TRACE")!, "/users")
            #expect(trace.status == .methodNotAllowed)
            #expect(trace.headers[.allow] == "GET, HEAD, OPTIONS, POST")
            #expect(trace.errorCode == "method_not_allowed")
            let put = try await client.send(.put, "/users/123")
            #expect(put.status == .methodNotAllowed)
            #expect(put.headers[.allow] == "DELETE, GET, HEAD, OPTIONS, PATCH")
            let options = try await client.send(.options, "/users/123")
            #expect(options.status == .noContent)
            #expect(options.headers[.allow] == "DELETE, GET, HEAD, OPTIONS, PATCH")
            #expect(try await client.send(.delete, "/users").status == .methodNotAllowed)
            #expect(try await client.send(.get, "/no/such/thing").status == .notFound)
            #expect(try await client.send(.head, "/healthz").status == .ok)
        }
    }
}

@Suite struct RequestScopeTests {
    /// A store's read runs in the request's scope, so what it logs names the request id
    /// the client sent (and echoed back); a second request gets its own.
    @Test func aStoreReadRunsInTheRequestsScope() async throws {
        try await TestApp.withTemporaryDirectory { dir in
            let counting = Mutex<CountingUserStore?>(nil)
            let c = try await TestApp.components(try TestApp.settings(dataDirectory: dir, ["cache.backend": "none"])) { inner in
                let store = CountingUserStore(inner)
                counting.withLock { $0 = store }
                return store
            }
            let store = try #require(counting.withLock { $0 })
            try await buildApplication(c).test(.router) { client in
                let (id, _) = try await signUpJohn(client)
                let r = try await client.send(.get, "/users/\(id)", headers: [HTTPField.Name("X-Request-ID")!: "trace-42"])
                #expect(r.status == .ok)
                #expect(r.headers[HTTPField.Name("X-Request-ID")!] == "trace-42")
                #expect(store.lastRequestID == "trace-42")
                let other = try await client.send(.get, "/users/\(id)")
                #expect(store.lastRequestID == other.headers[HTTPField.Name("X-Request-ID")!] && store.lastRequestID != "trace-42")
            }
        }
    }
}
