import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Where log lines go: appended to a buffer under a short lock, written to the file by one
/// thread of its own a few milliseconds later, many lines per `write(2)`. A request's access
/// log line therefore costs the event loop a copy, not a system call (it cost a third of the
/// throughput of a cached read, written line by line).
///
/// What it can lose: a process killed with SIGKILL loses the last few milliseconds of lines.
/// Errors flush at once, and so does a normal exit. Past `maxPending` bytes (the file is
/// not keeping up) lines are dropped and counted, never queued without bound; the count is
/// written as a line of its own.
public final class LogSink: @unchecked Sendable {
    public static let standardError: LogSink = {
        let sink = LogSink(fd: 2)
        atexit { LogSink.standardError.flush() }
        return sink
    }()

    private let fd: Int32
    private let condition = NSCondition()  // guards pending, dropped, awake
    private var pending: [UInt8] = []
    private var dropped = 0
    private var awake = false
    private let writing = NSLock()  // one writer at a time keeps lines in order
    let maxPending = 8 << 20
    /// How long the writer gathers lines after the first one arrives.
    let gatherMicroseconds: UInt32 = 5_000

    init(fd: Int32) {
        self.fd = fd
        pending.reserveCapacity(64 * 1024)
        // The thread keeps its sink alive: a sink lives as long as the process.
        let thread = Thread { self.run() }
        thread.name = "log-writer"
        thread.start()
    }

    public func append(_ line: [UInt8]) {
        condition.lock()
        let wake = !awake
        if pending.count + line.count > maxPending {
            dropped += 1
        } else {
            pending.append(contentsOf: line)
        }
        awake = true
        condition.unlock()
        // One wake-up per batch, not per line.
        if wake { condition.signal() }
    }

    /// Writes everything appended so far before returning.
    public func flush() {
        writing.lock()
        defer { writing.unlock() }
        writeTaken()
    }

    private func run() {
        while true {
            condition.lock()
            while !awake { condition.wait() }
            condition.unlock()
            usleep(gatherMicroseconds)
            flush()
        }
    }

    /// Takes the buffer and writes it; the caller holds `writing`.
    private func writeTaken() {
        condition.lock()
        var batch: [UInt8] = []
        swap(&batch, &pending)
        pending.reserveCapacity(min(batch.count, 1 << 20))
        let lost = dropped
        dropped = 0
        awake = false
        condition.unlock()
        if lost > 0 {
            let ts = JSONLogHandler.timestamp()
            batch.append(
                contentsOf: Array(
                    "{\"ts\":\"\(ts)\",\"level\":\"warning\",\"logger\":\"millions.log\",\"msg\":\"log lines dropped\",\"dropped\":\(lost)}\n"
                        .utf8))
        }
        batch.withUnsafeBytes { buf in
            var offset = 0
            while offset < buf.count {
                let n = Glibc.write(fd, buf.baseAddress! + offset, buf.count - offset)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { break }
                offset += n
            }
        }
    }
}
