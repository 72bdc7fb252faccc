import GuestFiles
import KernelAudit
import Testing
import XenABI

/// The bundled fixtures through the whole pipeline: container, compression, release and all
/// six verdicts.
@Suite("fixtures: containers, compressions and verdicts", .timeLimit(.minutes(5)))
struct FixtureVerdictTests {
    struct Case: Sendable, CustomTestStringConvertible {
        let file: String
        let container: String
        let compression: CompressionFormat?
        let release: String
        /// pv, pv-dom0, pvh, pvh-dom0, hvm-pv-drivers, hvm
        let answers: [Answer]
        var testDescription: String { file }
    }

    static let all: [Answer] = [.yes, .yes, .yes, .yes, .yes, .yes]
    static let release = "6.6.0-pvkit-fixture"

    static let cases: [Case] = [
        Case(file: "bzImage-gzip", container: "bzImage", compression: .gzip, release: release, answers: all),
        Case(file: "bzImage-bzip2", container: "bzImage", compression: .bzip2, release: release, answers: all),
        Case(file: "bzImage-xz", container: "bzImage", compression: .xz, release: release, answers: all),
        Case(file: "bzImage-lzma", container: "bzImage", compression: .lzma, release: release, answers: all),
        Case(file: "bzImage-lzo", container: "bzImage", compression: .lzo, release: release, answers: all),
        Case(file: "bzImage-lz4", container: "bzImage", compression: .lz4, release: release, answers: all),
        Case(file: "bzImage-zstd", container: "bzImage", compression: .zstd, release: release, answers: all),
        Case(file: "bzImage-efi-signed", container: "bzImage", compression: .xz, release: release, answers: all),
        Case(file: "bzImage-protocol-2.06", container: "bzImage", compression: .gzip, release: release, answers: all),
        Case(file: "bzImage-raw-elf", container: "bzImage", compression: nil, release: release, answers: all),
        Case(file: "vmlinux.gz", container: "compressed-elf", compression: .gzip, release: release, answers: all),
        Case(file: "vmlinux.xz", container: "compressed-elf", compression: .xz, release: release, answers: all),
        Case(file: "vmlinux.zst", container: "compressed-elf", compression: .zstd, release: release, answers: all),
        Case(file: "vmlinux.bz2", container: "compressed-elf", compression: .bzip2, release: release, answers: all),
        Case(file: "vmlinux-pv-pvh.elf", container: "elf", compression: nil, release: release, answers: all),
        Case(file: "vmlinux-section-notes.elf", container: "elf", compression: nil, release: release, answers: all),
        Case(file: "vmlinux-ikconfig.elf", container: "elf", compression: nil, release: release, answers: all),
        Case(
            file: "vmlinux-pv-only.elf", container: "elf", compression: nil, release: release,
            answers: [.yes, .yes, .no, .no, .yes, .yes]),
        Case(
            file: "vmlinux-pvh-only.elf", container: "elf", compression: nil, release: release,
            answers: [.no, .no, .yes, .yes, .yes, .yes]),
        Case(
            file: "vmlinux-dom0-only.elf", container: "elf", compression: nil, release: release,
            answers: [.no, .yes, .yes, .yes, .yes, .yes]),
        Case(
            file: "vmlinux-unknown-required.elf", container: "elf", compression: nil, release: release,
            answers: [.no, .no, .yes, .yes, .yes, .yes]),
        Case(
            file: "vmlinux-no-xen.elf", container: "elf", compression: nil, release: release,
            answers: [.no, .no, .no, .no, .yes, .yes]),
        Case(
            file: "vmlinux-i386-pvh.elf32", container: "elf", compression: nil, release: "6.1.0-pvkit-i386",
            answers: [.no, .no, .yes, .unknown, .unknown, .yes]),
        Case(
            file: "vmlinux-legacy-guest.elf32", container: "elf", compression: nil, release: "2.6.16-xen-legacy",
            answers: [.yes, .no, .no, .no, .no, .no]),
        Case(
            file: "vmlinuz-2.6.18-xen-pvkit.gz", container: "compressed-elf", compression: .gzip, release: "2.6.18-xen-pvkit",
            answers: [.yes, .unknown, .no, .no, .no, .no]),
        Case(
            file: "Image-arm64", container: "arm64-image", compression: nil, release: "6.6.0-pvkit-arm64",
            answers: [.no, .no, .no, .no, .yes, .yes]),
        Case(
            file: "Image-arm64.gz", container: "compressed-arm64-image", compression: .gzip, release: "6.6.0-pvkit-arm64",
            answers: [.no, .no, .no, .no, .yes, .yes]),
        Case(
            file: "vmlinuz-arm64-zboot.efi", container: "efi-zboot", compression: .gzip, release: "6.6.0-pvkit-arm64",
            answers: [.no, .no, .no, .no, .yes, .yes])
    ]

