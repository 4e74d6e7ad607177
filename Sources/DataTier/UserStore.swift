import Foundation
import MillionsCore

/// Where users and their log-in identities live. One implementation per engine;
/// configuration picks which, and nothing else knows.
public protocol UserStore: Sendable {
    /// Inserts a new account. Throws `MillionsError(.conflict)` when the email is taken and
    /// `DuplicateIDError` when the id is (the caller retries with a fresh id).
    func create(_ account: NewAccount) async throws -> User
    func user(id: UserID) async throws -> User?
    /// Newest first.
    func recentUsers(limit: Int) async throws -> [User]
    /// Newest first, saying how many clusters (shards) did not answer in time and are
    /// missing from the page; 0 for an unsharded store.
    func recentPage(limit: Int) async throws -> RecentUsers
    /// The newest users whose address is in `city` (exactly as written), newest first: a
    /// summary of each, and how many clusters did not answer (a sharded store that gathers).
    func usersIn(city: String, limit: Int) async throws -> CityPage
    /// Applies the patch in one transaction; nil if the user does not exist.
    func update(id: UserID, patch: ProfilePatch) async throws -> User?
    /// Deletes the user; what it leaves to clean up, or nil if there was no such user.
    func delete(id: UserID) async throws -> DeletedUser?

    /// The log-in identity for a normalized email.
    func credentials(email: String) async throws -> Credentials?
    /// Counts a log-in attempt for `key` (a normalized email and the client's address)
    /// before its password is checked, and applies the throttle, in one atomic step:
    /// parallel guesses cannot all pass a check made before any of them is counted. Refused
    /// while the key is locked. The key need not name an account: an unknown email is
    /// throttled exactly like a known one, so a lock reveals nothing.
    func reserveLoginAttempt(key: String, now: Double, throttle: LoginThrottle) async throws -> LoginAttempt
    /// A correct password: the key's failures are forgotten.
    func recordSuccessfulLogin(key: String) async throws
    /// Deletes the failures last counted before `before` whose lock has ended; how many.
    func forgetLoginFailures(before: Double) async throws -> Int

    /// Bulk insert for seeding; accounts whose id or email exists are skipped. Returns how
    /// many were inserted.
    func insertMany(_ accounts: [NewAccount]) async throws -> Int

    /// Starts a new version of the user's photo: from the uploaded original `source`, or,
    /// for an edit (`source` nil), from the newest upload. nil if there is no such user or
    /// nothing to edit. Versions count per user, so they never go backwards.
    func beginPhoto(id: UserID, source: String?) async throws -> PhotoTicket?
    /// Makes `photo` (version `version`) the user's current photo, unless a newer version is
    /// already shown.
    func setPhoto(id: UserID, photo: Photo, version: Int64) async throws -> PhotoSwap
    /// The newest uploaded original (what edits apply to), read from the primary.
    func photoSource(id: UserID) async throws -> String?
    /// The newest photo version asked for and its original, read from the primary; nil if
    /// there is no such user or no photo.
    func newestPhoto(id: UserID) async throws -> PhotoTicket?

    /// Succeeds if the store can serve requests.
    func ping() async throws
}

/// The newest users, and how many clusters are missing from them.
public struct RecentUsers: Sendable {
    public var users: [User]
    public var missingClusters: Int

    public init(users: [User], missingClusters: Int = 0) {
        self.users = users
        self.missingClusters = missingClusters
    }
}

/// What a list of people shows of each: enough to link to the profile.
public struct UserSummary: Sendable, Equatable {
    public var id: UserID
    public var firstName: String
    public var lastName: String

    public init(id: UserID, firstName: String, lastName: String) {
        self.id = id
        self.firstName = firstName
        self.lastName = lastName
    }
}

/// The users of one city, newest first, and how many clusters are missing from them.
public struct CityPage: Sendable, Equatable {
    public var users: [UserSummary]
    public var missingClusters: Int

    public init(users: [UserSummary], missingClusters: Int = 0) {
        self.users = users
        self.missingClusters = missingClusters
    }
}

extension UserStore {
    public func recentPage(limit: Int) async throws -> RecentUsers { RecentUsers(users: try await recentUsers(limit: limit)) }
}

/// A photo version to process: its number, and the original it starts from; for an
/// upload, also the original it replaced as the newest (nothing will use that one again).
public struct PhotoTicket: Sendable, Equatable {
    public var version: Int64
    public var source: String
    public var replaced: String?
    public init(version: Int64, source: String, replaced: String? = nil) {
        self.version = version
        self.source = source
        self.replaced = replaced
    }
}

/// What `setPhoto` did: shown, with the photo it replaced (nil: none), or not (a newer
/// version is shown, or there is no such user).
public enum PhotoSwap: Sendable, Equatable {
    case shown(replaced: Photo?)
    case notShown

    public var isShown: Bool { if case .shown = self { true } else { false } }
}

/// The id of a new user collided with an existing one; mint another and retry.
public struct DuplicateIDError: Error, Sendable {
    public init() {}
}

extension Photo {
    /// The variant file names (the last part of each variant's URL), sorted.
    public var files: [String] { variants.values.compactMap { $0.split(separator: "/").last.map(String.init) }.sorted() }

    /// Reads the stored JSON text; nil if absent or unreadable.
    public static func parse(_ text: String?) -> Photo? {
        guard let text else { return nil }
        return try? JSONDecoder().decode(Photo.self, from: Data(text.utf8))
    }
}

/// What `reserveLoginAttempt` decided.
public enum LoginAttempt: Sendable, Equatable {
    /// The password may be checked; the attempt is counted as failed until it succeeds.
    case granted
    /// The key is locked until then (seconds since 1970).
    case locked(until: Double)
}

/// A deleted account's photo files, read in the same statement that deleted it (so no
/// photo applied in between is missed): they are deleted next, and purged from the edge.
public struct DeletedUser: Sendable, Equatable {
    public var photoSource: String?
    public var photo: Photo?

    public init(photoSource: String?, photo: Photo?) {
        self.photoSource = photoSource
        self.photo = photo
    }

    /// The variant file names (the last part of each variant's URL).
    public var variantFiles: [String] { photo?.files ?? [] }
}
