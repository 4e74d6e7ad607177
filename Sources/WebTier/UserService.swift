import CacheTier
import DataTier
import Engines
import Hummingbird
import HummingbirdBcrypt
import Logging
import MessageQueue
import MillionsCore
import Photos
import NIOPosix
import SessionTier

/// Everything the controllers do with users and sessions, in one place so the JSON API
/// and the HTML pages behave the same. Stores and cache come in as protocols.
struct UserService: Sendable {
    let users: any UserStore
    let sessions: any SessionStore
    /// nil when caching is off.
    let cache: ReadThrough<User>?
    let settings: Settings
    let ids: UserIDGenerator
    /// A real bcrypt hash to verify against when the email is unknown, so a wrong email
    /// takes as long as a wrong password and does not reveal who has an account.
    let decoyHash: String
    /// Where a deleted account's photo files are sent to be forgotten.
    let forget: ForgetPhotos.Scheduler
    let limits: RateLimits
    let passwords: PasswordChecks

    // MARK: Passwords, off the event loops

    func hash(_ password: String) async throws -> String {
        let cost = UInt8(settings.auth.bcryptCost)
        return try await passwords.run { Bcrypt.hash(Self.bcryptInput(password), cost: cost) }
    }

    func verify(_ password: String, _ hash: String) async throws -> Bool {
        try await passwords.run { Bcrypt.verify(Self.bcryptInput(password), hash: hash) }
    }

    /// bcrypt reads 72 bytes at most: a longer password is first reduced to its SHA-256
    /// (64 hex digits), so every byte of it counts. Passwords of 72 bytes or fewer go in as
    /// they are, so hashes made before this rule still verify.
    static func bcryptInput(_ password: String) -> String {
        password.utf8.count > 72 ? SHA256.hex(password) : password
    }

    // MARK: Accounts

    func signUp(email: String, password: String, profile: Profile, from address: String) async throws -> (User, Session) {
        try await limits.check(.signUp, address: address)
        let passwordHash = try await hash(password)
        var attempt = 0
        while true {
            do {
                let user = try await users.create(
                    NewAccount(id: ids.next(), email: email, passwordHash: passwordHash, profile: profile))
                // A negative entry may be cached for this id from before; drop it.
                await cache?.invalidate(user.id)
                let session = try await sessions.create(userID: user.id, ttl: settings.session.ttl.inSeconds)
                return (user, session)
            } catch is DuplicateIDError where attempt < 5 {
                attempt += 1
            }
        }
    }

    func logIn(email rawEmail: String, password: String, from address: String) async throws -> (User, Session) {
        let email = Validate.normalizedEmail(rawEmail)
        // Before any lookup or bcrypt: a flood costs a bucket check, not a hash each.
        try await limits.check(.logIn, address: address, account: email)
        let wrong = MillionsError(.unauthenticated, "email or password is wrong")
        // No account's password has a NUL (sign-up refuses it), and bcrypt would stop at
        // one: "secret123\0anything" must not pass for "secret123".
        guard !password.utf8.contains(0) else { throw wrong }
        // Counted before the account is read and before bcrypt (as failed until it
        // succeeds): parallel guesses cannot all pass the lock check, and an unknown email
        // is counted and locked exactly like a known one, so a 429 reveals no account. Keyed
        // by the client's address too: a stranger's guesses do not lock the owner out.
        let key = SHA256.hex(email + "\n" + address)
        let now = Clock.secondsSince1970()
        if case .locked(let until) = try await users.reserveLoginAttempt(key: key, now: now, throttle: settings.auth.loginThrottle) {
            throw MillionsError(
                .tooManyRequests, "too many failed log-ins; try again later", retryAfter: max(1, Int((until - now).rounded(.up))))
        }
        guard let creds = try await users.credentials(email: email) else {
            _ = try await verify(password, decoyHash)
            throw wrong
        }
        guard try await verify(password, creds.passwordHash) else { throw wrong }
        try await users.recordSuccessfulLogin(key: key)
        guard let user = try await users.user(id: creds.userID) else { throw wrong }
        let session = try await sessions.create(userID: user.id, ttl: settings.session.ttl.inSeconds)
        return (user, session)
    }

    // MARK: Users

    /// The public user, through the read-through cache when it is on.
    func user(_ id: UserID) async throws -> User? {
        guard let cache else { return try await users.user(id: id) }
        return try await cache.get(id) { [users] in try await users.user(id: id) }
    }

    /// The user's public JSON, straight from the cache's bytes on a hit.
    func userJSON(_ id: UserID) async throws -> [UInt8]? {
        guard let cache else { return try await users.user(id: id).map { try Self.encode($0) } }
        return try await cache.bytes(id) { [users] in try await users.user(id: id) }
    }

    /// Applies a validated patch, then invalidates the cache once the write has committed.
    func update(_ id: UserID, patch: ProfilePatch) async throws -> User {
        guard let current = try await users.user(id: id) else { throw MillionsError(.notFound, "no such user") }
        var errors: [FieldError] = []
        Validate.profile(patch.applied(to: current.profile), into: &errors)
        try Validate.throwing(errors)
        guard let updated = try await users.update(id: id, patch: patch) else {
            throw MillionsError(.notFound, "no such user")
        }
        await cache?.invalidate(id)
        return updated
    }

    /// Deletes the account, then every session of it, then the cached profile, then queues
    /// its photo files to be deleted and purged from the edge.
    func delete(_ id: UserID) async throws {
        guard let deleted = try await users.delete(id: id) else { throw MillionsError(.notFound, "no such user") }
        try await sessions.deleteAll(userID: id)
        await cache?.invalidate(id)
        let files = ForgetPhotos.Payload(originals: deleted.photoSource.map { [$0] } ?? [], variants: deleted.variantFiles)
        try await forget.schedule(files)
    }

    // MARK: Sessions

    /// The live session named by the request's cookie, if any.
    func session(for request: Request) async throws -> Session? {
        guard let id = request.cookies[settings.session.cookieName]?.value, Session.isWellFormed(id) else {
            return nil
        }
        return try await sessions.session(id: id, ttl: settings.session.ttl.inSeconds)
    }

    func requireSession(_ request: Request) async throws -> Session {
        guard let session = try await session(for: request) else {
            throw MillionsError(.unauthenticated, "log in first")
        }
        return session
    }

    /// The session cookie: HttpOnly, SameSite=Lax, Secure when configured.
    func sessionCookie(_ session: Session) -> Hummingbird.Cookie {
        Hummingbird.Cookie(
            name: settings.session.cookieName, value: session.id, maxAge: Int(settings.session.ttl.inSeconds), path: "/",
            secure: settings.session.secureCookies, httpOnly: true, sameSite: .lax)
    }

    /// Tells the browser to forget the session cookie.
    func clearedSessionCookie() -> Hummingbird.Cookie {
        Hummingbird.Cookie(
            name: settings.session.cookieName, value: "", maxAge: 0, path: "/", secure: settings.session.secureCookies,
            httpOnly: true, sameSite: .lax)
    }

    static func encode(_ user: User) throws -> [UInt8] { user.json }
}