    @Test("verdicts", arguments: cases)
    func verdicts(_ c: Case) throws {
        let report = try KernelAuditor().audit(path: fixture(c.file))
        #expect(report.image?.container == c.container)
        #expect(report.image?.compression == c.compression)
        #expect(report.kernel?.release == c.release)
        #expect(report.verdicts?.map(\.mode) == BootMode.bootModes)
        #expect(report.verdicts?.map(\.answer) == c.answers, "\(report.verdicts?.map { "\($0.mode.rawValue): \($0.summary)" } ?? [])")
        for verdict in report.verdicts ?? [] where verdict.answer != .unknown {
            #expect(!verdict.summary.isEmpty)
        }
    }

    @Test("the PV verdict names the notes that decided it")
    func evidence() throws {
        let report = try KernelAuditor().audit(path: fixture("bzImage-xz"))
        let pv = try #require(report.verdict(.pv))
        #expect(pv.evidence.contains { $0.contains("XEN_VERSION = \"xen-3.0\"") })
        #expect(pv.evidence.contains { $0.contains("ENTRY = 0xffffffff81000100") })
        #expect(pv.evidence.contains { $0.contains("CONFIG_XEN_PV=y (line") })
        #expect(report.verdict(.pvh)?.evidence.contains { $0.contains("PHYS32_ENTRY = 0x1000200") } == true)
    }

    @Test("notes are decoded with their widths and feature bits")
    func notes() throws {
        let report = try KernelAuditor().audit(path: fixture("vmlinux-pv-pvh.elf"))
        let notes = try #require(report.xenNotes)
        #expect(notes.source == .programHeader)
        #expect(notes.text(.guestOS) == "linux")
        #expect(notes.number(.virtBase) == 0xFFFF_FFFF_8000_0000)
        #expect(notes.note(.phys32Entry)?.size == 8)
        #expect(notes.number(.phys32Entry) == 0x100_0200)
        #expect(notes.note(.phys32Reloc)?.numbers == [0x200000, 0x1000000, 0xFFFF_FFFF])
        #expect(notes.supportedFeatures == [.writablePageTables, .paePgdirAbove4GB, .dom0, .linuxRSDPUnrestricted])
        #expect(notes.requiredFeatures == [.writablePageTables])
        #expect(!notes.notes.contains { $0.name.hasPrefix("UNKNOWN") }, "the GNU build-id note must be skipped")
        let section = try KernelAuditor().audit(path: fixture("vmlinux-section-notes.elf"))
        #expect(section.xenNotes?.source == .section)
    }

    @Test("the legacy __xen_guest string becomes notes")
    func legacy() throws {
        let report = try KernelAuditor().audit(path: fixture("vmlinux-legacy-guest.elf32"))
        let notes = try #require(report.xenNotes)
        #expect(notes.source == .legacyGuestSection)
        #expect(notes.number(.entry) == 0xC010_0000)
        #expect(notes.number(.hypercallPage) == 0x101 * 4096 + 0xC000_0000)
        #expect(notes.text(.paeMode) == "yes[extended-cr3]")
        #expect(report.kernel?.family == .xenLinux)
    }

