import MillionsCore

/// Makes many plausible, varied users quickly, for benchmarks and demos.
///
/// User `i` is a pure function of `(seed, i)`: the same seed gives the same users on any
/// machine and in any batch order. Ids are laid out so a run never collides with itself:
/// user `i` gets logical shard `i % 1024`, sequence `(i / 1024) % 4096`, and a creation
/// second counted back from `startSeconds`. Every seeded user has the password
/// `Seeder.password`, hashed once by the caller (bcrypt for each would take hours for a
/// million users); emails are `seed-<i>@example.com`.
public struct Seeder: Sendable {
    public static let password = "millions-seed"
    public let passwordHash: String
    public let startSeconds: Int64
    public let seed: UInt64

    public init(passwordHash: String, startSeconds: Int64, seed: UInt64 = 1) {
        self.passwordHash = passwordHash
        self.startSeconds = startSeconds
        self.seed = seed
    }

    public static func email(_ i: Int) -> String { "seed-\(i)@example.com" }

    public func account(_ i: Int) -> NewAccount {
        let perSecond = UserID.logicalShardCount << UserID.sequenceBits
        let id = UserID(
            seconds: startSeconds - Int64(i / perSecond), shard: i % UserID.logicalShardCount,
            sequence: (i / UserID.logicalShardCount) % (1 << UserID.sequenceBits))
        var rng = SplitMix64(seed: seed &* 0x9E37_79B9_7F4A_7C15 &+ UInt64(i))
        let place = Places.all[rng.below(Places.all.count)]
        let area = place.areaCodes[rng.below(place.areaCodes.count)]
        var phones = ["\(area) \(100 + rng.below(900))-\(String(rng.below(10_000)).leftPadded(4))"]
        if rng.below(3) == 0 { phones.append("\(area) \(100 + rng.below(900))-\(String(rng.below(10_000)).leftPadded(4))") }
        let profile = Profile(
            firstName: Names.first[rng.below(Names.first.count)],
            lastName: Names.last[rng.below(Names.last.count)],
            address: Address(
                streetAddress: "\(1 + rng.below(9_999)) \(Names.streets[rng.below(Names.streets.count)])",
                city: place.city, state: place.state,
                postalCode: place.zipPrefix + String(rng.below(100)).leftPadded(2)),
            phoneNumbers: phones)
        return NewAccount(id: id, email: Self.email(i), passwordHash: passwordHash, profile: profile)
    }

    /// Inserts users `range` in batches (one transaction each); returns the ids inserted,
    /// in order. `progress` is called after every batch with the number done so far.
    /// Accounts whose email or id exists already are skipped and not returned: a second
    /// run into the same database makes new ids for the same emails, and an ids file that
    /// listed them would name users who do not exist.
    public func seed(
        _ range: Range<Int>, into store: any UserStore, batch: Int = 10_000,
        progress: (Int) -> Void = { _ in }
    ) async throws -> [UserID] {
        var ids: [UserID] = []
        ids.reserveCapacity(range.count)
        var start = range.lowerBound
        while start < range.upperBound {
            let end = min(start + batch, range.upperBound)
            let accounts = (start..<end).map(account)
            if try await store.insertMany(accounts) == accounts.count {
                ids.append(contentsOf: accounts.map(\.id))
            } else {
                // Some existed: keep those whose email now logs in to this very id.
                for a in accounts where try await store.credentials(email: a.email)?.userID == a.id { ids.append(a.id) }
            }
            start = end
            progress(end - range.lowerBound)
        }
        return ids
    }
}

/// A small, fast, seedable generator (Steele, Lea and Flood's SplitMix64).
public struct SplitMix64: RandomNumberGenerator, Sendable {
    var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// Uniform in 0..<n.
    public mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
}

enum Names {
    static let first = [
        "John", "Ada", "Grace", "Alan", "Linus", "Barbara", "Ken", "Margaret", "Edsger", "Frances", "Maria", "James",
        "Mary", "Robert", "Patricia", "Michael", "Jennifer", "William", "Linda", "David", "Elizabeth", "Richard", "Susan",
        "Joseph", "Jessica", "Thomas", "Sarah", "Carlos", "Karen", "Daniel", "Nancy", "Matthew", "Lisa", "Anthony",
        "Sofia", "Wei", "Yuki", "Priya", "Omar", "Fatima", "Lucas", "Chloe", "Mateo", "Amara", "Noah", "Zoe", "Ivan",
        "Leila", "Hiro", "Ingrid",
    ]
    static let last = [
        "Smith", "Lovelace", "Hopper", "Turing", "Torvalds", "Liskov", "Thompson", "Hamilton", "Dijkstra", "Allen",
        "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez", "Martinez", "Hernandez",
        "Lopez", "Gonzalez", "Wilson", "Anderson", "Taylor", "Moore", "Jackson", "Martin", "Lee", "Perez", "White",
        "Harris", "Sanchez", "Clark", "Ramirez", "Lewis", "Robinson", "Walker", "Young", "King", "Nguyen", "Chen",
        "Kim", "Patel", "Okafor", "Novak", "Rossi", "Silva", "Tanaka", "Larsen",
    ]
    static let streets = [
        "Main Street", "2nd Street", "Oak Avenue", "Maple Drive", "Park Road", "Cedar Lane", "Elm Street",
        "Washington Boulevard", "Lake View Road", "Hillside Avenue", "Sunset Drive", "River Road", "Church Street",
        "Mill Lane", "Broadway", "Pine Street", "Highland Avenue", "Forest Drive", "Spring Street", "Ridge Road",
    ]
}

enum Places {
    struct Place: Sendable {
        let city: String
        let state: String
        let zipPrefix: String
        let areaCodes: [String]
    }
    static let all: [Place] = [
        Place(city: "New York", state: "NY", zipPrefix: "100", areaCodes: ["212", "646", "917"]),
        Place(city: "Boston", state: "MA", zipPrefix: "021", areaCodes: ["617", "857"]),
        Place(city: "Austin", state: "TX", zipPrefix: "787", areaCodes: ["512", "737"]),
        Place(city: "Seattle", state: "WA", zipPrefix: "981", areaCodes: ["206"]),
        Place(city: "Chicago", state: "IL", zipPrefix: "606", areaCodes: ["312", "773"]),
        Place(city: "San Francisco", state: "CA", zipPrefix: "941", areaCodes: ["415", "628"]),
        Place(city: "Los Angeles", state: "CA", zipPrefix: "900", areaCodes: ["213", "310", "323"]),
        Place(city: "Denver", state: "CO", zipPrefix: "802", areaCodes: ["303", "720"]),
        Place(city: "Atlanta", state: "GA", zipPrefix: "303", areaCodes: ["404", "678"]),
        Place(city: "Miami", state: "FL", zipPrefix: "331", areaCodes: ["305", "786"]),
        Place(city: "Portland", state: "OR", zipPrefix: "972", areaCodes: ["503", "971"]),
        Place(city: "Phoenix", state: "AZ", zipPrefix: "850", areaCodes: ["602", "480"]),
        Place(city: "Minneapolis", state: "MN", zipPrefix: "554", areaCodes: ["612"]),
        Place(city: "Nashville", state: "TN", zipPrefix: "372", areaCodes: ["615", "629"]),
        Place(city: "Burlington", state: "VT", zipPrefix: "054", areaCodes: ["802"]),
        Place(city: "Providence", state: "RI", zipPrefix: "029", areaCodes: ["401"]),
    ]
}

extension String {
    func leftPadded(_ width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}
