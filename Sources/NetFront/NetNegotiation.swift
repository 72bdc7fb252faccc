import PVPlatform
import PVSystem
import XenABI

/// What a NetFront asks for; the backend's offer may give less.
public struct NetFrontOptions: Sendable, Equatable {
    /// Queues (tx/rx ring pairs) wanted; the backend's `multi-queue-max-queues` caps it.
    public var queues = 1
    /// One event channel per direction (`event-channel-tx`/`-rx`) when the backend offers it.
    public var splitEventChannels = true
    /// Packets over one page, in several slots (`feature-sg`).
    public var scatterGather = true
    /// Large TCP segments passed whole, with a GSO extra-info slot.
    public var gsoTCPv4 = true
    public var gsoTCPv6 = true
    /// IPv4 checksum offload (off sends `feature-no-csum-offload`).
    public var checksumOffload = true
    /// IPv6 checksum offload (`feature-ipv6-csum-offload`).
    public var ipv6ChecksumOffload = true
    /// Notify the backend of new rx buffers (`feature-rx-notify`; Linux always does).
    public var rxNotify = true
    /// Pages per queue for frames in flight to the backend (one per tx id), and posted for
    /// receiving (one per rx buffer); each at most 256, the ring's size.
    public var txBuffers = 256, rxBuffers = 256
    /// Received frames kept for the application; beyond it, new frames are dropped (counted).
    public var inboxLimit = 16384
    /// Connect again when the backend restarts (Closed, then InitWait).
    public var reconnect = true
    /// The event loops the queues run on (queue `i` on loop `i` modulo their count); a task
    /// that prefers a queue's loop receives and sends on its thread, with no hop.
    public var eventLoops: EventLoopGroup = .shared

    public init() {}

    /// Nothing optional: one queue, one event channel, one slot per packet, no offloads.
    public static var minimal: NetFrontOptions {
        var o = NetFrontOptions()
        o.splitEventChannels = false
        o.scatterGather = false
        o.gsoTCPv4 = false
        o.gsoTCPv6 = false
        o.checksumOffload = false
        o.ipv6ChecksumOffload = false
        return o
    }
}

/// Why a network device could not be used.
public enum NetFrontError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The backend's xenstore keys make the device unusable (the key and value say why).
    case refused(String)
    /// A frame the protocol cannot carry (too short, too long, too many slots).
    case badFrame(String)
    /// The backend broke the protocol; the device is closed.
    case backendMisbehaved(String)
    /// The device is closed (by us, the backend, or the toolstack).
    case closed(String)
    /// Pages, grants or event channels could not be had (what was being done, and the
    /// platform's error when there was one).
    case platform(String, cause: PlatformError? = nil)
    /// A system call failed (a TAP device, the event loop).
    case system(SystemError)
    /// The waiting task was cancelled (nothing was taken).
    case cancelled

    public var description: String {
        switch self {
        case let .refused(why): "the backend's offer is unusable: \(why)"
        case let .badFrame(why): "cannot send the frame: \(why)"
        case let .backendMisbehaved(what): "the backend broke the protocol (\(what)); the device is closed"
        case let .closed(why): "the device is closed: \(why)"
        case let .platform(what, cause): cause.map { "\(what): \($0)" } ?? what
        case let .system(error): "\(error)"
        case .cancelled: "cancelled"
        }
    }
}

/// The netif handshake as pure functions of xenstore values (Linux netfront's rules):
/// the backend's offer → what we use → the keys we publish; our own `mac` and `mtu`.
public enum NetNegotiation {
    /// The most queues we ever ask for, whatever a backend claims.
    public static let maxQueues = 16

    /// Backend keys read before publishing.
    public static let offerKeys = [
        "feature-rx-copy", "feature-sg", "feature-gso-tcpv4", "feature-gso-tcpv6",
        "feature-ipv6-csum-offload", "feature-split-event-channels", "multi-queue-max-queues"
    ]

    /// What this frontend uses on a connection.
    public struct Features: Sendable, Equatable {
        public var queues: Int
        public var splitEventChannels: Bool
        public var scatterGather: Bool
        public var gsoTCPv4: Bool
        public var gsoTCPv6: Bool
        public var checksumOffload: Bool
        public var ipv6ChecksumOffload: Bool
        public var rxNotify: Bool

        /// Data slots one packet may use: 18 (`XEN_NETIF_NR_SLOTS_MIN`, what every backend
        /// must accept) with scatter-gather, otherwise 1.
        public var maxSlotsPerPacket: Int { scatterGather ? Netif.minimumSlotsPerPacket : 1 }
        /// The largest frame: 64 KiB − 1 with scatter-gather, otherwise one page.
        public var maxFrameBytes: Int { scatterGather ? Netif.maxTxPacketSize : XenPage.size }
    }

