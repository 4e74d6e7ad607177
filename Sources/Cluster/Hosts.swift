import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A machine of its own for one node, on this machine: a network namespace (own loopback,
/// own address on the cluster's bridge) and a cgroup (a CPU budget and a memory limit).
public struct NodeHost: Codable, Sendable, Equatable {
    public var name: String
    public var address: String
    /// Its addresses on other subnets (a site's gateway is on every site's subnet).
    public var alsoAt: [String] = []
    /// Cores the host may use (cgroup CPU quota); 0 is unlimited.
    public var cpus: Double
    public var memoryBytes: UInt64

    public init(name: String, address: String, alsoAt: [String] = [], cpus: Double, memoryBytes: UInt64) {
        self.name = name
        self.address = address
        self.alsoAt = alsoAt
        self.cpus = cpus
        self.memoryBytes = memoryBytes
    }
}

/// The hosts of one cluster: a Linux bridge with an address in `198.18.<subnet>.0/24` for
/// each site (198.18.0.0/15 is reserved for benchmarks, so it collides with no real
/// network), and for each host a namespace joined to the bridge by a veth pair and a
/// cgroup. A host has a route to its own subnet, and to the other sites' subnets through
/// its site's gateway (no default route): sites reach each other only across the gateways'
/// emulated WAN. Every kernel object is named from
/// `prefix`, so `removeAll` finds them again even after a crash lost every other record.
/// Needs root.
public struct HostNetwork: Sendable {
    /// At most 6 characters: interface names are limited to 15.
    public let prefix: String
    /// One per site; the first is the machine's main one (`gateway`).
    public let subnets: [Int]
    public var subnet: Int { subnets[0] }
    let cgroups: CGroups

    public init(prefix: String, subnet: Int) throws { try self.init(prefix: prefix, subnets: [subnet]) }

    public init(prefix: String, subnets: [Int]) throws {
        guard prefix.count <= 6, prefix.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber) }), !subnets.isEmpty,
            subnets.allSatisfy((1...254).contains)
        else {
            throw Processes.Failure("host network prefix must be ≤ 6 letters or digits, subnet 1...254")
        }
        guard geteuid() == 0 else { throw Processes.Failure("hosts need root (network namespaces and cgroups)") }
        guard FileManager.default.isExecutableFile(atPath: Self.ip) else {
            throw Processes.Failure("hosts need `ip` from iproute2 (apt-get install iproute2)")
        }
        self.prefix = prefix
        self.subnets = subnets
        self.cgroups = try CGroups.detect()
    }

    static let ip = "/usr/sbin/ip"
    public var bridge: String { prefix + "br" }
    /// The machine's own address on the bridge: how it reaches every host (and a browser
    /// on the box reaches the site).
    public var gateway: String { address(1) }
    public func address(_ last: Int) -> String { "198.18.\(subnet).\(last)" }
    public func namespace(_ host: NodeHost) -> String { "\(prefix)-\(host.name)" }
    var cgroup: String { "millions-\(prefix)" }
    func cgroup(_ host: NodeHost) -> String { "\(cgroup)/\(host.name)" }
    /// The root side of a host's veth pair: prefix + the host's last two address bytes in hex.
    func veth(_ host: NodeHost) -> String {
        let bytes = host.address.split(separator: ".").suffix(2).compactMap { Int($0) }
        return prefix + "v" + bytes.map { String(format: "%02x", $0) }.joined()
    }

    /// The bridge, its address on each subnet, and the cgroup parent. Idempotent.
    public func create() throws {
        if !linkExists(bridge) {
            try ip("link", "add", bridge, "type", "bridge")
            for s in subnets { try ip("addr", "add", "198.18.\(s).1/24", "dev", bridge) }
        }
        try ip("link", "set", bridge, "up")
        try cgroups.create(cgroup)
    }

    /// A namespace with loopback up and `host.address` on a veth into the bridge, and a
    /// cgroup with the host's budget. With `nameserver`, the host resolves names there
    /// (`ip netns exec` mounts /etc/netns/NS/resolv.conf over /etc/resolv.conf).
    public func add(_ host: NodeHost, nameserver: String? = nil) throws {
        let ns = namespace(host), outside = veth(host), inside = outside + "i"
        if let nameserver {
            try FileManager.default.createDirectory(atPath: "/etc/netns/\(ns)", withIntermediateDirectories: true)
            try "nameserver \(nameserver)\noptions timeout:1 attempts:3\n"
                .write(toFile: "/etc/netns/\(ns)/resolv.conf", atomically: true, encoding: .utf8)
        }
        try ip("netns", "add", ns)
        try ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        try ip("link", "set", outside, "master", bridge)
        try ip("link", "set", outside, "up")
        try ip("link", "set", inside, "netns", ns)
        try ip("-n", ns, "link", "set", inside, "name", "eth0")
        for a in [host.address] + host.alsoAt { try ip("-n", ns, "addr", "add", "\(a)/24", "dev", "eth0") }
        try ip("-n", ns, "link", "set", "eth0", "up")
        try ip("-n", ns, "link", "set", "lo", "up")
        try cgroups.create(cgroup(host))
        try setBudget(host)
    }

    /// Changes a host's CPU budget and memory limit live (vertical scaling).
    public func setBudget(_ host: NodeHost) throws {
        try cgroups.setCPU(cgroup(host), cores: host.cpus)
        try cgroups.setMemory(cgroup(host), bytes: host.memoryBytes)
    }

    /// `argv` as a command that runs on `host`: it joins the host's cgroup, then its
    /// namespace, then execs (same pid, so pid files and signals work as on loopback).
    public func command(on host: NodeHost, _ argv: [String]) -> [String] {
        ["/bin/sh", "-c", joinAndExec(host), "sh"] + argv
    }

    /// The same as a script: `#!/bin/sh` that joins the host and execs its arguments there.
    public func wrapperScript(on host: NodeHost) -> String {
        "#!/bin/sh\n# Runs its arguments on host \(host.name) (\(host.address)).\n\(joinAndExec(host))\n"
    }

    /// Shell: this process joins the host's cgroup, then execs `"$@"` in its namespace.
    func joinAndExec(_ host: NodeHost) -> String {
        let join = cgroups.procsFiles(cgroup(host)).map { "echo $$ > \($0)" }.joined(separator: " && ")
        // MILLIONS_CPUS: the budget, for programs that size their thread pools by cores
        // (a host's processes see every core of the machine, as a VM sees its vCPUs).
        let cpus = host.cpus > 0 ? "export MILLIONS_CPUS=\(host.cpus) && " : ""
        return "\(join) && \(cpus)exec \(Self.ip) netns exec \(namespace(host)) \"$@\""
    }

    /// Removes one host (its processes must have stopped): namespace, veth, cgroup.
    public func remove(_ host: NodeHost) throws {
        if try namespaces().contains(namespace(host)) { try ip("netns", "delete", namespace(host)) }
        try? FileManager.default.removeItem(atPath: "/etc/netns/\(namespace(host))")
        // The namespace takes its end of the pair with it, and the kernel then removes
        // ours: it may go between the look and the delete.
        if linkExists(veth(host)) {
            do { try ip("link", "delete", veth(host)) } catch { if linkExists(veth(host)) { throw error } }
        }
        try cgroups.removeTree(cgroup(host))
    }

    /// A subnet no interface of this machine uses yet, trying `preferred` first.
    public static func freeSubnet(preferred: Int, excluding: [Int] = []) throws -> Int {
        let text = try run("-o", "addr", "show")
        for k in 0..<254 {
            let subnet = (preferred - 1 + k) % 254 + 1
            if !text.contains(" 198.18.\(subnet).") && !excluding.contains(subnet) { return subnet }
        }
        throw Processes.Failure("no free subnet in 198.18.1.0 … 198.18.254.0")
    }

    /// Routes `subnets` (each a /24 such as `198.18.7.0/24`) from `host` through `gateway`,
    /// an address on the host's own subnet: how a site's hosts reach the other sites.
    public func route(_ host: NodeHost, to subnets: [String], via gateway: String) throws {
        for subnet in subnets { try ip("-n", namespace(host), "route", "replace", subnet, "via", gateway) }
    }

    /// Reaches each of `addresses` on the bridge itself (a host route), whatever its subnet's
    /// route says: a host in no site, reached by each site without its gateway.
    public func routeDirect(_ host: NodeHost, to addresses: [String]) throws {
        for a in addresses { try ip("-n", namespace(host), "route", "replace", a + "/32", "dev", "eth0") }
    }

    /// Makes `host` a router whose traffic from `from` to `to` (each a /24) goes through the
    /// TUN device `device` first (created here; a `PacketDelay` attaches to it and writes every
    /// packet back later): the gateway of a site behind an emulated WAN. A packet written
    /// back comes in on the device, so the rule no longer matches and the kernel delivers it
    /// on the bridge, where the gateway has an address on every site's subnet.
    public func delayRouted(_ host: NodeHost, device: String, from: String, to: [String]) throws {
        let ns = namespace(host)
        if !(try ip("-n", ns, "-o", "link", "show")).contains(" \(device): ") {
            try ip("-n", ns, "tuntap", "add", "dev", device, "mode", "tun")
        }
        try ip("-n", ns, "link", "set", device, "up")
        // Forward; take packets back from the device (reverse-path filtering would drop them:
        // their source is not routed through it); never tell hosts of a shorter way round.
        let settings = [
            "ipv4/ip_forward=1", "ipv4/conf/all/rp_filter=0", "ipv4/conf/default/rp_filter=0", "ipv4/conf/eth0/rp_filter=0",
            "ipv4/conf/\(device)/rp_filter=0", "ipv4/conf/all/send_redirects=0", "ipv4/conf/eth0/send_redirects=0",
            "ipv4/conf/\(device)/accept_local=1",
        ]
        let writes = settings.map { entry -> String in
            let parts = entry.split(separator: "=")
            return "echo \(parts[1]) > /proc/sys/net/\(parts[0])"
        }.joined(separator: " && ")
        try Self.checked(Processes.run([Self.ip, "netns", "exec", ns, "/bin/sh", "-c", writes], log: "/dev/null"), "sysctl in \(ns)")
        let table = "100"
        try ip("-n", ns, "route", "replace", "default", "dev", device, "table", table)
        for subnet in to {
            let rule = ["iif", "eth0", "from", from, "to", subnet, "lookup", table]
            if !(try ip(["-n", ns, "rule", "show"])).contains("from \(from) to \(subnet) iif eth0 lookup \(table)") {
                _ = try ip(["-n", ns, "rule", "add"] + rule)
            }
        }
    }

    /// True once a process holds `device` open on `host` (a TUN device has carrier then).
    public func deviceAttached(_ host: NodeHost, device: String) -> Bool {
        ((try? ip("-n", namespace(host), "-o", "link", "show", device)) ?? "").contains("LOWER_UP")
    }

    static func checked(_ status: Int32, _ what: String) throws {
        guard status == 0 else { throw Processes.Failure("\(what) failed (exit \(status))") }
    }

    /// Cuts a host off the network without stopping anything on it; `heal` undoes it.
    public func partition(_ host: NodeHost) throws { try ip("link", "set", veth(host), "down") }
    public func heal(_ host: NodeHost) throws { try ip("link", "set", veth(host), "up") }

    /// CPU time used by everything that ever ran on the host, in seconds.
    public func cpuSeconds(_ host: NodeHost) -> Double? { cgroups.cpuSeconds(cgroup(host)) }

    /// Removes every namespace, link, bridge and cgroup named from `prefix`, killing what
    /// still runs in them. Safe to run again, and after a crash.
    public func removeAll() throws {
        for ns in try namespaces() {
            for pid in try ip("netns", "pids", ns).split(whereSeparator: \.isNewline).compactMap({ Int32($0) }) {
                Glibc.kill(pid, SIGKILL)
            }
            try ip("netns", "delete", ns)
        }
        for folder in (try? FileManager.default.contentsOfDirectory(atPath: "/etc/netns")) ?? [] where folder.hasPrefix(prefix + "-") {
            try? FileManager.default.removeItem(atPath: "/etc/netns/" + folder)
        }
        for link in try links() where link != bridge { _ = try? ip("link", "delete", link) }
        if linkExists(bridge) { try ip("link", "delete", bridge) }
        try cgroups.removeTree(cgroup)
    }

    /// What is left of this network (empty after `removeAll`): for tests and `down`.
    public func leftovers() throws -> [String] {
        let resolvers = ((try? FileManager.default.contentsOfDirectory(atPath: "/etc/netns")) ?? []).filter { $0.hasPrefix(prefix + "-") }
        return try namespaces().map { "netns \($0)" } + links().map { "link \($0)" } + cgroups.existing(cgroup).map { "cgroup \($0)" }
            + resolvers.map { "resolver /etc/netns/\($0)" }
    }

    func namespaces() throws -> [String] {
        try ip("netns", "list").split(whereSeparator: \.isNewline)
            .compactMap { $0.split(separator: " ").first.map(String.init) }
            .filter { $0.hasPrefix(prefix + "-") }
    }

    func links() throws -> [String] {
        // "12: mc1v10@if11: <BROADCAST…": the name is the second field, before any "@".
        try ip("-o", "link", "show").split(whereSeparator: \.isNewline).compactMap { line in
            let fields = line.split(separator: " ")
            guard fields.count > 1 else { return nil }
            let name = String(fields[1].dropLast().split(separator: "@").first ?? "")
            return name.hasPrefix(prefix) ? name : nil
        }
    }

    func linkExists(_ name: String) -> Bool { (try? Processes.run([Self.ip, "link", "show", name], log: "/dev/null")) == 0 }

    @discardableResult
    func ip(_ args: String...) throws -> String { try Self.run(args) }
    func ip(_ args: [String]) throws -> String { try Self.run(args) }

    static func run(_ args: String...) throws -> String { try run(args) }

    /// Runs `ip ARGS`; its output, or a failure carrying what it printed.
    static func run(_ args: [String]) throws -> String {
        let log = NSTemporaryDirectory() + "millions-ip-\(getpid())-\(UUID().uuidString).log"
        defer { try? FileManager.default.removeItem(atPath: log) }
        let status = try Processes.run([ip] + args, log: log)
        let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        guard status == 0 else {
            throw Processes.Failure("ip \(args.joined(separator: " ")) failed: \(text.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
        return text
    }
}

/// A host's CPU budget and memory limit as cgroup files. cgroup v1 (one hierarchy per
/// controller, as on this kind of machine: cpu, cpuacct and memory apart) and v2 (one
/// unified tree with `cpu.max` and `memory.max`) are both handled.
struct CGroups: Sendable {
    enum Version: Sendable { case v1, v2 }
    let version: Version
    let root: String

    static func detect(root: String = "/sys/fs/cgroup") throws -> CGroups {
        if FileManager.default.fileExists(atPath: root + "/cgroup.controllers") { return CGroups(version: .v2, root: root) }
        if FileManager.default.fileExists(atPath: root + "/cpu/cpu.cfs_quota_us") { return CGroups(version: .v1, root: root) }
        throw Processes.Failure("no cgroup CPU controller at \(root) (neither v2 nor v1's cpu hierarchy)")
    }

    /// The folders that make up one cgroup.
    func dirs(_ path: String) -> [String] {
        switch version {
        case .v1: ["cpu", "cpuacct", "memory"].map { "\(root)/\($0)/\(path)" }
        case .v2: ["\(root)/\(path)"]
        }
    }

    func create(_ path: String) throws {
        for d in dirs(path) {
            try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        }
        if version == .v2 {
            // Children get the cpu and memory controllers only if each parent hands them down.
            var parent = root
            for part in path.split(separator: "/").dropLast() {
                try? write("+cpu +memory", to: parent + "/cgroup.subtree_control")
                parent += "/\(part)"
            }
            try? write("+cpu +memory", to: parent + "/cgroup.subtree_control")
        }
    }

    /// 20 ms rather than the kernel's 100 ms: a host that spent its quota waits for the
    /// next period, and at 0.125 cores a 100 ms period means stalls of up to 87 ms, which
    /// no machine of that size shows; 20 ms keeps them under 18 ms (and quotas ≥ 1 ms
    /// exact down to 0.05 cores).
    static let period = 20_000

    func setCPU(_ path: String, cores: Double) throws {
        let quota = cores > 0 ? max(1000, Int((cores * Double(Self.period)).rounded())) : -1
        switch version {
        case .v1:
            try write(String(Self.period), to: "\(root)/cpu/\(path)/cpu.cfs_period_us")
            try write(String(quota), to: "\(root)/cpu/\(path)/cpu.cfs_quota_us")
        case .v2:
            try write("\(quota < 0 ? "max" : String(quota)) \(Self.period)", to: "\(root)/\(path)/cpu.max")
        }
    }

    func setMemory(_ path: String, bytes: UInt64) throws {
        switch version {
        case .v1: try write(bytes > 0 ? String(bytes) : "-1", to: "\(root)/memory/\(path)/memory.limit_in_bytes")
        case .v2: try write(bytes > 0 ? String(bytes) : "max", to: "\(root)/\(path)/memory.max")
        }
    }

    /// The files a process writes its pid to, to join the cgroup.
    func procsFiles(_ path: String) -> [String] { dirs(path).map { $0 + "/cgroup.procs" } }

    func cpuSeconds(_ path: String) -> Double? {
        switch version {
        case .v1:
            return (try? String(contentsOfFile: "\(root)/cpuacct/\(path)/cpuacct.usage", encoding: .utf8))
                .flatMap { Double($0.trimmingCharacters(in: .whitespacesAndNewlines)) }.map { $0 / 1e9 }
        case .v2:
            guard let stat = try? String(contentsOfFile: "\(root)/\(path)/cpu.stat", encoding: .utf8) else { return nil }
            return stat.split(whereSeparator: \.isNewline).first { $0.hasPrefix("usage_usec ") }
                .flatMap { Double($0.split(separator: " ")[1]) }.map { $0 / 1e6 }
        }
    }

    /// The cgroup folders under `path` (itself included) that exist.
    func existing(_ path: String) -> [String] {
        dirs(path).flatMap { d -> [String] in
            guard FileManager.default.fileExists(atPath: d) else { return [] }
            let children = ((try? FileManager.default.contentsOfDirectory(atPath: d)) ?? [])
                .filter { (try? FileManager.default.attributesOfItem(atPath: d + "/" + $0)[.type] as? FileAttributeType) == .typeDirectory }
            return children.map { d + "/" + $0 } + [d]
        }
    }

    /// Kills what runs in the tree and removes its folders, children first.
    func removeTree(_ path: String) throws {
        for d in existing(path) {
            let procs = (try? String(contentsOfFile: d + "/cgroup.procs", encoding: .utf8)) ?? ""
            for pid in procs.split(whereSeparator: \.isNewline).compactMap({ Int32($0) }) { Glibc.kill(pid, SIGKILL) }
        }
        for d in existing(path) {
            // A killed process leaves its cgroup a moment later.
            _ = Processes.wait(seconds: 10) { rmdir(d) == 0 || errno == ENOENT }
        }
        let left = existing(path)
        guard left.isEmpty else { throw Processes.Failure("cannot remove cgroup \(left.joined(separator: ", "))") }
    }

    func write(_ value: String, to file: String) throws {
        guard let handle = FileHandle(forWritingAtPath: file) else { throw Processes.Failure("cannot open \(file)") }
        defer { try? handle.close() }
        do { try handle.write(contentsOf: Data(value.utf8)) } catch {
            throw Processes.Failure("cannot write \(value) to \(file): \(error)")
        }
    }
}

/// The hosts of a cluster started with `--hosts`: the kernel objects' names and subnet,
/// and each host's budget.
public struct HostsPlan: Codable, Sendable, Equatable {
    public var prefix: String
    /// One subnet per site, in the stage's order.
    public var subnets: [Int]
    public var subnet: Int { subnets[0] }
    /// Cores each host may use (a cap, by cgroup quota), and its memory limit.
    public var cpus: Double
    public var memoryBytes: UInt64
    /// The client host's budget (the load generator's): what is left over for it.
    public var clientCpus: Double = 0.5
    /// Budgets changed by `scale --cpu`, by node name.
    public var cpusByNode: [String: Double] = [:]

    public init(prefix: String, subnets: [Int], cpus: Double, memoryBytes: UInt64) {
        self.prefix = prefix
        self.subnets = subnets
        self.cpus = cpus
        self.memoryBytes = memoryBytes
    }

    /// The same budget for every host of every stage, so stages compare: the largest stage
    /// (`queued`, 12 hosts) fits the machine's cores with half a core left for the load
    /// generator and the tools: 1.5 / 12 = 0.125 cores per host on 2 cores. Memory: a
    /// share of what is left after 2 GiB for the machine, at most 1 GiB per host.
    public static func defaultBudget(hostsInLargestStage: Int) -> (cpus: Double, memoryBytes: UInt64) {
        let cores = Double(ProcessInfo.processInfo.activeProcessorCount)
        let cpus = max(0.05, (cores - 0.5) / Double(hostsInLargestStage))
        let memory = ProcessInfo.processInfo.physicalMemory
        let share = memory > 2 << 30 ? (memory - (2 << 30)) / UInt64(hostsInLargestStage) : memory / 4
        return ((cpus * 1000).rounded(.down) / 1000, min(1 << 30, share))
    }

    public func network() throws -> HostNetwork { try HostNetwork(prefix: prefix, subnets: subnets) }

    public func host(_ node: Node) -> NodeHost {
        NodeHost(
            name: node.name, address: node.host, alsoAt: node.alsoAt, cpus: cpusByNode[node.name] ?? (node.role == .client ? clientCpus : cpus),
            memoryBytes: memoryBytes)
    }
}
