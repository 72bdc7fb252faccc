import CCrashContext
import Foundation
import GuestFiles
import Logging
import XenABI

/// Where to look for what the image does not carry itself.
public struct AuditOptions: Sendable {
    /// A kernel config to use when the image has no embedded one.
    public var configPath: String?
    /// A module tree (`lib/modules/<version>`).
    public var modulesPath: String?
    /// A guest's root filesystem, for its `lib/modules` and `boot/config-*`.
    public var rootPath: String?
    public var limits: DecompressionLimits
    /// Recover the symbol table (kallsyms, else the fallbacks).
    public var symbols: Bool
    /// A System.map to use when the image has no kallsyms.
    public var systemMapPath: String?
    /// The initramfs to check (else `initrd.img-<release>` beside the image or under the root).
    public var initrdPath: String?
    /// A loaded fix catalogue to evaluate (implies symbol recovery).
    public var catalogue: [CatalogueEntry]?
    /// The platforms to judge the kernel (and its guest root) for (`--target`).
    public var targets: [TargetProfile] = []
    /// The Xen release the guest is for (`--xen-version`): the PV loader's decompressors depend on it.
    public var xenVersion: String?

    public init(
        configPath: String? = nil, modulesPath: String? = nil, rootPath: String? = nil,
        limits: DecompressionLimits = DecompressionLimits(), symbols: Bool = false, systemMapPath: String? = nil,
        initrdPath: String? = nil, catalogue: [CatalogueEntry]? = nil
    ) {
        self.initrdPath = initrdPath
        self.catalogue = catalogue
        self.configPath = configPath
        self.modulesPath = modulesPath
        self.rootPath = rootPath
        self.limits = limits
        self.symbols = symbols
        self.systemMapPath = systemMapPath
    }
}

/// pvcheck's kernel pipeline, a value per stage: the container (``ContainerStage``), the
/// kernel's facts (``KernelStage``), its modules (``ModuleStage``), then verdicts, initramfs,
/// targets, symbols and catalogue. The guest side (locating the root, reading a disk image,
/// the guest's facts) is ``GuestAudit``. Every failure is a ``KernelAuditError``; nothing traps
/// on bad input.
public struct KernelAuditor: Sendable {
    public let options: AuditOptions
    /// Where each stage logs (debug level).
    public let logger: Logger

    public init(options: AuditOptions = AuditOptions(), logger: Logger = Logger(label: "pvcheck")) {
        self.options = options
        self.logger = logger
    }

    /// Audits one image; errors become the report's `error`.
    public func report(path: String) -> AuditReport {
        do {
            return try audit(path: path)
        } catch {
            var report = AuditReport(path: path)
            report.error = .init(code: error.code, message: error.message, offset: error.offset, hint: error.hint)
            return report
        }
    }

    /// Audits an image in memory; errors become the report's `error`.
    public func report(bytes: UnsafeRawBufferPointer, path: String) -> AuditReport {
        do {
            return try audit(bytes: ImageBuffer(copying: bytes), path: path).report
        } catch {
            var report = AuditReport(path: path)
            report.error = .init(code: error.code, message: error.message, offset: error.offset, hint: error.hint)
            return report
        }
    }

    /// Reads an initramfs in memory (`path` names it in messages).
    public func initramfs(bytes: UnsafeRawBufferPointer, path: String) throws(KernelAuditError) -> InitramfsInfo {
        try Initramfs.read(file: ImageBuffer(copying: bytes), path: path, limits: options.limits).info
    }

    /// Like ``report(path:)``, with the symbol table when it was recovered.
    public func reportWithSymbols(path: String) -> (report: AuditReport, symbols: SymbolTable?) {
        do {
            return try auditWithSymbols(path: path)
        } catch {
            var report = AuditReport(path: path)
            report.error = .init(code: error.code, message: error.message, offset: error.offset, hint: error.hint)
            return (report, nil)
        }
    }

    /// Audits one image.
    public func audit(path: String) throws(KernelAuditError) -> AuditReport {
        try auditWithSymbols(path: path).report
    }

    /// Audits one image and returns its symbol table too (with `options.symbols`).
    public func auditWithSymbols(path: String) throws(KernelAuditError) -> (report: AuditReport, symbols: SymbolTable?) {
        let file = try ImageFile.read(path: path)
        return try audit(bytes: file, path: path)
    }

    /// Audits an image already in memory (`path` names it in the report and locates its neighbours).
    public func audit(bytes file: ImageBuffer, path: String) throws(KernelAuditError) -> (report: AuditReport, symbols: SymbolTable?) {
        try audit(bytes: file, path: path, around: Surroundings(guest: nil, facts: nil, scratch: nil))
    }

