import XenABI

/// The blkif negotiation, sans I/O: what to ask for given the backend's offer, and what the
/// disk is given its Connected keys. Every value is parsed and checked; absurd limits are
/// clamped to what this frontend supports, impossible disks refused.
public enum BlockNegotiation {
    /// Ring pages per ring, as an order (Linux's `XENBUS_MAX_RING_GRANT_ORDER`).
    public static let maxRingPageOrder = 4
    /// Queues at most (one completion thread each).
    public static let maxQueues = 16

    /// The transport to publish.
    public struct Transport: Sendable, Equatable {
        public let ringPageOrder: Int
        public let queues: Int
    }

    /// The backend keys read before publishing.
    public static let offerKeys = ["max-ring-page-order", "multi-queue-max-queues"]

    /// The backend keys read at Connected.
    public static let diskKeys = [
        "sectors", "info", "sector-size", "physical-sector-size", "feature-flush-cache", "feature-barrier",
        "feature-discard", "discard-granularity", "discard-alignment", "discard-secure",
        "feature-persistent", "feature-max-indirect-segments"
    ]

    static func number(_ keys: [String: String], _ key: String) throws(BlockFrontError) -> UInt64? {
        guard let text = keys[key] else { return nil }
        guard let value = UInt64(text) else { throw .backendMisbehaved("\(key) = \"\(text)\" is not a number") }
        return value
    }

    static func flag(_ keys: [String: String], _ key: String) throws(BlockFrontError) -> Bool {
        try number(keys, key).map { $0 != 0 } ?? false
    }

    /// Ring order and queue count: the smaller of offer, wish and our own limits.
    public static func transport(offer: [String: String], options: BlockFront.Options) throws(BlockFrontError) -> Transport {
        let order = min(try number(offer, "max-ring-page-order") ?? 0, UInt64(min(options.ringPageOrder, maxRingPageOrder)))
        let queues = max(1, min(try number(offer, "multi-queue-max-queues") ?? 1, UInt64(min(options.queues, maxQueues))))
        return Transport(ringPageOrder: Int(order), queues: Int(queues))
    }

    /// The disk, from the backend's keys at Connected, the transport in use, our own
    /// `trusted` key and our options.
    public static func disk(
        backend keys: [String: String], transport: Transport, trusted: String?,
        options: BlockFront.Options
    ) throws(BlockFrontError) -> BlockFront.Info {
        guard let sectors = try number(keys, "sectors"), sectors > 0 else { throw .backendMisbehaved("sectors is missing or 0") }
        guard sectors < UInt64(1) << 54 else { throw .backendMisbehaved("sectors = \(sectors) is beyond any disk (2^63 bytes)") }
        func size(_ key: String, default fallback: UInt64) throws(BlockFrontError) -> Int {
            let value = try number(keys, key) ?? fallback
            guard value >= 512, value <= 65536, value & (value - 1) == 0 else {
                throw .backendMisbehaved("\(key) \(value) is not a power of two from 512 to 64 KiB")
            }
            return Int(value)
        }
        guard keys["sector-size"] != nil else { throw .backendMisbehaved("sector-size is missing") }
        let sectorSize = try size("sector-size", default: 512)
        let physical = try size("physical-sector-size", default: UInt64(sectorSize))
        guard UInt64(sectorSize / Blkif.sectorSize) != 0, sectors % UInt64(sectorSize / Blkif.sectorSize) == 0 else {
            throw .backendMisbehaved("\(sectors) sectors are not whole \(sectorSize)-byte blocks")
        }
        let info = try number(keys, "info") ?? 0
        var discard: BlockFront.Discard?
        if try flag(keys, "feature-discard") {
            let granularity = try number(keys, "discard-granularity") ?? UInt64(sectorSize)
            let alignment = try number(keys, "discard-alignment") ?? 0
            guard granularity > 0, granularity <= 1 << 30, alignment < granularity || granularity == 0 else {
                throw .backendMisbehaved("discard-granularity \(granularity) / discard-alignment \(alignment)")
            }
            discard = BlockFront.Discard(granularity: Int(granularity), alignment: Int(alignment), secure: try flag(keys, "discard-secure"))
        }
        let indirect =
            options.indirectSegments > Blkif.maxSegmentsPerRequest
            ? Int(min(try number(keys, "feature-max-indirect-segments") ?? 0, UInt64(min(options.indirectSegments, Blkif.maxIndirectSegments))))
            : 0
        let persistent = try flag(keys, "feature-persistent") && options.persistentGrants
        return BlockFront.Info(
            sectors: sectors, sectorSize: sectorSize, physicalSectorSize: physical,
            readOnly: info & UInt64(Blkif.vdiskReadOnly) != 0, removable: info & UInt64(Blkif.vdiskRemovable) != 0,
            cdrom: info & UInt64(Blkif.vdiskCDROM) != 0,
            flush: try flag(keys, "feature-flush-cache"), barrier: try flag(keys, "feature-barrier"), discard: discard,
            persistentGrants: persistent,
            indirectSegments: indirect > Blkif.maxSegmentsPerRequest ? indirect : 0,
            queues: transport.queues, ringPages: 1 << transport.ringPageOrder, trusted: trusted != "0")
    }
}
