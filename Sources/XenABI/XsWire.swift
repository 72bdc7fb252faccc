/// The XenStore wire protocol, `xen/include/public/io/xs_wire.h`.

/// A message type. C: `enum xsd_sockmsg_type`.
public enum XsMessageType: UInt32, Sendable, CaseIterable, CustomStringConvertible {
    /// C: `XS_CONTROL` (alias `XS_DEBUG`).
    case control = 0
    case directory = 1
    case read = 2
    case getPerms = 3
    case watch = 4
    case unwatch = 5
    case transactionStart = 6
    case transactionEnd = 7
    case introduce = 8
    case release = 9
    case getDomainPath = 10
    case write = 11
    case mkdir = 12
    case rm = 13
    case setPerms = 14
    case watchEvent = 15
    case error = 16
    case isDomainIntroduced = 17
    case resume = 18
    case setTarget = 19
    // 20 was XS_RESTRICT, removed.
    case resetWatches = 21
    case directoryPart = 22
    /// C: `XS_INVALID`: guaranteed never valid.
    case invalid = 0xFFFF

    /// C: `XS_TYPE_COUNT` in Xen 4.17.
    public static let typeCount: UInt32 = 23

    /// The C name without its `XS_` prefix, as xenstore logs print it.
    public var description: String {
        switch self {
        case .control: "CONTROL"
        case .directory: "DIRECTORY"
        case .read: "READ"
        case .getPerms: "GET_PERMS"
        case .watch: "WATCH"
        case .unwatch: "UNWATCH"
        case .transactionStart: "TRANSACTION_START"
        case .transactionEnd: "TRANSACTION_END"
        case .introduce: "INTRODUCE"
        case .release: "RELEASE"
        case .getDomainPath: "GET_DOMAIN_PATH"
        case .write: "WRITE"
        case .mkdir: "MKDIR"
        case .rm: "RM"
        case .setPerms: "SET_PERMS"
        case .watchEvent: "WATCH_EVENT"
        case .error: "ERROR"
        case .isDomainIntroduced: "IS_DOMAIN_INTRODUCED"
        case .resume: "RESUME"
        case .setTarget: "SET_TARGET"
        case .resetWatches: "RESET_WATCHES"
        case .directoryPart: "DIRECTORY_PART"
        case .invalid: "INVALID"
        }
    }
}

/// The message header. C: `struct xsd_sockmsg` (16 bytes, little-endian on x86).
public struct XsHeader: Sendable, Equatable {
    /// Raw type: an unknown type is answered with ENOSYS, not rejected while framing.
    public var type: UInt32
    public var requestID: UInt32
    public var transactionID: UInt32
    /// Payload bytes after the header.
    public var length: UInt32

    public init(type: UInt32, requestID: UInt32, transactionID: UInt32, length: UInt32) {
        self.type = type
        self.requestID = requestID
        self.transactionID = transactionID
        self.length = length
    }

    public init(type: XsMessageType, requestID: UInt32, transactionID: UInt32 = 0, length: UInt32) {
        self.init(type: type.rawValue, requestID: requestID, transactionID: transactionID, length: length)
    }

    /// The type, when it is one the protocol defines.
    public var messageType: XsMessageType? { XsMessageType(rawValue: type) }

    public static let wireSize = 16
    public static let typeOffset = 0, requestIDOffset = 4, transactionIDOffset = 8, lengthOffset = 12

    /// Decodes a header; the payload length is not judged here (see ``XsWire/payloadMax``).
    public static func decode(_ bytes: UnsafeRawBufferPointer) throws(XenABIError) -> XsHeader {
        try requireBytes(bytes, wireSize, "xsd_sockmsg")
        return XsHeader(
            type: bytes.le(UInt32.self, at: typeOffset),
            requestID: bytes.le(UInt32.self, at: requestIDOffset),
            transactionID: bytes.le(UInt32.self, at: transactionIDOffset),
            length: bytes.le(UInt32.self, at: lengthOffset))
    }

    /// Writes the header into the first 16 bytes of `bytes`.
    public func encode(into bytes: UnsafeMutableRawBufferPointer) {
        precondition(bytes.count >= Self.wireSize, "an xsd_sockmsg needs 16 bytes")
        bytes.storeLE(type, at: Self.typeOffset)
        bytes.storeLE(requestID, at: Self.requestIDOffset)
        bytes.storeLE(transactionID, at: Self.transactionIDOffset)
        bytes.storeLE(length, at: Self.lengthOffset)
    }