    /// Audits a kernel inside a guest root (a directory or a disk image): its config, modules,
    /// initramfs and changelog are looked up in the guest, links resolved inside it.
    public func audit(guestKernel path: String, in guest: GuestRoot, facts: GuestInfo, scratch: String) throws(KernelAuditError) -> (
        report: AuditReport, symbols: SymbolTable?
    ) {
        let buffer = try Self.read(path, in: guest, limit: options.limits.maxOutput)
        return try audit(bytes: buffer, path: path, around: Surroundings(guest: guest, facts: facts, scratch: scratch))
    }

    /// The pipeline: container → kernel facts → modules → verdicts → initramfs → targets →
    /// symbols and catalogue. Each stage is a value in and a value out.
    func audit(bytes file: ImageBuffer, path: String, around surroundings: Surroundings) throws(KernelAuditError) -> (
        report: AuditReport, symbols: SymbolTable?
    ) {
        defer { CrashContext.set(nil) }
        CrashContext.set("auditing \(path): reading its container")
        var container = try readContainer(file, path: path)
        CrashContext.set("auditing \(path): reading the kernel (ELF, notes, config)")
        let facts = try kernelFacts(&container, path: path, around: surroundings)
        CrashContext.set("auditing \(path): reading its modules")
        let modules = moduleFacts(facts, path: path, around: surroundings)
        CrashContext.set("auditing \(path): deciding the verdicts, the initramfs and the targets")
        let kernel = facts.kernel, notes = facts.notes, config = facts.config, moduleIndex = modules.index
        var report = AuditReport(path: path)
        report.image = container.image
        report.kernel = kernel
        report.xenNotes = notes
        if let config { report.config = .init(source: config.source, xenOptions: config.values.filter { Self.isXenRelevant($0.key) }) }
        report.modules = modules.info
        report.verdicts = VerdictRules.decide(
            VerdictFacts(
                architecture: kernel.architecture, elfMachine: kernel.elfMachine, notes: notes,
                loadSegments: facts.loadSegments, config: config, frontends: modules.frontends, family: kernel.family,
                familyEvidence: kernel.familyEvidence))

        // A damaged initramfs is its own error: the kernel's verdicts stand.
        do {
            if let (initrd, buffer) = try initramfs(path: path, release: kernel.release, around: surroundings) {
                let (info, _) = try Initramfs.read(file: buffer, path: initrd, limits: options.limits)
                report.initramfs = info
                report.verdicts?.append(Initramfs.verdict(info, release: kernel.release, frontends: report.modules?.frontends))
            }
        } catch {
            report.initramfsError = .init(code: error.code, message: error.message, offset: error.offset, hint: error.hint)
        }
        if let guest = surroundings.facts { report.guest = guest }
        if !options.targets.isEmpty {
            let targetFacts = TargetFacts(
                report: report, config: config, modules: moduleIndex, initramfs: report.initramfs, guest: surroundings.facts,
                kernelPath: surroundings.guest == nil ? nil : path, xenVersion: options.xenVersion)
            report.targets = options.targets.map { TargetRules.evaluate($0, targetFacts) }
        }

        var symbols: SymbolTable? = nil
        if options.symbols || options.catalogue != nil {
            symbols = recoverSymbols(container.kernelBytes, elf: facts.elf, path: path, release: kernel.release, config: config, around: surroundings)
            if let symbols { report.symbols = SymbolsInfo(source: symbols.source, count: symbols.symbols.count, detail: symbols.detail) }
            logger.debug("\(path): symbols: \(symbols?.detail ?? "none")")
        }
        if let catalogue = options.catalogue {
            var catalogueFacts = CatalogueFacts(
                symbols: symbols, config: config, notes: notes, release: kernel.release, modules: moduleIndex, limits: options.limits)
            catalogueFacts.changelog =
                surroundings.guest.flatMap { Catalogue.changelog(in: $0, release: kernel.release, limits: options.limits) }
                ?? Catalogue.changelog(imagePath: path, root: options.rootPath, release: kernel.release, limits: options.limits)
            report.fixes = catalogue.map { CatalogueEvaluator.evaluate($0, &catalogueFacts) }
        }
        return (report, symbols)
    }

