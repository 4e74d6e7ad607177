import MillionsCore
import Observability
import Prometheus

/// Counts every call that reaches the user store, by operation, whatever the engine:
/// `user_store_calls_total{op}`. With the cache's counters this gives "database reads
/// per 1,000 requests", the figure that shows what a cache tier saves.
public struct MeteredUserStore: UserStore {
    let inner: any UserStore
    let reads, creates, updates, deletes, logins: Prometheus.Counter

    public init(_ inner: any UserStore, metrics: AppMetrics) {
        self.inner = inner
        func counter(_ op: String) -> Prometheus.Counter {
            metrics.counter("user_store_calls", "Calls that reached the user store (the database), by operation", [("op", op)])
        }
        reads = counter("read")
        creates = counter("create")
        updates = counter("update")
        deletes = counter("delete")
        logins = counter("login")
    }

    public func user(id: UserID) async throws -> User? {
        reads.increment()
        return try await inner.user(id: id)
    }
    public func recentUsers(limit: Int) async throws -> [User] {
        reads.increment()
        return try await inner.recentUsers(limit: limit)
    }
    public func usersIn(city: String, limit: Int) async throws -> CityPage {
        reads.increment()
        return try await inner.usersIn(city: city, limit: limit)
    }
    public func recentPage(limit: Int) async throws -> RecentUsers {
        reads.increment()
        return try await inner.recentPage(limit: limit)
    }
    public func create(_ account: NewAccount) async throws -> User {
        creates.increment()
        return try await inner.create(account)
    }
    public func update(id: UserID, patch: ProfilePatch) async throws -> User? {
        updates.increment()
        return try await inner.update(id: id, patch: patch)
    }
    public func delete(id: UserID) async throws -> DeletedUser? {
        deletes.increment()
        return try await inner.delete(id: id)
    }
    public func credentials(email: String) async throws -> Credentials? {
        logins.increment()
        return try await inner.credentials(email: email)
    }
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
