/// The PV block protocol, `xen/include/public/io/blkif.h`.

/// A blkif operation code. C: `BLKIF_OP_*`.
public enum BlkifOperation: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    /// C: `BLKIF_OP_READ`.
    case read = 0
    /// C: `BLKIF_OP_WRITE`.
    case write = 1
    /// C: `BLKIF_OP_WRITE_BARRIER` (needs `feature-barrier`).
    case writeBarrier = 2
    /// C: `BLKIF_OP_FLUSH_DISKCACHE` (needs `feature-flush-cache`).
    case flushDiskCache = 3
    /// C: `BLKIF_OP_RESERVED_1` (SLES device-specific).
    case reserved1 = 4
    /// C: `BLKIF_OP_DISCARD` (needs `feature-discard`).
    case discard = 5
    /// C: `BLKIF_OP_INDIRECT` (needs `feature-max-indirect-segments`).
    case indirect = 6

    public var description: String {
        switch self {
        case .read: "read"
        case .write: "write"
        case .writeBarrier: "write-barrier"
        case .flushDiskCache: "flush-diskcache"
        case .reserved1: "reserved-1"
        case .discard: "discard"
        case .indirect: "indirect"
        }
    }
}

/// Protocol limits. C names in each doc.
public enum Blkif {
    /// C: `BLKIF_MAX_SEGMENTS_PER_REQUEST`.
    public static let maxSegmentsPerRequest = 11
    /// C: `BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST`.
    public static let maxIndirectPagesPerRequest = 8
    /// Segments in one indirect page: 4096 / 8. C: `BLKIF_SEGS_PER_INDIRECT_FRAME`.
    public static let segmentsPerIndirectPage = XenPage.size / BlkifSegment.wireSize
    /// The largest segment count an indirect request can describe.
    public static let maxIndirectSegments = maxIndirectPagesPerRequest * segmentsPerIndirectPage
    /// Sector unit of every blkif field: always 512 bytes, whatever `sector-size` says.
    public static let sectorSize = 512
    /// C: `BLKIF_DISCARD_SECURE`.
    public static let discardSecureFlag: UInt8 = 0x01
    /// C: `VDISK_CDROM`, `VDISK_REMOVABLE`, `VDISK_READONLY` (backend node `info`).
    public static let vdiskCDROM: UInt32 = 0x1, vdiskRemovable: UInt32 = 0x2, vdiskReadOnly: UInt32 = 0x4
}

/// The ABI a blkif ring is laid out in: the frontend's `protocol` node chooses it.
public enum BlkifABI: String, Sendable, CaseIterable {
    /// C: `XEN_IO_PROTO_ABI_X86_64`, the native layout on x86-64.
    case x86_64 = "x86_64-abi"
    /// C: `XEN_IO_PROTO_ABI_X86_32`: 64-bit fields aligned to 4.
    case x86_32 = "x86_32-abi"

    /// Byte offsets of this ABI's structures.
    public var layout: BlkifLayout {
        switch self {
        case .x86_64: .x86_64
        case .x86_32: .x86_32
        }
    }
}

/// Byte offsets of the blkif structures in one ABI. Checked against the C headers.
public struct BlkifLayout: Sendable, Equatable {
    /// `struct blkif_request`: size and fields.
    public let requestSize, requestOperation, requestSegmentCount, requestHandle, requestID, requestSector, requestSegments: Int
    /// `struct blkif_request_discard`.
    public let discardSize, discardFlag, discardHandle, discardID, discardSector, discardSectorCount: Int
    /// `struct blkif_request_indirect`.
    public let indirectSize, indirectOperation, indirectSegmentCount, indirectID, indirectSector, indirectHandle, indirectGrants: Int
    /// `struct blkif_response`.
    public let responseSize, responseID, responseOperation, responseStatus: Int

    /// Size of `union blkif_sring_entry`.
    public var slotSize: Int { max(requestSize, responseSize) }

