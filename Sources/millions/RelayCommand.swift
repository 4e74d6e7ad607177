import ArgumentParser
import Cluster
import Logging
import ServiceLifecycle
import UnixSignals

/// `millions relay`: a WAN link between two sites, emulated in user space.
struct RelayCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "relay",
        abstract: "A TCP relay that delays every byte by a one-way delay (plus jitter) in each direction: an emulated WAN link.",
        discussion: """
            With --tun NAME it delays routed packets instead: every packet the kernel sends into the TUN device NAME \
            (create it first: ip tuntap add dev NAME mode tun) is written back after the delay, and routed on.
            """)
    @Option(name: .long, help: ArgumentHelp("Where to listen (repeat it with --to for several relays).", valueName: "host:port"))
    var listen: [String] = []
    @Option(name: .long, help: ArgumentHelp("Delay the packets routed through this TUN device.", valueName: "name"))
    var tun: String?
    @Option(name: .long, help: ArgumentHelp("Where to relay to, one per --listen, in order.", valueName: "host:port")) var to: [String] = []
    @Option(name: .customLong("delay-ms"), help: "One-way delay, each direction.") var delayMs: Double
    @Option(name: .customLong("jitter-ms"), help: "Extra delay, uniform in 0…this; order is kept.") var jitterMs: Double = 0

    static func address(_ text: String) throws -> (String, Int) {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (0...65535).contains(port),
            colon != text.startIndex
        else { throw ValidationError("expected host:port, got \(text)") }
        return (String(text[..<colon]), port)
    }

    func validate() throws {
        guard listen.count == to.count, !listen.isEmpty || tun != nil else {
            throw ValidationError("give one --to for each --listen, or --tun")
        }
        guard delayMs >= 0, jitterMs >= 0, delayMs + jitterMs <= 10_000 else { throw ValidationError("delay and jitter must be 0…10000 ms") }
    }

    func run() async throws {
        let logger = bootstrapLogging(.info)
        var relays: [DelayRelay] = []
        for (l, t) in zip(listen, to) {
            let (listenHost, listenPort) = try Self.address(l)
            let (targetHost, targetPort) = try Self.address(t)
            let relay = try await DelayRelay(
                .init(listenHost: listenHost, listenPort: listenPort, targetHost: targetHost, targetPort: targetPort, delayMs: delayMs, jitterMs: jitterMs))
            relays.append(relay)
            logger.info(
                "relay listening",
                metadata: ["listen": "\(listenHost):\(relay.port)", "to": "\(t)", "delay_ms": "\(delayMs)", "jitter_ms": "\(jitterMs)"])
        }
        var packets: PacketDelay? = nil
        if let tun {
            packets = try PacketDelay(device: tun, delayMs: delayMs, jitterMs: jitterMs)
            logger.info("delaying routed packets", metadata: ["device": "\(tun)", "delay_ms": "\(delayMs)", "jitter_ms": "\(jitterMs)"])
        }
        let group = ServiceGroup(
            configuration: .init(
                services: [RelayService(relays: relays, packets: packets)], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
    }
}

/// Keeps the relays until SIGTERM, then closes them.
struct RelayService: Service {
    let relays: [DelayRelay]
    let packets: PacketDelay?
    func run() async throws {
        try? await gracefulShutdown()
        for relay in relays { try await relay.close() }
        try await packets?.close()
    }
}
