@testable import Cluster
import Foundation
import Testing

/// Stages as data: what each topology holds, and the configuration derived from it.
@Suite struct TopologyTests {
    static let layout = Layout(ports: try! Ports(base: 19000), dir: "/tmp/c")

    @Test func eachStageHasTheChaptersNodes() {
        func roles(_ stage: Stage) -> [Role: Int] {
            Dictionary(stage.topology(Self.layout).nodes.map { ($0.role, 1) }, uniquingKeysWith: +)
        }
        #expect(roles(.single) == [.web: 1])
        #expect(roles(.separateDB) == [.database: 1, .web: 1])
        #expect(roles(.loadBalanced) == [.database: 1, .web: 2, .balancer: 1])
        #expect(roles(.replicated) == [.database: 3, .web: 2, .balancer: 1])
        #expect(roles(.cached) == [.database: 3, .cache: 2, .web: 2, .balancer: 1, .edge: 1])
        #expect(roles(.stateless) == [.database: 3, .cache: 2, .sessions: 1, .web: 2, .balancer: 1, .edge: 1])
        #expect(roles(.queued) == [.database: 3, .cache: 2, .sessions: 1, .web: 2, .worker: 2, .balancer: 1, .edge: 1])
        for stage in Stage.journey {
            let t = stage.topology(web: stage.balanced ? 5 : nil, Self.layout)
            // Names and addresses are unique; nodes come in start order; the entry is the site's port.
            #expect(Set(t.nodes.map(\.name)).count == t.nodes.count, "\(stage)")
            #expect(Set(t.nodes.map(\.address)).count == t.nodes.count, "\(stage)")
            #expect(t.nodes.map(\.role) == t.nodes.map(\.role).sorted(), "\(stage)")
            #expect(t.entry?.port == 19000, "\(stage)")
            #expect(t.nodes(.web).count == (stage.balanced ? 5 : 1), "\(stage)")
            #expect(t.nodes.allSatisfy { $0.site == "dc1" && $0.host == "127.0.0.1" })
        }
    }

    /// With hosts, every node has an address of its own from the plan by role, a client
    /// host joins, and the settings name the host addresses.
    @Test func onHostsEachNodeHasItsOwnAddress() {
        let t = Stage.queued.topology(web: 3, Layout(ports: try! Ports(base: 19000), dir: "/tmp/c", subnet: 7))
        let byName = Dictionary(uniqueKeysWithValues: t.nodes.map { ($0.name, $0.host) })
        #expect(byName["nginx"] == "198.18.7.2" && byName["varnish"] == "198.18.7.3")
        #expect(byName["postgres-primary"] == "198.18.7.10" && byName["postgres-r2"] == "198.18.7.12")
        #expect(byName["memcached1"] == "198.18.7.21" && byName["redis"] == "198.18.7.30")
        #expect(byName["web3"] == "198.18.7.43" && byName["worker2"] == "198.18.7.72" && byName["client"] == "198.18.7.100")
        #expect(Set(byName.values).count == t.nodes.count)
        let s = t.appSettings(dataDirectory: "/tmp/c/data")
        #expect(s["data.postgres.nodes"] == "198.18.7.10:19040,198.18.7.11:19041,198.18.7.12:19042")
        #expect(s["redis.address"] == "198.18.7.30:19060")
        #expect(s["http.trustedProxies"] == "127.0.0.1,::1,198.18.7.2,198.18.7.3")
        #expect(t.entry?.name == "varnish")
    }

