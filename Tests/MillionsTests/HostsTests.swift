import Cluster
import Foundation
import Testing

/// Hosts on one machine: network namespaces on a bridge, with cgroup CPU budgets. Needs
/// root and network namespaces; says so (fails) where they are missing, never skips.
@Suite(.serialized) struct HostsTests {
    static func network(_ prefix: String, subnet: Int) throws -> HostNetwork {
        try #require(geteuid() == 0, "HostsTests need root (network namespaces, a bridge, cgroups)")
        try HostNetwork(prefix: prefix, subnet: subnet).removeAll()  // what an earlier crashed run left
        // A subnet no running cluster uses.
        let net = try HostNetwork(prefix: prefix, subnet: try HostNetwork.freeSubnet(preferred: subnet))
        try net.create()
        return net
    }

    /// A TCP server on `host`, on `host.address:port`, as a detached process; its pid.
    static func listen(_ net: HostNetwork, _ host: NodeHost, port: Int, log: String) throws -> Int32 {
        let server = "import socket,time\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
            + "s.bind(('\(host.address)',\(port)))\ns.listen(64)\nwhile True:\n  c,_=s.accept();c.close()\n"
        return try Processes.spawnDetached(net.command(on: host, ["/usr/bin/python3", "-c", server]), log: log)
    }

    /// Exit status of a connect from `host` to `address:port` (0: connected).
    static func connect(_ net: HostNetwork, from host: NodeHost, to address: String, port: Int) throws -> Int32 {
        let probe = "import socket,sys\ns=socket.socket()\ns.settimeout(2)\n"
            + "sys.exit(0 if s.connect_ex(('\(address)',\(port)))==0 else 1)"
        return try Processes.run(net.command(on: host, ["/usr/bin/python3", "-c", probe]), log: "/dev/null")
    }

    @Test func hostsHaveTheirOwnAddressesAndLoopbackAndCanBeCutOff() throws {
        let net = try Self.network("xht1", subnet: 201)
        defer { try? net.removeAll() }
        let a = NodeHost(name: "a", address: net.address(10), cpus: 0.5, memoryBytes: 256 << 20)
        let b = NodeHost(name: "b", address: net.address(11), cpus: 0.5, memoryBytes: 256 << 20)
        try net.add(a)
        try net.add(b)
        let log = NSTemporaryDirectory() + "millions-hosts-\(UUID().uuidString).log"
        defer { try? FileManager.default.removeItem(atPath: log) }
        let pid = try Self.listen(net, a, port: 7000, log: log)
        defer { Processes.signal(pid, SIGKILL) }
        // Reachable at the host's address from the machine and from the other host.
        #expect(Processes.wait(seconds: 60) { Processes.portOpen(host: a.address, port: 7000) })
        #expect(try Self.connect(net, from: b, to: a.address, port: 7000) == 0)
        // Its loopback is its own: nothing listens on b's 127.0.0.1:7000, nor on the machine's.
        #expect(try Self.connect(net, from: b, to: "127.0.0.1", port: 7000) != 0)
        #expect(!Processes.portOpen(host: "127.0.0.1", port: 7000, timeout: 1))

        // Partitioned: still running, unreachable; healed: reachable again.
        try net.partition(a)
        #expect(!Processes.portOpen(host: a.address, port: 7000, timeout: 1))
        #expect(try Self.connect(net, from: b, to: a.address, port: 7000) != 0)
        #expect(Processes.isAlive(pid))
        try net.heal(a)
        #expect(Processes.wait(seconds: 60) { Processes.portOpen(host: a.address, port: 7000) })
    }

    /// A busy loop on a host with a budget of 0.2 cores uses at most that (the quota is
    /// enforced by the kernel per 100 ms period; one period of slack), however long the
    /// loaded machine takes; the budget changes live.
    @Test func aHostsCPUBudgetIsEnforcedAndChangesLive() throws {
        let net = try Self.network("xht2", subnet: 202)
        defer { try? net.removeAll() }
        var host = NodeHost(name: "busy", address: net.address(10), cpus: 0.2, memoryBytes: 128 << 20)
        try net.add(host)
        let start = Date()
        let status = try Processes.run(
            net.command(on: host, ["/usr/bin/python3", "-c", "import time\nt=time.process_time()\nwhile time.process_time()-t<0.3: pass"]),
            log: "/dev/null")
        let elapsed = Date().timeIntervalSince(start)
        #expect(status == 0)
        let used = try #require(net.cpuSeconds(host))
        #expect(used >= 0.3, "the loop ran in the host's cgroup")
        #expect(used <= 0.2 * elapsed + 0.1, "used \(used) s of CPU in \(elapsed) s with 0.2 cores")

        host.cpus = 1.5
        try net.setBudget(host)
        // 1.5 cores: 30 ms of every 20 ms period (a short period: see CGroups.period).
        let quota = try? String(contentsOfFile: "/sys/fs/cgroup/cpu/millions-xht2/busy/cpu.cfs_quota_us", encoding: .utf8)
        let period = try? String(contentsOfFile: "/sys/fs/cgroup/cpu/millions-xht2/busy/cpu.cfs_period_us", encoding: .utf8)
        let max = try? String(contentsOfFile: "/sys/fs/cgroup/millions-xht2/busy/cpu.max", encoding: .utf8)
        #expect((quota?.hasPrefix("30000") == true && period?.hasPrefix("20000") == true) || (max?.hasPrefix("30000 20000") ?? false))

        // Programs on the host learn its budget (millions sizes its thread pools by it).
        let out = NSTemporaryDirectory() + "xht2-env-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: out) }
        #expect(try Processes.run(net.command(on: host, ["/bin/sh", "-c", "echo $MILLIONS_CPUS > \(out)"])) == 0)
        #expect(try String(contentsOfFile: out, encoding: .utf8) == "1.5\n")
    }

    /// `removeAll` from a fresh value (as after a crash that lost all state) finds and
    /// removes every namespace, link, bridge and cgroup, killing what still runs.
    @Test func removeAllLeavesNothingEvenAfterACrash() throws {
        let net = try Self.network("xht3", subnet: 203)
        let host = NodeHost(name: "h", address: net.address(10), cpus: 0.5, memoryBytes: 64 << 20)
        try net.add(host)
        let pid = try Processes.spawnDetached(net.command(on: host, ["/bin/sleep", "600"]), log: "/dev/null")
        #expect(Processes.wait(seconds: 60) { !(try! net.leftovers()).isEmpty })
        let again = try HostNetwork(prefix: "xht3", subnet: 1)  // only the prefix matters
        try again.removeAll()
        #expect(try again.leftovers() == [])
        #expect(Processes.wait(seconds: 60) { Processes.reap(pid); return !Processes.isAlive(pid) })
    }
}
