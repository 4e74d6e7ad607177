import ArgumentParser
import Cluster
import Foundation
import WebTier

/// `millions cluster …`: the chapter's stages on this machine, from real servers.
struct ClusterCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cluster",
        abstract: "Bring a stage of the journey up on this machine, inspect, scale, break and stop it.",
        subcommands: [Up.self, Status.self, Scale.self, Kill.self, Restart.self, Pause.self, Resume.self, Partition.self, Heal.self, Exec.self, Env.self, Failover.self, SiteDown.self, SiteUp.self, Down.self])

    struct Where: ParsableArguments {
        @Option(name: .long, help: "Folder for every server's data, configuration, pid and log files.")
        var dir: String = ".cluster"

        func cluster() throws -> Cluster {
            let binary = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path
            return Cluster(dir: dir, binary: binary, scripts: try Cluster.findScripts(binary: binary)) { line in
                print(line)
                fflush(nil)  // every stream: output may be a pipe read by a script
            }
        }
    }

    struct Up: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Start a stage: \(Stage.allCases.map(\.rawValue).joined(separator: ", ")).")
        @OptionGroup var location: Where
        @Option(name: .long, help: "The stage to start.") var stage: String
        @Option(name: .long, help: "Web servers (stages with a load balancer; default 2).") var web: Int?
        @Option(name: .customLong("base-port"), help: "The site's port; the servers use the next 70.") var basePort = 8080
        @Option(name: .customLong("set"), help: ArgumentHelp("A configuration key for every web server.", valueName: "key=value"))
        var settings: [String] = []
        @Flag(name: .long, help: "Every node on a host of its own: a network namespace on a bridge (198.18.N.0/24), with a CPU budget and a memory limit (needs root).")
        var hosts = false
        @Option(name: .long, help: "Cores each host may use (default: the largest stage's hosts share this machine's cores, half a core left over).")
        var cpus: Double?
        @Option(name: .customLong("wan-ms"), help: "One-way delay of the WAN between sites (multi-dc; default \(WANLink.defaultDelayMs)).")
        var wanMs: Double?
        @Option(name: .customLong("wan-jitter-ms"), help: "Extra WAN delay, uniform in 0…this (order is kept).") var wanJitterMs: Double = 0
        @Flag(name: .long, help: "Synchronous replication: a commit waits for one replica (of the other site, in multi-dc).")
        var sync = false
        @Flag(name: .long, help: "PostgreSQL under Patroni with a three-member etcd, Redis under three sentinels: a replica takes over by itself when the primary dies (one-site stages with replicas; with --hosts, etcd members and sentinels on three coordinator hosts).")
        var ha = false
        @Option(name: .long, help: "Shard clusters of the sharded stage (1...\(Stage.maxShards), default \(Stage.defaultShards)).")
        var shards: Int?

        func run() throws {
            guard let stage = Stage(rawValue: stage) else {
                throw ValidationError("unknown stage \(stage); stages: \(Stage.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            var extra: [String: String] = [:]
            for item in settings {
                guard let eq = item.firstIndex(of: "="), eq != item.startIndex else { throw ValidationError("--set takes key=value") }
                extra[String(item[..<eq])] = String(item[item.index(after: eq)...])
            }
            let cluster = try location.cluster()
            if cpus != nil && !hosts { throw ValidationError("--cpus needs --hosts") }
            if let cpus, !(cpus > 0) { throw ValidationError("--cpus must be more than 0") }
            let wan = wanMs.map { (delayMs: $0, jitterMs: wanJitterMs) } ?? (wanJitterMs > 0 ? (WANLink.defaultDelayMs, wanJitterMs) : nil)
            try cluster.up(stage: stage, webServers: web, basePort: basePort, settings: extra, hosts: hosts, cpus: cpus, wan: wan, syncReplication: sync, ha: ha, shards: shards)
            print(Cluster.table(try cluster.status()), terminator: "")
        }
    }

    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "A table of every node: role, pid, address, health.")
        @OptionGroup var location: Where

        func run() throws {
            let cluster = try location.cluster()
            let state = try cluster.loadState()
            for site in state.topology.sites {
                let sites = state.topology.sites.count > 1 ? " (\(site))" : ""
                print("stage \(state.stage.rawValue)\(sites): http://\(state.topology.entry(site: site)?.address ?? "-")/")
            }
            for link in state.topology.links {
                print("WAN \(link.sites.joined(separator: " ↔ ")): \(link.delayMs) ms one way, jitter \(link.jitterMs) ms")
            }
            print(Cluster.table(try cluster.status()), terminator: "")
        }
    }

    struct Scale: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Change the number of web servers or workers (`scale web=3 workers=4`), add shard clusters and rebalance online (`scale shards=3`), or a host's CPU budget (`scale --cpu web1=0.5`, `--cpu web=1`).")
        @OptionGroup var location: Where
        @Argument(help: "web=N, workers=M and/or shards=S.") var targets: [String] = []
        @Option(name: .long, help: ArgumentHelp("Cores for a node or every node of a role (hosts only).", valueName: "name=cores"))
        var cpu: [String] = []

        func run() throws {
            let cluster = try location.cluster()
            var budgets: [String: Double] = [:]
            for item in cpu {
                let parts = item.split(separator: "=")
                guard parts.count == 2, let cores = Double(parts[1]) else { throw ValidationError("expected --cpu name=cores, got \(item)") }
                budgets[String(parts[0])] = cores
            }
            if targets.isEmpty && budgets.isEmpty { throw ValidationError("nothing to scale: give web=N, workers=M or --cpu name=cores") }
            if !budgets.isEmpty { try cluster.scale(cpus: budgets) }
            for target in targets {
                let parts = target.split(separator: "=")
                guard parts.count == 2, let n = Int(parts[1]) else { throw ValidationError("expected web=N, got \(target)") }
                switch parts[0] {
                case "web": try cluster.scale(web: n)
                case "workers": try cluster.scale(workers: n)
                case "shards": try cluster.scale(shards: n)
                default: throw ValidationError("unknown tier \(parts[0]); expected web=N, workers=M or shards=S")
                }
            }
        }
    }

    struct Kill: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "kill -9 one node (web1, nginx, postgres-primary, redis, …).")
        @OptionGroup var location: Where
        @Argument var node: String

        func run() throws { try location.cluster().kill(node) }
    }

    struct Restart: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Start a killed database node again under Patroni (`up --ha`); it rejoins as a replica.")
        @OptionGroup var location: Where
        @Argument var node: String

        func run() throws { try location.cluster().restart(node) }
    }

    struct Pause: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Freeze a database node under Patroni (SIGSTOP), as a long stall would; `resume` ends it.")
        @OptionGroup var location: Where
        @Argument var node: String

        func run() throws { try location.cluster().pause(node) }
    }

    struct Resume: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Let a paused database node go on (SIGCONT).")
        @OptionGroup var location: Where
        @Argument var node: String

        func run() throws { try location.cluster().resume(node) }
    }

    struct Partition: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Cut a node's host off the network; it keeps running (hosts only). postgres-leader, redis-master: whichever leads now.")
        @OptionGroup var location: Where
        @Argument var node: String

        func run() throws { try location.cluster().partition(node) }
    }

    struct Heal: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Put a partitioned node's host back on the network.")
        @OptionGroup var location: Where
        @Argument var node: String

        func run() throws { try location.cluster().heal(node) }
    }

    struct Exec: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run a command on a node's host, e.g. `exec web1 -- curl -s http://198.18.N.10:8120/`.")
        @OptionGroup var location: Where
        @Argument var node: String
        @Argument(parsing: .captureForPassthrough) var command: [String] = []

        func run() throws {
            let argv = command.first == "--" ? Array(command.dropFirst()) : command
            guard !argv.isEmpty else { throw ValidationError("give a command after --") }
            // A bare name is found on PATH, as a shell would.
            let path = argv[0].contains("/") ? argv[0] : (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin")
                .split(separator: ":").map { "\($0)/\(argv[0])" }.first { FileManager.default.isExecutableFile(atPath: $0) } ?? argv[0]
            let status = try location.cluster().exec(node, [path] + argv.dropFirst())
            if status != 0 { throw ExitCode(status) }
        }
    }

    struct Env: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "The cluster's settings and secrets as shell exports, for commands of your own against it.",
            discussion: "e.g. `eval \"$(millions cluster env)\"; millions seed --users 10000 --ids-file ids.txt`. Prints the passwords: keep the output private.")
        @OptionGroup var location: Where

        func run() throws {
            let cluster = try location.cluster()
            let state = try cluster.loadState()
            var env = state.secretEnvironment
            for (key, value) in cluster.webSettings(state) { env["MILLIONS_" + ConfigSources.environmentName(key)] = value }
            for (name, value) in env.sorted(by: { $0.key < $1.key }) {
                print("export \(name)='\(value.replacingOccurrences(of: "'", with: "'\\''"))'")
            }
        }
    }

    struct SiteDown: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "site-down",
            abstract: "Cut every host of a site off the network; promote a replica elsewhere if the primary was there.")
        @OptionGroup var location: Where
        @Argument(help: "The site (multi-dc: west or east).") var site: String
        func run() throws { try location.cluster().siteDown(site) }
    }

    struct SiteUp: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "site-up",
            abstract: "Bring a site back: its databases rejoin as replicas of the new primary (pg_rewind), then its servers.")
        @OptionGroup var location: Where
        @Argument(help: "The site to bring back.") var site: String
        func run() throws { try location.cluster().siteUp(site) }
    }

    struct Failover: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Promote the most caught-up replica after the primary died (stages with replicas).")
        @OptionGroup var location: Where

        func run() throws { try location.cluster().failover() }
    }

    struct Down: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Stop everything the cluster started and remove its data.")
        @OptionGroup var location: Where

        func run() throws { try location.cluster().down() }
    }
}
