import PVSystem
import Foundation
import PacketOffload
import Logging
import Synchronization
import XenABI
import XenStore

/// pvhost's netback for one vif: it publishes the features it offers, reports the hotplug
/// step done (`hotplug-status` = connected), follows the frontend's XenBus state, and on
/// Connected maps each queue's rings, binds its channels and serves it on a thread
/// (``VifQueue``). The vif is a port of a ``VirtualSwitch``: what the guest sends is switched
/// to the other guests and TAP devices, what they send to it lands in its posted buffers.
public final class NetBackend: SwitchPort, Sendable {
    /// What the backend offers; each feature can be switched off.
    public struct Settings: Sendable, Equatable {
        public var scatterGather = true
        public var gsoTCPv4 = true
        public var gsoTCPv6 = true
        public var ipv6ChecksumOffload = true
        public var splitEventChannels = true
        /// `multi-queue-max-queues`.
        public var maxQueues = 4
        /// The guest's MAC address (nil: 00:16:3e, then the domain and device numbers).
        public var mac: MACAddress?
        /// `mtu` for the frontend (nil: not written, 1500).
        public var mtu: Int?
        /// Test-only: make the backend lie, to prove the frontend survives it.
        public var hostile: HostileMode?
        public init() {}

        /// Nothing optional: one slot per packet, no offloads, one queue, one channel.
        public static var minimal: Settings {
            var s = Settings()
            s.scatterGather = false
            s.gsoTCPv4 = false
            s.gsoTCPv6 = false
            s.ipv6ChecksumOffload = false
            s.splitEventChannels = false
            s.maxQueues = 1
            return s
        }
    }

    /// Ways a broken or malicious netback behaves (for the conformance tests). Each rx mode
    /// applies to every packet delivered to the guest.
    public enum HostileMode: String, Sendable, CaseIterable {
        /// Rx responses name another buffer than the one posted in their slot.
        case rxWrongID
        /// Rx responses claim more bytes than fit in the page after their offset.
        case rxBadLength
        /// Rx responses report an error status.
        case rxErrorStatus
        /// Rx responses say an extra-info slot follows, and it is of an unknown type.
        case rxBadExtra
        /// Every rx response says `more_data`: a chain longer than any frame.
        case rxEndlessChain
        /// `rsp_prod` of the rx ring pushed past what the frontend posted.
        case rxProducerAhead
        /// Tx responses carry ids never sent.
        case txUnknownID
        /// Tx requests are consumed and never answered.
        case txNeverAnswer
        /// A burst of notifications with no work after every batch.
        case eventStorm
        /// The backend vanishes at the first packet: stops serving, its directory removed.
        case vanish
    }

    public let device: Toolstack.Device
    public let settings: Settings
    public let mac: MACAddress
    public let portName: String
    private let toolstack: Toolstack
    /// Weak: the switch holds its ports; the port holding it back would keep both alive.
    private weak let network: VirtualSwitch?
    let logger = Logger(label: "pvhost.netback")
    private struct State {
        var queues: [VifQueue]?
        var watcher: Task<Void, Never>?
        /// Counters of connections that ended.
        var before = Counters()
    }

    private let state = Locked(State())

    /// Packets through this vif (for status and tests).
    public struct Counters: Sendable, Equatable {
        /// From the guest, switched.
        public var sent = 0
        /// From the guest, refused (bad slots, failed grant copies).
        public var refused = 0
        /// To the guest, placed in its buffers.
        public var received = 0
        /// To the guest, dropped (not connected, no room, a kind of packet it did not accept).
        public var dropped = 0
        public var notifications = 0
    }

    public var counters: Counters {
        state.withLock { state in
            var c = state.before
            for queue in state.queues ?? [] { c.add(queue) }
            return c
        }
    }

    var hypervisor: Hypervisor { toolstack.hypervisor }
    private var store: XenStoreClient { toolstack.store }

    /// The MAC address libxl would not pick but pvhost does: 00:16:3e (Xen's prefix), then
    /// the domain and the device number.
    public static func defaultMAC(domain: DomainID, devid: Int) -> MACAddress {
        MACAddress(
            0x00, 0x16, 0x3E, UInt8(truncatingIfNeeded: domain.rawValue >> 8), UInt8(truncatingIfNeeded: domain.rawValue), UInt8(truncatingIfNeeded: devid))
    }

