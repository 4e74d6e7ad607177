/// When repeated failed log-ins lock a key (an email with the client address it came
/// from), and for how long.
///
/// The first `freeAttempts` failures cost nothing; each one after locks the key for a
/// doubling time, capped, so guessing gets exponentially slower while a user who mistyped
/// a few times is not bothered. A correct log-in resets the count, and failures are
/// forgotten after `forgetAfterSeconds` without one, so an old lock-out does not follow a
/// user for ever.
public struct LoginThrottle: Sendable, Equatable {
    public var freeAttempts: Int
    public var baseLockSeconds: Double
    public var maxLockSeconds: Double
    public var forgetAfterSeconds: Double

    public init(freeAttempts: Int = 5, baseLockSeconds: Double = 1, maxLockSeconds: Double = 900, forgetAfterSeconds: Double = 3600) {
        self.freeAttempts = freeAttempts
        self.baseLockSeconds = baseLockSeconds
        self.maxLockSeconds = maxLockSeconds
        self.forgetAfterSeconds = forgetAfterSeconds
    }

    /// The lock to apply after the `failures`-th consecutive failure, or nil for none.
    public func lockSeconds(afterFailures failures: Int) -> Double? {
        guard failures >= freeAttempts else { return nil }
        let exponent = min(failures - freeAttempts, 30)
        return min(baseLockSeconds * Double(1 << exponent), maxLockSeconds)
    }

    /// The state after one more attempt, given what was stored (nil: nothing), or the end
    /// of the lock that refuses it.
    public func attempt(failures: Int, lockedUntil: Double?, lastFailureAt: Double, now: Double)
        -> Result<(failures: Int, lockedUntil: Double?), Locked>
    {
        if let lockedUntil, lockedUntil > now { return .failure(Locked(until: lockedUntil)) }
        let counted = (now - lastFailureAt >= forgetAfterSeconds ? 0 : failures) + 1
        return .success((counted, lockSeconds(afterFailures: counted).map { now + $0 }))
    }

    public struct Locked: Error, Equatable {
        public var until: Double
        public init(until: Double) { self.until = until }
    }
}
