import Foundation
import HTTPTypes
import HummingbirdTesting
import MillionsTesting
import NIOCore
import Testing

/// Pulls `name="csrf" value="…"` out of a page.
func csrfField(_ html: String) -> String? {
    guard let r = html.range(of: #"name="csrf" value=""#) else { return nil }
    return String(html[r.upperBound...].prefix { $0 != "\"" })
}

/// The hashed asset URLs a page links to.
func assetURLs(_ html: String) -> [String] {
    html.components(separatedBy: "\"").filter { $0.hasPrefix("/assets/") }
}

@Suite struct PagesTests {
    @Test func homeIsHTMLWithNoCacheAndHashedAssets() async throws {
        try await TestApp.run { client, _ in
            let home = try await client.send(.get, "/")
            #expect(home.status == .ok)
            #expect(home.headers[.contentType] == "text/html; charset=utf-8")
            #expect(home.headers[.cacheControl] == "no-cache")
            #expect(home.headers[.contentSecurityPolicy]?.contains("default-src 'self'") == true)
            let urls = assetURLs(home.text)
            #expect(urls.count >= 3)
            for url in urls {
                #expect(url.range(of: #"\.[0-9a-f]{12}\."#, options: .regularExpression) != nil, "\(url)")
            }
        }
    }

    @Test func assetsAreImmutableWithETagsAnd304s() async throws {
        try await TestApp.run { client, _ in
            let home = try await client.send(.get, "/")
            let css = try #require(assetURLs(home.text).first { $0.hasSuffix(".css") })
            let r = try await client.send(.get, css)
            #expect(r.status == .ok)
            #expect(r.headers[.cacheControl] == "public, max-age=31536000, immutable")
            #expect(r.headers[.contentType] == "text/css; charset=utf-8")
            let etag = try #require(r.headers[.eTag])
            #expect(r.text.contains("--accent"))

            let again = try await client.send(.get, css, headers: [.ifNoneMatch: etag])
            #expect(again.status == .notModified)
            #expect(again.body.readableBytes == 0)
            #expect(again.headers[.eTag] == etag)
            #expect(try await client.send(.get, css, headers: [.ifNoneMatch: "\"other\", W/\(etag)"]).status == .notModified)
            #expect(try await client.send(.get, css, headers: [.ifNoneMatch: "\"other\""]).status == .ok)

            // Only exact hashed names are served; no path reaches the file system.
            for bad in ["/assets/site.css", "/assets/..%2f..%2fPackage.swift", "/assets/site.000000000000.css", "/assets/%2e%2e"] {
                #expect(try await client.send(.get, bad).status == .notFound, "\(bad)")
            }
            #expect(try await client.send(.get, "/favicon.ico").status == .ok)
        }
    }

    @Test func signUpLogOutAndLogInThroughTheForms() async throws {
        try await TestApp.run { client, _ in
            let form = try await client.send(.get, "/signup")
            #expect(form.status == .ok)
            let csrfCookie = try #require(form.cookie("millions_csrf"))
            #expect(form.setCookies["millions_csrf"]?.contains("SameSite=Strict") == true)
            #expect(csrfField(form.text) == csrfCookie)

            var fields = [
                "email": "ada@example.com", "password": "analytical engine", "firstName": "Ada", "lastName": "Lovelace",
                "streetAddress": "12 St James's Square", "city": "London", "state": "", "postalCode": "SW1Y 4JH",
                "phoneNumbers": "020 7946 0000\r\n020 7946 0001",
            ]
            // Without the CSRF token, or with the wrong one: refused, nothing created.
            #expect(try await client.send(.post, "/signup", form: fields, cookies: ["millions_csrf": csrfCookie]).status == .forbidden)
            fields["csrf"] = String(repeating: "0", count: 32)
            #expect(try await client.send(.post, "/signup", form: fields, cookies: ["millions_csrf": csrfCookie]).status == .forbidden)
            fields["csrf"] = csrfCookie
            #expect(try await client.send(.post, "/signup", form: fields).status == .forbidden)

            let created = try await client.send(.post, "/signup", form: fields, cookies: ["millions_csrf": csrfCookie])
            #expect(created.status == .seeOther)
            let location = try #require(created.headers[.location])
            #expect(location.hasPrefix("/people/"))
            let session = try #require(created.cookie("millions_session"))

            let profile = try await client.send(.get, location, cookies: ["millions_session": session])
            #expect(profile.status == .ok)
            #expect(profile.text.contains("Ada Lovelace"))
            #expect(profile.text.contains("St James&#39;s Square") || profile.text.contains("St James&#x27;s Square"))
            #expect(profile.text.contains("020 7946 0001"))
            #expect(profile.text.contains("Edit profile"))
            #expect(profile.headers[.cacheControl] == "private, no-cache")

            // Log out needs the session's token.
            let home = try await client.send(.get, "/", cookies: ["millions_session": session])
            let token = try #require(csrfField(home.text))
            #expect(try await client.send(.post, "/logout", form: [:], cookies: ["millions_session": session]).status == .forbidden)
            let out = try await client.send(.post, "/logout", form: ["csrf": token], cookies: ["millions_session": session])
            #expect(out.status == .seeOther)
            #expect(try await client.send(.get, "/me", cookies: ["millions_session": session]).status == .unauthorized)

            // Log in again through the form.
            let loginForm = try await client.send(.get, "/login", cookies: ["millions_csrf": csrfCookie])
            #expect(csrfField(loginForm.text) == csrfCookie)
            let bad = try await client.send(
                .post, "/login", form: ["csrf": csrfCookie, "email": "ada@example.com", "password": "nope nope"],
                cookies: ["millions_csrf": csrfCookie])
            #expect(bad.status == .unauthorized)
            #expect(bad.text.contains("email or password is wrong"))
            let good = try await client.send(
                .post, "/login", form: ["csrf": csrfCookie, "email": "ada@example.com", "password": "analytical engine"],
                cookies: ["millions_csrf": csrfCookie])
            #expect(good.status == .seeOther)
            #expect(good.cookie("millions_session") != nil)
        }
    }

    @Test func signUpFormShowsValidationErrors() async throws {
        try await TestApp.run { client, _ in
            let form = try await client.send(.get, "/signup")
            let csrf = try #require(form.cookie("millions_csrf"))
            let r = try await client.send(
                .post, "/signup", form: ["csrf": csrf, "email": "bad", "password": "x", "firstName": "<b>A</b>", "lastName": "B"],
                cookies: ["millions_csrf": csrf])
            #expect(r.status == .unprocessableContent)
            #expect(r.headers[.contentType] == "text/html; charset=utf-8")
            #expect(r.text.contains("email must be an email address"))
            #expect(r.text.contains("&lt;b&gt;A&lt;/b&gt;"))  // echoed back, escaped
            #expect(!r.text.contains("<b>A</b>"))
        }
    }

    @Test func editAndDeleteThroughTheForms() async throws {
        try await TestApp.run { client, _ in
            let (id, session) = try await signUpJohn(client)
            #expect(try await client.send(.get, "/settings/profile").status == .seeOther)
            let edit = try await client.send(.get, "/settings/profile", cookies: ["millions_session": session])
            #expect(edit.status == .ok)
            #expect(edit.text.contains("value=\"John\""))
            let token = try #require(csrfField(edit.text))

            let forged = try await client.send(
                .post, "/settings/profile", form: ["csrf": "x", "firstName": "Mallory"], cookies: ["millions_session": session])
            #expect(forged.status == .forbidden)
            let invalid = try await client.send(
                .post, "/settings/profile", form: ["csrf": token, "firstName": ""], cookies: ["millions_session": session])
            #expect(invalid.status == .unprocessableContent)
            let saved = try await client.send(
                .post, "/settings/profile",
                form: ["csrf": token, "firstName": "Jon", "lastName": "Smith", "city": "Albany", "phoneNumbers": "518 555 0100"],
                cookies: ["millions_session": session])
            #expect(saved.status == .seeOther)
            let json = try await client.send(.get, "/users/\(id)")
            #expect(json.object["firstName"] as? String == "Jon")
            #expect(json.object["phoneNumbers"] as? [String] == ["518 555 0100"])

            #expect(try await client.send(.post, "/settings/delete", form: ["csrf": "nope"], cookies: ["millions_session": session]).status == .forbidden)
            let gone = try await client.send(.post, "/settings/delete", form: ["csrf": token], cookies: ["millions_session": session])
            #expect(gone.status == .seeOther)
            #expect(try await client.send(.get, "/users/\(id)").status == .notFound)
            #expect(try await client.send(.get, "/people/\(id)").status == .notFound)
        }
    }
}