    /// Stage 1, the container: what wraps the kernel (bzImage, EFI zboot, a compressed or bare
    /// ELF, an arm64 Image), its payload decompressed, and the kernel's own bytes.
    func readContainer(_ file: ImageBuffer, path: String) throws(KernelAuditError) -> ContainerStage {
        let view = ByteView(bytes: file.bytes)
        guard file.count > 0 else {
            throw KernelAuditError(.empty, "the file is empty", offset: 0, hint: "Point pvcheck at a kernel image such as /boot/vmlinuz-<version>")
        }
        var image = AuditReport.ImageInfo(container: "unknown", fileSize: file.count)
        var payload: Decompressed? = nil
        var kernelBytes: UnsafeRawBufferPointer

        if X86SetupHeader.isPresent(view) {
            let header = try X86SetupHeader(view)
            image.container = "bzImage"
            image.setupHeader = header
            logger.debug("bzImage, boot protocol \(header.protocolString)")
            // syssize covers the protected-mode part to the CRC: a shorter file was cut.
            let expectedEnd = header.protectedModeOffset + Int(header.syssizeBytes(view))
            if header.protocolVersion >= 0x0204, expectedEnd > header.protectedModeOffset, file.count < expectedEnd {
                throw KernelAuditError(
                    .truncated, "the setup header says the image is \(expectedEnd) bytes, the file has \(file.count)",
                    offset: file.count, hint: "The file is cut short; re-copy it from its package")
            }
            if let range = try header.payloadRange(fileSize: file.count) {
                image.payloadOffset = range.lowerBound
                image.payloadLength = range.count
                // What follows the syssize-covered image is a signature (or padding).
                image.trailingBytes = max(0, file.count - max(expectedEnd, range.upperBound + 4))
                let payloadBytes = UnsafeRawBufferPointer(rebasing: file.bytes[range])
                let payloadView = ByteView(bytes: payloadBytes)
                if payloadView.hasPrefix(ElfMagic.bytes) {
                    kernelBytes = payloadBytes
                } else if let format = CompressionFormat.detect(payloadView) {
                    // The stream is bounded by the payload, not by the file (a CRC and maybe a signature follow).
                    payload = try Decompressor.decompress(
                        UnsafeRawBufferPointer(rebasing: file.bytes[..<range.upperBound]), format: format,
                        at: range.lowerBound, limits: options.limits, sizeHint: trailingSizeHint(payloadBytes))
                    kernelBytes = payload!.output.bytes
                } else {
                    throw KernelAuditError(
                        .notAKernel, "the bzImage payload starts with no known compression magic",
                        offset: range.lowerBound, hint: "The image is damaged, or uses a compression this pvcheck does not know")
                }
            } else {
                // Before boot protocol 2.08 the header does not say: find the stream by its magic.
                payload = try scanForKernel(file.bytes, from: header.protectedModeOffset)
                kernelBytes = payload!.output.bytes
            }
        } else if EFIZbootHeader.isPresent(view) {
            let zboot = try EFIZbootHeader(view)
            image.container = "efi-zboot"
            image.payloadOffset = zboot.payloadOffset
            image.payloadLength = zboot.payloadSize
            guard
                let format = CompressionFormat(rawValue: zboot.compression == "lzma" ? "lzma" : zboot.compression)
                    ?? CompressionFormat.detect(view, at: zboot.payloadOffset)
            else {
                throw KernelAuditError(
                    .unsupported, "EFI zboot payload compressed with \"\(zboot.compression)\"", offset: 0x18,
                    hint: "Decompress the payload by hand and run pvcheck on the result")
            }
            let bytes = UnsafeRawBufferPointer(rebasing: file.bytes[zboot.payloadOffset..<zboot.payloadOffset + zboot.payloadSize])
            payload = try Decompressor.decompress(bytes, format: format, at: 0, limits: options.limits)
            kernelBytes = payload!.output.bytes
        } else if view.hasPrefix(ElfMagic.bytes) {
            image.container = "elf"
            kernelBytes = file.bytes
        } else if Arm64ImageHeader.isPresent(view) {
            image.container = "arm64-image"
            kernelBytes = file.bytes
        } else if let format = CompressionFormat.detect(view) {
            payload = try Decompressor.decompress(
                file.bytes, format: format, at: 0, limits: options.limits,
                sizeHint: format == .gzip ? trailingSizeHint(file.bytes) : nil)
            kernelBytes = payload!.output.bytes
            image.container = Arm64ImageHeader.isPresent(ByteView(bytes: kernelBytes)) ? "compressed-arm64-image" : "compressed-elf"
        } else {
            payload = try scanForKernel(file.bytes, from: 0)
            kernelBytes = payload!.output.bytes
            image.container = "embedded-stream"
        }
        if let payload {
            image.compression = payload.format
            image.decompressedSize = payload.output.count
            if image.payloadOffset == nil { image.payloadOffset = payload.offset }
            if image.payloadLength == nil { image.payloadLength = payload.consumed }
        }
        logger.debug(
            "\(path): \(image.container)\(payload.map { ", \($0.format) payload of \($0.consumed) bytes at \($0.offset) → \($0.output.count) bytes" } ?? "")")

        return ContainerStage(file: file, image: image, payload: payload, kernelBytes: kernelBytes)
    }

