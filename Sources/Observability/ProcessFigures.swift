import Foundation
import Prometheus

#if canImport(Glibc)
import Glibc
#endif

/// This process's resident memory and open file descriptors, from /proc (Linux), read at
/// each scrape under Prometheus's standard names: what a soak run watches for leaks.
public enum ProcessFigures {
    public static func read() -> (residentBytes: Int, openFiles: Int)? {
        guard let statm = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return nil }
        let fields = statm.split(separator: " ")
        guard fields.count >= 2, let pages = Int(fields[1]) else { return nil }
        let files = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? 0
        return (pages * Int(sysconf(Int32(_SC_PAGESIZE))), files)
    }
}

extension AppMetrics {
    /// Sets the process gauges from /proc just before an exposition.
    func updateProcessFigures() {
        guard let figures = ProcessFigures.read() else { return }
        gauge("process_resident_memory_bytes", "Resident memory of this process").set(Int64(figures.residentBytes))
        gauge("process_open_fds", "Open file descriptors of this process").set(Int64(figures.openFiles))
    }
}