    /// The x86-64 layout (`x86_64-abi`).
    public static let x86_64 = BlkifLayout(
        requestSize: 112, requestOperation: 0, requestSegmentCount: 1, requestHandle: 2, requestID: 8,
        requestSector: 16, requestSegments: 24,
        discardSize: 32, discardFlag: 1, discardHandle: 2, discardID: 8, discardSector: 16, discardSectorCount: 24,
        indirectSize: 64, indirectOperation: 1, indirectSegmentCount: 2, indirectID: 8, indirectSector: 16,
        indirectHandle: 24, indirectGrants: 28,
        responseSize: 16, responseID: 0, responseOperation: 8, responseStatus: 10)

    /// The i386 layout (`x86_32-abi`): `uint64_t` is 4-aligned.
    public static let x86_32 = BlkifLayout(
        requestSize: 108, requestOperation: 0, requestSegmentCount: 1, requestHandle: 2, requestID: 4,
        requestSector: 12, requestSegments: 20,
        discardSize: 28, discardFlag: 1, discardHandle: 2, discardID: 4, discardSector: 12, discardSectorCount: 20,
        indirectSize: 64, indirectOperation: 1, indirectSegmentCount: 2, indirectID: 4, indirectSector: 12,
        indirectHandle: 20, indirectGrants: 24,
        responseSize: 12, responseID: 0, responseOperation: 8, responseStatus: 10)
}

/// One data page of a request. C: `struct blkif_request_segment` (8 bytes).
///
/// Held as its little-endian wire word (gref in bits 0–31, `first_sect` in 32–39, `last_sect`
/// in 40–47, padding above), so that copying segments in and out of slots moves whole words.
/// The padding of a decoded segment is whatever the peer wrote; it takes part in nothing.
public struct BlkifSegment: Sendable, Equatable {
    @usableFromInline var word: UInt64

    @inlinable public static func == (a: BlkifSegment, b: BlkifSegment) -> Bool {
        (a.word ^ b.word) & 0xFFFF_FFFF_FFFF == 0
    }

    @inlinable
    public init(gref: GrantRef, firstSector: UInt8, lastSector: UInt8) {
        word = UInt64(gref.rawValue) | UInt64(firstSector) << 32 | UInt64(lastSector) << 40
    }

    @inlinable init(word: UInt64) { self.word = word }

    /// Grant of the 4 KiB data page.
    @inlinable public var gref: GrantRef {
        get { GrantRef(UInt32(truncatingIfNeeded: word)) }
        set { word = word & ~0xFFFF_FFFF | UInt64(newValue.rawValue) }
    }
    /// First 512-byte sector used in the page (inclusive, 0...7).
    @inlinable public var firstSector: UInt8 {
        get { UInt8(truncatingIfNeeded: word >> 32) }
        set { word = word & ~(0xFF << 32) | UInt64(newValue) << 32 }
    }
    /// Last 512-byte sector used in the page (inclusive, firstSector...7).
    @inlinable public var lastSector: UInt8 {
        get { UInt8(truncatingIfNeeded: word >> 40) }
        set { word = word & ~(0xFF << 40) | UInt64(newValue) << 40 }
    }

    /// C: `sizeof(struct blkif_request_segment)`.
    public static let wireSize = 8
    /// Offsets: `gref` 0, `first_sect` 4, `last_sect` 5.
    public static let grefOffset = 0, firstSectorOffset = 4, lastSectorOffset = 5

    /// Byte offset of the data in the page.
    public var byteOffset: Int { Int(firstSector) * Blkif.sectorSize }
    /// Bytes this segment moves.
    public var byteCount: Int { (Int(lastSector) - Int(firstSector) + 1) * Blkif.sectorSize }

    /// Reads a segment at `offset` in one 64-bit load, rejecting a sector range outside the page.
    @inlinable
    static func decode(_ buffer: UnsafeRawBufferPointer, at offset: Int, index: Int) throws(XenABIError) -> BlkifSegment {
        let segment = BlkifSegment(word: buffer.le(UInt64.self, at: offset) & 0xFFFF_FFFF_FFFF)
        let first = segment.firstSector, last = segment.lastSector
        guard first <= last, last < 8 else { throw .badSegmentSectors(index: index, first: first, last: last) }
        return segment
    }

    /// Writes the segment, padding zeroed, in one 64-bit store.
    @inlinable
    func encode(_ buffer: UnsafeMutableRawBufferPointer, at offset: Int) {
        buffer.storeLE(word, at: offset)
    }