    static func flag(_ keys: [String: String], _ key: String) throws(NetFrontError) -> Bool {
        switch keys[key] {
        case nil, "0": return false
        case "1": return true
        case let text?: throw .refused("\(key) = \"\(text)\" is not 0 or 1")
        }
    }

    /// The features both sides want. Refuses a backend without `feature-rx-copy` (page
    /// flipping is not supported, as in Linux).
    public static func features(offer: [String: String], options: NetFrontOptions) throws(NetFrontError) -> Features {
        guard try flag(offer, "feature-rx-copy") else { throw .refused("feature-rx-copy is not offered (page flipping is not supported)") }
        var queues = 1
        if let text = offer["multi-queue-max-queues"] {
            guard let most = UInt64(text), most >= 1 else { throw .refused("multi-queue-max-queues = \"\(text)\"") }
            queues = Int(min(most, UInt64(min(max(options.queues, 1), maxQueues))))
        }
        return Features(
            queues: queues,
            splitEventChannels: try flag(offer, "feature-split-event-channels") && options.splitEventChannels,
            scatterGather: try flag(offer, "feature-sg") && options.scatterGather,
            gsoTCPv4: try flag(offer, "feature-gso-tcpv4") && options.gsoTCPv4 && options.scatterGather,
            gsoTCPv6: try flag(offer, "feature-gso-tcpv6") && options.gsoTCPv6 && options.scatterGather,
            checksumOffload: options.checksumOffload,
            ipv6ChecksumOffload: try flag(offer, "feature-ipv6-csum-offload") && options.ipv6ChecksumOffload,
            rxNotify: options.rxNotify)
    }

    /// The ring and channel numbers of one queue.
    public struct QueueKeys: Sendable, Equatable {
        public var txRing: GrantRef
        public var rxRing: GrantRef
        /// One port, or tx then rx when the channels are split.
        public var ports: [EventChannelPort]
        public init(txRing: GrantRef, rxRing: GrantRef, ports: [EventChannelPort]) {
            self.txRing = txRing
            self.rxRing = rxRing
            self.ports = ports
        }
    }

    /// The keys the frontend writes (relative to its device directory) in its one
    /// transaction before Connected.
    public static func frontendKeys(features: Features, queues: [QueueKeys]) -> [(String, String)] {
        precondition(queues.count == features.queues, "one set of keys per queue")
        var keys: [(String, String)] = []
        if features.queues > 1 { keys.append(("multi-queue-num-queues", "\(features.queues)")) }
        for (n, queue) in queues.enumerated() {
            let prefix = features.queues > 1 ? "queue-\(n)/" : ""
            keys.append((prefix + "tx-ring-ref", "\(queue.txRing.rawValue)"))
            keys.append((prefix + "rx-ring-ref", "\(queue.rxRing.rawValue)"))
            if features.splitEventChannels {
                keys.append((prefix + "event-channel-tx", "\(queue.ports[0].rawValue)"))
                keys.append((prefix + "event-channel-rx", "\(queue.ports[1].rawValue)"))
            } else {
                keys.append((prefix + "event-channel", "\(queue.ports[0].rawValue)"))
            }
        }
        keys.append(("request-rx-copy", "1"))
        keys.append(("feature-rx-notify", features.rxNotify ? "1" : "0"))
        keys.append(("feature-sg", features.scatterGather ? "1" : "0"))
        keys.append(("feature-gso-tcpv4", features.gsoTCPv4 ? "1" : "0"))
        keys.append(("feature-gso-tcpv6", features.gsoTCPv6 ? "1" : "0"))
        if !features.checksumOffload { keys.append(("feature-no-csum-offload", "1")) }
        keys.append(("feature-ipv6-csum-offload", features.ipv6ChecksumOffload ? "1" : "0"))
        return keys
    }

    /// Our MAC address, from the `mac` key the toolstack wrote in our own directory.
    public static func mac(_ text: String?) throws(NetFrontError) -> MACAddress {
        guard let text else { throw .refused("no mac key in the device directory") }
        guard let mac = MACAddress(text) else { throw .refused("mac = \"\(text)\" is not xx:xx:xx:xx:xx:xx") }
        guard !mac.isMulticast else { throw .refused("mac = \(mac) is a multicast address") }
        return mac
    }

    /// The MTU from our `mtu` key (1500 when absent), within what the features can carry.
    public static func mtu(_ text: String?, features: Features) throws(NetFrontError) -> Int {
        guard let text else { return 1500 }
        let most = features.maxFrameBytes - 14
        guard let value = Int(text), value >= 68, value <= most else { throw .refused("mtu = \"\(text)\" (68…\(most) with these features)") }
        return value
    }
}
