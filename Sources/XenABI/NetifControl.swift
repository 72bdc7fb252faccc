/// The optional netif control ring (`feature-ctrl-ring`), `xen/include/public/io/netif.h`.

/// Control message types. C: `XEN_NETIF_CTRL_TYPE_*`.
public enum NetifControlType: UInt16, Sendable, CaseIterable {
    case invalid = 0
    case getHashFlags = 1
    case setHashFlags = 2
    case setHashKey = 3
    case getHashMappingSize = 4
    case setHashMappingSize = 5
    case setHashMapping = 6
    case setHashAlgorithm = 7
    case getGrefMappingSize = 8
    case addGrefMapping = 9
    case delGrefMapping = 10
}

/// Control statuses. C: `XEN_NETIF_CTRL_STATUS_*`.
public enum NetifControlStatus: UInt32, Sendable, CaseIterable {
    case success = 0
    case notSupported = 1
    case invalidParameter = 2
    case bufferOverflow = 3
}

/// Hash algorithms and hash-type bits. C: `XEN_NETIF_CTRL_HASH_ALGORITHM_*`, `XEN_NETIF_CTRL_HASH_TYPE_*`.
public enum NetifHash {
    public static let algorithmNone: UInt32 = 0, algorithmToeplitz: UInt32 = 1
    public static let typeIPv4: UInt32 = 1 << 0, typeIPv4TCP: UInt32 = 1 << 1
    public static let typeIPv6: UInt32 = 1 << 2, typeIPv6TCP: UInt32 = 1 << 3
}

/// A control request. C: `struct xen_netif_ctrl_request` (16 bytes).
public struct NetifControlRequest: Sendable, Equatable {
    public var id: UInt16
    /// Raw type: a back end answers unknown types with `notSupported`.
    public var type: UInt16
    public var data: (UInt32, UInt32, UInt32)

    public init(id: UInt16, type: NetifControlType, data: (UInt32, UInt32, UInt32) = (0, 0, 0)) {
        self.init(id: id, rawType: type.rawValue, data: data)
    }
    public init(id: UInt16, rawType: UInt16, data: (UInt32, UInt32, UInt32)) {
        self.id = id
        self.type = rawType
        self.data = data
    }
    public static func == (a: Self, b: Self) -> Bool { a.id == b.id && a.type == b.type && a.data == b.data }

    public static let wireSize = 16
    public static let idOffset = 0, typeOffset = 2, dataOffset = 4
}

/// A control response. C: `struct xen_netif_ctrl_response` (12 bytes).
public struct NetifControlResponse: Sendable, Equatable {
    public var id: UInt16
    public var type: UInt16
    public var status: UInt32
    public var data: UInt32
    public init(id: UInt16, type: UInt16, status: UInt32, data: UInt32) {
        self.id = id
        self.type = type
        self.status = status
        self.data = data
    }
    public static let wireSize = 12
    public static let idOffset = 0, typeOffset = 2, statusOffset = 4, dataOffset = 8
}

/// An entry of a gref mapping page. C: `struct xen_netif_gref` (8 bytes).
public struct NetifGref: Sendable, Equatable {
    public var ref: GrantRef
    /// Bit 0: `XEN_NETIF_CTRL_GREF_FLAG_RO`.
    public var flags: UInt16
    public var status: UInt16
    public static let wireSize = 8
    public static let refOffset = 0, flagsOffset = 4, statusOffset = 6
}

/// The netif control ring.
public struct NetifControlRing: RingProtocol {
    public typealias Request = NetifControlRequest
    public typealias Response = NetifControlResponse
    public init() {}
    /// C: `sizeof(union xen_netif_ctrl_sring_entry)`.
    public var slotSize: Int { NetifControlRequest.wireSize }

    @inlinable
    public func encodeRequest(_ r: NetifControlRequest, into slot: UnsafeMutableRawBufferPointer) {
        slot.storeLE(r.id, at: NetifControlRequest.idOffset)
        slot.storeLE(r.type, at: NetifControlRequest.typeOffset)
        slot.storeLE(r.data.0, at: NetifControlRequest.dataOffset)
        slot.storeLE(r.data.1, at: NetifControlRequest.dataOffset + 4)
        slot.storeLE(r.data.2, at: NetifControlRequest.dataOffset + 8)
    }

    @inlinable
    public func decodeRequest(_ slot: UnsafeRawBufferPointer) throws(XenABIError) -> NetifControlRequest {
        try requireBytes(slot, NetifControlRequest.wireSize, "xen_netif_ctrl_request")
        return NetifControlRequest(
            id: slot.le(UInt16.self, at: NetifControlRequest.idOffset),
            rawType: slot.le(UInt16.self, at: NetifControlRequest.typeOffset),
            data: (
                slot.le(UInt32.self, at: NetifControlRequest.dataOffset),
                slot.le(UInt32.self, at: NetifControlRequest.dataOffset + 4),
                slot.le(UInt32.self, at: NetifControlRequest.dataOffset + 8)
            ))
    }

    @inlinable
    public func encodeResponse(_ r: NetifControlResponse, into slot: UnsafeMutableRawBufferPointer) {
        slot.storeLE(r.id, at: NetifControlResponse.idOffset)
        slot.storeLE(r.type, at: NetifControlResponse.typeOffset)
        slot.storeLE(r.status, at: NetifControlResponse.statusOffset)
        slot.storeLE(r.data, at: NetifControlResponse.dataOffset)
    }

    @inlinable
    public func decodeResponse(_ slot: UnsafeRawBufferPointer) throws(XenABIError) -> NetifControlResponse {
        try requireBytes(slot, NetifControlResponse.wireSize, "xen_netif_ctrl_response")
        return NetifControlResponse(
            id: slot.le(UInt16.self, at: NetifControlResponse.idOffset),
            type: slot.le(UInt16.self, at: NetifControlResponse.typeOffset),
            status: slot.le(UInt32.self, at: NetifControlResponse.statusOffset),
            data: slot.le(UInt32.self, at: NetifControlResponse.dataOffset))
    }
}