    /// Decodes the packed segment array of an indirect page.
    ///
    /// - Parameters:
    ///   - page: a private copy of the indirect page (the caller copies it out of the granted page).
    ///   - count: segments in this page, at most 512.
    public static func decodeIndirectPage(_ page: UnsafeRawBufferPointer, count: Int) throws(XenABIError) -> [BlkifSegment] {
        guard count <= Blkif.segmentsPerIndirectPage else {
            throw .countOutOfRange(field: "indirect page segments", value: count, limit: Blkif.segmentsPerIndirectPage)
        }
        try requireBytes(page, count * wireSize, "indirect page")
        var result: [BlkifSegment] = []
        result.reserveCapacity(count)
        for index in 0..<count {
            result.append(try decode(page, at: index * wireSize, index: index))
        }
        return result
    }

    /// Writes segments into an indirect page, packed.
    @inlinable
    public static func encodeIndirectPage(_ segments: some Collection<BlkifSegment>, into page: UnsafeMutableRawBufferPointer) {
        precondition(
            segments.count <= Blkif.segmentsPerIndirectPage && page.count >= segments.count * wireSize,
            "too many segments for one indirect page")
        for (index, segment) in segments.enumerated() { segment.encode(page, at: index * wireSize) }
    }
}

/// Up to eleven segments stored inline (no allocation on the data path).
public struct BlkifSegmentList: RandomAccessCollection, Sendable, Equatable, ExpressibleByArrayLiteral {
    @usableFromInline var storage = InlineArray<11, BlkifSegment>(repeating: BlkifSegment(word: 0))
    @usableFromInline var _count = 0
    /// Segments held.
    @inlinable public var count: Int { _count }

    @inlinable public init() {}
    public init(arrayLiteral elements: BlkifSegment...) { for element in elements { append(element) } }
    public init(_ elements: some Sequence<BlkifSegment>) { for element in elements { append(element) } }

    @inlinable public var startIndex: Int { 0 }
    @inlinable public var endIndex: Int { count }
    @inlinable public subscript(position: Int) -> BlkifSegment {
        get {
            precondition(position >= 0 && position < count, "segment index out of range")
            return storage[position]
        }
        set {
            precondition(position >= 0 && position < count, "segment index out of range")
            storage[position] = newValue
        }
    }

    /// Adds a segment. Traps past eleven: that is a programming error of the caller.
    @inlinable public mutating func append(_ segment: BlkifSegment) {
        precondition(count < Blkif.maxSegmentsPerRequest, "a blkif request holds at most 11 segments")
        storage[_count] = segment
        _count += 1
    }

    public static func == (a: BlkifSegmentList, b: BlkifSegmentList) -> Bool { a.elementsEqual(b) }

    /// Copies the packed wire segment array at `offset` (all eleven: the array has a fixed size in
    /// every layout, and a fixed-size move compiles to a few vector moves), then checks the sector
    /// range of the `count` in use.
    @inlinable
    init(copyingWordsFrom slot: UnsafeRawBufferPointer, at offset: Int, count: Int) throws(XenABIError) {
        precondition(offset + Blkif.maxSegmentsPerRequest * BlkifSegment.wireSize <= slot.count, "segment array outside the slot")
        withUnsafeMutableBytes(of: &storage) { words in
            words.baseAddress!.copyMemory(from: slot.baseAddress! + offset, byteCount: Blkif.maxSegmentsPerRequest * BlkifSegment.wireSize)
        }
        _count = count
        for index in 0..<count {
            let segment = storage[index]
            // Wire words are little-endian; so is every host PVKit runs on.
            let first = segment.firstSector, last = segment.lastSector
            guard first <= last, last < 8 else { throw .badSegmentSectors(index: index, first: first, last: last) }
        }
    }

    /// Writes the whole segment array in one fixed-size move. Entries past `count` are ignored
    /// by every reader (zero for lists built with `append`; for a decoded list, what the peer sent).
    @inlinable
    func copyWords(to slot: UnsafeMutableRawBufferPointer, at offset: Int) {
        precondition(offset + Blkif.maxSegmentsPerRequest * BlkifSegment.wireSize <= slot.count, "segment array outside the slot")
        withUnsafeBytes(of: storage) { words in
            (slot.baseAddress! + offset).copyMemory(from: words.baseAddress!, byteCount: Blkif.maxSegmentsPerRequest * BlkifSegment.wireSize)
        }
    }
}