    /// Stage 2, the kernel's facts: its ELF and Xen notes (libelf), release, config and family.
    func kernelFacts(_ container: inout ContainerStage, path: String, around surroundings: Surroundings) throws(KernelAuditError) -> KernelStage {
        // The kernel proper: an ELF (x86, any vmlinux) or a raw arm64 Image.
        let kernelBytes = container.kernelBytes, payload = container.payload
        let kernelView = ByteView(bytes: kernelBytes)
        var kernel: AuditReport.KernelInfo
        var notes = XenNoteSet(source: .none, notes: [])
        var loadSegments: [(paddr: UInt64, memsz: UInt64)] = []
        // The banner and IKCONFIG live in .rodata: search only there when the ELF says where it is.
        var searchBytes = kernelBytes
        var elfFile: ElfFile? = nil
        if kernelView.hasPrefix(ElfMagic.bytes) {
            let elf = try ElfFile(kernelBytes)
            elfFile = elf
            if let rodata = elf.section(named: ".rodata"), rodata.bytes.count > 0 { searchBytes = rodata.bytes }
            let architecture = ElfMagic.architecture(machine: elf.machine, bitness: elf.bitness)
            kernel = AuditReport.KernelInfo(
                architecture: architecture, elfClass: elf.bitness, elfMachine: elf.machine,
                entry: elf.entry, family: .other, familyEvidence: "")
            let headers = try elf.programHeaders()
            loadSegments = headers.filter { $0.p_type == 1 }.map { ($0.p_paddr, $0.p_memsz) }
            notes = try xenNotes(elf, headers: headers)
            if elf.type != 2 && notes.isEmpty {
                throw KernelAuditError(
                    .notAKernel, "an ELF \(elf.type == 1 ? "object" : "file of type \(elf.type)") with no Xen notes, not a kernel",
                    offset: 16, hint: "Point pvcheck at vmlinuz, vmlinux or a bzImage")
            }
        } else if let arm = Arm64ImageHeader(kernelView) {
            container.image.arm64Header = arm
            kernel = AuditReport.KernelInfo(architecture: "arm64", family: .arm64, familyEvidence: "")
        } else {
            throw KernelAuditError(
                .notAKernel, "the \(payload == nil ? "file" : "decompressed payload") is neither an ELF nor an arm64 Image",
                offset: payload == nil ? 0 : nil, hint: "This is not a Linux kernel image pvcheck can read")
        }

        // Release: the setup header's string, else the banner.
        if let version = container.image.setupHeader?.kernelVersion, let release = version.split(separator: " ").first {
            kernel.release = String(release)
            kernel.releaseSource = "setup header"
        }
        if let banner = KernelBanner.find(in: searchBytes) ?? (searchBytes.count != kernelBytes.count ? KernelBanner.find(in: kernelBytes) : nil) {
            kernel.banner = banner.banner
            if kernel.release == nil {
                kernel.release = banner.release
                kernel.releaseSource = "banner at payload offset \(banner.offset)"
            }
        }

        // Config: embedded first, then the places a user would keep it.
        let config = try loadConfig(kernelBytes: searchBytes, path: path, release: kernel.release, around: surroundings)
        let family = Self.family(kernel: kernel, config: config, notes: notes, container: container.image.container)
        kernel.family = family.family
        kernel.familyEvidence = family.evidence
        logger.debug(
            "\(path): \(kernel.architecture) \(kernel.family.rawValue) kernel \(kernel.release ?? "?"), \(notes.notes.count) Xen notes from the \(notes.source.rawValue), config: \(config?.source ?? "none")"
        )

        return KernelStage(kernel: kernel, notes: notes, loadSegments: loadSegments, elf: elfFile, config: config)
    }

