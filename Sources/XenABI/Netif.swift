/// The PV network protocol, `xen/include/public/io/netif.h`. The layouts have no 64-bit fields,
/// so x86-32 and x86-64 agree.

/// Protocol limits and status codes. C names in each doc.
public enum Netif {
    /// C: `XEN_NETIF_NR_SLOTS_MIN`: slots per packet every back end must accept.
    public static let minimumSlotsPerPacket = 18
    /// C: `XEN_NETIF_MAX_TX_SIZE`: the largest tx packet.
    public static let maxTxPacketSize = 0xFFFF
    /// C: `NETIF_RSP_DROPPED`.
    public static let statusDropped: Int16 = -2
    /// C: `NETIF_RSP_ERROR`.
    public static let statusError: Int16 = -1
    /// C: `NETIF_RSP_OKAY`.
    public static let statusOkay: Int16 = 0
    /// C: `NETIF_RSP_NULL`: the response to a slot that carried extra info.
    public static let statusNull: Int16 = 1

    /// Keeps a flow's frames on one queue (hence in order), on either end: FNV-1a over the
    /// Ethernet addresses and the bytes after the header that hold IPv4 addresses and ports.
    /// (Not Xen's Toeplitz hash: which queue a frame takes is each end's own choice.)
    public static func flowHash(_ frame: [UInt8]) -> Int {
        var hash: UInt32 = 2_166_136_261
        for byte in frame.prefix(38) { hash = (hash ^ UInt32(byte)) &* 16_777_619 }
        return Int(hash)
    }
}

/// Flags of a tx request. C: `NETTXF_*`.
public struct NetTxFlags: OptionSet, Sendable, Hashable {
    public var rawValue: UInt16
    @inlinable public init(rawValue: UInt16) { self.rawValue = rawValue }
    /// C: `NETTXF_csum_blank`: the L4 checksum is not filled in.
    public static let checksumBlank = NetTxFlags(rawValue: 1 << 0)
    /// C: `NETTXF_data_validated`.
    public static let dataValidated = NetTxFlags(rawValue: 1 << 1)
    /// C: `NETTXF_more_data`: the packet continues in the next request.
    public static let moreData = NetTxFlags(rawValue: 1 << 2)
    /// C: `NETTXF_extra_info`: extra-info slots follow.
    public static let extraInfo = NetTxFlags(rawValue: 1 << 3)
}

/// Flags of an rx response. C: `NETRXF_*` (note the swapped csum bits against tx).
public struct NetRxFlags: OptionSet, Sendable, Hashable {
    public var rawValue: UInt16
    @inlinable public init(rawValue: UInt16) { self.rawValue = rawValue }
    /// C: `NETRXF_data_validated`.
    public static let dataValidated = NetRxFlags(rawValue: 1 << 0)
    /// C: `NETRXF_csum_blank`.
    public static let checksumBlank = NetRxFlags(rawValue: 1 << 1)
    /// C: `NETRXF_more_data`.
    public static let moreData = NetRxFlags(rawValue: 1 << 2)
    /// C: `NETRXF_extra_info`.
    public static let extraInfo = NetRxFlags(rawValue: 1 << 3)
    /// C: `NETRXF_gso_prefix` (deprecated).
    public static let gsoPrefix = NetRxFlags(rawValue: 1 << 4)
}

/// A tx request. C: `struct netif_tx_request` (12 bytes).
public struct NetifTxRequest: Sendable, Equatable {
    public var gref: GrantRef
    /// Byte offset of the data in the granted page.
    public var offset: UInt16
    public var flags: NetTxFlags
    public var id: UInt16
    /// First slot: the whole packet's length; later slots: this fragment's.
    public var size: UInt16

    @inlinable
    public init(gref: GrantRef, offset: UInt16, flags: NetTxFlags, id: UInt16, size: UInt16) {
        self.gref = gref
        self.offset = offset
        self.flags = flags
        self.id = id
        self.size = size
    }

    /// C: `sizeof(struct netif_tx_request)`; offsets gref 0, offset 4, flags 6, id 8, size 10.
    public static let wireSize = 12
    public static let grefOffset = 0, offsetOffset = 4, flagsOffset = 6, idOffset = 8, sizeOffset = 10
}

