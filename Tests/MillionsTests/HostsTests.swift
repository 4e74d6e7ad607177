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

    /// Two sites joined by their gateways' routed WAN (`PacketDelay` on a TUN device): a
    /// host reaches the other site at that host's own address, never faster than the
    /// link's round trip; with a gateway's relay gone, not at all (no way round it).
    @Test func sitesReachEachOtherOnlyThroughTheGatewaysDelay() async throws {
        try #require(geteuid() == 0, "HostsTests need root (network namespaces, a bridge, cgroups, TUN devices)")
        try HostNetwork(prefix: "xht4", subnet: 203).removeAll()
        let one = try HostNetwork.freeSubnet(preferred: 203)
        let two = try HostNetwork.freeSubnet(preferred: one + 1, excluding: [one])
        let net = try HostNetwork(prefix: "xht4", subnets: [one, two])
        try net.create()
        defer { try? net.removeAll() }
        func at(_ subnet: Int, _ last: Int) -> String { "198.18.\(subnet).\(last)" }
        let a = NodeHost(name: "a", address: at(one, 10), cpus: 0, memoryBytes: 256 << 20)
        let b = NodeHost(name: "b", address: at(two, 10), cpus: 0, memoryBytes: 256 << 20)
        let gatewayA = NodeHost(name: "ga", address: at(one, 4), alsoAt: [at(two, 4)], cpus: 0, memoryBytes: 256 << 20)
        let gatewayB = NodeHost(name: "gb", address: at(two, 5), alsoAt: [at(one, 5)], cpus: 0, memoryBytes: 256 << 20)
        for h in [a, b, gatewayA, gatewayB] { try net.add(h) }
        let (subnetOne, subnetTwo) = ("198.18.\(one).0/24", "198.18.\(two).0/24")
        try net.route(a, to: [subnetTwo], via: gatewayA.address)
        try net.route(b, to: [subnetOne], via: gatewayB.address)
        try net.delayRouted(gatewayA, device: "wan0", from: subnetOne, to: [subnetTwo])
        try net.delayRouted(gatewayB, device: "wan0", from: subnetTwo, to: [subnetOne])
        let log = NSTemporaryDirectory() + "millions-wan-\(UUID().uuidString).log"
        defer { try? FileManager.default.removeItem(atPath: log) }
        let binary = try EndToEndTests.binary()
        var relays: [Int32] = []
        for g in [gatewayA, gatewayB] {
            relays.append(try Processes.spawnDetached(net.command(on: g, [binary, "relay", "--tun", "wan0", "--delay-ms", "50"]), log: log))
        }
        defer { for pid in relays { Processes.signal(pid, SIGKILL) } }
        #expect(Processes.wait(seconds: 60) { [gatewayA, gatewayB].allSatisfy { net.deviceAttached($0, device: "wan0") } })
        let server = try Self.listen(net, b, port: 7001, log: log)
        defer { Processes.signal(server, SIGKILL) }
        #expect(Processes.wait(seconds: 60) { Processes.portOpen(host: b.address, port: 7001) })

        // A handshake from a to b: at least the round trip (2 × 50 ms), each way delayed once.
        let timed = """
            import socket,sys,time
            s=socket.socket(); s.settimeout(5); t=time.monotonic()
            if s.connect_ex(('\(b.address)',7001)) != 0: sys.exit(1)
            sys.exit(0 if time.monotonic()-t >= 0.1 else 2)
            """
        #expect(try Processes.run(net.command(on: a, ["/usr/bin/python3", "-c", timed]), log: "/dev/null") == 0)
        // The gateway's relay gone, its device drops what is routed into it.
        Processes.signal(relays[0], SIGKILL)
        #expect(Processes.wait(seconds: 60) { !net.deviceAttached(gatewayA, device: "wan0") })
        #expect(try Self.connect(net, from: a, to: b.address, port: 7001) != 0)
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
