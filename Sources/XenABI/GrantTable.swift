/// Grant tables, `xen/include/public/grant_table.h`.

/// Flags of a grant entry. C: `GTF_*` (`uint16_t`).
public struct GrantFlags: OptionSet, Sendable, Hashable {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    /// C: `GTF_type_mask`.
    public static let typeMask: UInt16 = 0x3
    /// C: `GTF_invalid` (type 0): no access.
    public static let invalid: GrantFlags = []
    /// C: `GTF_permit_access` (type 1): the peer may map or copy `frame`.
    public static let permitAccess = GrantFlags(rawValue: 1)
    /// C: `GTF_accept_transfer` (type 2).
    public static let acceptTransfer = GrantFlags(rawValue: 2)
    /// C: `GTF_transitive` (type 3, v2 only).
    public static let transitive = GrantFlags(rawValue: 3)
    /// C: `GTF_readonly`.
    public static let readOnly = GrantFlags(rawValue: 1 << 2)
    /// C: `GTF_reading`: set by the hypervisor while mapped or copied for reading.
    public static let reading = GrantFlags(rawValue: 1 << 3)
    /// C: `GTF_writing`: set by the hypervisor while mapped or copied for writing.
    public static let writing = GrantFlags(rawValue: 1 << 4)
    /// C: `GTF_PWT`, `GTF_PCD`, `GTF_PAT` (x86 cache attributes).
    public static let pwt = GrantFlags(rawValue: 1 << 5), pcd = GrantFlags(rawValue: 1 << 6), pat = GrantFlags(rawValue: 1 << 7)
    /// C: `GTF_sub_page` (v2).
    public static let subPage = GrantFlags(rawValue: 1 << 8)
    /// C: `GTF_transfer_committed`, `GTF_transfer_completed` (accept_transfer only).
    public static let transferCommitted = GrantFlags(rawValue: 1 << 2), transferCompleted = GrantFlags(rawValue: 1 << 3)

    /// The type bits.
    public var type: UInt16 { rawValue & Self.typeMask }
    /// True while the peer has the page in use.
    public var inUse: Bool { !intersection([.reading, .writing]).isEmpty }
}

/// A v1 grant entry. C: `struct grant_entry_v1` (8 bytes; 512 per 4 KiB frame).
public struct GrantEntryV1: Sendable, Equatable {
    public var flags: GrantFlags
    /// The domain allowed to use the grant.
    public var domid: DomainID
    /// The frame (GFN) shared.
    public var frame: UInt32

    public init(flags: GrantFlags, domid: DomainID, frame: UInt32) {
        self.flags = flags
        self.domid = domid
        self.frame = frame
    }

    public static let wireSize = 8
    public static let flagsOffset = 0, domidOffset = 2, frameOffset = 4
    /// Entries in one grant-table frame.
    public static let perFrame = XenPage.size / wireSize

    public static func decode(_ bytes: UnsafeRawBufferPointer) throws(XenABIError) -> GrantEntryV1 {
        try requireBytes(bytes, wireSize, "grant_entry_v1")
        return GrantEntryV1(
            flags: GrantFlags(rawValue: bytes.le(UInt16.self, at: flagsOffset)),
            domid: DomainID(bytes.le(UInt16.self, at: domidOffset)),
            frame: bytes.le(UInt32.self, at: frameOffset))
    }

    public func encode(into bytes: UnsafeMutableRawBufferPointer) {
        bytes.storeLE(flags.rawValue, at: Self.flagsOffset)
        bytes.storeLE(domid.rawValue, at: Self.domidOffset)
        bytes.storeLE(frame, at: Self.frameOffset)
    }
}

/// Grant-table constants: reserved entries, v2 layout, operations, map flags and statuses.
public enum GrantTable {
    /// C: `GNTTAB_NR_RESERVED_ENTRIES`: refs 0...7 are the toolstack's.
    public static let reservedEntries = 8
    /// C: `GNTTAB_RESERVED_CONSOLE`, `GNTTAB_RESERVED_XENSTORE`.
    public static let consoleRef = GrantRef(0), xenstoreRef = GrantRef(1)

    /// v2: `grant_entry_header` (flags u16 @0, domid u16 @2; 4 bytes) and `grant_entry_v2` (16 bytes,
    /// full_page.frame u64 @8).
    public static let v2HeaderSize = 4, v2EntrySize = 16, v2FullPageFrameOffset = 8

    /// Grant-table hypercall commands. C: `GNTTABOP_*`.
    public enum Operation: UInt32, Sendable, CaseIterable {
        case mapGrantRef = 0, unmapGrantRef = 1, setupTable = 2, dumpTable = 3, transfer = 4, copy = 5,
            querySize = 6, unmapAndReplace = 7, setVersion = 8, getStatusFrames = 9, getVersion = 10,
            swapGrantRef = 11, cacheFlush = 12
    }

    /// Map flags. C: `GNTMAP_*`.
    public static let mapDeviceMap: UInt32 = 1 << 0, mapHostMap: UInt32 = 1 << 1, mapReadOnly: UInt32 = 1 << 2,
        mapApplicationMap: UInt32 = 1 << 3, mapContainsPTE: UInt32 = 1 << 4

    /// Copy flags. C: `GNTCOPY_source_gref`, `GNTCOPY_dest_gref`.
    public static let copySourceGref: UInt16 = 1 << 0, copyDestinationGref: UInt16 = 1 << 1
}

/// A grant operation's status. C: `GNTST_*` (`int16_t`).
public enum GrantStatus: Int16, Sendable, CaseIterable, Error {
    case okay = 0
    case generalError = -1
    case badDomain = -2
    case badGntref = -3
    case badHandle = -4
    case badVirtAddr = -5
    case badDevAddr = -6
    case noDeviceSpace = -7
    case permissionDenied = -8
    case badPage = -9
    case badCopyArg = -10
    case addressTooBig = -11
    case eagain = -12
    case noSpace = -13
}