/// A read, write, barrier or flush request. C: `struct blkif_request`.
public struct BlkifIORequest: Sendable, Equatable {
    /// `.read`, `.write`, `.writeBarrier`, `.flushDiskCache` or `.reserved1`.
    public var operation: BlkifOperation
    /// C: `handle` (`blkif_vdev_t`).
    public var handle: UInt16
    /// Opaque id echoed in the response.
    public var id: UInt64
    /// Start sector, in 512-byte units.
    public var sector: UInt64
    /// The data pages.
    public var segments: BlkifSegmentList

    @inlinable
    public init(operation: BlkifOperation, handle: UInt16, id: UInt64, sector: UInt64, segments: BlkifSegmentList = BlkifSegmentList()) {
        precondition(operation != .discard && operation != .indirect, "use BlkifDiscardRequest or BlkifIndirectRequest")
        self.operation = operation
        self.handle = handle
        self.id = id
        self.sector = sector
        self.segments = segments
    }
}

/// A discard request. C: `struct blkif_request_discard`.
public struct BlkifDiscardRequest: Sendable, Equatable {
    /// `BLKIF_DISCARD_SECURE` in `flag`.
    public var secure: Bool
    public var handle: UInt16
    public var id: UInt64
    /// Start sector, in 512-byte units.
    public var sector: UInt64
    /// Length in 512-byte sectors.
    public var sectorCount: UInt64

    @inlinable
    public init(secure: Bool = false, handle: UInt16, id: UInt64, sector: UInt64, sectorCount: UInt64) {
        self.secure = secure
        self.handle = handle
        self.id = id
        self.sector = sector
        self.sectorCount = sectorCount
    }
}

/// A request whose segments live in granted indirect pages. C: `struct blkif_request_indirect`.
///
/// A trivial value (no references), so requests copy as plain bytes on the data path.
public struct BlkifIndirectRequest: Sendable, Equatable {
    /// `.read` or `.write`. C: `indirect_op`.
    public var operation: BlkifOperation
    /// Segments described by the indirect pages (at most 4096; the backend's
    /// `feature-max-indirect-segments` is the real bound).
    public var segmentCount: UInt16
    public var handle: UInt16
    public var id: UInt64
    public var sector: UInt64
    @usableFromInline var grants = InlineArray<8, GrantRef>(repeating: GrantRef(0))

    /// - Parameter indirectGrants: grants of the indirect pages, `ceil(segmentCount / 512)` of them.
    @inlinable
    public init(
        operation: BlkifOperation, segmentCount: UInt16, handle: UInt16, id: UInt64, sector: UInt64,
        indirectGrants: some Collection<GrantRef>
    ) {
        precondition(
            indirectGrants.count == Self.pagesNeeded(segments: Int(segmentCount)),
            "an indirect request needs ceil(segments / 512) indirect pages")
        self.operation = operation
        self.segmentCount = segmentCount
        self.handle = handle
        self.id = id
        self.sector = sector
        for (index, gref) in indirectGrants.enumerated() { grants[index] = gref }
    }

    /// Grants of the indirect pages, in order.
    public var indirectGrants: [GrantRef] { (0..<pageCount).map { grants[$0] } }

    /// Indirect pages this request uses.
    @inlinable public var pageCount: Int { Self.pagesNeeded(segments: Int(segmentCount)) }

    /// The grant of indirect page `index`.
    @inlinable public func indirectGrant(_ index: Int) -> GrantRef {
        precondition(index >= 0 && index < pageCount, "indirect page index out of range")
        return grants[index]
    }

    /// Indirect pages needed for `segments` segments.
    @inlinable
    public static func pagesNeeded(segments: Int) -> Int {
        (segments + Blkif.segmentsPerIndirectPage - 1) / Blkif.segmentsPerIndirectPage
    }

    public static func == (a: Self, b: Self) -> Bool {
        a.operation == b.operation && a.segmentCount == b.segmentCount && a.handle == b.handle && a.id == b.id
            && a.sector == b.sector && a.indirectGrants == b.indirectGrants
    }
}

