import XenABI

/// How one outgoing frame goes on the tx ring, sans I/O: the frame is copied into granted
/// pages from offset 0, one page per data slot; the first slot carries the whole frame's
/// length (netif's rule), later slots their own; `more_data` chains the data slots; a GSO
/// frame's first slot says `extra_info` and one GSO extra-info slot follows it.
public struct TxPlan: Sendable, Equatable {
    /// Offloads asked for one frame.
    public struct Offload: Sendable, Equatable {
        /// The L4 checksum is left blank for the backend (`csum_blank` + `data_validated`).
        public var checksumBlank = false
        /// A large TCP segment to be cut by the other side at `gsoSize` bytes of payload.
        public var gso: (type: NetifGSOType, size: UInt16)?

        public init(checksumBlank: Bool = false, gso: (type: NetifGSOType, size: UInt16)? = nil) {
            self.checksumBlank = checksumBlank
            self.gso = gso
        }

        public static func == (a: Offload, b: Offload) -> Bool {
            a.checksumBlank == b.checksumBlank && a.gso?.type == b.gso?.type && a.gso?.size == b.gso?.size
        }
    }

    /// One data slot: `length` bytes of the frame from `frameOffset`, at offset 0 of its page.
    public struct DataSlot: Sendable, Equatable {
        public let frameOffset: Int
        public let length: Int
        /// The value of the slot's `size` field (the frame's length in the first slot).
        public let sizeField: UInt16
        public let flags: NetTxFlags
    }

    /// The first data slot, and the others (apart: most frames take one slot, and then
    /// planning allocates nothing).
    public let first: DataSlot
    public let rest: [DataSlot]
    /// Every data slot, in order.
    public var data: [DataSlot] { [first] + rest }
    /// Data slots: pages the frame occupies.
    public var dataSlots: Int { 1 + rest.count }
    /// The extra-info slot after the first data slot, if any.
    public let extra: NetifExtraInfo?
    /// Ring slots the frame takes (data and extra).
    public var slots: Int { dataSlots + (extra == nil ? 0 : 1) }

    /// Plans `frameBytes` bytes under the negotiated `features`.
    ///
    /// - Throws: ``NetFrontError/badFrame(_:)`` for a frame shorter than an Ethernet header,
    ///   longer than the features carry, or an offload not negotiated.
    public init(frameBytes: Int, offload: Offload = Offload(), features: NetNegotiation.Features) throws(NetFrontError) {
        guard frameBytes >= 14 else { throw .badFrame("\(frameBytes) bytes is shorter than an Ethernet header") }
        guard frameBytes <= features.maxFrameBytes else {
            throw .badFrame("\(frameBytes) bytes is over \(features.maxFrameBytes)\(features.scatterGather ? "" : " (no feature-sg: one page)")")
        }
        guard !offload.checksumBlank || features.checksumOffload || features.ipv6ChecksumOffload else {
            throw .badFrame("a blank checksum, and checksum offload is off")
        }
        var extra: NetifExtraInfo?
        if let gso = offload.gso {
            let allowed = gso.type == .tcpv4 ? features.gsoTCPv4 : gso.type == .tcpv6 ? features.gsoTCPv6 : false
            guard allowed, gso.size > 0 else { throw .badFrame("GSO \(gso.type) size \(gso.size) was not negotiated") }
            extra = NetifExtraInfo(.gso(size: gso.size, type: gso.type, features: 0))
        }
        let pages = (frameBytes + XenPage.size - 1) / XenPage.size
        guard pages <= features.maxSlotsPerPacket else { throw .badFrame("\(pages) slots is over \(features.maxSlotsPerPacket)") }
        func slot(_ page: Int) -> DataSlot {
            let offset = page * XenPage.size
            let length = min(XenPage.size, frameBytes - offset)
            var flags: NetTxFlags = []
            if page + 1 < pages { flags.insert(.moreData) }
            if page == 0 {
                if offload.checksumBlank || offload.gso != nil { flags.formUnion([.checksumBlank, .dataValidated]) }
                if extra != nil { flags.insert(.extraInfo) }
            }
            return DataSlot(frameOffset: offset, length: length, sizeField: UInt16(page == 0 ? frameBytes : length), flags: flags)
        }
        first = slot(0)
        rest = pages > 1 ? (1..<pages).map(slot) : []
        self.extra = extra
    }
}
