import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Progress of a long command on stderr: a bar with rate and ETA that redraws in place on
/// a terminal, plain lines (every 10%) otherwise, so logs stay readable.
final class Progress: Sendable {
    let total: Int
    let noun: String
    let start = Date()
    let isTerminal = isatty(2) == 1
    private let lastTenth = Mutex(-1)

    init(total: Int, noun: String) {
        self.total = total
        self.noun = noun
    }

    func update(_ done: Int) {
        let elapsed = Date().timeIntervalSince(start)
        let rate = elapsed > 0 ? Double(done) / elapsed : 0
        let eta = rate > 0 ? Double(total - done) / rate : 0
        let fraction = total > 0 ? Double(done) / Double(total) : 1
        if isTerminal {
            let width = 30
            let filled = Int(fraction * Double(width))
            let bar = String(repeating: "█", count: filled) + String(repeating: "░", count: width - filled)
            write("\r\(bar) \(Int(fraction * 100))% \(done.grouped)/\(total.grouped) \(noun) · \(Int(rate).grouped)/s · ETA \(Self.duration(eta))   ")
            if done >= total { write("\n") }
        } else {
            let tenth = Int(fraction * 10)
            let due = lastTenth.withLock { last in
                defer { last = Swift.max(last, tenth) }
                return tenth > last
            }
            if due {
                write("\(noun): \(done.grouped)/\(total.grouped) (\(tenth * 10)%), \(Int(rate).grouped)/s, ETA \(Self.duration(eta))\n")
            }
        }
    }

    private func write(_ s: String) {
        FileHandle.standardError.write(Data(s.utf8))
    }

    static func duration(_ seconds: Double) -> String {
        seconds < 60 ? String(format: "%.0fs", seconds) : String(format: "%dm%02ds", Int(seconds) / 60, Int(seconds) % 60)
    }
}

extension Int {
    /// 1234567 → "1,234,567".
    var grouped: String {
        let digits = String(Swift.abs(self))
        var out = ""
        for (i, c) in digits.enumerated() {
            if i > 0 && (digits.count - i) % 3 == 0 { out.append(",") }
            out.append(c)
        }
        return (self < 0 ? "-" : "") + out
    }
}
