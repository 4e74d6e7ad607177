import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Starting, probing and stopping the processes of a cluster: posix_spawn and signals,
/// plus TCP and HTTP probes on loopback. Blocking on purpose: these run in short-lived
/// commands and test helpers, never on a server's event loop.
public enum Processes {
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
        public init(_ description: String) { self.description = description }
    }

    /// Runs a command to completion; returns its exit status (128 + signal if killed).
    /// Foundation's `Process` waits through a run loop that async code does not spin, and
    /// can hang there; this does not.
    /// `log` receives stdout and stderr (appended) instead of this process's own.
    @discardableResult
    public static func run(_ argv: [String], environment: [String: String] = [:], log: String? = nil) throws -> Int32 {
        let pid = try spawn(argv, environment: environment, output: log, newSession: false)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) == -1 {
            guard errno == EINTR else { throw Failure("waitpid failed: \(errno)") }
        }
        let signal = status & 0x7f
        return signal == 0 ? (status >> 8) & 0xff : 128 + signal
    }

    /// Starts a daemon: its own session (so it outlives this process and its terminal),
    /// stdin from /dev/null, stdout and stderr appended to `log`.
    public static func spawnDetached(_ argv: [String], log: String, environment: [String: String] = [:]) throws -> pid_t {
        try spawn(argv, environment: environment, output: log, newSession: true)
    }

    private static func spawn(_ argv: [String], environment: [String: String], output: String?, newSession: Bool) throws
        -> pid_t
    {
        var pid: pid_t = 0
        var cArgs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
        defer { for p in cArgs { free(p) } }
        var env = ProcessInfo.processInfo.environment
        env.merge(environment) { _, new in new }
        var cEnv: [UnsafeMutablePointer<CChar>?] = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { for p in cEnv { free(p) } }

        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        // Children must not inherit blocked signals (the Swift runtime blocks some in its
        // threads): a daemon started from here would then ignore SIGTERM.
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigmask(&attr, &none)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for s in [SIGTERM, SIGINT, SIGPIPE, SIGHUP] { sigaddset(&defaults, s) }
        posix_spawnattr_setsigdefault(&attr, &defaults)
        var flags = Int32(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF)
        if newSession { flags |= 0x80 }  // POSIX_SPAWN_SETSID
        posix_spawnattr_setflags(&attr, Int16(flags))

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if let output {
            posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
            posix_spawn_file_actions_addopen(&actions, 1, output, O_WRONLY | O_CREAT | O_APPEND, 0o644)
            posix_spawn_file_actions_adddup2(&actions, 1, 2)
        }
        let spawned = posix_spawn(&pid, argv[0], &actions, &attr, &cArgs, &cEnv)
        guard spawned == 0 else { throw Failure("cannot run \(argv[0]): \(String(cString: strerror(spawned)))") }
        return pid
    }

    /// True while the process exists and is not a zombie (PID 1 may take seconds to reap
    /// an orphan, and `kill(pid, 0)` succeeds on a zombie).
    public static func isAlive(_ pid: Int32) -> Bool {
        guard pid > 0, kill(pid, 0) == 0 || errno == EPERM else { return false }
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return true }
        let state = stat[stat.index(after: close)...].trimmingCharacters(in: .whitespaces).first
        return state != "Z" && state != "X"
    }

    public static func signal(_ pid: Int32, _ sig: Int32) {
        if pid > 0 { kill(pid, sig) }
    }

    /// Reaps `pid` if it is our child, so it does not linger as a zombie.
    public static func reap(_ pid: Int32) {
        var status: Int32 = 0
        _ = waitpid(pid, &status, WNOHANG)
    }

    /// Polls until `condition` holds or `seconds` pass.
    @discardableResult
    public static func wait(seconds: Double, every: Double = 0.05, until condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if condition() { return true }
            usleep(UInt32(every * 1_000_000))
        }
        return condition()
    }

    /// SIGTERM, then SIGKILL after `grace` seconds; true once the process is gone.
    @discardableResult
    public static func stop(_ pid: Int32, grace: Double) -> Bool {
        guard isAlive(pid) else { return true }
        signal(pid, SIGTERM)
        if wait(seconds: grace, until: { reap(pid); return !isAlive(pid) }) { return true }
        signal(pid, SIGKILL)
        return wait(seconds: 5, until: { reap(pid); return !isAlive(pid) })
    }

    /// Whether something accepts TCP connections on 127.0.0.1:`port`.
    public static func portOpen(_ port: Int) -> Bool { portOpen(host: "127.0.0.1", port: port) }

    /// Runs blocking work (a script, a load generator) on a thread of its own, off the
    /// cooperative pool (two threads on two cores) and off NIO's small thread pool (several
    /// load generators block at once for a whole run).
    public static func detached<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            Thread.detachNewThread { continuation.resume(with: Result { try body() }) }
        }
    }

    /// Whether something accepts TCP connections on `host:port` within `timeout` seconds
    /// (a host cut off the network drops the handshake: no answer, rather than a refusal).
    public static func portOpen(host: String, port: Int, timeout: Double = 2) -> Bool {
        guard let fd = connect(host: host, port: port, timeout: timeout) else { return false }
        Glibc.close(fd)
        return true
    }

    /// A connected (blocking) socket to `host:port`, or nil if none within `timeout` seconds.
    static func connect(host: String, port: Int, timeout: Double) -> Int32? {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return nil }
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
        var addr = address(host, port)
        let started = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        var ok = started == 0
        if !ok && errno == EINPROGRESS {
            var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            if poll(&p, 1, Int32(timeout * 1000)) == 1 {
                var error: Int32 = 0
                var length = socklen_t(MemoryLayout<Int32>.size)
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length)
                ok = error == 0
            }
        }
        guard ok else {
            Glibc.close(fd)
            return nil
        }
        _ = fcntl(fd, F_SETFL, flags)
        return fd
    }

    /// `GET path` over HTTP/1.0 to `host:port`; the status code, or nil if nothing
    /// answered within `timeout` seconds.
    public static func httpStatus(host: String = "127.0.0.1", port: Int, path: String, timeout: Double = 2) -> Int? {
        httpGet(host: host, port: port, path: path, timeout: timeout, readBody: false)?.status
    }

    /// `GET path` over HTTP/1.0: status and body (read until the server closes).
    public static func httpGet(
        host: String = "127.0.0.1", port: Int, path: String, timeout: Double = 5, readBody: Bool = true
    ) -> (status: Int, body: String)? {
        // Connected within the timeout: a host cut off the network never answers.
        guard let fd = connect(host: host, port: port, timeout: timeout) else { return nil }
        defer { Glibc.close(fd) }
        var tv = timeval(tv_sec: Int(timeout), tv_usec: Int((timeout - Double(Int(timeout))) * 1_000_000))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        let request = Array("GET \(path) HTTP/1.0\r\nHost: \(host)\r\nUser-Agent: millions-cluster\r\n\r\n".utf8)
        guard request.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == request.count else {
            return nil
        }
        var response: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while readBody || response.count < 12 {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, $0.count, 0) }
            guard n > 0 else { break }
            response += chunk[0..<n]
        }
        // "HTTP/1.1 200 …"
        let text = String(decoding: response, as: UTF8.self)
        let parts = text.prefix(32).split(separator: " ", maxSplits: 2)
        guard parts.count >= 2, let status = Int(parts[1]) else { return nil }
        let body = text.range(of: "\r\n\r\n").map { String(text[$0.upperBound...]) } ?? ""
        return (status, body)
    }

    private static func address(_ host: String, _ port: Int) -> sockaddr_in {
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr(host)
        return addr
    }
}

