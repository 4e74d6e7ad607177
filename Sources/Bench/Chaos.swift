import AsyncHTTPClient
import Cluster
import DataTier
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import PostgresNIO
import Synchronization

/// `millions bench chaos`: a history checker in the manner of Jepsen. Writers sign users up
/// and edit them through the site, recording every attempt with its time; a witness writes
/// to every database node directly; a nemesis kills or freezes the primary every few
/// seconds. Afterwards: every acknowledged write must be in the database, no two timelines
/// may have accepted writes at overlapping times, and every session must have read its own
/// writes. Each violation is listed; the run fails on any.
public struct Chaos: Sendable {
    public enum Fault: String, Sendable, CaseIterable, Codable {
        /// kill -9 of the primary's Patroni and PostgreSQL (a host dying); restarted later.
        case kill
        /// SIGSTOP of both for longer than the leader key's TTL, then SIGCONT (a stall).
        case pause
        /// kill -9 of the Redis master (sessions, and the queue in `queued`); restarted later.
        case redis
        /// The primary's host cut off the network for as long as a pause, then healed
        /// (hosts only): it keeps running, and must step down by itself.
        case partition
    }

    public var cluster: Cluster
    public var rounds = 5
    /// Seconds from one fault to the next.
    public var interval = 20.0
    public var faults: [Fault] = [.kill]
    public var writers = 4
    /// How long a paused primary stays frozen (or a partitioned one cut off): longer than
    /// the leader key's TTL.
    public var pauseSeconds = 14.0
    public var site: (host: String, port: Int)

    public init(cluster: Cluster, site: (host: String, port: Int)) {
        self.cluster = cluster
        self.site = site
    }

    // MARK: History

    enum Outcome: String, Codable { case ok, failed, unknown }

    struct Op: Codable {
        var writer: Int
        var kind: String  // signup, edit, read
        var user: Int64
        var value: String
        var start: Double
        var end: Double
        var outcome: Outcome
        var status: Int
    }

    struct WitnessWrite: Codable {
        var node: String
        var timeline: UInt32
        var start: Double
        var end: Double
    }

    public struct FaultRecord: Codable, Sendable {
        public var kind: Fault
        public var node: String
        public var at: Double
        /// From the fault to the first write acknowledged that started after it.
        public var recovery: Double?
        /// From the fault until every node ran again and every replica streamed.
        public var whole: Double?
    }

    public struct Report: Codable, Sendable {
        public var seconds: Double
        public var faults: [FaultRecord]
        public var writesAcknowledged: Int
        public var writesFailed: Int
        public var writesIndeterminate: Int
        public var readsOK: Int
        public var readsFailed: Int
        public var lost: Int
        public var staleReads: Int
        public var overlaps: Int
        public var availability: Double
        /// Answers other than 2xx, by status (0: no answer in time).
        public var failures: [String: Int]
        public var violations: [String]

        public var recoveries: [Double] { faults.compactMap(\.recovery).sorted() }

        public var text: String {
            var lines = [String(format: "%d faults in %.0f s", faults.count, seconds)]
            for kind in Fault.allCases {
                let r = faults.filter { $0.kind == kind }.compactMap(\.recovery).sorted()
                guard !r.isEmpty else { continue }
                lines.append(String(format: "  %@ ×%d: fault to first acknowledged write: median %.1f s, max %.1f s", kind.rawValue as NSString,
                                    r.count, r[r.count / 2], r.last ?? 0))
            }
            lines += [
                "writes: \(writesAcknowledged) acknowledged, \(writesFailed) refused, \(writesIndeterminate) indeterminate (timed out or 5xx)",
                "reads of one's own writes: \(readsOK) ok, \(readsFailed) failed, \(staleReads) stale",
                String(format: "availability (requests answered 2xx): %.2f%%", availability * 100)
                    + (failures.isEmpty ? "" : "; other answers: " + failures.sorted { $0.key < $1.key }.map { "\($0.key) ×\($0.value)" }.joined(separator: ", ")),
                "acknowledged writes lost: \(lost); overlapping primaries: \(overlaps)",
            ]
            let origin = faults.first?.at ?? 0
            for f in faults {
                lines.append(String(format: "  %-5@ %-17@ at +%6.1f s  writes back after %@, cluster whole after %@", f.kind.rawValue as NSString,
                                    f.node as NSString, f.at - origin, f.recovery.map { String(format: "%.1f s", $0) } ?? "never",
                                    f.whole.map { String(format: "%.1f s", $0) } ?? "-"))
            }
            lines += violations.prefix(20).map { "VIOLATION: " + $0 }
            if violations.count > 20 { lines.append("… and \(violations.count - 20) more violations") }
            return lines.joined(separator: "\n")
        }
    }

