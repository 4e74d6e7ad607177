import Synchronization

/// Collapses concurrent calls for one key into one execution whose result all callers share.
public final class SingleFlight<Value: Sendable>: Sendable {
    private let flights = Mutex<[String: Task<Value, any Error>]>([:])

    public init() {}

    public func run(_ key: String, _ work: @escaping @Sendable () async throws -> Value) async throws -> Value {
        let task = flights.withLock { flights in
            if let existing = flights[key] { return existing }
            let task = Task { try await work() }
            flights[key] = task
            return task
        }
        defer {
            flights.withLock { flights in
                if flights[key] == task { flights[key] = nil }
            }
        }
        return try await task.value
    }

    /// New callers for `key` start a fresh execution; callers already waiting keep theirs.
    /// Called after a write so that nobody joins a read that began before it.
    public func forget(_ key: String) {
        _ = flights.withLock { $0.removeValue(forKey: key) }
    }

    public func forgetAll() {
        flights.withLock { $0.removeAll() }
    }

    public var inFlight: Int { flights.withLock { $0.count } }
}
