/// The x86 boot protocol's setup header (Documentation/arch/x86/boot.rst), as read from the
/// first sectors of a bzImage.
public struct X86SetupHeader: Sendable, Codable, Equatable {
    /// `setup_sects` as written (0 means 4).
    public let setupSectors: UInt8
    /// Boot protocol `(major << 8) | minor`, e.g. 0x020F = 2.15.
    public let protocolVersion: UInt16
    /// The string `kernel_version` points at, if any.
    public let kernelVersion: String?
    public let loadFlags: UInt8
    /// `xloadflags` (protocol 2.12+).
    public let xloadFlags: UInt16
    /// `hardware_subarch`: 0 PC, 2 Xen.
    public let hardwareSubarch: UInt32
    /// `payload_offset` / `payload_length` (2.08+), relative to the protected-mode code.
    public let payloadOffset: UInt32
    public let payloadLength: UInt32
    /// Where the protected-mode code starts in the file.
    public let protectedModeOffset: Int
    /// "MZ" at byte 0: built with the EFI stub.
    public let efiStub: Bool
    /// `relocatable_kernel`.
    public let relocatable: Bool

    /// The protocol as "2.15".
    public var protocolString: String {
        let minor = protocolVersion & 0xFF
        return "\(protocolVersion >> 8).\(minor < 10 ? "0" : "")\(minor)"
    }
    /// `XLF_KERNEL_64`: a 64-bit kernel.
    public var is64Bit: Bool { xloadFlags & 1 != 0 }

    static let bootFlagOffset = 0x1FE, headerMagicOffset = 0x202
    static let headerMagic: [UInt8] = Array("HdrS".utf8)

    /// True when `view` carries the boot flag and "HdrS" of a bzImage.
    static func isPresent(_ view: ByteView) -> Bool {
        view.le(UInt16.self, bootFlagOffset) == 0xAA55 && view.hasPrefix(headerMagic, at: headerMagicOffset)
    }

    /// Reads the header; the caller has checked ``isPresent(_:)``.
    init(_ view: ByteView) throws(KernelAuditError) {
        guard let sectors = view.u8(0x1F1), let version = view.le(UInt16.self, 0x206) else {
            throw KernelAuditError(
                .truncated, "bzImage setup header is cut short", offset: view.count,
                hint: "The file is incomplete; re-copy it from its package")
        }
        setupSectors = sectors
        protocolVersion = version
        let versionPointer = view.le(UInt16.self, 0x20E) ?? 0
        kernelVersion = versionPointer != 0 ? view.cString(at: Int(versionPointer) + 0x200, limit: 512) : nil
        loadFlags = view.u8(0x211) ?? 0
        xloadFlags = version >= 0x020C ? view.le(UInt16.self, 0x236) ?? 0 : 0
        hardwareSubarch = version >= 0x0207 ? view.le(UInt32.self, 0x23C) ?? 0 : 0
        payloadOffset = version >= 0x0208 ? view.le(UInt32.self, 0x248) ?? 0 : 0
        payloadLength = version >= 0x0208 ? view.le(UInt32.self, 0x24C) ?? 0 : 0
        protectedModeOffset = (Int(sectors == 0 ? 4 : sectors) + 1) * 512
        efiStub = view.hasPrefix([0x4D, 0x5A])
        relocatable = version >= 0x0205 && (view.u8(0x234) ?? 0) != 0
    }

    /// The payload's byte range in the file (2.08+), checked against the file size.
    func payloadRange(fileSize: Int) throws(KernelAuditError) -> Range<Int>? {
        guard protocolVersion >= 0x0208, payloadLength > 0 else { return nil }
        let start = protectedModeOffset + Int(payloadOffset)
        let end = start + Int(payloadLength)
        guard end <= fileSize else {
            throw KernelAuditError(
                .badHeader,
                "setup header puts the payload at bytes \(start)..<\(end), past the end of the \(fileSize)-byte file",
                offset: 0x248, hint: "The file is truncated or its header is corrupt; re-copy it from its package")
        }
        return start..<end
    }
}

/// The arm64 `Image` header (Documentation/arch/arm64/booting.rst): "ARM\x64" at 0x38.
public struct Arm64ImageHeader: Sendable, Codable, Equatable {
    public let textOffset: UInt64
    public let imageSize: UInt64
    public let flags: UInt64
    /// Bit 0 of flags: big-endian kernel.
    public var bigEndian: Bool { flags & 1 != 0 }
    /// Bits 1–2: page size (1 = 4K, 2 = 16K, 3 = 64K).
    public var pageSize: String {
        switch (flags >> 1) & 3 {
        case 1: "4K"
        case 2: "16K"
        case 3: "64K"
        default: "unspecified"
        }
    }

    static func isPresent(_ view: ByteView) -> Bool { view.le(UInt32.self, 0x38) == 0x644D_5241 }

    init?(_ view: ByteView) {
        guard Self.isPresent(view), let text = view.le(UInt64.self, 8), let size = view.le(UInt64.self, 16),
            let flags = view.le(UInt64.self, 24)
        else { return nil }
        textOffset = text
        imageSize = size
        self.flags = flags
    }
}

/// An EFI zboot image (arm64, riscv; `CONFIG_EFI_ZBOOT`): "MZ", "zimg", then the payload's
/// offset, size and compression name.
struct EFIZbootHeader {
    let payloadOffset: Int
    let payloadSize: Int
    let compression: String

    static func isPresent(_ view: ByteView) -> Bool {
        view.hasPrefix([0x4D, 0x5A]) && view.hasPrefix(Array("zimg".utf8), at: 4)
    }

    init(_ view: ByteView) throws(KernelAuditError) {
        guard let offset = view.le(UInt32.self, 8), let size = view.le(UInt32.self, 12) else {
            throw KernelAuditError(
                .truncated, "EFI zboot header is cut short", offset: view.count,
                hint: "The file is incomplete; re-copy it from its package")
        }
        payloadOffset = Int(offset)
        payloadSize = Int(size)
        compression = view.cString(at: 0x18, limit: 32) ?? ""
        guard payloadOffset + payloadSize <= view.count else {
            throw KernelAuditError(
                .badHeader, "EFI zboot header puts the payload past the end of the file", offset: 8,
                hint: "The file is truncated or corrupt")
        }
    }
}