    final class History: Sendable {
        let ops = Mutex<[Op]>([])
        let witness = Mutex<[WitnessWrite]>([])
        let faults = Mutex<[FaultRecord]>([])
        let stop = Atomic<Bool>(false)
    }

    static func now() -> Double { Date().timeIntervalSince1970 }

    // MARK: Run

    public func run(say: @escaping @Sendable (String) -> Void) async throws -> Report {
        let history = History()
        let started = Self.now()
        let state = try cluster.loadState()
        guard state.patroni else { throw BenchError("the chaos run needs a cluster under Patroni (`cluster up --ha`)") }
        let databases = state.topology.nodes(.database)
        var logger = Logger(label: "chaos")
        logger.logLevel = .critical  // a dead node's refused connections are the point, not news
        let clients = databases.map { node -> (String, PostgresClient) in
            var config = PostgresClient.Configuration(
                host: node.host, port: node.port, username: "postgres", password: state.postgresPassword, database: "millions", tls: .disable)
            config.options.connectTimeout = .seconds(1)
            config.options.maximumConnections = 2
            return (node.name, PostgresClient(configuration: config, backgroundLogger: logger))
        }
        let primary = try await waitForAnyPrimary()
        try await Processes.detached {
            _ = try cluster.psql(primary, "CREATE TABLE IF NOT EXISTS chaos_witness (node text NOT NULL, at timestamptz NOT NULL DEFAULT now())")
        }

        try await withThrowingTaskGroup(of: Void.self) { pools in
            for (_, client) in clients { pools.addTask { await client.run() } }
            var failure: (any Error)? = nil
            await withTaskGroup(of: Void.self) { work in
                for w in 0..<writers { work.addTask { await self.writer(w, history) } }
                work.addTask { await self.witness(clients, history) }
                do { try await self.nemesis(history, say: say) } catch { failure = error }
                // Writers finish the call in hand (10 s at most), then stop.
                history.stop.store(true, ordering: .relaxed)
            }
            pools.cancelAll()
            if let failure { throw failure }
        }
        say("checking the history against the database")
        return try await check(history, seconds: Self.now() - started)
    }

