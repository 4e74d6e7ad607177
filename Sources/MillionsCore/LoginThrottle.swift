/// When repeated failed log-ins for one account lock it, and for how long.
///
/// The first `freeAttempts` failures cost nothing; each one after locks the account for a
/// doubling time, capped, so guessing gets exponentially slower while a user who mistyped
/// a few times is not bothered. A correct log-in resets the count.
public struct LoginThrottle: Sendable, Equatable {
    public var freeAttempts: Int
    public var baseLockSeconds: Double
    public var maxLockSeconds: Double

    public init(freeAttempts: Int = 5, baseLockSeconds: Double = 1, maxLockSeconds: Double = 900) {
        self.freeAttempts = freeAttempts
        self.baseLockSeconds = baseLockSeconds
        self.maxLockSeconds = maxLockSeconds
    }

    /// The lock to apply after the `failures`-th consecutive failure, or nil for none.
    public func lockSeconds(afterFailures failures: Int) -> Double? {
        guard failures >= freeAttempts else { return nil }
        let exponent = min(failures - freeAttempts, 30)
        return min(baseLockSeconds * Double(1 << exponent), maxLockSeconds)
    }
}
