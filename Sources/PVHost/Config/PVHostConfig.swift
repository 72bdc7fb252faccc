import Foundation
import XenABI

/// `pvhost run CONFIG`: the domains pvhost will accept, their limits, disks and network
/// interfaces, and the TAP devices that join the switch, as a small JSON file.
///
/// ```json
/// { "domains": [ { "name": "alpha", "pages": 2048, "grantFrames": 8, "eventChannels": 64,
///                  "disks": [ { "devid": 51712, "path": "/var/lib/pvhost/alpha.img" },
///                             { "devid": 51728, "path": "/dev/sdb", "direct": true, "maxQueues": 2 } ],
///                  "nics": [ { "devid": 0, "mac": "00:16:3e:00:00:01" } ] },
///                { "name": "beta", "pages": 2048, "nics": [ { "devid": 0 } ] } ],
///   "taps": [ { "name": "pvtap0", "netns": "lab" } ] }
/// ```
public struct PVHostConfig: Codable, Sendable, Equatable {
    /// A virtual disk: served by pvhost's blkback from `path` as `device/vbd/<devid>`.
    public struct DiskConfig: Codable, Sendable, Equatable {
        /// The vbd number (`virtual-device`), e.g. 51712 for xvda.
        public var devid: Int
        public var path: String
        public var readOnly: Bool?
        /// Logical block size in bytes (default 512).
        public var sectorSize: Int?
        /// Open the file with `O_DIRECT`.
        public var direct: Bool?
        /// Features offered (each defaults to on): flush, barrier, discard, persistent grants.
        public var flush: Bool?, barrier: Bool?, discard: Bool?, persistent: Bool?
        /// Limits offered: indirect segments (0 = none), queues, ring page order.
        public var maxIndirectSegments: Int?, maxQueues: Int?, maxRingPageOrder: Int?
        /// I/O threads per queue (default 8 with `direct`, none otherwise).
        public var ioThreads: Int?
        /// Serve reads from a mapping of the file (default on; never with `direct`).
        public var mappedReads: Bool?
        /// Microseconds each queue's thread polls its ring before sleeping (default 0).
        public var pollMicroseconds: Int?

        public init(devid: Int, path: String, readOnly: Bool? = nil) {
            self.devid = devid
            self.path = path
            self.readOnly = readOnly
        }

        /// The backend settings this entry asks for.
        public var settings: BlockBackend.Settings {
            var s = BlockBackend.Settings()
            s.readOnly = readOnly ?? s.readOnly
            s.sectorSize = sectorSize ?? s.sectorSize
            s.direct = direct ?? s.direct
            s.flush = flush ?? s.flush
            s.barrier = barrier ?? s.barrier
            s.discard = discard ?? s.discard
            s.persistent = persistent ?? s.persistent
            s.maxIndirectSegments = maxIndirectSegments ?? s.maxIndirectSegments
            s.maxQueues = maxQueues ?? s.maxQueues
            s.maxRingPageOrder = maxRingPageOrder ?? s.maxRingPageOrder
            s.ioThreads = ioThreads ?? s.ioThreads
            s.mappedReads = mappedReads ?? s.mappedReads
            s.pollMicroseconds = pollMicroseconds ?? s.pollMicroseconds
            return s
        }
    }

    /// A network interface: served by pvhost's netback as `device/vif/<devid>`, a port of the
    /// switch. A NetFront needs about 520 pages of guest memory (and grants) per queue.
    public struct NicConfig: Codable, Sendable, Equatable {
        public var devid: Int
        /// `xx:xx:xx:xx:xx:xx` (default 00:16:3e, then the domain and device numbers).
        public var mac: String?
        public var mtu: Int?
        /// Features offered (each defaults to on) and the queues offered (default 4).
        public var scatterGather: Bool?, gso: Bool?, ipv6ChecksumOffload: Bool?, splitEventChannels: Bool?
        public var maxQueues: Int?

        public init(devid: Int, mac: String? = nil) {
            self.devid = devid
            self.mac = mac
        }

        /// The backend settings this entry asks for.
        public var settings: NetBackend.Settings {
            var s = NetBackend.Settings()
            s.mac = mac.flatMap { MACAddress($0) }
            s.mtu = mtu
            s.scatterGather = scatterGather ?? s.scatterGather
            s.gsoTCPv4 = gso ?? s.gsoTCPv4
            s.gsoTCPv6 = gso ?? s.gsoTCPv6
            s.ipv6ChecksumOffload = ipv6ChecksumOffload ?? s.ipv6ChecksumOffload
            s.splitEventChannels = splitEventChannels ?? s.splitEventChannels
            s.maxQueues = maxQueues ?? s.maxQueues
            return s
        }
    }

    /// A TAP device pvhost creates and joins to the switch: Linux's stack on the other side.
    public struct TapConfig: Codable, Sendable, Equatable {
        /// The interface name (1…15 bytes).
        public var name: String
        /// A network namespace to move it into (made beforehand with `ip netns add`).
        public var netns: String?
        public init(name: String, netns: String? = nil) {
            self.name = name
            self.netns = netns
        }
    }