    /// Publishes the vif, joins `network`, goes to InitWait and follows the frontend.
    public static func start(toolstack: Toolstack, device: Toolstack.Device, network: VirtualSwitch, settings: Settings = Settings()) async throws(Toolstack
        .Failure) -> NetBackend
    {
        guard (1...16).contains(settings.maxQueues) else { throw .hypervisor("maxQueues \(settings.maxQueues) is outside 1…16") }
        let backend = NetBackend(toolstack: toolstack, device: device, network: network, settings: settings)
        try await backend.publish()
        network.attach(backend)
        backend.follow()
        return backend
    }

    private init(toolstack: Toolstack, device: Toolstack.Device, network: VirtualSwitch, settings: Settings) {
        self.toolstack = toolstack
        self.device = device
        self.network = network
        self.settings = settings
        mac = settings.mac ?? Self.defaultMAC(domain: device.frontend, devid: device.devid)
        portName = "vif\(device.frontend.rawValue).\(device.devid)"
    }

    private func node(_ key: String) -> XenStorePath { xenbus.node(key) }

    /// The backend keys, as Linux netback writes them at probe.
    var publishedKeys: [(String, String)] {
        let s = settings
        return [
            ("feature-sg", s.scatterGather ? "1" : "0"), ("feature-gso-tcpv4", s.gsoTCPv4 ? "1" : "0"),
            ("feature-gso-tcpv6", s.gsoTCPv6 ? "1" : "0"), ("feature-ipv6-csum-offload", s.ipv6ChecksumOffload ? "1" : "0"),
            ("feature-rx-copy", "1"), ("feature-rx-flip", "0"),
            ("feature-split-event-channels", s.splitEventChannels ? "1" : "0"),
            ("multi-queue-max-queues", "\(s.maxQueues)"), ("mac", "\(mac)"), ("handle", "\(device.devid)")
        ]
    }

    private func publish() async throws(Toolstack.Failure) {
        let frontendMAC = try! XenStorePath(device.frontendPath + "/mac")
        let frontendMTU = try! XenStorePath(device.frontendPath + "/mtu")
        do {
            let nodes = publishedKeys.map { (node($0.0), $0.1) }
            let mac = self.mac, mtu = settings.mtu
            try await store.transaction { tx in
                for (key, value) in nodes { try await tx.write(key, value) }
                // The toolstack's part: the guest reads its address (and MTU) in its own directory.
                try await tx.write(frontendMAC, "\(mac)")
                if let mtu { try await tx.write(frontendMTU, "\(mtu)") }
            }
        } catch {
            throw .store(error as? XenStoreError ?? .badReply("\(error)"))
        }
        try await toolstack.reportHotplug(device)
        await setState(.initWait)
    }

    private func follow() {
        let watcher = xenbus.follow(
            connectOn: [.connected], isConnected: { [weak self] in self?.isConnected },
            connect: { [weak self] in await self?.connect() }, disconnect: { [weak self] in await self?.disconnect() })
        state.withLock { $0.watcher = watcher }
    }

    private var isConnected: Bool { state.withLock { $0.queues != nil } }
    private var xenbus: BackendXenbus { BackendXenbus(store: store, device: device) }
    private func setState(_ state: XenbusState) async { await xenbus.setState(state) }

