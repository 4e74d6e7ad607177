import Edge
import Engines
import DataTier
import HTTPTypes
import Hummingbird
import Logging
import MillionsCore
import Mustache
import Photos
import NIOCore
import SessionTier

/// The server-rendered site: home, sign-up, log-in, profile, edit profile.
///
/// Forms are protected against CSRF two ways: forms for a logged-in user carry the
/// session's own token (synchronizer token); the sign-up and log-in forms, which have no
/// session yet, use a double-submit cookie (SameSite=Strict, HttpOnly) echoed in a field.
struct PagesController {
    let service: UserService
    let templates: MustacheLibrary
    let assets: AssetCatalog
    let body: JSONBody

    static let csrfCookie = "millions_csrf"

    func addRoutes(to router: Router<AppRequestContext>) {
        router.get("/", use: home)
        router.get("/signup", use: signUpForm)
        router.post("/signup", use: signUp)
        router.get("/login", use: logInForm)
        router.post("/login", use: logIn)
        router.post("/logout", use: logOut)
        router.get("/people/{id}", use: profile)
        router.get("/settings/profile", use: editForm)
        router.post("/settings/profile", use: edit)
        router.post("/settings/delete", use: deleteAccount)
    }

    // MARK: Pages

    @Sendable func home(_ request: Request, context: AppRequestContext) async throws -> Response {
        let session = try await service.session(for: request)
        let recent = try await service.users.recentPage(limit: 20)
        var page = try await base(title: "Millions", session: session)
        page["partial"] = recent.missingClusters > 0
        page["people"] = recent.users.map { ["id": "\($0.id)", "name": "\($0.firstName) \($0.lastName)", "city": $0.address.city] }
        return try render("home", page, session: session)
    }

    @Sendable func signUpForm(_ request: Request, context: AppRequestContext) async throws -> Response {
        let token = Self.anonymousToken(request)
        var page = try await base(title: "Sign up", session: nil)
        page["csrf"] = token
        var response = try render("signup", page, session: nil)
        response.setCookie(csrfCookie(token))
        return response
    }

    @Sendable func signUp(_ request: Request, context: AppRequestContext) async throws -> Response {
        let form = try await fields(request)
        try Self.checkAnonymousToken(request, form)
        let input = SignUpRequest(
            email: form["email"], password: form["password"], firstName: form["firstName"], lastName: form["lastName"],
            address: AddressInput(
                streetAddress: form["streetAddress"], city: form["city"], state: form["state"],
                postalCode: form["postalCode"]),
            phoneNumbers: Self.lines(form["phoneNumbers"]))
        do {
            let v = try input.validated()
            let (user, session) = try await service.signUp(
                email: v.email, password: v.password, profile: v.profile, from: context.clientAddress)
            var response = Response.redirect(to: "/people/\(user.id)", type: .normal)
            response.setCookie(service.sessionCookie(session))
            return response
        } catch let e as MillionsError where e.code == .validation || e.code == .conflict || e.code == .tooManyRequests {
            var page = try await base(title: "Sign up", session: nil)
            page["csrf"] = form["csrf"] ?? ""
            page["errors"] = Self.messages(e)
            page["form"] = form.values.filter { $0.key != "password" && $0.key != "csrf" }
            var response = try render("signup", page, session: nil, status: e.code.status)
            if let retry = e.retryAfter { response.headers[.retryAfter] = String(retry) }
            return response
        }
    }

    @Sendable func logInForm(_ request: Request, context: AppRequestContext) async throws -> Response {
        let token = Self.anonymousToken(request)
        var page = try await base(title: "Log in", session: nil)
        page["csrf"] = token
        var response = try render("login", page, session: nil)
        response.setCookie(csrfCookie(token))
        return response
    }

