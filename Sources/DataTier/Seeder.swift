import MillionsCore

/// Makes many plausible users quickly, for benchmarks and demos.
///
/// Ids are laid out deterministically so a run never collides with itself: user `i` gets
/// logical shard `i % 1024`, sequence `(i / 1024) % 4096`, and a creation second counted
/// back from `startSeconds`. Every seeded user has the password `Seeder.password`,
/// hashed once by the caller (bcrypt for each would take hours for a million users).
public struct Seeder: Sendable {
    public static let password = "millions-seed"
    public let passwordHash: String
    public let startSeconds: Int64

    public init(passwordHash: String, startSeconds: Int64) {
        self.passwordHash = passwordHash
        self.startSeconds = startSeconds
    }

    static let firstNames = ["John", "Ada", "Grace", "Alan", "Linus", "Barbara", "Ken", "Margaret", "Edsger", "Frances"]
    static let lastNames = ["Smith", "Lovelace", "Hopper", "Turing", "Torvalds", "Liskov", "Thompson", "Hamilton", "Dijkstra", "Allen"]
    static let cities = [("New York", "NY", "100"), ("Boston", "MA", "021"), ("Austin", "TX", "787"), ("Seattle", "WA", "981")]

    public func account(_ i: Int) -> NewAccount {
        let perSecond = UserID.logicalShardCount << UserID.sequenceBits
        let id = UserID(
            seconds: startSeconds - Int64(i / perSecond), shard: i % UserID.logicalShardCount,
            sequence: (i / UserID.logicalShardCount) % (1 << UserID.sequenceBits))
        let city = Self.cities[i % Self.cities.count]
        let profile = Profile(
            firstName: Self.firstNames[i % Self.firstNames.count],
            lastName: Self.lastNames[(i / 10) % Self.lastNames.count],
            address: Address(
                streetAddress: "\(i % 9000 + 1) Main Street", city: city.0, state: city.1,
                postalCode: city.2 + String(i % 100).leftPadded(2)),
            phoneNumbers: ["212 555-\(String(i % 10000).leftPadded(4))"])
        return NewAccount(id: id, email: "seed-\(i)@example.com", passwordHash: passwordHash, profile: profile)
    }

    /// Inserts users `range` in batches; returns the ids inserted, in order.
    public func seed(_ range: Range<Int>, into store: any UserStore, batch: Int = 10_000) async throws -> [UserID] {
        var ids: [UserID] = []
        ids.reserveCapacity(range.count)
        var start = range.lowerBound
        while start < range.upperBound {
            let end = min(start + batch, range.upperBound)
            let accounts = (start..<end).map(account)
            _ = try await store.insertMany(accounts)
            ids.append(contentsOf: accounts.map(\.id))
            start = end
        }
        return ids
    }
}

extension String {
    func leftPadded(_ width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}
