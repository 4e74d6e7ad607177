import MillionsCore

/// A logged-in session. `id` is the opaque token in the client's cookie; stores keep only
/// its SHA-256, so a copy of the store does not hand out live sessions.
public struct Session: Sendable, Equatable {
    public var id: String
    public var userID: UserID
    /// Per-session token that the HTML forms must echo back (CSRF synchronizer token).
    public var csrfToken: String
    /// Seconds since 1970.
    public var expiresAt: Double

    public init(id: String, userID: UserID, csrfToken: String, expiresAt: Double) {
        self.id = id
        self.userID = userID
        self.csrfToken = csrfToken
        self.expiresAt = expiresAt
    }

    /// 256 random bits, hex.
    public static func newID() -> String { Token.random(bytes: 32) }
    /// Session ids are exactly 64 lowercase hex characters; anything else is not looked up.
    public static func isWellFormed(_ id: String) -> Bool { Token.isHex(id, length: 64) }
    static func hash(_ id: String) -> String { SHA256.hex(id) }
}

/// The shared session store: any web server can serve any request because session data
/// lives here, never in a web server's memory.
public protocol SessionStore: Sendable {
    /// Starts a session that expires after `ttl` seconds of inactivity.
    func create(userID: UserID, ttl: Double) async throws -> Session
    /// The live session for a token, or nil if unknown or expired. Slides the expiry
    /// forward when less than half of `ttl` remains (at most one write per half-ttl).
    func session(id: String, ttl: Double) async throws -> Session?
    func delete(id: String) async throws
    /// Logs a user out everywhere (account deletion).
    func deleteAll(userID: UserID) async throws
    /// Removes expired sessions; returns how many.
    func purgeExpired() async throws -> Int
    func ping() async throws
}
