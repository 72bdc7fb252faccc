/// The NBD protocol's numbers (NetworkBlockDevice/nbd `doc/proto.md`): magics, options, reply
/// types, transmission and command flags, commands, errors. Every integer on the wire is
/// big-endian.
public enum NBD {
    /// `NBDMAGIC`, the first 8 bytes a server sends.
    public static let magic: UInt64 = 0x4e42_444d_4147_4943
    /// `IHAVEOPT`: newstyle negotiation, and the start of each option request.
    public static let optionMagic: UInt64 = 0x4948_4156_454F_5054
    /// C: `NBD_REP_MAGIC`, the start of each option reply.
    public static let replyMagic: UInt64 = 0x0003_e889_0455_65a9
    /// C: `NBD_REQUEST_MAGIC`.
    public static let requestMagic: UInt32 = 0x2560_9513
    /// C: `NBD_SIMPLE_REPLY_MAGIC`.
    public static let simpleReplyMagic: UInt32 = 0x6744_6698
    /// C: `NBD_STRUCTURED_REPLY_MAGIC`.
    public static let structuredReplyMagic: UInt32 = 0x668e_33ef

    /// Handshake flags the server sends. C: `NBD_FLAG_FIXED_NEWSTYLE`, `NBD_FLAG_NO_ZEROES`.
    public static let fixedNewstyle: UInt16 = 1 << 0
    public static let noZeroes: UInt16 = 1 << 1
    /// Client flags. C: `NBD_FLAG_C_FIXED_NEWSTYLE`, `NBD_FLAG_C_NO_ZEROES`.
    public static let clientFixedNewstyle: UInt32 = 1 << 0
    public static let clientNoZeroes: UInt32 = 1 << 1

    /// Option requests. C: `NBD_OPT_*`.
    public enum Option: UInt32, Sendable {
        case exportName = 1, abort = 2, list = 3, startTLS = 5, info = 6, go = 7, structuredReply = 8
        case listMetaContext = 9, setMetaContext = 10
    }

    /// Option reply types. C: `NBD_REP_*` (errors have bit 31 set).
    public enum Reply: UInt32, Sendable {
        case ack = 1, server = 2, info = 3
        case errorUnsupported = 0x8000_0001, errorPolicy = 0x8000_0002, errorInvalid = 0x8000_0003
        case errorPlatform = 0x8000_0004, errorTLSRequired = 0x8000_0005, errorUnknown = 0x8000_0006
        case errorShutdown = 0x8000_0007, errorBlockSizeRequired = 0x8000_0008, errorTooBig = 0x8000_0009
    }

    /// `NBD_OPT_INFO`/`GO` information types. C: `NBD_INFO_*`.
    public enum Info: UInt16, Sendable {
        case export = 0, name = 1, description = 2, blockSize = 3
    }

    /// Transmission flags (per export). C: `NBD_FLAG_*`.
    public struct TransmissionFlags: OptionSet, Sendable, Hashable {
        public let rawValue: UInt16
        public init(rawValue: UInt16) { self.rawValue = rawValue }
        public static let hasFlags = TransmissionFlags(rawValue: 1 << 0)
        public static let readOnly = TransmissionFlags(rawValue: 1 << 1)
        public static let sendFlush = TransmissionFlags(rawValue: 1 << 2)
        public static let sendFUA = TransmissionFlags(rawValue: 1 << 3)
        public static let rotational = TransmissionFlags(rawValue: 1 << 4)
        public static let sendTrim = TransmissionFlags(rawValue: 1 << 5)
        public static let sendWriteZeroes = TransmissionFlags(rawValue: 1 << 6)
        public static let sendDF = TransmissionFlags(rawValue: 1 << 7)
        public static let canMultiConn = TransmissionFlags(rawValue: 1 << 8)
    }

    /// Commands. C: `NBD_CMD_*`.
    public enum Command: UInt16, Sendable {
        case read = 0, write = 1, disconnect = 2, flush = 3, trim = 4, cache = 5, writeZeroes = 6, blockStatus = 7
    }

    /// Command flags. C: `NBD_CMD_FLAG_*`.
    public struct CommandFlags: OptionSet, Sendable, Hashable {
        public let rawValue: UInt16
        public init(rawValue: UInt16) { self.rawValue = rawValue }
        public static let fua = CommandFlags(rawValue: 1 << 0)
        public static let noHole = CommandFlags(rawValue: 1 << 1)
        public static let dontFragment = CommandFlags(rawValue: 1 << 2)
        public static let requestOne = CommandFlags(rawValue: 1 << 3)
        public static let fastZero = CommandFlags(rawValue: 1 << 4)
    }

    /// Structured reply chunk types and flags. C: `NBD_REPLY_TYPE_*`, `NBD_REPLY_FLAG_DONE`.
    public static let chunkDone: UInt16 = 1 << 0
    public static let chunkNone: UInt16 = 0
    public static let chunkOffsetData: UInt16 = 1
    public static let chunkError: UInt16 = 0x8001

    /// Error values in replies (Linux errno numbers, as the protocol defines them).
    public enum Errno: UInt32, Sendable {
        case permission = 1, io = 5, noMemory = 12, invalid = 22, noSpace = 28, overflow = 75
        case notSupported = 95, shutdown = 108
    }
}

/// Big-endian integers appended to a byte array and read from a byte buffer, bounds checked.
public struct NBDBytes {
    public private(set) var bytes: [UInt8] = []

    public init(capacity: Int = 64) { bytes.reserveCapacity(capacity) }

    public mutating func append(_ value: UInt64) {
        for shift in stride(from: 56, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: value >> UInt64(shift))) }
    }
    public mutating func append(_ value: UInt32) {
        for shift in stride(from: 24, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: value >> UInt32(shift))) }
    }
    public mutating func append(_ value: UInt16) {
        bytes.append(UInt8(truncatingIfNeeded: value >> 8))
        bytes.append(UInt8(truncatingIfNeeded: value))
    }
    public mutating func append(contentsOf other: some Sequence<UInt8>) { bytes.append(contentsOf: other) }

    /// A big-endian integer at `offset` of `source`; nil when it does not fit.
    public static func load<T: FixedWidthInteger>(_: T.Type, at offset: Int, of source: some Collection<UInt8>) -> T? {
        let size = MemoryLayout<T>.size
        guard offset >= 0, offset <= source.count - size else { return nil }
        var value: T = 0
        var index = source.index(source.startIndex, offsetBy: offset)
        for _ in 0..<size {
            value = value << 8 | T(source[index])
            index = source.index(after: index)
        }
        return value
    }
}
