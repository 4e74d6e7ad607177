/// The circuit breaker of one cache node, as a pure state machine (tested with a fake
/// clock). `failureThreshold` consecutive failures take the node out; while out, a probe
/// is due every `retryInterval`; a successful probe brings it back (after the caller has
/// flushed it, so it cannot serve values invalidated while it was away).
public struct NodeHealth: Sendable, Equatable {
    public enum State: Sendable, Equatable {
        case up(consecutiveFailures: Int)
        case down(since: Double, nextProbe: Double)
    }

    public private(set) var state: State = .up(consecutiveFailures: 0)
    public let failureThreshold: Int
    public let retryInterval: Double

    public init(failureThreshold: Int, retryInterval: Double) {
        self.failureThreshold = failureThreshold
        self.retryInterval = retryInterval
    }

    public var isUp: Bool { if case .up = state { true } else { false } }

    /// Returns true if this failure took the node out.
    public mutating func recordFailure(now: Double) -> Bool {
        switch state {
        case .up(let n):
            if n + 1 >= failureThreshold {
                state = .down(since: now, nextProbe: now + retryInterval)
                return true
            }
            state = .up(consecutiveFailures: n + 1)
            return false
        case .down(let since, _):
            state = .down(since: since, nextProbe: now + retryInterval)
            return false
        }
    }

    public mutating func recordSuccess() {
        if case .up = state { state = .up(consecutiveFailures: 0) }
    }

    public func probeDue(now: Double) -> Bool {
        if case .down(_, let next) = state { return now >= next }
        return false
    }

    /// A probe answered: the node rejoins. Returns true if it was down.
    public mutating func probeSucceeded() -> Bool {
        let wasDown = !isUp
        state = .up(consecutiveFailures: 0)
        return wasDown
    }
}