    /// Stage 3, the modules: the tree through libkmod (depmod's index, else the modules' own
    /// modinfo), else the config alone.
    func moduleFacts(_ facts: KernelStage, path: String, around surroundings: Surroundings) -> ModuleStage {
        let kernel = facts.kernel, config = facts.config
        var frontends: [FrontendPresence]? = nil
        var info: AuditReport.ModulesInfo? = nil
        let moduleIndex = moduleDirectory(path: path, release: kernel.release, around: surroundings).flatMap { directory in
            // A copy of a disk image's indexes has no module files beside them.
            ModuleIndex(directory: directory, hasModuleFiles: surroundings.guest?.hostFile("/") != nil || surroundings.guest == nil)
        }
        if let index = moduleIndex {
            let directory = index.directory
            // Built-in drivers that only have a device table carry no alias in
            // modules.builtin.modinfo: the config says whether they are there.
            frontends = index.resolve().map { presence in
                guard presence.state == .absent, let config, config.state(presence.frontend.configOption) == .builtIn else { return presence }
                return FrontendPresence(
                    frontend: presence.frontend, state: .builtIn, module: nil, file: nil,
                    evidence: config.evidence(presence.frontend.configOption) + " (built in without an alias in modules.builtin.modinfo)")
            }
            // A copy of a guest's indexes is named by the guest's path, not the scratch one.
            let shown = surroundings.guest != nil && surroundings.guest?.hostFile("/") == nil ? "/lib/modules/\(kernel.release ?? "")" : directory
            info = .init(directory: shown, frontends: frontends!)
            logger.debug("\(path): modules from \(directory)\(index.hasDepmodIndex ? " (depmod index)" : " (modinfo of \(index.xenModuleFiles.count) files)")")
        } else if let config {
            let fromConfig = XenFrontend.allCases.map { frontend -> FrontendPresence in
                let state: FrontendPresence.State =
                    switch config.state(frontend.configOption) {
                    case .builtIn: .builtIn
                    case .module: .module
                    default: .absent
                    }
                return FrontendPresence(
                    frontend: frontend, state: state, module: nil, file: nil,
                    evidence: config.evidence(frontend.configOption) + (state == .module ? "; no module tree to confirm the file" : ""))
            }
            info = .init(directory: nil, frontends: fromConfig)
        }

        return ModuleStage(index: moduleIndex, info: info, frontends: frontends)
    }

    /// kallsyms, else a real System.map, else `__ksymtab_strings`, else `.BTF` strings, else plain strings.
    func recoverSymbols(
        _ bytes: UnsafeRawBufferPointer, elf: ElfFile?, path: String, release: String?, config: KernelConfig?, around surroundings: Surroundings
    ) -> SymbolTable? {
        let pointerSize = (elf?.bitness ?? 64) / 8
        let percpu: Bool? = config.map { $0.state("CONFIG_KALLSYMS_ABSOLUTE_PERCPU") == .builtIn }
        if let table = KallsymsFinder.find(bytes, pointerSize: pointerSize, absolutePercpu: percpu) { return table }
        var notes: [String] = ["no kallsyms tables found"]
        var candidates = [options.systemMapPath].compactMap { $0 }
        if let release {
            if let guest = surroundings.guest {
                if let host = guest.mounts.count == 1 ? guest.hostFile("/boot/System.map-\(release)") : nil { candidates.append(host) }
            } else {
                candidates.append(Self.directory(of: path) + "/System.map-\(release)")
            }
        }
        for candidate in candidates {
            let result = SymbolFallbacks.systemMap(path: candidate)
            if let table = result.table { return table }
            notes.append(result.note)
        }
        if let section = elf?.section(named: "__ksymtab_strings"),
            let table = SymbolFallbacks.strings(of: section.bytes, source: .ksymtabStrings, detail: (notes + ["exported symbols only"]).joined(separator: "; "))
        {
            return table
        }
        if let section = elf?.section(named: ".BTF"), let table = SymbolFallbacks.btfStrings(section.bytes) { return table }
        return SymbolFallbacks.plainStrings(bytes)
    }

    /// Xen's note discovery: PT_NOTE segments (skipping p_offset 0), else SHT_NOTE sections,
    /// else the legacy `__xen_guest` section.
    func xenNotes(_ elf: ElfFile, headers: [GElfProgramHeader]) throws(KernelAuditError) -> XenNoteSet {
        var raw: [ElfFile.RawNote] = []
        for header in headers where header.p_type == 4 && header.p_offset != 0 {
            let start = Int(clamping: header.p_offset)
            let (end, overflow) = start.addingReportingOverflow(Int(clamping: header.p_filesz))
            guard !overflow else {
                throw KernelAuditError(.badELF, "a PT_NOTE segment's size overflows", offset: start, hint: "The ELF is damaged")
            }
            raw += try elf.notes(fileRange: start..<end)
        }
        let fromSegments = XenNoteDecoder.decode(raw, source: .programHeader)
        if !fromSegments.isEmpty { return fromSegments }
        let fromSections = XenNoteDecoder.decode(elf.noteSections(), source: .section)
        if !fromSections.isEmpty { return fromSections }
        if let legacy = elf.section(named: "__xen_guest"), let text = ByteView(bytes: legacy.bytes).cString(at: 0, limit: 4096) {
            return XenNoteDecoder.decodeLegacy(text, offset: legacy.offset)
        }
        return XenNoteSet(source: .none, notes: [])
    }

