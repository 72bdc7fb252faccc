import Foundation

/// `pvhost run CONFIG`: the domains pvhost will accept, their limits and their disks, as a
/// small JSON file. (NICs join it with the net backend.)
///
/// ```json
/// { "domains": [ { "name": "alpha", "pages": 512, "grantFrames": 8, "eventChannels": 64,
///                  "disks": [ { "devid": 51712, "path": "/var/lib/pvhost/alpha.img" },
///                             { "devid": 51728, "path": "/dev/sdb", "direct": true, "maxQueues": 2 } ] },
///                { "name": "beta" } ] }
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
            return s
        }
    }

    public struct DomainConfig: Codable, Sendable, Equatable {
        public var name: String
        /// Disks given to the domain when it attaches.
        public var disks: [DiskConfig]?
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

    public init(domains: [DomainConfig]) { self.domains = domains }

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
        }
        return config
    }

    /// The entry for a guest attaching as `name`.
    public func domain(named name: String) -> DomainConfig? { domains.first { $0.name == name } }
}