    /// Two sites on two subnets: each site's servers read from their own replica and cache
    /// and reach the primary (in west) through their gateway, which relays those
    /// ports across the WAN with the link's delay.
    @Test func twoSitesReachEachOtherOnlyThroughTheirGateways() throws {
        let t = Stage.multiDC.topology(Layout(ports: try Ports(base: 19000), dir: "/tmp/c", subnets: [7, 8]))
        #expect(t.sites == ["west", "east"])
        #expect(t.links == [WANLink(sites: ["west", "east"], delayMs: WANLink.defaultDelayMs, jitterMs: 0)])
        #expect(Set(t.nodes.map(\.name)).count == t.nodes.count)
        #expect(Set(t.nodes.map(\.pidFile).filter { !$0.isEmpty }).count == t.nodes.filter { !$0.pidFile.isEmpty }.count)
        #expect(t.nodes.map(\.role) == t.nodes.map(\.role).sorted())
        for (site, subnet) in [("west", 7), ("east", 8)] {
            #expect(t.nodes.filter { $0.site == site }.allSatisfy { $0.host.hasPrefix("198.18.\(subnet).") }, "\(site)")
            #expect(t.nodes(.web, in: site).count == 2 && t.nodes(.cache, in: site).count == 1 && t.nodes(.worker, in: site).count == 1)
            #expect(t.entry(site: site)?.name == "varnish-\(site)" && t.dynamicEntry(site: site)?.name == "nginx-\(site)")
        }
        let byName = Dictionary(uniqueKeysWithValues: t.nodes.map { ($0.name, $0) })
        #expect(byName["wan-west"]?.host == "198.18.7.4" && byName["wan-west"]?.alsoAt == ["198.18.8.4"])
        #expect(byName["wan-east"]?.host == "198.18.8.5" && byName["wan-east"]?.alsoAt == ["198.18.7.5"])
        #expect(byName["dns"]?.host == "198.18.7.9" && byName["dns"]?.alsoAt == ["198.18.8.9"])
        // Every address on any subnet is one host's.
        let addresses = t.nodes.flatMap { [$0.host] + $0.alsoAt }
        #expect(Set(addresses).count == addresses.count)
        #expect(byName["postgres-primary"]?.site == "west" && byName["postgres-r2"]?.host == "198.18.8.12")

        let east = t.appSettings(dataDirectory: "/tmp/c/data", site: "east")
        // Each site reads its own nodes; the other site's are remote (the primary among them,
        // at its own address across the WAN): probed for their role, never read as replicas.
        #expect(east["data.postgres.nodes"] == "198.18.8.12:19042")
        #expect(east["data.postgres.remoteNodes"] == "198.18.7.10:19040,198.18.7.11:19041")
        #expect(east["cache.memcached.nodes"] == "198.18.8.22:19051")
        #expect(east["redis.address"] == nil && east["session.store"] == nil, "sessions are in PostgreSQL")
        // nginx and the edge in front of it: the client is the address the edge saw.
        #expect(east["http.trustedProxies"] == "127.0.0.1,::1,198.18.8.2,198.18.8.3")
        let west = t.appSettings(dataDirectory: "/tmp/c/data", site: "west")
        #expect(west["data.postgres.nodes"] == "198.18.7.10:19040,198.18.7.11:19041")
        #expect(west["data.postgres.remoteNodes"] == "198.18.8.12:19042")
        #expect(west["cache.memcached.nodes"] == "198.18.7.21:19050" && west["redis.address"] == nil)
        #expect(west["cache.followSlot"] == "millions_cache_west" && east["cache.followSlot"] == "millions_cache_east")
        #expect(west["photos.store"] == "postgres" && east["photos.store"] == "postgres", "no folder is shared across sites")
        // With --ha: an etcd member in each site and the witness in none, reachable from both.
        let layout = Layout(ports: try Ports(base: 19000), dir: "/tmp/c", subnets: [7, 8])
        let coordinators = layout.coordinators(sites: t.sites)
        #expect(coordinators.map(\.name) == ["coord1", "coord2", "coord3"])
        #expect(coordinators.map(\.site) == ["west", "east", Layout.global])
        #expect(coordinators.map(\.host) == ["198.18.7.91", "198.18.8.92", "198.18.7.93"] && coordinators[2].alsoAt == ["198.18.8.93"])
        var ha = t
        ha.nodes += coordinators
        #expect(ha.sites == ["west", "east"])
        #expect(Layout(ports: try Ports(base: 19000), dir: "/tmp/c").coordinators().allSatisfy { $0.site == "dc1" })

        // The client hosts are the cluster's load generators (the site drill's writers sign
        // up ten users a second): exempt from the per-address limits, as this machine is.
        let clients = t.nodes(.client).flatMap { [$0.host] + $0.alsoAt }
        #expect(clients.count == 4)
        for settings in [east, west] {
            let exempt = (settings["limits.exempt"] ?? "").split(separator: ",").map(String.init)
            #expect(Set(clients + ["127.0.0.0/8"]).isSubset(of: exempt), "\(exempt)")
        }

        // After east's replica is promoted (site-down west), it is the first database node,
        // and no site's settings change: each still reads its own nodes and probes the rest.
        var moved = t
        moved.makePrimary(try #require(byName["postgres-r2"]))
        #expect(moved.nodes(.database).map(\.name) == ["postgres-r2", "postgres-primary", "postgres-r1"])
        for site in ["west", "east"] {
            let before = t.appSettings(dataDirectory: "/tmp/c/data", site: site)
            let after = moved.appSettings(dataDirectory: "/tmp/c/data", site: site)
            #expect(after["data.postgres.nodes"] == before["data.postgres.nodes"])
            #expect(after["data.postgres.remoteNodes"] == before["data.postgres.remoteNodes"])
        }

        // A site's gateway routes to the sites it has a link to, each on its own /24.
        #expect(t.subnet(of: "west") == "198.18.7.0/24" && t.subnet(of: "east") == "198.18.8.0/24")
        #expect(t.links(from: "west").map(\.site) == ["east"] && t.links(from: "east").map(\.site) == ["west"])
        #expect(t.links(from: "east").allSatisfy { $0.link.delayMs == WANLink.defaultDelayMs })
        let eastEdge = try #require(t.nodes(.edge, in: "east").first)
        #expect(t.appSettings(dataDirectory: "/tmp/c/data", site: "west")["photos.purgeEdges"] == "198.18.7.3:19000,\(eastEdge.address)")
    }

    /// The web servers' settings name the topology's own nodes, by address.
    @Test func settingsComeFromTheNodes() {
        let queued = Stage.queued.topology(Self.layout)
        let s = queued.appSettings(dataDirectory: "/tmp/c/data")
        #expect(s["data.engine"] == "postgres")
        #expect(s["data.postgres.nodes"] == "127.0.0.1:19040,127.0.0.1:19041,127.0.0.1:19042")
        #expect(s["photos.store"] == nil && s["photos.directory"] == "/tmp/c/data/photos", "one site shares a folder")
        #expect(s["cache.backend"] == "memcached" && s["cache.memcached.nodes"] == "127.0.0.1:19050,127.0.0.1:19051")
        #expect(s["session.store"] == "redis" && s["redis.address"] == "127.0.0.1:19060")
        #expect(s["queue.inProcessWorkers"] == "0" && s["cache.followSlot"] == "millions_cache_dc1")
        #expect(s["http.drainSeconds"] == String(ServerConfigs.drainSeconds))

        let single = Stage.single.topology(Self.layout).appSettings(dataDirectory: "/tmp/c/data")
        #expect(single["data.engine"] == nil && single["data.directory"] == "/tmp/c/data")
        #expect(single["cache.backend"] == "memory" && single["http.drainSeconds"] == nil)
        let replicated = Stage.replicated.topology(Self.layout).appSettings(dataDirectory: "/tmp/c/data")
        #expect(replicated["cache.backend"] == "none" && replicated["queue.inProcessWorkers"] == "1")

        // nginx and Varnish are rendered from nodes too.
        let nginx = ServerConfigs.nginx(
            listen: queued.nodes(.balancer)[0].address, upstreams: queued.nodes(.web).map(\.address), dir: "/tmp/c/nginx")
        #expect(nginx.contains("server 127.0.0.1:19011 max_fails=1") && nginx.contains("server 127.0.0.1:19012 max_fails=1"))
        #expect(nginx.contains("listen 127.0.0.1:19001;"))
        let vcl = ServerConfigs.varnish(backend: queued.nodes(.balancer)[0])
        #expect(vcl.contains(#".host = "127.0.0.1";"#) && vcl.contains(#".port = "19001";"#))
    }

    /// nginx itself accepts the rendered configuration (`nginx -t`), with the operators'
    /// and the edge's addresses exempt from the per-address connection cap.
    @Test func nginxAcceptsTheRenderedConfiguration() throws {
        let dir = NSTemporaryDirectory() + "millions-nginx-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for sub in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            try FileManager.default.createDirectory(atPath: "\(dir)/tmp/\(sub)", withIntermediateDirectories: true)
        }
        let conf = ServerConfigs.nginx(
            listen: "127.0.0.1:19999", upstreams: ["127.0.0.1:19998"], dir: dir,
            operators: ["127.0.0.0/8", "::1", "198.18.0.1"], edges: ["198.18.0.3"])
        #expect(conf.contains("198.18.0.3 0;") && conf.contains("limit_conn per_address 256;"))
        try conf.write(toFile: "\(dir)/nginx.conf", atomically: true, encoding: .utf8)
        let nginx = Process()
        nginx.executableURL = URL(fileURLWithPath: "/usr/sbin/nginx")
        nginx.arguments = ["-t", "-q", "-e", "\(dir)/error.log", "-c", "\(dir)/nginx.conf"]
        let output = Pipe()
        nginx.standardError = output
        try nginx.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        nginx.waitUntilExit()
        #expect(nginx.terminationStatus == 0, "\(text)")
    }