    /// extract-vmlinux's way: try every compression magic in the file, keep the first stream
    /// that decompresses to an ELF or an arm64 Image.
    func scanForKernel(_ bytes: UnsafeRawBufferPointer, from start: Int) throws(KernelAuditError) -> Decompressed {
        let view = ByteView(bytes: bytes)
        var lastError: KernelAuditError? = nil
        for format in [CompressionFormat.gzip, .xz, .bzip2, .lzma, .lzo, .lz4, .zstd] {
            for offset in view.find(format.scanMagic, in: min(start, bytes.count)..<bytes.count, limit: 8) {
                do {
                    let result = try Decompressor.decompress(bytes, format: format, at: offset, limits: options.limits)
                    let inner = ByteView(bytes: result.output.bytes)
                    if inner.hasPrefix(ElfMagic.bytes) || Arm64ImageHeader.isPresent(inner) { return result }
                } catch {
                    if error.code == .outputLimitExceeded { throw error }
                    lastError = error
                }
            }
        }
        throw KernelAuditError(
            .notAKernel,
            "no kernel found: not a bzImage, ELF or arm64 Image, and no compressed stream in it decompresses to one"
                + (lastError.map { " (last attempt: \($0.message))" } ?? ""),
            offset: nil, hint: "Check that this is a Linux kernel image (vmlinuz, vmlinux, Image)")
    }

    func loadConfig(kernelBytes: UnsafeRawBufferPointer, path: String, release: String?, around surroundings: Surroundings) throws(KernelAuditError)
        -> KernelConfig?
    {
        // The kernel (its .rodata when known) holds IKCONFIG; the file itself only when it is
        // not a compressed payload's container, i.e. when the two are the same bytes.
        if let embedded = EmbeddedConfig.find(in: kernelBytes, limits: options.limits) {
            return KernelConfig(text: embedded.text, source: "embedded IKCONFIG")
        }
        if let given = options.configPath {
            guard let text = try? String(contentsOfFile: given, encoding: .utf8) else {
                throw KernelAuditError(.unreadable, "cannot read the config \(given)", hint: "Check the --config path")
            }
            return KernelConfig(text: text, source: given)
        }
        guard let release else { return nil }
        if let guest = surroundings.guest {
            for candidate in ["/boot/config-\(release)", "/lib/modules/\(release)/config", "/usr/lib/modules/\(release)/config"] {
                if let text = guest.text(of: candidate, limit: 16 << 20) {
                    let config = KernelConfig(text: text, source: candidate)
                    if config.isPlausible { return config }
                }
            }
            return nil
        }
        var candidates = [Self.directory(of: path) + "/config-\(release)"]
        if let root = options.rootPath {
            candidates += [root + "/boot/config-\(release)", root + "/lib/modules/\(release)/config", root + "/usr/lib/modules/\(release)/config"]
        }
        for candidate in candidates {
            if let text = try? String(contentsOfFile: candidate, encoding: .utf8) {
                let config = KernelConfig(text: text, source: candidate)
                if config.isPlausible { return config }
            }
        }
        return nil
    }

    /// The initramfs names distributions give it: Debian's, dracut's (Fedora, RHEL), SUSE's, Arch's.
    static func initramfsNames(_ release: String) -> [String] {
        ["initrd.img-\(release)", "initramfs-\(release).img", "initrd-\(release)", "initramfs-\(release)"]
    }

    /// The initramfs to check, and its bytes: `--initrd`, else beside the kernel or in the guest's /boot.
    func initramfs(path: String, release: String?, around surroundings: Surroundings) throws(KernelAuditError) -> (String, ImageBuffer)? {
        if let given = options.initrdPath { return (given, try ImageFile.read(path: given)) }
        guard let release else { return nil }
        if let guest = surroundings.guest {
            for name in Self.initramfsNames(release) where guest.isFile("/boot/" + name) {
                return ("/boot/" + name, try Self.read("/boot/" + name, in: guest, limit: options.limits.maxOutput))
            }
            return nil
        }
        var candidates = Self.initramfsNames(release).map { Self.directory(of: path) + "/" + $0 }
        if let root = options.rootPath { candidates += Self.initramfsNames(release).map { root + "/boot/" + $0 } }
        guard let found = candidates.first(where: { FileManager.default.fileExists(atPath: $0) }) else { return nil }
        return (found, try ImageFile.read(path: found))
    }

