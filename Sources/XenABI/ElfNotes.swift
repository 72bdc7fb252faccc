/// Xen ELF notes, `xen/include/public/elfnote.h`: name "Xen", found in PT_NOTE segments or
/// SHT_NOTE sections of a PV/PVH kernel.

/// A Xen ELF note type. C: `XEN_ELFNOTE_*`.
public enum XenElfNoteType: UInt32, Sendable, CaseIterable, CustomStringConvertible {
    case info = 0
    case entry = 1
    case hypercallPage = 2
    case virtBase = 3
    case paddrOffset = 4
    case xenVersion = 5
    case guestOS = 6
    case guestVersion = 7
    case loader = 8
    case paeMode = 9
    case features = 10
    case bsdSymtab = 11
    case hvStartLow = 12
    case l1MFNValid = 13
    case suspendCancel = 14
    case initP2M = 15
    case modStartPFN = 16
    case supportedFeatures = 17
    case phys32Entry = 18
    /// Xen 4.19 and later; absent from the 4.17 headers.
    case phys32Reloc = 19
    case crashInfo = 0x100_0001
    case crashRegs = 0x100_0002
    case dumpcoreNone = 0x200_0000
    case dumpcoreHeader = 0x200_0001
    case dumpcoreXenVersion = 0x200_0002
    case dumpcoreFormatVersion = 0x200_0003

    /// The ELF note name Xen's notes carry.
    public static let noteName = "Xen"
    /// C: `XEN_ELFNOTE_MAX` in the Xen 4.17 headers.
    public static let maxIn4_17: UInt32 = 18

    /// How the descriptor is read.
    public enum Kind: Sendable {
        /// A NUL-terminated string.
        case string
        /// An unsigned little-endian integer of 1, 2, 4 or 8 bytes.
        case numeric
        /// An array of little-endian integers (L1_MFN_VALID pairs, PHYS32_RELOC, SUPPORTED_FEATURES words).
        case numericArray
        /// Bytes for kexec or dump tools.
        case opaque
    }

    /// The descriptor's kind.
    public var kind: Kind {
        switch self {
        case .info, .xenVersion, .guestOS, .guestVersion, .loader, .paeMode, .features, .bsdSymtab: .string
        case .entry, .hypercallPage, .virtBase, .paddrOffset, .hvStartLow, .suspendCancel, .initP2M, .modStartPFN,
            .phys32Entry:
            .numeric
        case .l1MFNValid, .supportedFeatures, .phys32Reloc: .numericArray
        case .crashInfo, .crashRegs, .dumpcoreNone, .dumpcoreHeader, .dumpcoreXenVersion, .dumpcoreFormatVersion: .opaque
        }
    }

    /// The C name without its `XEN_ELFNOTE_` prefix, as `readnotes` prints it.
    public var description: String {
        switch self {
        case .info: "INFO"
        case .entry: "ENTRY"
        case .hypercallPage: "HYPERCALL_PAGE"
        case .virtBase: "VIRT_BASE"
        case .paddrOffset: "PADDR_OFFSET"
        case .xenVersion: "XEN_VERSION"
        case .guestOS: "GUEST_OS"
        case .guestVersion: "GUEST_VERSION"
        case .loader: "LOADER"
        case .paeMode: "PAE_MODE"
        case .features: "FEATURES"
        case .bsdSymtab: "BSD_SYMTAB"
        case .hvStartLow: "HV_START_LOW"
        case .l1MFNValid: "L1_MFN_VALID"
        case .suspendCancel: "SUSPEND_CANCEL"
        case .initP2M: "INIT_P2M"
        case .modStartPFN: "MOD_START_PFN"
        case .supportedFeatures: "SUPPORTED_FEATURES"
        case .phys32Entry: "PHYS32_ENTRY"
        case .phys32Reloc: "PHYS32_RELOC"
        case .crashInfo: "CRASH_INFO"
        case .crashRegs: "CRASH_REGS"
        case .dumpcoreNone: "DUMPCORE_NONE"
        case .dumpcoreHeader: "DUMPCORE_HEADER"
        case .dumpcoreXenVersion: "DUMPCORE_XEN_VERSION"
        case .dumpcoreFormatVersion: "DUMPCORE_FORMAT_VERSION"
        }
    }
}

/// A Xen feature bit, as in the FEATURES note (by name) and SUPPORTED_FEATURES (by bit).
/// C: `XENFEAT_*`, `xen/include/public/features.h`.
public enum XenFeature: UInt32, Sendable, CaseIterable, CustomStringConvertible {
    case writablePageTables = 0
    case writableDescriptorTables = 1
    case autoTranslatedPhysmap = 2
    case supervisorModeKernel = 3
    case paePgdirAbove4GB = 4
    case mmuPtUpdatePreserveAD = 5
    case highmemAssist = 6
    case gnttabMapAvailBits = 7
    case hvmCallbackVector = 8
    case hvmSafePvclock = 9
    case hvmPirqs = 10
    case dom0 = 11
    /// Deprecated; commented out of the 4.17 header.
    case grantMapIdentity = 12
    case memoryOpVnodeSupported = 13
    case armSMCCCSupported = 14
    case linuxRSDPUnrestricted = 15
    case notDirectMapped = 16
    case directMapped = 17

    /// The name without `XENFEAT_`, as the FEATURES note spells it.
    public var name: String {
        switch self {
        case .writablePageTables: "writable_page_tables"
        case .writableDescriptorTables: "writable_descriptor_tables"
        case .autoTranslatedPhysmap: "auto_translated_physmap"
        case .supervisorModeKernel: "supervisor_mode_kernel"
        case .paePgdirAbove4GB: "pae_pgdir_above_4gb"
        case .mmuPtUpdatePreserveAD: "mmu_pt_update_preserve_ad"
        case .highmemAssist: "highmem_assist"
        case .gnttabMapAvailBits: "gnttab_map_avail_bits"
        case .hvmCallbackVector: "hvm_callback_vector"
        case .hvmSafePvclock: "hvm_safe_pvclock"
        case .hvmPirqs: "hvm_pirqs"
        case .dom0: "dom0"
        case .grantMapIdentity: "grant_map_identity"
        case .memoryOpVnodeSupported: "memory_op_vnode_supported"
        case .armSMCCCSupported: "ARM_SMCCC_supported"
        case .linuxRSDPUnrestricted: "linux_rsdp_unrestricted"
        case .notDirectMapped: "not_direct_mapped"
        case .directMapped: "direct_mapped"
        }
    }

    /// The feature a FEATURES-note token names (without a leading `!`).
    public init?(name: some StringProtocol) {
        guard let match = Self.allCases.first(where: { $0.name == name }) else { return nil }
        self = match
    }

    public var description: String { name }
}
