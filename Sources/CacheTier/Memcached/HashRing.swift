/// Consistent hashing with virtual nodes: each node owns many points on a 64-bit ring and
/// a key belongs to the first point clockwise from its hash. Adding or removing one of N
/// nodes moves about 1/N of the keys.
public struct HashRing: Sendable {
    public let nodeCount: Int
    private let points: [(hash: UInt64, node: Int)]

    /// `names` identify nodes (e.g. "127.0.0.1:11211"); the same names give the same ring
    /// on every web server, whatever order the list is in.
    public init(names: [String], virtualNodes: Int = 160) {
        nodeCount = names.count
        var points: [(UInt64, Int)] = []
        points.reserveCapacity(names.count * virtualNodes)
        for (i, name) in names.enumerated() {
            for v in 0..<virtualNodes { points.append((Self.hash("\(name)#\(v)"), i)) }
        }
        self.points = points.sorted { $0.0 < $1.0 || ($0.0 == $1.0 && names[$0.1] < names[$1.1]) }
    }

    /// The node owning `key`, skipping nodes for which `isUp` is false; nil if none is up.
    public func node(for key: String, isUp: (Int) -> Bool = { _ in true }) -> Int? {
        guard !points.isEmpty else { return nil }
        let h = Self.hash(key)
        // First point with hash >= h (binary search), wrapping around.
        var lo = 0
        var hi = points.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if points[mid].hash < h { lo = mid + 1 } else { hi = mid }
        }
        var tried = 0
        var i = lo % points.count
        var seen = Set<Int>()
        while tried < points.count && seen.count < nodeCount {
            let n = points[i].node
            if isUp(n) { return n }
            seen.insert(n)
            i = (i + 1) % points.count
            tried += 1
        }
        return nil
    }

    /// FNV-1a 64 with a murmur3 finaliser, so similar keys spread over the whole ring.
    public static func hash(_ s: String) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in s.utf8 {
            h ^= UInt64(b)
            h = h &* 0x0000_0100_0000_01b3
        }
        h ^= h >> 33
        h = h &* 0xff51_afd7_ed55_8ccd
        h ^= h >> 33
        h = h &* 0xc4ce_b9fe_1a85_ec53
        h ^= h >> 33
        return h
    }
}
