import DataTier
import HTTPTypes
import Hummingbird
import Logging
import MillionsCore
import NIOCore
import SessionTier

/// The JSON API of users and sessions.
struct UsersController {
    let service: UserService
    let body: JSONBody

    func addRoutes(to router: Router<AppRequestContext>) {
        router.get("/users", use: usersInCity)
        router.get("/users/{id}", use: getUser)
        router.post("/users", use: signUp)
        router.patch("/users/{id}", use: updateUser)
        router.delete("/users/{id}", use: deleteUser)
        router.post("/sessions", use: logIn)
        router.delete("/sessions/current", use: logOut)
        router.get("/me", use: me)
    }

    @Sendable func getUser(_ request: Request, context: AppRequestContext) async throws -> Response {
        let id = try Self.userID(context)
        guard let json = try await service.userJSON(id) else { throw MillionsError(.notFound, "no such user") }
        return Response(
            status: .ok,
            headers: [.contentType: "application/json; charset=utf-8", .cacheControl: "no-cache"],
            body: .init(byteBuffer: ByteBuffer(bytes: json)))
    }

    /// `GET /users?city=Oslo&limit=20`: the newest people of a city, as written in their
    /// addresses. On a sharded tier one cluster answers (the city directory) or all of
    /// them (`data.shards.cityLookup=scatter`, where `partial` says a cluster was missing).
    @Sendable func usersInCity(_ request: Request, context: AppRequestContext) async throws -> Response {
        let query = request.uri.queryParameters
        guard let raw = query["city"] else { throw MillionsError(.badRequest, "city is required: /users?city=Oslo") }
        let city = String(raw).trimmed
        guard !city.isEmpty, city.unicodeScalars.count <= Limits.cityMax else {
            throw MillionsError(.badRequest, "city must be 1...\(Limits.cityMax) characters")
        }
        var limit = 20
        if let text = query["limit"] {
            guard let n = Int(String(text)), (1...100).contains(n) else { throw MillionsError(.badRequest, "limit must be 1...100") }
            limit = n
        }
        let page = try await service.users.usersIn(city: city, limit: limit)
        var w = JSONWriter(capacity: 64 + 64 * page.users.count)
        w.beginObject()
        w.field("city", city)
        w.key("users")
        w.beginArray()
        for u in page.users {
            w.beginObject()
            w.field("id", u.id.rawValue)
            w.field("firstName", u.firstName)
            w.field("lastName", u.lastName)
            w.endObject()
        }
        w.endArray()
        w.key("partial")
        w.bool(page.missingClusters > 0)
        w.endObject()
        return Response(
            status: .ok,
            headers: [.contentType: "application/json; charset=utf-8", .cacheControl: "no-cache"],
            body: .init(byteBuffer: ByteBuffer(bytes: w.bytes)))
    }

    @Sendable func signUp(_ request: Request, context: AppRequestContext) async throws -> Response {
        let input = try await body.decode(SignUpRequest.self, from: request).validated()
        let (user, session) = try await service.signUp(
            email: input.email, password: input.password, profile: input.profile, from: context.clientAddress)
        context.logger.info("signed up", metadata: ["user_id": "\(user.id)"])
        var response = Response.user(user, status: .created, headers: [.location: "/users/\(user.id)"])
        response.setCookie(service.sessionCookie(session))
        return response
    }

    @Sendable func updateUser(_ request: Request, context: AppRequestContext) async throws -> Response {
        let id = try Self.userID(context)
        let session = try await service.requireSession(request)
        guard session.userID == id else { throw MillionsError(.forbidden, "you can only edit your own profile") }
        let patch = try await body.decode(ProfilePatchRequest.self, from: request).patch
        let user = try await service.update(id, patch: patch)
        return Response.user(user)
    }

    @Sendable func deleteUser(_ request: Request, context: AppRequestContext) async throws -> Response {
        let id = try Self.userID(context)
        let session = try await service.requireSession(request)
        guard session.userID == id else { throw MillionsError(.forbidden, "you can only delete your own account") }
        try await service.delete(id)
        context.logger.info("account deleted", metadata: ["user_id": "\(id)"])
        var response = Response(status: .noContent)
        response.setCookie(service.clearedSessionCookie())
        return response
    }

    @Sendable func logIn(_ request: Request, context: AppRequestContext) async throws -> Response {
        let input = try await body.decode(LogInRequest.self, from: request)
        var missing: [FieldError] = []
        if input.email == nil { missing.append(FieldError("email", "is required")) }
        if input.password == nil { missing.append(FieldError("password", "is required")) }
        try Validate.throwing(missing)
        let (user, session) = try await service.logIn(email: input.email!, password: input.password!, from: context.clientAddress)
        var response = Response.user(user, status: .created)
        response.setCookie(service.sessionCookie(session))
        return response
    }

    @Sendable func logOut(_ request: Request, context: AppRequestContext) async throws -> Response {
        let session = try await service.requireSession(request)
        try await service.sessions.delete(id: session.id)
        var response = Response(status: .noContent)
        response.setCookie(service.clearedSessionCookie())
        return response
    }

    @Sendable func me(_ request: Request, context: AppRequestContext) async throws -> Response {
        let session = try await service.requireSession(request)
        guard let user = try await service.user(session.userID) else {
            throw MillionsError(.unauthenticated, "log in first")
        }
        var response = Response.user(user, headers: [.cacheControl: "no-store"])
        response.setCookie(service.sessionCookie(session))
        return response
    }

    /// The `{id}` path parameter as a user id; 400 for anything that is not one.
    static func userID(_ context: AppRequestContext) throws -> UserID {
        guard let text = context.parameters.get("id"), let id = UserID(text) else {
            throw MillionsError(.invalidID, "user ids are positive integers below 2^53")
        }
        return id
    }
}