/// Anything a blkif front end may put in a request slot.
public enum BlkifRequest: Sendable, Equatable {
    case io(BlkifIORequest)
    case discard(BlkifDiscardRequest)
    case indirect(BlkifIndirectRequest)

    /// The id the response will carry (settable: a frontend re-issuing a request on a new
    /// ring gives it that ring's slot).
    public var id: UInt64 {
        get {
            switch self {
            case let .io(r): r.id
            case let .discard(r): r.id
            case let .indirect(r): r.id
            }
        }
        set {
            switch self {
            case var .io(r): r.id = newValue; self = .io(r)
            case var .discard(r): r.id = newValue; self = .discard(r)
            case var .indirect(r): r.id = newValue; self = .indirect(r)
            }
        }
    }

    /// The operation code written in the slot's first byte.
    public var operation: BlkifOperation {
        switch self {
        case let .io(r): r.operation
        case .discard: .discard
        case .indirect: .indirect
        }
    }
}

/// A blkif response status. C: `BLKIF_RSP_*` (`int16_t`).
public struct BlkifStatus: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: Int16
    @inlinable public init(rawValue: Int16) { self.rawValue = rawValue }
    /// C: `BLKIF_RSP_OKAY`.
    public static let okay = BlkifStatus(rawValue: 0)
    /// C: `BLKIF_RSP_ERROR`.
    public static let error = BlkifStatus(rawValue: -1)
    /// C: `BLKIF_RSP_EOPNOTSUPP`.
    public static let notSupported = BlkifStatus(rawValue: -2)
    /// True for the three values the protocol defines.
    public var isDefined: Bool { (-2...0).contains(rawValue) }
    public var description: String {
        switch rawValue {
        case 0: "okay"
        case -1: "error"
        case -2: "not supported"
        default: "undefined status \(rawValue)"
        }
    }
}

/// A blkif response. C: `struct blkif_response`.
///
/// Kept raw: what a back end wrote is checked by the front end against what it asked
/// (id pending, operation matching, status defined), not trusted here.
public struct BlkifResponse: Sendable, Equatable {
    public var id: UInt64
    /// The operation byte as written; for an indirect request it must be the `indirect_op`.
    public var operationCode: UInt8
    public var status: BlkifStatus

    @inlinable
    public init(id: UInt64, operationCode: UInt8, status: BlkifStatus) {
        self.id = id
        self.operationCode = operationCode
        self.status = status
    }

    @inlinable
    public init(id: UInt64, operation: BlkifOperation, status: BlkifStatus) {
        self.init(id: id, operationCode: operation.rawValue, status: status)
    }

    /// The operation, when the code names one.
    @inlinable public var operation: BlkifOperation? { BlkifOperation(rawValue: operationCode) }
}

/// The blkif ring in one ABI.
public struct BlkifRing: RingProtocol {
    public typealias Request = BlkifRequest
    public typealias Response = BlkifResponse

    public let abi: BlkifABI
    public let layout: BlkifLayout

    public init(abi: BlkifABI = .x86_64) {
        self.abi = abi
        self.layout = abi.layout
    }

    public var slotSize: Int { layout.slotSize }

    @inlinable
    public func encodeRequest(_ request: BlkifRequest, into slot: UnsafeMutableRawBufferPointer) {
        let l = layout
        switch request {
        case let .io(r):
            slot[l.requestOperation] = r.operation.rawValue
            slot[l.requestSegmentCount] = UInt8(r.segments.count)
            slot.storeLE(r.handle, at: l.requestHandle)
            slot.storeLE(r.id, at: l.requestID)
            slot.storeLE(r.sector, at: l.requestSector)
            r.segments.copyWords(to: slot, at: l.requestSegments)
        case let .discard(r):
            slot[l.requestOperation] = BlkifOperation.discard.rawValue
            slot[l.discardFlag] = r.secure ? Blkif.discardSecureFlag : 0
            slot.storeLE(r.handle, at: l.discardHandle)
            slot.storeLE(r.id, at: l.discardID)
            slot.storeLE(r.sector, at: l.discardSector)
            slot.storeLE(r.sectorCount, at: l.discardSectorCount)
        case let .indirect(r):
            slot[l.requestOperation] = BlkifOperation.indirect.rawValue
            slot[l.indirectOperation] = r.operation.rawValue
            slot.storeLE(r.segmentCount, at: l.indirectSegmentCount)
            slot.storeLE(r.id, at: l.indirectID)
            slot.storeLE(r.sector, at: l.indirectSector)
            slot.storeLE(r.handle, at: l.indirectHandle)
            for index in 0..<r.pageCount {
                slot.storeLE(r.indirectGrant(index).rawValue, at: l.indirectGrants + 4 * index)
            }
        }
    }