    /// A guest file in memory: mapped when the guest is on this machine's file system, else
    /// read straight from the image into the buffer.
    static func read(_ path: String, in guest: GuestRoot, limit: Int) throws(KernelAuditError) -> ImageBuffer {
        if let host = guest.hostFile(path) { return try ImageFile.read(path: host) }
        var buffer: ImageBuffer? = nil
        do {
            try guest.read(path, limit: limit) { count in
                let made = ImageBuffer(capacity: max(1, count))
                _ = made.reserve(extra: count, limit: Int.max)
                made.commit(count)
                buffer = made
                return UnsafeMutableRawBufferPointer(mutating: made.bytes)
            }
        } catch {
            throw KernelAuditError(.unreadable, "cannot read \(path) in \(guest.description): \(error.message)", hint: error.hint)
        }
        guard let buffer else { throw KernelAuditError(.unreadable, "cannot read \(path) in \(guest.description)", hint: "Check the image") }
        return buffer
    }

    /// The directory a path is in: "." for a bare name, never a trap on `./x` or `/x`.
    static func directory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        let directory = String(path[..<slash])
        return directory.isEmpty ? "/" : directory
    }

    func moduleDirectory(path: String, release: String?, around surroundings: Surroundings) -> String? {
        if let given = options.modulesPath { return given }
        guard let release else { return nil }
        if let guest = surroundings.guest, let scratch = surroundings.scratch {
            for candidate in ["/lib/modules/\(release)", "/usr/lib/modules/\(release)"] where guest.isDirectory(candidate) {
                // libkmod reads depmod's indexes; the module files themselves are not needed.
                // A tree without them is read from its modules' own modinfo: copy those.
                do {
                    if guest.isFile(candidate + "/modules.dep.bin") {
                        return try guest.hostDirectory(candidate, scratch: scratch, include: { $0.hasPrefix("modules.") })
                    }
                    return try guest.hostDirectory(candidate, scratch: scratch, recursive: true, limit: 64 << 20) { name in
                        name.hasPrefix("modules.") || [".ko", ".ko.xz", ".ko.zst", ".ko.gz"].contains { name.hasSuffix($0) }
                    }
                } catch {
                    // The audit goes on from the config alone; say why the modules are missing.
                    logger.warning("\(path): the module tree \(candidate) in \(guest.description) cannot be read: \(error.message) (\(error.hint))")
                    return nil
                }
            }
            return nil
        }
        let directory = Self.directory(of: path)
        let parent = Self.directory(of: directory)
        var candidates = [directory + "/lib/modules/\(release)", parent + "/lib/modules/\(release)", parent + "/usr/lib/modules/\(release)"]
        if let root = options.rootPath { candidates += [root + "/lib/modules/\(release)", root + "/usr/lib/modules/\(release)"] }
        return candidates.first { FileManager.default.fileExists(atPath: $0) }
    }

    static func isXenRelevant(_ option: String) -> Bool {
        option.utf8.split(separator: UInt8(ascii: "_")).contains { $0.elementsEqual("XEN".utf8) || $0.starts(with: "XEN".utf8) } || option == "CONFIG_PVH"
            || option == "CONFIG_PARAVIRT" || option == "CONFIG_HYPERVISOR_GUEST"
            || option == "CONFIG_IKCONFIG" || option.hasPrefix("CONFIG_KERNEL_") || option == "CONFIG_X86_64" || option == "CONFIG_64BIT"
    }

    static func family(kernel: AuditReport.KernelInfo, config: KernelConfig?, notes: XenNoteSet, container: String) -> (family: KernelFamily, evidence: String)
    {
        if kernel.architecture == "arm64" { return (.arm64, "arm64 kernel (\(container))") }
        guard kernel.architecture.hasPrefix("x86") else { return (.other, "\(kernel.architecture) kernel") }
        if let config {
            for option in ["CONFIG_X86_XEN", "CONFIG_X86_64_XEN"] where config.state(option) == .builtIn {
                return (.xenLinux, "\(config.evidence(option)): a XenLinux-forked kernel")
            }
            if config.state("CONFIG_PARAVIRT").isEnabled || config.state("CONFIG_XEN").isEnabled {
                return (.pvops, "\(config.evidence("CONFIG_PARAVIRT")): a pvops kernel")
            }
            return (.pvops, "no XenLinux options in \(config.source): a mainline kernel")
        }
        // Without a config: XenLinux images are ELF (often gzip'd), carry a hypercall page and
        // no PVH entry, and name themselves "-xen".
        let looksXen = (kernel.release ?? "").contains("xen") || (kernel.banner ?? "").contains("-xen")
        if container != "bzImage", notes.note(.hypercallPage) != nil, notes.note(.phys32Entry) == nil, looksXen {
            return (.xenLinux, "an ELF kernel with a HYPERCALL_PAGE note, no PVH entry and a \"-xen\" release: the XenLinux pattern (no config to confirm)")
        }
        return (.pvops, container == "bzImage" ? "a bzImage (XenLinux kernels ship as ELF): a pvops kernel" : "no XenLinux markers: a pvops kernel")
    }
}