/// A tx response. C: `struct netif_tx_response` (4 bytes).
public struct NetifTxResponse: Sendable, Equatable {
    public var id: UInt16
    /// `NETIF_RSP_*`.
    public var status: Int16
    @inlinable
    public init(id: UInt16, status: Int16) {
        self.id = id
        self.status = status
    }
    public static let wireSize = 4
    public static let idOffset = 0, statusOffset = 2
}

/// An rx request: one writable page posted for the back end to copy into. C: `struct netif_rx_request`.
public struct NetifRxRequest: Sendable, Equatable {
    public var id: UInt16
    public var gref: GrantRef
    @inlinable
    public init(id: UInt16, gref: GrantRef) {
        self.id = id
        self.gref = gref
    }
    public static let wireSize = 8
    public static let idOffset = 0, grefOffset = 4
}

/// An rx response. C: `struct netif_rx_response` (8 bytes).
public struct NetifRxResponse: Sendable, Equatable {
    public var id: UInt16
    /// Where the data starts in the page.
    public var offset: UInt16
    public var flags: NetRxFlags
    /// Bytes in this slot when positive; a `NETIF_RSP_*` error when negative.
    public var status: Int16
    @inlinable
    public init(id: UInt16, offset: UInt16, flags: NetRxFlags, status: Int16) {
        self.id = id
        self.offset = offset
        self.flags = flags
        self.status = status
    }
    public static let wireSize = 8
    public static let idOffset = 0, offsetOffset = 2, flagsOffset = 4, statusOffset = 6
}

/// GSO types. C: `XEN_NETIF_GSO_TYPE_*`.
public enum NetifGSOType: UInt8, Sendable, CaseIterable {
    case none = 0, tcpv4 = 1, tcpv6 = 2
}

/// An extra-info segment, overlaying a tx request or rx response slot. C: `struct netif_extra_info` (8 bytes).
public struct NetifExtraInfo: Sendable, Equatable {
    /// The typed payload. C: `XEN_NETIF_EXTRA_TYPE_*` and the union.
    public enum Payload: Sendable, Equatable {
        /// C: `XEN_NETIF_EXTRA_TYPE_GSO`.
        case gso(size: UInt16, type: NetifGSOType, features: UInt16)
        /// C: `XEN_NETIF_EXTRA_TYPE_MCAST_ADD`.
        case multicastAdd(MACAddress)
        /// C: `XEN_NETIF_EXTRA_TYPE_MCAST_DEL`.
        case multicastDelete(MACAddress)
        /// C: `XEN_NETIF_EXTRA_TYPE_HASH`: hash type bit number, algorithm, value.
        case hash(type: UInt8, algorithm: UInt8, value: UInt32)
    }

    public var payload: Payload
    /// C: `XEN_NETIF_EXTRA_FLAG_MORE`: another extra follows.
    public var more: Bool

    @inlinable
    public init(_ payload: Payload, more: Bool = false) {
        self.payload = payload
        self.more = more
    }

    public static let wireSize = 8
    /// C: `XEN_NETIF_EXTRA_TYPE_NONE/GSO/MCAST_ADD/MCAST_DEL/HASH/MAX`.
    public static let typeNone: UInt8 = 0, typeGSO: UInt8 = 1, typeMulticastAdd: UInt8 = 2,
        typeMulticastDelete: UInt8 = 3, typeHash: UInt8 = 4, typeMax: UInt8 = 5
    /// C: `XEN_NETIF_EXTRA_FLAG_MORE`.
    public static let flagMore: UInt8 = 0x01
    /// C: `XEN_NETIF_GSO_FEATURE_*` is empty in 4.17; offsets of the GSO union.
    public static let gsoSizeOffset = 2, gsoTypeOffset = 4, gsoFeaturesOffset = 6
    public static let hashTypeOffset = 2, hashAlgorithmOffset = 3, hashValueOffset = 4
    public static let multicastAddressOffset = 2

