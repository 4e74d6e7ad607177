import DataTier
import MillionsCore
import Observability
import Synchronization

/// Wraps a real user store, counting `user(id:)` reads and optionally slowing them, so
/// tests can see how many reads reach the database.
public final class CountingUserStore: UserStore {
    let inner: any UserStore
    let delay: Duration
    private let count = Atomic<Int>(0)
    private let seenRequestID = Mutex<String?>(nil)

    public init(_ inner: any UserStore, delay: Duration = .zero) {
        self.inner = inner
        self.delay = delay
    }

    public var reads: Int { count.load(ordering: .relaxed) }
    public func resetReads() { count.store(0, ordering: .relaxed) }
    /// The request the last `user(id:)` read ran for (`RequestScope`), as its log lines name it.
    public var lastRequestID: String? { seenRequestID.withLock { $0 } }

    public func user(id: UserID) async throws -> User? {
        count.add(1, ordering: .relaxed)
        seenRequestID.withLock { $0 = RequestScope.requestID }
        if delay > .zero { try await Task.sleep(for: delay) }
        return try await inner.user(id: id)
    }

    public func create(_ account: NewAccount) async throws -> User { try await inner.create(account) }
    public func recentUsers(limit: Int) async throws -> [User] { try await inner.recentUsers(limit: limit) }
    public func recentPage(limit: Int) async throws -> RecentUsers { try await inner.recentPage(limit: limit) }
    public func usersIn(city: String, limit: Int) async throws -> CityPage { try await inner.usersIn(city: city, limit: limit) }
    public func update(id: UserID, patch: ProfilePatch) async throws -> User? { try await inner.update(id: id, patch: patch) }
    public func delete(id: UserID) async throws -> DeletedUser? { try await inner.delete(id: id) }
    public func credentials(email: String) async throws -> Credentials? { try await inner.credentials(email: email) }
    public func reserveLoginAttempt(key: String, now: Double, throttle: LoginThrottle) async throws -> LoginAttempt {
        try await inner.reserveLoginAttempt(key: key, now: now, throttle: throttle)
    }
    public func recordSuccessfulLogin(key: String) async throws { try await inner.recordSuccessfulLogin(key: key) }
    public func forgetLoginFailures(before: Double) async throws -> Int { try await inner.forgetLoginFailures(before: before) }
    public func insertMany(_ accounts: [NewAccount]) async throws -> Int { try await inner.insertMany(accounts) }
    public func beginPhoto(id: UserID, source: String?) async throws -> PhotoTicket? {
        try await inner.beginPhoto(id: id, source: source)
    }
    public func setPhoto(id: UserID, photo: Photo, version: Int64) async throws -> PhotoSwap {
        try await inner.setPhoto(id: id, photo: photo, version: version)
    }
    public func photoSource(id: UserID) async throws -> String? { try await inner.photoSource(id: id) }
    public func newestPhoto(id: UserID) async throws -> PhotoTicket? { try await inner.newestPhoto(id: id) }
    public func ping() async throws { try await inner.ping() }
}