    @Test("the config comes from IKCONFIG before any file")
    func configSources() throws {
        #expect(try KernelAuditor().audit(path: fixture("vmlinux-ikconfig.elf")).config?.source == "embedded IKCONFIG")
        #expect(try KernelAuditor().audit(path: fixture("vmlinux-pv-pvh.elf")).config?.source.hasSuffix("config-6.6.0-pvkit-fixture") == true)
        let noConfig = try KernelAuditor().audit(path: fixture("vmlinux-i386-pvh.elf32"))
        #expect(noConfig.config == nil)
        let given = try KernelAuditor(options: AuditOptions(configPath: fixture("config-6.6.0-pvkit-fixture")))
            .audit(path: fixture("vmlinux-i386-pvh.elf32"))
        #expect(given.config?.source == fixture("config-6.6.0-pvkit-fixture"))
        #expect(given.verdict(.pvhDom0)?.answer == .yes)
    }

    @Test("a bzImage's header facts")
    func setupHeader() throws {
        let report = try KernelAuditor().audit(path: fixture("bzImage-efi-signed"))
        let header = try #require(report.image?.setupHeader)
        #expect(header.efiStub && header.is64Bit && header.relocatable)
        #expect(header.protocolString == "2.15")
        #expect(header.kernelVersion?.hasPrefix("6.6.0-pvkit-fixture ") == true)
        #expect(report.image?.trailingBytes == 1024)
        #expect(report.kernel?.releaseSource == "setup header")
    }
}

@Suite("guest root filesystems and module trees", .timeLimit(.minutes(5)))
struct RootAndModuleTests {
    @Test("--root finds every kernel and the default one")
    func rootScan() throws {
        let found = GuestAudit.kernels(in: try GuestRoot(directory: fixtures.appendingPathComponent("root").path))
        #expect(found.paths == ["/boot/vmlinuz-6.1.0-pvkit-hvm", "/boot/vmlinuz-6.6.0-pvkit-fixture"])
        #expect(found.defaultPath == "/boot/vmlinuz-6.6.0-pvkit-fixture")
        #expect(throws: GuestFileError.self) { try GuestRoot(directory: "/nonexistent-pvkit-root") }
    }

    @Test("libkmod resolves frontends: plain .ko, .ko.xz, built-in, config-only")
    func modules() throws {
        let root = fixtures.appendingPathComponent("root").path
        let report = try KernelAuditor(options: AuditOptions(rootPath: root)).audit(path: root + "/boot/vmlinuz-6.6.0-pvkit-fixture")
        let modules = try #require(report.modules)
        #expect(modules.directory?.hasSuffix("lib/modules/6.6.0-pvkit-fixture") == true)
        func state(_ frontend: XenFrontend) -> FrontendPresence? { modules.frontends.first { $0.frontend == frontend } }
        #expect(state(.vbd)?.state == .module && state(.vbd)?.file == "kernel/drivers/block/xen-blkfront.ko")
        #expect(state(.vif)?.state == .module && state(.vif)?.file == "kernel/drivers/net/xen-netfront.ko.xz")
        #expect(state(.vkbd)?.state == .builtIn && state(.vkbd)?.module == "xen_kbdfront")
        #expect(state(.console)?.state == .builtIn, "CONFIG_HVC_XEN_FRONTEND=y without a builtin alias")
        #expect(state(.vscsi)?.state == .absent)
        #expect(report.config?.source.hasSuffix("boot/config-6.6.0-pvkit-fixture") == true)
    }

    @Test("a depmod-indexed tree resolves through libkmod's lookup")
    func indexedModules() throws {
        let directory = fixtures.appendingPathComponent("modules-indexed/lib/modules/6.6.0-pvkit-fixture").path
        let report = try KernelAuditor(options: AuditOptions(modulesPath: directory)).audit(path: fixture("vmlinux-pv-pvh.elf"))
        let frontends = try #require(report.modules?.frontends)
        func state(_ frontend: XenFrontend) -> FrontendPresence? { frontends.first { $0.frontend == frontend } }
        #expect(state(.vbd)?.state == .module && state(.vbd)?.file == "kernel/drivers/block/xen-blkfront.ko")
        #expect(state(.vbd)?.evidence.hasPrefix("depmod's index") == true)
        #expect(state(.vif)?.file == "kernel/drivers/net/xen-netfront.ko.xz")
        #expect(state(.vkbd)?.state == .builtIn && state(.vkbd)?.module == "xen_kbdfront")
        #expect(state(.vscsi)?.state == .absent)
    }
}

import Foundation