    /// Decodes an extra-info segment from a private copy of a slot.
    public static func decode(_ slot: UnsafeRawBufferPointer) throws(XenABIError) -> NetifExtraInfo {
        try requireBytes(slot, wireSize, "netif_extra_info")
        let type = slot[0]
        let more = slot[1] & flagMore != 0
        switch type {
        case typeGSO:
            let gsoCode = slot[gsoTypeOffset]
            guard let gsoType = NetifGSOType(rawValue: gsoCode) else {
                throw .unknownCode(field: "netif GSO type", value: UInt64(gsoCode))
            }
            return NetifExtraInfo(
                .gso(
                    size: slot.le(UInt16.self, at: gsoSizeOffset), type: gsoType,
                    features: slot.le(UInt16.self, at: gsoFeaturesOffset)), more: more)
        case typeMulticastAdd, typeMulticastDelete:
            let mac = MACAddress(wire: slot, at: multicastAddressOffset)
            return NetifExtraInfo(type == typeMulticastAdd ? .multicastAdd(mac) : .multicastDelete(mac), more: more)
        case typeHash:
            return NetifExtraInfo(
                .hash(
                    type: slot[hashTypeOffset], algorithm: slot[hashAlgorithmOffset],
                    value: slot.le(UInt32.self, at: hashValueOffset)), more: more)
        default:
            throw .unknownCode(field: "netif extra type", value: UInt64(type))
        }
    }

    /// Writes this extra-info segment into a slot.
    public func encode(into slot: UnsafeMutableRawBufferPointer) {
        for index in 0..<Self.wireSize { slot[index] = 0 }
        slot[1] = more ? Self.flagMore : 0
        switch payload {
        case let .gso(size, type, features):
            slot[0] = Self.typeGSO
            slot.storeLE(size, at: Self.gsoSizeOffset)
            slot[Self.gsoTypeOffset] = type.rawValue
            slot.storeLE(features, at: Self.gsoFeaturesOffset)
        case let .multicastAdd(mac), let .multicastDelete(mac):
            if case .multicastAdd = payload { slot[0] = Self.typeMulticastAdd } else { slot[0] = Self.typeMulticastDelete }
            mac.encode(into: slot, at: Self.multicastAddressOffset)
        case let .hash(type, algorithm, value):
            slot[0] = Self.typeHash
            slot[Self.hashTypeOffset] = type
            slot[Self.hashAlgorithmOffset] = algorithm
            slot.storeLE(value, at: Self.hashValueOffset)
        }
    }
}

/// A tx ring slot as the front end writes it: a data request or an extra-info segment (which
/// of the two the previous slot's flags say, so the decoder must be told).
public enum NetifTxSlot: Sendable, Equatable {
    case request(NetifTxRequest)
    case extraInfo(NetifExtraInfo)
}

/// An rx ring slot as the back end writes it.
public enum NetifRxSlot: Sendable, Equatable {
    case response(NetifRxResponse)
    case extraInfo(NetifExtraInfo)
}

/// The netif tx ring. Requests are decoded as data requests; a consumer that saw
/// `extraInfo` on the previous slot decodes the raw slot with ``NetifExtraInfo/decode(_:)``
/// (the back ring hands out copies of raw slots for this).
public struct NetifTxRing: RingProtocol {
    public typealias Request = NetifTxSlot
    public typealias Response = NetifTxResponse
    @inlinable
    public init() {}
    /// C: `sizeof(union netif_tx_sring_entry)`.
    public var slotSize: Int { NetifTxRequest.wireSize }

    @inlinable
    public func encodeRequest(_ request: NetifTxSlot, into slot: UnsafeMutableRawBufferPointer) {
        switch request {
        case let .request(r):
            slot.storeLE(r.gref.rawValue, at: NetifTxRequest.grefOffset)
            slot.storeLE(r.offset, at: NetifTxRequest.offsetOffset)
            slot.storeLE(r.flags.rawValue, at: NetifTxRequest.flagsOffset)
            slot.storeLE(r.id, at: NetifTxRequest.idOffset)
            slot.storeLE(r.size, at: NetifTxRequest.sizeOffset)
        case let .extraInfo(e):
            e.encode(into: slot)
        }
    }