    @Sendable func logIn(_ request: Request, context: AppRequestContext) async throws -> Response {
        let form = try await fields(request)
        try Self.checkAnonymousToken(request, form)
        do {
            let (_, session) = try await service.logIn(
                email: form["email"] ?? "", password: form["password"] ?? "", from: context.clientAddress)
            var response = Response.redirect(to: "/", type: .normal)
            response.setCookie(service.sessionCookie(session))
            return response
        } catch let e as MillionsError where e.code == .unauthenticated || e.code == .tooManyRequests {
            var page = try await base(title: "Log in", session: nil)
            page["csrf"] = form["csrf"] ?? ""
            page["errors"] = Self.messages(e)
            page["form"] = ["email": form["email"] ?? ""]
            var response = try render("login", page, session: nil, status: e.code.status)
            if let retry = e.retryAfter { response.headers[.retryAfter] = String(retry) }
            return response
        }
    }

    @Sendable func logOut(_ request: Request, context: AppRequestContext) async throws -> Response {
        let form = try await fields(request)
        var response = Response.redirect(to: "/", type: .normal)
        if let session = try await service.session(for: request) {
            try Self.checkSessionToken(session, form)
            try await service.sessions.delete(id: session.id)
        }
        response.setCookie(service.clearedSessionCookie())
        return response
    }

    @Sendable func profile(_ request: Request, context: AppRequestContext) async throws -> Response {
        let session = try await service.session(for: request)
        guard let text = context.parameters.get("id"), let id = UserID(text), let user = try await service.user(id)
        else {
            var page = try await base(title: "Not found", session: session)
            page["message"] = "There is no such person."
            return try render("message", page, session: session, status: .notFound)
        }
        var page = try await base(title: "\(user.firstName) \(user.lastName)", session: session)
        page["user"] = Self.view(user)
        page["mine"] = session?.userID == user.id
        if session?.userID == user.id, let job = request.uri.queryParameters["job"].flatMap({ Int64(String($0)) }) {
            page["job"] = "\(job)"
        }
        page["maxPhotoMB"] = "\(service.settings.photos.maxBytes / (1024 * 1024))"
        return try render("profile", page, session: session)
    }

    @Sendable func editForm(_ request: Request, context: AppRequestContext) async throws -> Response {
        guard let session = try await service.session(for: request) else {
            return Response.redirect(to: "/login", type: .normal)
        }
        guard let user = try await service.users.user(id: session.userID) else {
            return Response.redirect(to: "/login", type: .normal)
        }
        var page = try await base(title: "Edit profile", session: session)
        page["form"] = Self.formValues(user)
        return try render("edit", page, session: session)
    }

    @Sendable func edit(_ request: Request, context: AppRequestContext) async throws -> Response {
        let session = try await service.requireSession(request)
        let form = try await fields(request)
        try Self.checkSessionToken(session, form)
        let patch = ProfilePatch(
            firstName: form["firstName"], lastName: form["lastName"], streetAddress: form["streetAddress"],
            city: form["city"], state: form["state"], postalCode: form["postalCode"],
            phoneNumbers: form["phoneNumbers"].map { Self.lines($0) })
        do {
            _ = try await service.update(session.userID, patch: patch)
            return Response.redirect(to: "/people/\(session.userID)", type: .normal)
        } catch let e as MillionsError where e.code == .validation {
            var page = try await base(title: "Edit profile", session: session)
            page["errors"] = Self.messages(e)
            page["form"] = form.values.filter { $0.key != "csrf" }
            return try render("edit", page, session: session, status: e.code.status)
        }
    }

    @Sendable func deleteAccount(_ request: Request, context: AppRequestContext) async throws -> Response {
        let session = try await service.requireSession(request)
        let form = try await fields(request)
        try Self.checkSessionToken(session, form)
        try await service.delete(session.userID)
        var response = Response.redirect(to: "/", type: .normal)
        response.setCookie(service.clearedSessionCookie())
        return response
    }

    // MARK: Helpers