    /// A pid file names its process only if the process is older than the file: the same
    /// number in an older file is a reused pid, and `cluster down` must not signal it.
    @Test func aPidFileOlderThanItsProcessNamesNoOne() throws {
        let dir = NSTemporaryDirectory() + "millions-pid-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let cluster = Cluster(dir: dir, binary: "/bin/true", scripts: dir, say: { _ in })
        let sleeper = Process()
        sleeper.executableURL = URL(fileURLWithPath: "/bin/sleep")
        sleeper.arguments = ["120"]
        try sleeper.run()
        defer { sleeper.terminate() }
        let path = dir + "/node.pid"
        try "\(sleeper.processIdentifier)\n".write(toFile: path, atomically: true, encoding: .utf8)
        #expect(cluster.readPid(path) == sleeper.processIdentifier)
        let old = Int(Date().timeIntervalSince1970) - 600
        var times = [timeval(tv_sec: old, tv_usec: 0), timeval(tv_sec: old, tv_usec: 0)]
        #expect(utimes(path, &times) == 0)
        #expect(cluster.readPid(path) == nil)
    }

    /// Root runs the servers as postgres, memcache and nobody: a cluster folder they cannot
    /// reach is refused at once, naming the folder, before anything starts.
    @Test func aFolderTheServersCannotReachIsRefusedAtOnce() throws {
        try #require(geteuid() == 0, "this test needs root (the servers drop to their own users only when started by root)")
        let parent = NSTemporaryDirectory() + "millions-private-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: parent, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        defer { try? FileManager.default.removeItem(atPath: parent) }
        let cluster = Cluster(dir: parent + "/cluster", binary: "/bin/false", scripts: "/nonexistent", say: { _ in })
        #expect {
            try cluster.up(stage: .replicated, webServers: nil, basePort: 19900, settings: [:])
        } throws: { error in
            "\(error)".contains(parent) && "\(error)".contains("--dir")
        }
        #expect(!FileManager.default.fileExists(atPath: parent + "/cluster"), "nothing was created")
    }
}