    func nemesis(_ history: History, say: @escaping @Sendable (String) -> Void) async throws {
        try await Task.sleep(for: .seconds(3))  // a history before the first fault
        for round in 0..<rounds {
            let fault = faults[round % faults.count]
            let cluster = self.cluster
            // One fault at a time: the next waits until the last one's node is back and
            // streaming (a second fault during a rejoin is another experiment).
            try await waitWhole(history)
            let state = try cluster.loadState()
            if fault == .redis {
                guard let master = try await Processes.detached({ try cluster.currentRedisMaster() }) else {
                    throw BenchError("round \(round + 1): no Redis master to kill (a stage with Redis, under --ha)")
                }
                say("round \(round + 1): kill the Redis master (port \(master))")
                try await Processes.detached { try cluster.kill("redis") }
                let at = Self.now()
                history.faults.withLock { $0.append(FaultRecord(kind: fault, node: "redis:\(master)", at: at)) }
                var promoted = false
                for _ in 0..<600 where !promoted {
                    if let now = try await Processes.detached({ try cluster.currentRedisMaster() }), now != master { promoted = true }
                    if !promoted { try await Task.sleep(for: .milliseconds(200)) }
                }
                guard promoted else { throw BenchError("round \(round + 1): the sentinels promoted no replica in 120 s") }
                try await Processes.detached { try cluster.restart("redis") }
                let rest = interval - (Self.now() - at)
                if rest > 0 { try await Task.sleep(for: .seconds(rest)) }
                continue
            }
            guard let leader = try await Processes.detached({ try cluster.currentPrimary(state) }) else {
                throw BenchError("round \(round + 1): no primary to fault")
            }
            say(String(format: "round %d: %@ %@", round + 1, fault.rawValue, leader.name))
            // The fault's time is when it has happened (the node is dead or frozen).
            let at: Double
            switch fault {
            case .kill:
                try await Processes.detached { try cluster.kill(leader.name) }
                at = Self.now()
                history.faults.withLock { $0.append(FaultRecord(kind: fault, node: leader.name, at: at)) }
                try await waitForNewPrimary(not: leader)
                try await Processes.detached { try cluster.restart(leader.name) }
            case .pause, .partition:
                // A stall, or a cut-off host: the node runs on, for longer than the key's TTL.
                guard fault == .pause || state.hosts != nil else { throw BenchError("the partition fault needs hosts (--hosts)") }
                try await Processes.detached { try fault == .pause ? cluster.pause(leader.name) : cluster.partition(leader.name) }
                at = Self.now()
                history.faults.withLock { $0.append(FaultRecord(kind: fault, node: leader.name, at: at)) }
                try await Task.sleep(for: .seconds(pauseSeconds))
                try await Processes.detached { try fault == .pause ? cluster.resume(leader.name) : cluster.heal(leader.name) }
            case .redis:
                preconditionFailure("handled above")
            }
            let rest = interval - (Self.now() - at)
            if rest > 0 { try await Task.sleep(for: .seconds(rest)) }
        }
        try await waitWhole(history)
    }

    /// Waits until every database node runs and streams; notes when, for the last fault.
    func waitWhole(_ history: History) async throws {
        let cluster = self.cluster
        try await Processes.detached {
            try cluster.waitDatabasesWhole()
            try cluster.waitRedisWhole()
        }
        let whole = Self.now()
        history.faults.withLock { faults in
            if let last = faults.indices.last, faults[last].whole == nil { faults[last].whole = whole - faults[last].at }
        }
    }

    func waitForNewPrimary(not old: Node) async throws {
        let cluster = self.cluster
        let deadline = Self.now() + 120
        while Self.now() < deadline {
            let state = try cluster.loadState()
            if let p = try await Processes.detached({ try cluster.currentPrimary(state) }), p != old { return }
            try await Task.sleep(for: .milliseconds(200))
        }
        let status = (try? await Processes.detached { try cluster.databaseStatus() }) ?? ""
        throw BenchError("no new primary 120 s after \(old.name) died:\n\(status)")
    }

    // MARK: Writers

    /// Signs a user up, edits their first name, reads it back with the same session; again.
    func writer(_ index: Int, _ history: History) async {
        var n = 0
        while !history.stop.load(ordering: .relaxed) {
            n += 1
            var cookies: [String: String] = [:]
            let email = "chaos-\(index)-\(n)-\(UInt64.random(in: 0...UInt64.max))@example.com"
            let body = #"{"email":"\#(email)","password":"correct horse battery","firstName":"v0","lastName":"chaos\#(index)"}"#
            let (status, answer) = await call(.POST, "/users", body: body, cookies: &cookies, record: (index, "signup", 0, "v0"), history)
            guard status == 201, let id = Self.id(in: answer) else {
                try? await Task.sleep(for: .milliseconds(100))
                continue
            }
            history.ops.withLock { ops in
                if let i = ops.lastIndex(where: { $0.writer == index && $0.kind == "signup" }) { ops[i].user = id }
            }
            for edit in 1...3 where !history.stop.load(ordering: .relaxed) {
                let value = "v\(edit)"
                let (s, _) = await call(.PATCH, "/users/\(id)", body: #"{"firstName":"\#(value)"}"#, cookies: &cookies,
                                        record: (index, "edit", id, value), history)
                guard s == 200 else { break }
                _ = await call(.GET, "/me", body: nil, cookies: &cookies, record: (index, "read", id, value), history)
            }
        }
    }

