import Foundation
import NIOCore
import NIOPosix
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A WAN link's delay for routed traffic: every IP packet the kernel sends into a TUN device
/// is written back into it `delayMs` (plus up to `jitterMs`) later, and the kernel then
/// routes it on. A site's gateway sends its site's packets for the other sites through the
/// device (policy routing), so every connection between sites, whatever its port or its
/// addresses, crosses the emulated WAN once each way (this kernel has no netem).
///
/// Order is kept, as on a real link: a packet never leaves before one read ahead of it, so
/// jitter only stretches the gaps. At most `maxQueued` packets wait; beyond that new ones are
/// dropped, as a router's full queue would (TCP sends them again).
public final class PacketDelay: Sendable {
    public let device: String
    public let delayMs: Double
    public let jitterMs: Double
    let maxQueued = 65_536
    private let fd: Int32
    private let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    private let state = Mutex(State())

    private struct State {
        var lastDue: NIODeadline = .uptimeNanoseconds(0)
        var queued = 0
        var forwarded = 0
        var dropped = 0
        var closed = false
    }

    /// Attaches to the TUN device `device` (created beforehand, e.g. `ip tuntap add dev NAME
    /// mode tun`, in the namespace this process runs in) and starts forwarding.
    public init(device: String, delayMs: Double, jitterMs: Double = 0) throws {
        guard delayMs >= 0, jitterMs >= 0, delayMs + jitterMs <= 10_000 else {
            throw Processes.Failure("delay and jitter must be 0…10000 ms")
        }
        guard device.utf8.count < 16 else { throw Processes.Failure("a device name has at most 15 characters") }
        self.device = device
        self.delayMs = delayMs
        self.jitterMs = jitterMs
        let fd = open("/dev/net/tun", O_RDWR)
        guard fd >= 0 else { throw Processes.Failure("cannot open /dev/net/tun: \(String(cString: strerror(errno)))") }
        // struct ifreq: the name (16 bytes), then the flags (a short) in the union.
        var request = [UInt8](repeating: 0, count: 40)
        for (i, byte) in device.utf8.enumerated() { request[i] = byte }
        let flags: UInt16 = 0x0001 | 0x1000  // IFF_TUN | IFF_NO_PI: bare IP packets
        request[16] = UInt8(flags & 0xff)
        request[17] = UInt8(flags >> 8)
        let attached = request.withUnsafeMutableBytes { ioctl(fd, 0x4004_54ca, $0.baseAddress!) }  // TUNSETIFF
        guard attached == 0 else {
            let reason = String(cString: strerror(errno))
            Glibc.close(fd)
            throw Processes.Failure("cannot attach to tun device \(device): \(reason)")
        }
        self.fd = fd
        let thread = Thread { [self] in readLoop() }
        thread.name = "packet-delay"
        thread.start()
    }

    /// Packets forwarded and dropped so far.
    public var counts: (forwarded: Int, dropped: Int) { state.withLock { ($0.forwarded, $0.dropped) } }

    /// Reads packets until the device is closed; each is written back when its time comes.
    private func readLoop() {
        let loop = group.next()
        var buffer = [UInt8](repeating: 0, count: 65_536)
        while true {
            let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress!, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return }
            let packet = Array(buffer[0..<n])
            let extra = jitterMs > 0 ? Double.random(in: 0...jitterMs) : 0
            let wanted = NIODeadline.now() + .nanoseconds(Int64((delayMs + extra) * 1_000_000))
            let due: NIODeadline? = state.withLock { s in
                guard !s.closed, s.queued < maxQueued else {
                    s.dropped += 1
                    return nil
                }
                s.queued += 1
                // Never ahead of a packet read before it: the link keeps order.
                s.lastDue = max(s.lastDue, wanted)
                return s.lastDue
            }
            guard let due else { continue }
            loop.scheduleTask(deadline: due) { [self] in
                let closed = state.withLock { s in
                    s.queued -= 1
                    s.forwarded += 1
                    return s.closed
                }
                guard !closed else { return }
                _ = packet.withUnsafeBytes { Glibc.write(fd, $0.baseAddress!, $0.count) }
            }
        }
    }

    /// Stops forwarding (packets still waiting are dropped) and detaches from the device.
    public func close() async throws {
        state.withLock { $0.closed = true }
        try await group.shutdownGracefully()
        Glibc.close(fd)
    }
}