    @inlinable
    public func decodeRequest(_ slot: UnsafeRawBufferPointer) throws(XenABIError) -> BlkifRequest {
        let l = layout
        try requireBytes(slot, l.requestSize, "blkif_request")
        let code = slot[l.requestOperation]
        guard let operation = BlkifOperation(rawValue: code) else {
            throw .unknownCode(field: "blkif operation", value: UInt64(code))
        }
        switch operation {
        case .discard:
            return .discard(
                BlkifDiscardRequest(
                    secure: slot[l.discardFlag] & Blkif.discardSecureFlag != 0,
                    handle: slot.le(UInt16.self, at: l.discardHandle),
                    id: slot.le(UInt64.self, at: l.discardID),
                    sector: slot.le(UInt64.self, at: l.discardSector),
                    sectorCount: slot.le(UInt64.self, at: l.discardSectorCount)))
        case .indirect:
            let innerCode = slot[l.indirectOperation]
            guard let inner = BlkifOperation(rawValue: innerCode), inner == .read || inner == .write else {
                throw .unknownCode(field: "blkif indirect_op", value: UInt64(innerCode))
            }
            let count = slot.le(UInt16.self, at: l.indirectSegmentCount)
            guard Int(count) <= Blkif.maxIndirectSegments else {
                throw .countOutOfRange(field: "blkif indirect nr_segments", value: Int(count), limit: Blkif.maxIndirectSegments)
            }
            let pages = BlkifIndirectRequest.pagesNeeded(segments: Int(count))
            return .indirect(
                BlkifIndirectRequest(
                    operation: inner, segmentCount: count,
                    handle: slot.le(UInt16.self, at: l.indirectHandle),
                    id: slot.le(UInt64.self, at: l.indirectID),
                    sector: slot.le(UInt64.self, at: l.indirectSector),
                    indirectGrants: (0..<pages).lazy.map { GrantRef(slot.le(UInt32.self, at: l.indirectGrants + 4 * $0)) }))
        default:
            let count = Int(slot[l.requestSegmentCount])
            guard count <= Blkif.maxSegmentsPerRequest else {
                throw .countOutOfRange(field: "blkif nr_segments", value: count, limit: Blkif.maxSegmentsPerRequest)
            }
            let segments = try BlkifSegmentList(copyingWordsFrom: slot, at: l.requestSegments, count: count)
            return .io(
                BlkifIORequest(
                    operation: operation,
                    handle: slot.le(UInt16.self, at: l.requestHandle),
                    id: slot.le(UInt64.self, at: l.requestID),
                    sector: slot.le(UInt64.self, at: l.requestSector),
                    segments: segments))
        }
    }

    @inlinable
    public func encodeResponse(_ response: BlkifResponse, into slot: UnsafeMutableRawBufferPointer) {
        let l = layout
        slot.storeLE(response.id, at: l.responseID)
        slot[l.responseOperation] = response.operationCode
        slot[l.responseOperation + 1] = 0
        slot.storeLE(response.status.rawValue, at: l.responseStatus)
    }

    @inlinable
    public func decodeResponse(_ slot: UnsafeRawBufferPointer) throws(XenABIError) -> BlkifResponse {
        let l = layout
        try requireBytes(slot, l.responseSize, "blkif_response")
        return BlkifResponse(
            id: slot.le(UInt64.self, at: l.responseID),
            operationCode: slot[l.responseOperation],
            status: BlkifStatus(rawValue: slot.le(Int16.self, at: l.responseStatus)))
    }
}