    static func id(in body: String) -> Int64? {
        guard let data = body.data(using: .utf8), let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { return nil }
        return (json["id"] as? NSNumber)?.int64Value ?? (json["id"] as? String).flatMap { Int64($0) }
    }

    static func firstName(in body: String) -> String? {
        guard let data = body.data(using: .utf8), let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { return nil }
        return json["firstName"] as? String
    }

    /// One request; its outcome recorded. A read records the value it saw.
    func call(
        _ method: HTTPMethod, _ path: String, body: String?, cookies: inout [String: String],
        record: (writer: Int, kind: String, user: Int64, value: String), _ history: History
    ) async -> (Int, String) {
        var request = HTTPClientRequest(url: "http://\(site.host):\(site.port)\(path)")
        request.method = method
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(string: body))
        }
        if !cookies.isEmpty { request.headers.add(name: "Cookie", value: cookies.map { "\($0.key)=\($0.value)" }.joined(separator: "; ")) }
        let start = Self.now()
        var status = 0
        var text = ""
        do {
            let response = try await HTTPClient.shared.execute(request, timeout: .seconds(10))
            status = Int(response.status.code)
            text = String(buffer: try await response.body.collect(upTo: 1 << 20))
            for header in response.headers["Set-Cookie"] {
                let pair = header.prefix { $0 != ";" }
                if let eq = pair.firstIndex(of: "=") { cookies[String(pair[..<eq])] = String(pair[pair.index(after: eq)...]) }
            }
        } catch {
            status = 0
        }
        let outcome: Outcome = (200..<300).contains(status) ? .ok : (400..<500).contains(status) ? .failed : .unknown
        var op = Op(writer: record.writer, kind: record.kind, user: record.user, value: record.value, start: start, end: Self.now(),
                    outcome: outcome, status: status)
        if record.kind == "read", outcome == .ok { op.value = Self.firstName(in: text) ?? "?" }
        history.ops.withLock { $0.append(op) }
        return (status, text)
    }

    // MARK: Witness

    /// Every 100 ms, one write on every node that will take it, with the timeline that took
    /// it. One loop per node, each call bounded by a timeout that releases the caller even
    /// if the node is frozen: a paused node must not stop the others' record.
    func witness(_ clients: [(String, PostgresClient)], _ history: History) async {
        await withTaskGroup(of: Void.self) { group in
            for (name, client) in clients {
                group.addTask {
                    while !history.stop.load(ordering: .relaxed) {
                        let start = Self.now()
                        let timeline = try? await withTimeout(.seconds(1)) { () -> UInt32? in
                            let rows = try await client.query(
                                "INSERT INTO chaos_witness (node) VALUES (\(name)) RETURNING substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)")
                            for try await t in rows.decode(String.self) { return UInt32(t, radix: 16) }
                            return nil
                        }
                        if let t = timeline ?? nil {
                            history.witness.withLock { $0.append(WitnessWrite(node: name, timeline: t, start: start, end: Self.now())) }
                        }
                        try? await Task.sleep(for: .milliseconds(100))
                    }
                }
            }
        }
    }

    // MARK: Check

    func check(_ history: History, seconds: Double) async throws -> Report {
        let ops = history.ops.withLock { $0 }.sorted { $0.start < $1.start }
        let witness = history.witness.withLock { $0 }
        var faults = history.faults.withLock { $0 }
        var violations: [String] = []
        let writes = ops.filter { $0.kind != "read" }
        let acked = writes.filter { $0.outcome == .ok }

        // Recovery: the first acknowledged write that started after each fault.
        for i in faults.indices {
            if let first = acked.first(where: { $0.start >= faults[i].at }) { faults[i].recovery = first.end - faults[i].at }
        }

        // Every acknowledged sign-up and the newest acknowledged edit must be in the database.
        let cluster = self.cluster
        let primary = try await waitForAnyPrimary()
        let ids = Set(acked.filter { $0.kind == "signup" }.map(\.user))
        var stored: [Int64: String] = [:]
        if !ids.isEmpty {
            let list = ids.map(String.init).joined(separator: ",")
            let text = try await Processes.detached { try cluster.psql(primary, "SELECT id, first_name FROM users WHERE id IN (\(list))") }
            for line in text.split(whereSeparator: \.isNewline) {
                let parts = line.split(separator: "|", maxSplits: 1)
                if parts.count == 2, let id = Int64(parts[0]) { stored[id] = String(parts[1]) }
            }
        }
        var lost = 0
        for id in ids.sorted() where stored[id] == nil {
            lost += 1
            violations.append("user \(id): sign-up acknowledged, not in the database")
        }
        let byUser = Dictionary(grouping: writes.filter { $0.kind == "edit" }, by: \.user)
        for (id, edits) in byUser {
            guard let value = stored[id], let lastAcked = edits.lastIndex(where: { $0.outcome == .ok }) else { continue }
            // The newest acknowledged edit, or a later one whose answer never came.
            let allowed = Set(edits[lastAcked...].filter { $0.outcome != .failed }.map(\.value))
            if !allowed.contains(value) {
                lost += 1
                violations.append("user \(id): edit to \(edits[lastAcked].value) acknowledged, the database has \(value)")
            }
        }

        // Each session reads its own writes: the value it just wrote, acknowledged.
        var stale = 0
        for read in ops where read.kind == "read" && read.outcome == .ok {
            let wrote = writes.last { $0.user == read.user && $0.kind == "edit" && $0.end <= read.start }
            if let wrote, wrote.outcome == .ok, read.value != wrote.value {
                stale += 1
                violations.append("user \(read.user): read \(read.value) right after writing \(wrote.value)")
            }
        }

        // A session told its own account or session does not exist (401, 404) after its
        // sign-up was acknowledged did not read its own write either.
        for op in ops where op.kind != "signup" && (op.status == 401 || op.status == 404) {
            stale += 1
            violations.append("user \(op.user): \(op.kind) answered \(op.status) after the session's sign-up was acknowledged")
        }

        // No older timeline accepted a write that began after a newer one had accepted one.
        var overlaps = 0
        let firstAck = Dictionary(grouping: witness, by: \.timeline).mapValues { $0.map(\.end).min() ?? .infinity }
        for w in witness {
            if let (newer, since) = firstAck.filter({ $0.key > w.timeline && $0.value < w.start }).min(by: { $0.value < $1.value }) {
                overlaps += 1
                if overlaps <= 5 {
                    violations.append(String(format: "%@ accepted a write on timeline %u at +%.2f s, after timeline %u had accepted one at +%.2f s",
                                             w.node, w.timeline, w.start - (faults.first?.at ?? 0), newer, since - (faults.first?.at ?? 0)))
                }
            }
        }

        let answered = ops.filter { $0.outcome == .ok }.count
        return Report(
            seconds: seconds, faults: faults, writesAcknowledged: acked.count,
            writesFailed: writes.filter { $0.outcome == .failed }.count,
            writesIndeterminate: writes.filter { $0.outcome == .unknown }.count,
            readsOK: ops.filter { $0.kind == "read" && $0.outcome == .ok }.count,
            readsFailed: ops.filter { $0.kind == "read" && $0.outcome != .ok }.count,
            lost: lost, staleReads: stale, overlaps: overlaps,
            availability: ops.isEmpty ? 0 : Double(answered) / Double(ops.count),
            failures: Dictionary(grouping: ops.filter { $0.outcome != .ok }, by: { "\($0.kind) \($0.status)" }).mapValues(\.count),
            violations: violations)
    }

    func waitForAnyPrimary() async throws -> Node {
        let cluster = self.cluster
        for _ in 0..<600 {
            let state = try cluster.loadState()
            if let p = try await Processes.detached({ try cluster.currentPrimary(state) }) { return p }
            try await Task.sleep(for: .milliseconds(200))
        }
        throw BenchError("no primary to check the history against")
    }
}
