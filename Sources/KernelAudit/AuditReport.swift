/// The result of auditing one image: what it is, what Xen sees in it, and the verdicts.
/// Encoded as JSON under the versioned schema ``AuditReport/schema``.
public struct AuditReport: Sendable, Codable {
    /// The JSON schema name and version. Fields are only ever added within a version.
    public static let schema = "pvcheck/1"
    public var schema = AuditReport.schema
    public var path: String
    /// Under `--root`: this is the kernel `/vmlinuz` (or `/boot/vmlinuz`) points at.
    public var isDefault: Bool?
    public var image: ImageInfo?
    public var kernel: KernelInfo?
    public var xenNotes: XenNoteSet?
    public var config: ConfigInfo?
    public var modules: ModulesInfo?
    public var verdicts: [Verdict]?
    /// With `--live`: how the machine runs now (this report audits its running kernel).
    public var live: LiveSystemInfo?
    /// The initramfs checked with the kernel, when there is one.
    public var initramfs: InitramfsInfo?
    /// The fix catalogue's results (with `--fixes`).
    public var fixes: [CatalogueResult]?
    /// Problems in the catalogue's files (with `--fixes`): those entries were skipped.
    public var catalogueProblems: [CatalogueProblem]?
    /// The recovered symbol table's source and size (with `--symbols`).
    public var symbols: SymbolsInfo?
    /// Why the initramfs could not be read (the kernel's own verdicts still stand).
    public var initramfsError: ErrorInfo?
    /// The guest root the kernel came from (`--root` or a disk image): its boot and device facts.
    public var guest: GuestInfo?
    /// One verdict per platform asked for with `--target`.
    public var targets: [TargetVerdict]?
    /// Set instead of the rest when the image could not be audited.
    public var error: ErrorInfo?

    public struct ImageInfo: Sendable, Codable {
        /// `bzImage`, `elf`, `compressed-elf`, `arm64-image`, `compressed-arm64-image`, `efi-zboot`.
        public var container: String
        public var fileSize: Int
        public var compression: CompressionFormat?
        public var payloadOffset: Int?
        public var payloadLength: Int?
        public var decompressedSize: Int?
        public var setupHeader: X86SetupHeader?
        public var arm64Header: Arm64ImageHeader?
        /// Bytes after the payload and CRC (an Authenticode signature on signed images).
        public var trailingBytes: Int?
    }

    public struct KernelInfo: Sendable, Codable {
        public var architecture: String
        public var elfClass: Int?
        public var elfMachine: UInt16?
        public var entry: UInt64?
        public var release: String?
        /// Where the release came from: `setup header`, `banner`.
        public var releaseSource: String?
        public var banner: String?
        public var family: KernelFamily
        public var familyEvidence: String
    }

    public struct ConfigInfo: Sendable, Codable {
        public var source: String
        /// The Xen-relevant options (CONFIG_XEN*, CONFIG_PVH, frontends, …) and their values.
        public var xenOptions: [String: String]
    }

    public struct ModulesInfo: Sendable, Codable {
        public var directory: String?
        public var frontends: [FrontendPresence]
    }

    public struct ErrorInfo: Sendable, Codable {
        public var code: KernelAuditError.Code
        public var message: String
        public var offset: Int?
        public var hint: String

        public init(code: KernelAuditError.Code, message: String, offset: Int?, hint: String) {
            self.code = code
            self.message = message
            self.offset = offset
            self.hint = hint
        }
    }

    public init(path: String) { self.path = path }

    /// The verdict for one mode.
    public func verdict(_ mode: BootMode) -> Verdict? { verdicts?.first { $0.mode == mode } }
}