    public struct DomainConfig: Codable, Sendable, Equatable {
        public var name: String
        /// Disks given to the domain when it attaches.
        public var disks: [DiskConfig]?
        /// Network interfaces given to the domain when it attaches.
        public var nics: [NicConfig]?
        /// Guest memory in 4 KiB pages (default 256).
        public var pages: Int?
        /// Grant-table frames, 512 entries each (default 4).
        public var grantFrames: Int?
        /// Event channel ports (default 1023).
        public var eventChannels: Int?

        public init(name: String, pages: Int? = nil, grantFrames: Int? = nil, eventChannels: Int? = nil, disks: [DiskConfig]? = nil) {
            self.name = name
            self.disks = disks
            self.pages = pages
            self.grantFrames = grantFrames
            self.eventChannels = eventChannels
        }

        /// The limits this entry asks for.
        public var limits: Domain.Limits {
            var limits = Domain.Limits()
            if let pages { limits.pages = pages }
            if let grantFrames { limits.grantFrames = grantFrames }
            if let eventChannels { limits.eventChannels = eventChannels }
            return limits
        }
    }

    public var domains: [DomainConfig]
    /// TAP devices on the switch.
    public var taps: [TapConfig]?

    public init(domains: [DomainConfig], taps: [TapConfig]? = nil) {
        self.domains = domains
        self.taps = taps
    }

    /// Why a configuration was refused: the file, and what to fix.
    public struct Invalid: Error, CustomStringConvertible, Equatable {
        public let description: String
    }

    /// Reads and checks a configuration file.
    public static func load(_ path: String) throws(Invalid) -> PVHostConfig {
        guard let data = FileManager.default.contents(atPath: path) else { throw Invalid(description: "\(path): cannot read the file") }
        return try parse(data, source: path)
    }

    /// Parses and checks: names unique and non-empty (letters, digits, `-`, `_`), pages 16 to
    /// 262144, grant frames 1 to 64, event channels 1 to 4096.
    public static func parse(_ data: Data, source: String = "config") throws(Invalid) -> PVHostConfig {
        let config: PVHostConfig
        do { config = try JSONDecoder().decode(PVHostConfig.self, from: data) } catch {
            throw Invalid(description: "\(source): not a pvhost configuration (\(error)); expected {\"domains\": [{\"name\": \"alpha\", \"pages\": 256}]}")
        }
        var seen = Set<String>()
        for (index, domain) in config.domains.enumerated() {
            let at = "\(source): domains[\(index)]"
            guard !domain.name.isEmpty, domain.name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") }) else {
                throw Invalid(description: "\(at): name \"\(domain.name)\" must be letters, digits, - or _")
            }
            guard seen.insert(domain.name).inserted else { throw Invalid(description: "\(at): name \"\(domain.name)\" appears twice") }
            if let pages = domain.pages, !(16...262_144).contains(pages) { throw Invalid(description: "\(at): pages \(pages) is outside 16…262144") }
            if let frames = domain.grantFrames, !(1...64).contains(frames) { throw Invalid(description: "\(at): grantFrames \(frames) is outside 1…64") }
            if let ports = domain.eventChannels, !(1...4096).contains(ports) { throw Invalid(description: "\(at): eventChannels \(ports) is outside 1…4096") }
            var devids = Set<Int>()
            for (d, disk) in (domain.disks ?? []).enumerated() {
                guard (1...0xFFFF).contains(disk.devid), devids.insert(disk.devid).inserted else {
                    throw Invalid(description: "\(at).disks[\(d)]: devid \(disk.devid) must be 1…65535 and unique")
                }
                guard !disk.path.isEmpty else { throw Invalid(description: "\(at).disks[\(d)]: path is empty") }
            }
            var nicIDs = Set<Int>()
            for (n, nic) in (domain.nics ?? []).enumerated() {
                guard (0...255).contains(nic.devid), nicIDs.insert(nic.devid).inserted else {
                    throw Invalid(description: "\(at).nics[\(n)]: devid \(nic.devid) must be 0…255 and unique")
                }
                if let text = nic.mac {
                    guard let mac = MACAddress(text), !mac.isMulticast else {
                        throw Invalid(description: "\(at).nics[\(n)]: mac \"\(text)\" is not a unicast xx:xx:xx:xx:xx:xx")
                    }
                }
                if let mtu = nic.mtu, !(68...65517).contains(mtu) { throw Invalid(description: "\(at).nics[\(n)]: mtu \(mtu) is outside 68…65517") }
                if let queues = nic.maxQueues, !(1...16).contains(queues) {
                    throw Invalid(description: "\(at).nics[\(n)]: maxQueues \(queues) is outside 1…16")
                }
            }
        }
        var tapNames = Set<String>()
        for (t, tap) in (config.taps ?? []).enumerated() {
            guard !tap.name.isEmpty, tap.name.utf8.count < 16, !tap.name.contains("/"), !tap.name.contains(" "), tapNames.insert(tap.name).inserted else {
                throw Invalid(description: "\(source): taps[\(t)]: name \"\(tap.name)\" must be 1…15 bytes, no / or space, and unique")
            }
        }
        return config
    }

    /// The entry for a guest attaching as `name`.
    public func domain(named name: String) -> DomainConfig? { domains.first { $0.name == name } }
}