    /// The 16 header bytes.
    public var bytes: [UInt8] {
        [UInt8](unsafeUninitializedCapacity: Self.wireSize) { buffer, count in
            encode(into: UnsafeMutableRawBufferPointer(buffer))
            count = Self.wireSize
        }
    }
}

/// An error a xenstore server names in an ERROR reply. C: `xsd_errors[]`, in table order
/// (new errors are only ever appended).
public enum XsErrorName: String, Sendable, CaseIterable, Error {
    case EINVAL, EACCES, EEXIST, EISDIR, ENOENT, ENOMEM, ENOSPC, EIO, ENOTEMPTY, ENOSYS, EROFS, EBUSY, EAGAIN,
        EISCONN, E2BIG, EPERM

    /// The Linux errno value of this name (x86 and Arm agree).
    public var errno: Int32 {
        switch self {
        case .EINVAL: 22
        case .EACCES: 13
        case .EEXIST: 17
        case .EISDIR: 21
        case .ENOENT: 2
        case .ENOMEM: 12
        case .ENOSPC: 28
        case .EIO: 5
        case .ENOTEMPTY: 39
        case .ENOSYS: 38
        case .EROFS: 30
        case .EBUSY: 16
        case .EAGAIN: 11
        case .EISCONN: 106
        case .E2BIG: 7
        case .EPERM: 1
        }
    }
}

/// Limits, ring layout and feature bits of XenStore.
public enum XsWire {
    /// C: `XENSTORE_PAYLOAD_MAX`: payload bytes in either direction, header not counted.
    public static let payloadMax = 4096
    /// C: `XENSTORE_ABS_PATH_MAX`.
    public static let absolutePathMax = 3072
    /// C: `XENSTORE_REL_PATH_MAX`.
    public static let relativePathMax = 2048
    /// C: `XENSTORE_RING_SIZE`: bytes of each direction's ring.
    public static let ringSize = 1024
    /// Linux `/dev/xen/xenbus` buffers header and payload in one 4096-byte page.
    public static let xenbusDevicePayloadMax = 4096 - XsHeader.wireSize

    /// C: `XENSTORE_SERVER_FEATURE_RECONNECTION`.
    public static let serverFeatureReconnection: UInt32 = 1
    /// C: `XENSTORE_SERVER_FEATURE_ERROR`.
    public static let serverFeatureError: UInt32 = 2
    /// C: `XENSTORE_CONNECTED`, `XENSTORE_RECONNECT`.
    public static let connected: UInt32 = 0, reconnecting: UInt32 = 1
    /// C: `XENSTORE_ERROR_NONE/COMM/RINGIDX/PROTO`.
    public static let errorNone: UInt32 = 0, errorCommunication: UInt32 = 1, errorRingIndex: UInt32 = 2,
        errorProtocol: UInt32 = 3
    /// C: `XS_WRITE_NONE`, `XS_WRITE_CREATE`, `XS_WRITE_CREATE_EXCL` (legacy write flags).
    public static let writeNone = "NONE", writeCreate = "CREATE", writeCreateExclusive = "CREATE|EXCL"
}

/// Byte offsets of the domain's xenstore ring page. C: `struct xenstore_domain_interface` (Xen 4.17).
///
/// ```c
/// struct xenstore_domain_interface {
///     char req[1024];            /* 0    guest -> xenstored */
///     char rsp[1024];            /* 1024 xenstored -> guest */
///     XENSTORE_RING_IDX req_cons, req_prod;   /* 2048, 2052 */
///     XENSTORE_RING_IDX rsp_cons, rsp_prod;   /* 2056, 2060 */
///     uint32_t server_features;  /* 2064 */
///     uint32_t connection;       /* 2068 */
///     uint32_t error;            /* 2072 */
/// };
/// ```
public enum XenstoreDomainInterface {
    public static let request = 0
    public static let response = 1024
    public static let requestConsumer = 2048
    public static let requestProducer = 2052
    public static let responseConsumer = 2056
    public static let responseProducer = 2060
    public static let serverFeatures = 2064
    public static let connection = 2068
    public static let error = 2072
    /// C: `sizeof(struct xenstore_domain_interface)` in 4.17.
    public static let size = 2076
}