/// A snapshot of /proc: each process's parent and CPU time, to find a server's children
/// and to account the CPU of a node on loopback (with hosts, its cgroup does that).
extension Processes {
    /// How long ago `pid` started, in seconds, on the clock that counts from boot (so a
    /// step of the wall clock does not move it); nil if there is no such process.
    public static func age(_ pid: Int32) -> Double? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = stat.lastIndex(of: ")"),
            let uptime = (try? String(contentsOfFile: "/proc/uptime", encoding: .utf8))?.split(separator: " ").first.flatMap({ Double($0) })
        else { return nil }
        // After "pid (comm)": state is the 1st field, starttime (clock ticks since boot) the 20th.
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 19, let ticks = Double(fields[19]) else { return nil }
        return uptime - ticks / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    /// The file's last change, in seconds since 1970.
    public static func modificationTime(_ path: String) -> Double? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return Double(info.st_mtim.tv_sec) + Double(info.st_mtim.tv_nsec) / 1e9
    }
}

struct ProcessTable {
    struct Entry {
        var parent: Int32
        var zombie: Bool
        /// User + system time, in seconds.
        var cpuSeconds: Double
    }
    var entries: [Int32: Entry] = [:]
    var children: [Int32: [Int32]] = [:]

    init() {
        let tick = Double(sysconf(Int32(_SC_CLK_TCK)))
        for name in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let pid = Int32(name), let stat = try? String(contentsOfFile: "/proc/\(name)/stat", encoding: .utf8),
                let close = stat.lastIndex(of: ")")
            else { continue }
            // After "pid (comm)": state, ppid, … utime (12th), stime (13th).
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            guard fields.count > 12, let parent = Int32(fields[1]) else { continue }
            let ticks = (Double(fields[11]) ?? 0) + (Double(fields[12]) ?? 0)
            entries[pid] = Entry(parent: parent, zombie: fields[0] == "Z", cpuSeconds: ticks / tick)
            children[parent, default: []].append(pid)
        }
    }

    /// CPU seconds of `pid` and every live process below it (a server and its workers or
    /// backends; what exited in between is not counted).
    func treeCPUSeconds(_ pid: Int32) -> Double? {
        guard entries[pid] != nil else { return nil }
        var total = 0.0, stack = [pid]
        while let p = stack.popLast() {
            total += entries[p]?.cpuSeconds ?? 0
            stack += children[p] ?? []
        }
        return total
    }
}