    /// Values every page needs: asset URLs and who is logged in.
    func base(title: String, session: Session?) async throws -> [String: Any] {
        var page: [String: Any] = [
            "title": title,
            "css": assets.url("site.css"),
            "js": assets.url("site.js"),
            "logo": assets.url("logo.svg"),
            "favicon": assets.url("favicon.svg"),
        ]
        if let session, let me = try await service.user(session.userID) {
            page["me"] = ["id": "\(me.id)", "firstName": me.firstName, "csrf": session.csrfToken]
            page["csrf"] = session.csrfToken
        }
        return page
    }

    func render(_ name: String, _ page: [String: Any], session: Session?, status: HTTPResponse.Status = .ok) throws
        -> Response
    {
        var page = page
        page["hasErrors"] = (page["errors"] as? [String])?.isEmpty == false
        guard let html = templates.render(page, withTemplate: name) else {
            throw MillionsError(.internalError, "missing template \(name)")
        }
        var response = Response(
            status: status,
            headers: [.contentType: "text/html; charset=utf-8", .cacheControl: session == nil ? "no-cache" : "private, no-cache", .vary: "Cookie"],
            body: .init(byteBuffer: ByteBuffer(string: html)))
        // Keep the browser's cookie as long as the server-side session slides.
        if let session { response.setCookie(service.sessionCookie(session)) }
        return response
    }

    func fields(_ request: Request) async throws -> FormFields {
        let type = request.headers[.contentType]?.lowercased() ?? ""
        guard type.hasPrefix("application/x-www-form-urlencoded") else {
            throw MillionsError(.unsupportedMediaType, "send the form as application/x-www-form-urlencoded")
        }
        return try FormFields(try await body.collect(request))
    }

    func csrfCookie(_ token: String) -> Hummingbird.Cookie {
        Hummingbird.Cookie(
            name: Self.csrfCookie, value: token, path: "/", secure: service.settings.session.secureCookies, httpOnly: true,
            sameSite: .strict)
    }

    static func anonymousToken(_ request: Request) -> String {
        if let existing = request.cookies[csrfCookie]?.value, Token.isHex(existing, length: 32) { return existing }
        return Token.random(bytes: 16)
    }

    static func checkAnonymousToken(_ request: Request, _ form: FormFields) throws {
        guard let cookie = request.cookies[csrfCookie]?.value, let field = form["csrf"], Token.isHex(cookie, length: 32),
            Token.constantTimeEquals(cookie, field)
        else { throw MillionsError(.csrf, "the form has expired; reload the page and try again") }
    }

    static func checkSessionToken(_ session: Session, _ form: FormFields) throws {
        guard let field = form["csrf"], Token.constantTimeEquals(field, session.csrfToken) else {
            throw MillionsError(.csrf, "the form has expired; reload the page and try again")
        }
    }

    static func lines(_ text: String?) -> [String] {
        (text ?? "").split(whereSeparator: \.isNewline).map { String($0).trimmed }.filter { !$0.isEmpty }
    }

    static func messages(_ e: MillionsError) -> [String] {
        e.fields.isEmpty ? [e.message] : e.fields.map { "\($0.field) \($0.message)" }
    }

    static func view(_ user: User) -> [String: Any] {
        var view: [String: Any] = [
            "id": "\(user.id)", "firstName": user.firstName, "lastName": user.lastName,
            "streetAddress": user.address.streetAddress, "city": user.address.city, "state": user.address.state,
            "postalCode": user.address.postalCode, "phoneNumbers": user.phoneNumbers,
        ]
        if let photo = user.photo { view["photo"] = photo.variants }
        return view
    }

    static func formValues(_ user: User) -> [String: String] {
        [
            "firstName": user.firstName, "lastName": user.lastName, "streetAddress": user.address.streetAddress,
            "city": user.address.city, "state": user.address.state, "postalCode": user.address.postalCode,
            "phoneNumbers": user.phoneNumbers.joined(separator: "\n"),
        ]
    }
}