    /// Decodes a data request. Whether a slot is an extra-info segment depends on the slot
    /// before it, so the caller re-decodes those with ``NetifExtraInfo/decode(_:)``.
    @inlinable
    public func decodeRequest(_ slot: UnsafeRawBufferPointer) throws(XenABIError) -> NetifTxSlot {
        try requireBytes(slot, NetifTxRequest.wireSize, "netif_tx_request")
        return .request(
            NetifTxRequest(
                gref: GrantRef(slot.le(UInt32.self, at: NetifTxRequest.grefOffset)),
                offset: slot.le(UInt16.self, at: NetifTxRequest.offsetOffset),
                flags: NetTxFlags(rawValue: slot.le(UInt16.self, at: NetifTxRequest.flagsOffset)),
                id: slot.le(UInt16.self, at: NetifTxRequest.idOffset),
                size: slot.le(UInt16.self, at: NetifTxRequest.sizeOffset)))
    }

    @inlinable
    public func encodeResponse(_ response: NetifTxResponse, into slot: UnsafeMutableRawBufferPointer) {
        slot.storeLE(response.id, at: NetifTxResponse.idOffset)
        slot.storeLE(response.status, at: NetifTxResponse.statusOffset)
    }

    @inlinable
    public func decodeResponse(_ slot: UnsafeRawBufferPointer) throws(XenABIError) -> NetifTxResponse {
        try requireBytes(slot, NetifTxResponse.wireSize, "netif_tx_response")
        return NetifTxResponse(
            id: slot.le(UInt16.self, at: NetifTxResponse.idOffset),
            status: slot.le(Int16.self, at: NetifTxResponse.statusOffset))
    }
}

/// The netif rx ring. Responses are decoded as data responses; extra-info slots (flagged by
/// the previous response) are re-decoded by the caller.
public struct NetifRxRing: RingProtocol {
    public typealias Request = NetifRxRequest
    public typealias Response = NetifRxSlot
    @inlinable
    public init() {}
    /// C: `sizeof(union netif_rx_sring_entry)`.
    public var slotSize: Int { NetifRxRequest.wireSize }

    @inlinable
    public func encodeRequest(_ request: NetifRxRequest, into slot: UnsafeMutableRawBufferPointer) {
        slot.storeLE(request.id, at: NetifRxRequest.idOffset)
        slot.storeLE(UInt16(0), at: 2)
        slot.storeLE(request.gref.rawValue, at: NetifRxRequest.grefOffset)
    }

    @inlinable
    public func decodeRequest(_ slot: UnsafeRawBufferPointer) throws(XenABIError) -> NetifRxRequest {
        try requireBytes(slot, NetifRxRequest.wireSize, "netif_rx_request")
        return NetifRxRequest(
            id: slot.le(UInt16.self, at: NetifRxRequest.idOffset),
            gref: GrantRef(slot.le(UInt32.self, at: NetifRxRequest.grefOffset)))
    }

    @inlinable
    public func encodeResponse(_ response: NetifRxSlot, into slot: UnsafeMutableRawBufferPointer) {
        switch response {
        case let .response(r):
            slot.storeLE(r.id, at: NetifRxResponse.idOffset)
            slot.storeLE(r.offset, at: NetifRxResponse.offsetOffset)
            slot.storeLE(r.flags.rawValue, at: NetifRxResponse.flagsOffset)
            slot.storeLE(r.status, at: NetifRxResponse.statusOffset)
        case let .extraInfo(e):
            e.encode(into: slot)
        }
    }

    @inlinable
    public func decodeResponse(_ slot: UnsafeRawBufferPointer) throws(XenABIError) -> NetifRxSlot {
        try requireBytes(slot, NetifRxResponse.wireSize, "netif_rx_response")
        return .response(
            NetifRxResponse(
                id: slot.le(UInt16.self, at: NetifRxResponse.idOffset),
                offset: slot.le(UInt16.self, at: NetifRxResponse.offsetOffset),
                flags: NetRxFlags(rawValue: slot.le(UInt16.self, at: NetifRxResponse.flagsOffset)),
                status: slot.le(Int16.self, at: NetifRxResponse.statusOffset)))
    }
}