/// What this thread is doing, for the message a crash prints (`CCrashContext`).
public enum CrashContext {
    /// Installs the crash handlers (once): a crash then names the image and stage it was in.
    public static func install(program: String) { pvkit_crash_context_install(program) }

    static func set(_ text: String?) { pvkit_crash_context_set(text) }
}

/// Stage 1's value: the container and the kernel's bytes (in the file or the decompressed payload, both kept alive here).
struct ContainerStage {
    let file: ImageBuffer
    var image: AuditReport.ImageInfo
    let payload: Decompressed?
    let kernelBytes: UnsafeRawBufferPointer
}

/// Stage 2's value: what the kernel is.
struct KernelStage {
    var kernel: AuditReport.KernelInfo
    var notes: XenNoteSet
    var loadSegments: [(paddr: UInt64, memsz: UInt64)]
    var elf: ElfFile?
    var config: KernelConfig?
}

/// Stage 3's value: the module tree and the frontends found in it.
struct ModuleStage {
    var index: ModuleIndex?
    var info: AuditReport.ModulesInfo?
    var frontends: [FrontendPresence]?
}

/// Where a kernel's companions are looked up: beside its file on this machine (no guest), or
/// in the guest root it belongs to.
struct Surroundings {
    var guest: GuestRoot?
    var facts: GuestInfo?
    /// Where copies of guest files that a library wants on disk go (libkmod's indexes).
    var scratch: String?
}

/// The program header type libelf hands out.
typealias GElfProgramHeader = ElfFile.ProgramHeader

enum ElfMagic {
    static let bytes: [UInt8] = [0x7F, 0x45, 0x4C, 0x46]

    static func architecture(machine: UInt16, bitness: Int) -> String {
        switch machine {
        case 62: "x86_64"
        case 3: "x86"
        case 183: "arm64"
        case 40: "arm"
        case 243: "riscv\(bitness)"
        default: "machine \(machine)"
        }
    }
}

extension X86SetupHeader {
    /// `syssize` in bytes (16-byte paragraphs), protocol 2.04+.
    func syssizeBytes(_ view: ByteView) -> UInt64 { UInt64(view.le(UInt32.self, 0x1F4) ?? 0) * 16 }
}

/// Reading an image file whole, with the errors a user can act on.
enum ImageFile {
    static func read(path: String) throws(KernelAuditError) -> ImageBuffer {
        var status = stat()
        guard stat(path, &status) == 0 else {
            let code = errno
            throw KernelAuditError(
                .unreadable, "cannot open \(path): \(String(cString: strerror(code)))",
                hint: code == ENOENT ? "Check the path" : "Check the file's permissions")
        }
        guard status.st_mode & S_IFMT == S_IFREG else {
            throw KernelAuditError(
                .notAFile, "\(path) is \(status.st_mode & S_IFMT == S_IFDIR ? "a directory" : "not a regular file")",
                hint: "Give a kernel image file; for a whole root filesystem use --root")
        }
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            let code = errno
            throw KernelAuditError(.unreadable, "cannot open \(path): \(String(cString: strerror(code)))", hint: "Check the file's permissions")
        }
        defer { close(fd) }
        let size = Int(status.st_size)
        if size > 0, let mapped = ImageBuffer(mapping: fd, count: size) { return mapped }
        let buffer = ImageBuffer(capacity: max(size, 1))
        while true {
            guard buffer.reserve(extra: 1 << 20, limit: Int.max) else { break }
            let space = buffer.freeSpace
            let n = Glibc.read(fd, space.baseAddress, space.count)
            if n < 0 {
                if errno == EINTR { continue }
                let code = errno
                throw KernelAuditError(
                    .unreadable, "reading \(path) failed: \(String(cString: strerror(code)))",
                    offset: buffer.count, hint: "Check the device the file is on")
            }
            if n == 0 { break }
            buffer.commit(n)
        }
        return buffer
    }
}
