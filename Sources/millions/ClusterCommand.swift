import ArgumentParser
import Cluster
import Foundation

/// `millions cluster …`: the chapter's stages on this machine, from real servers.
struct ClusterCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cluster",
        abstract: "Bring a stage of the journey up on this machine, inspect, scale, break and stop it.",
        subcommands: [Up.self, Status.self, Scale.self, Kill.self, Failover.self, Down.self])

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
            try cluster.up(stage: stage, webServers: web, basePort: basePort, settings: extra)
            print(Cluster.table(try cluster.status()), terminator: "")
        }
    }

    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "A table of every node: role, pid, address, health.")
        @OptionGroup var location: Where

        func run() throws {
            let cluster = try location.cluster()
            let state = try cluster.loadState()
            print("stage \(state.stage.rawValue): http://\(state.topology.entry?.address ?? "-")/")
            print(Cluster.table(try cluster.status()), terminator: "")
        }
    }

    struct Scale: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Change the number of web servers or workers, e.g. `scale web=3 workers=4`.")
        @OptionGroup var location: Where
        @Argument(help: "web=N and/or workers=M.") var targets: [String]

        func run() throws {
            let cluster = try location.cluster()
            for target in targets {
                let parts = target.split(separator: "=")
                guard parts.count == 2, let n = Int(parts[1]) else { throw ValidationError("expected web=N, got \(target)") }
                switch parts[0] {
                case "web": try cluster.scale(web: n)
                case "workers": try cluster.scale(workers: n)
                default: throw ValidationError("unknown tier \(parts[0]); expected web=N or workers=M")
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