    /// Reads what the frontend published (never trusted) and serves its queues.
    private func connect() async {
        var made: [VifQueue] = []
        do {
            func value(_ key: String) async -> String? { try? await store.readString(XenStorePath(device.frontendPath + "/" + key)) }
            func number(_ key: String) async throws -> UInt32 {
                guard let text = await value(key) else { throw NetBackendError("\(device.frontendPath)/\(key) is missing") }
                guard let n = UInt32(text) else { throw NetBackendError("\(device.frontendPath)/\(key) = \"\(text)\" is not a number") }
                return n
            }
            func flag(_ key: String, default fallback: Bool) async -> Bool {
                guard let text = await value(key) else { return fallback }
                return text == "1"
            }
            guard await flag("request-rx-copy", default: false) else {
                throw NetBackendError("the frontend did not ask for request-rx-copy (page flipping is not served)")
            }
            let queueCount = Int(await value("multi-queue-num-queues").flatMap { UInt32($0) } ?? 1)
            guard (1...settings.maxQueues).contains(queueCount) else {
                throw NetBackendError("\(queueCount) queues asked, at most \(settings.maxQueues) offered")
            }
            var accepts = FrontendAccepts()
            let (sg, gso4, gso6) = (
                await flag("feature-sg", default: false), await flag("feature-gso-tcpv4", default: false), await flag("feature-gso-tcpv6", default: false)
            )
            let (noCsum, ipv6Csum) = (await flag("feature-no-csum-offload", default: false), await flag("feature-ipv6-csum-offload", default: false))
            accepts.scatterGather = settings.scatterGather && sg
            accepts.gsoTCPv4 = settings.gsoTCPv4 && gso4
            accepts.gsoTCPv6 = settings.gsoTCPv6 && gso6
            accepts.checksumOffload = !noCsum
            accepts.ipv6ChecksumOffload = settings.ipv6ChecksumOffload && ipv6Csum
            for index in 0..<queueCount {
                let prefix = queueCount > 1 ? "queue-\(index)/" : ""
                let txRef = GrantRef(try await number(prefix + "tx-ring-ref"))
                let rxRef = GrantRef(try await number(prefix + "rx-ring-ref"))
                var ports: [EventChannelPort]
                if settings.splitEventChannels, await value(prefix + "event-channel-tx") != nil {
                    ports = [EventChannelPort(try await number(prefix + "event-channel-tx")), EventChannelPort(try await number(prefix + "event-channel-rx"))]
                } else {
                    ports = [EventChannelPort(try await number(prefix + "event-channel"))]
                }
                made.append(try VifQueue(vif: self, index: index, txRef: txRef, rxRef: rxRef, ports: ports, accepts: accepts))
            }
            for queue in made { try queue.start() }
            let queues = made
            state.withLock { $0.queues = queues }
            await setState(.connected)
            logger.info("\(portName) connected", metadata: ["mac": "\(mac)", "queues": "\(queueCount)", "sg": "\(accepts.scatterGather)"])
        } catch {
            for queue in made { await queue.stop() }
            logger.error("\(portName): cannot connect: \(error)")
            await xenbus.reportError("\(error)")
            await setState(.closing)
        }
    }

    /// Stops serving, unmaps the rings, closes the ports (the xenbus state is the caller's).
    private func disconnect() async {
        let old: [VifQueue]? = state.withLock { state in
            defer { state.queues = nil }
            return state.queues
        }
        if let old {
            for queue in old { await queue.stop() }
            state.withLock { state in for queue in old { state.before.add(queue) } }
        }
    }

    /// Called by a queue that stopped on its own (hostile `vanish`).
    func vanish() { xenbus.vanish() }

    /// Sets the link state the frontend sees (`carrier`), and rewrites Connected so a
    /// connected frontend looks again.
    public func setCarrier(_ up: Bool) async {
        try? await store.write(node("carrier"), up ? "1" : "0")
        if isConnected { await setState(.connected) }
    }

    /// Leaves the switch and stops following the frontend (device removed, pvhost stopping).
    public func stop() async {
        // Ended, not only cancelled: an event it was acting on could otherwise write our old
        // state over a new backend's (a restart right after this returns).
        let watcher = state.withLock { $0.watcher }
        watcher?.cancel()
        await watcher?.value
        network?.detach(self)
        await disconnect()
        await setState(.closed)
    }

    // MARK: Switching

    /// From a queue's handler: the guest's packets into the switch.
    func forward(_ packets: [Packet]) { network?.forward(packets, from: self) }

    /// From the switch: packets for the guest, spread over its queues by flow.
    public func deliver(_ packets: [Packet]) {
        guard let queues = state.withLock({ $0.queues }), !queues.isEmpty else {
            state.withLock { $0.before.dropped += packets.count }
            return
        }
        if queues.count == 1 {
            queues[0].deliver(packets)
            return
        }
        var spread = Array(repeating: [Packet](), count: queues.count)
        for packet in packets { spread[Netif.flowHash(packet.bytes) % queues.count].append(packet) }
        for (queue, batch) in zip(queues, spread) where !batch.isEmpty { queue.deliver(batch) }
    }
}

extension NetBackend.Counters {
    mutating func add(_ queue: VifQueue) {
        sent += queue.txPackets.load(ordering: .relaxed)
        refused += queue.txRefused.load(ordering: .relaxed)
        received += queue.rxPackets.load(ordering: .relaxed)
        dropped += queue.rxDropped.load(ordering: .relaxed)
        notifications += queue.notifications.load(ordering: .relaxed)
    }
}

struct NetBackendError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
