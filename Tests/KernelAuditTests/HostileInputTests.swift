import Foundation
import KernelAudit
import Testing

/// Bad input: each gets one clear error (what, where, what to do), never a crash and never
/// unbounded memory.
@Suite("hostile and broken images", .timeLimit(.minutes(5)))
struct HostileInputTests {
    func auditError(_ path: String, limits: DecompressionLimits = DecompressionLimits()) -> KernelAuditError? {
        do {
            _ = try KernelAuditor(options: AuditOptions(limits: limits)).audit(path: path)
            return nil
        } catch {
            return error
        }
    }

    @Test("an empty file")
    func empty() throws {
        let scratch = try ScratchDirectory()
        let error = auditError(try scratch.write("empty", []))
        #expect(error?.code == .empty)
        #expect(error?.hint.isEmpty == false)
    }

    @Test("a directory, a FIFO, a missing file")
    func notFiles() throws {
        let scratch = try ScratchDirectory()
        #expect(auditError(scratch.url.path)?.code == .notAFile)
        let fifo = scratch.url.appendingPathComponent("fifo").path
        #expect(mkfifo(fifo, 0o600) == 0)
        #expect(auditError(fifo)?.code == .notAFile)
        #expect(auditError(scratch.url.appendingPathComponent("missing").path)?.code == .unreadable)
    }

    @Test("random bytes", arguments: [1, 2, 3, 4] as [UInt64])
    func random(seed: UInt64) throws {
        var generator = SeededGenerator(state: seed)
        let noise = (0..<(64 << 10)).map { _ in UInt8.random(in: 0...255, using: &generator) }
        let scratch = try ScratchDirectory()
        #expect(auditError(try scratch.write("noise", noise))?.code == .notAKernel)
    }

    @Test("an ELF that is not a kernel")
    func notAKernel() {
        let error = auditError(fixture("not-a-kernel-object.elf32"))
        #expect(error?.code == .notAKernel)
        #expect(error?.offset == 16)
    }

    @Test("a setup header that lies about the payload")
    func lyingHeader() throws {
        var image = try bytes(of: fixture("bzImage-xz"))
        image.replaceSubrange(0x24C..<0x250, with: le32(0x7FFF_FFFF))  // payload_length
        let scratch = try ScratchDirectory()
        let error = auditError(try scratch.write("liar", image))
        #expect(error?.code == .badHeader)
        #expect(error?.offset == 0x248)
        #expect(error?.message.contains("past the end") == true)
    }

    @Test("a payload with no known compression")
    func unknownPayload() throws {
        var image = try bytes(of: fixture("bzImage-xz"))
        let start = (Int(image[0x1F1]) + 1) * 512 + Int(image[0x248]) | Int(image[0x249]) << 8
        image.replaceSubrange(start..<start + 6, with: [0x11, 0x22, 0x33, 0x44, 0x55, 0x66])
        let scratch = try ScratchDirectory()
        let error = auditError(try scratch.write("unknown", image))
        #expect(error?.code == .notAKernel)
        #expect(error?.offset == start)
    }

    @Test(
        "corrupted streams in every compression are errors",
        arguments: ["bzImage-gzip", "bzImage-bzip2", "bzImage-xz", "bzImage-lzma", "bzImage-lzo", "bzImage-lz4", "bzImage-zstd"])
    func corrupted(_ name: String) throws {
        let original = try bytes(of: fixture(name))
        let start = (Int(original[0x1F1]) + 1) * 512 + 64  // payload after the 64-byte stub
        let scratch = try ScratchDirectory()
        var failures = 0
        for position in stride(from: start + 16, to: original.count - 40, by: 97) {
            var image = original
            for i in position..<min(position + 8, image.count) { image[i] ^= 0xA5 }
            if let error = auditError(try scratch.write("corrupt", image)) {
                failures += 1
                #expect([.corruptStream, .truncated, .badELF, .notAKernel].contains(error.code), "\(error)")
            }
        }
        // lzo and lz4 carry no checksum: garbage may decode, and then the ELF checks catch most.
        #expect(failures > 0)
    }

    @Test(
        "an image cut at every 7th byte is an error, never a crash",
        arguments: [
            "bzImage-gzip", "bzImage-bzip2", "bzImage-xz", "bzImage-lzma", "bzImage-lzo", "bzImage-lz4", "bzImage-zstd",
            "vmlinux-pv-pvh.elf", "vmlinux.gz", "Image-arm64.gz", "vmlinux-legacy-guest.elf32"
        ])
    func truncated(_ name: String) throws {
        let original = try bytes(of: fixture(name))
        let scratch = try ScratchDirectory()
        for length in stride(from: 0, to: original.count, by: 7) {
            let path = try scratch.write("cut", Array(original[..<length]))
            let error = auditError(path)
            if length < original.count {
                #expect(error != nil, "\(name) cut at \(length) of \(original.count) was accepted")
            }
            if let error {
                #expect(!error.message.isEmpty && !error.hint.isEmpty)
            }
        }
    }

    @Test("a gzip bomb stops at the output limit")
    func gzipBomb() {
        let error = auditError(fixture("bomb-64MiB.gz"), limits: DecompressionLimits(maxOutput: 16 << 20))
        #expect(error?.code == .outputLimitExceeded)
        #expect(error?.message.contains("16777216") == true)
    }

    @Test("a 2 GiB zstd bomb in a bzImage stops at the output limit")
    func zstdBomb() {
        let error = auditError(fixture("bzImage-bomb-zstd"), limits: DecompressionLimits(maxOutput: 64 << 20))
        #expect(error?.code == .outputLimitExceeded)
    }

    @Test("a stream decompressing to garbage is not a kernel")
    func bombWithinLimit() {
        let error = auditError(fixture("bomb-64MiB.gz"), limits: DecompressionLimits(maxOutput: 128 << 20))
        #expect(error?.code == .notAKernel)
    }
}

@Suite("pure parts: config, note text, compression magic", .timeLimit(.minutes(5)))
struct ParsingTests {
    @Test("config lines")
    func config() {
        let config = KernelConfig(
            text: "#\n# comment\nCONFIG_XEN=y\nCONFIG_XEN_PV=m\n# CONFIG_XEN_PVH is not set\nCONFIG_NR_CPUS=64\nCONFIG_S=\"a=b\"\n",
            source: "test")
        #expect(config.state("CONFIG_XEN") == .builtIn)
        #expect(config.state("CONFIG_XEN_PV") == .module)
        #expect(config.state("CONFIG_XEN_PVH") == .unset)
        #expect(config.state("CONFIG_NR_CPUS") == .value("64"))
        #expect(config.state("CONFIG_S") == .value("\"a=b\""))
        #expect(config.evidence("CONFIG_XEN_PVH") == "CONFIG_XEN_PVH is not set (line 5 of test)")
        #expect(config.evidence("CONFIG_ABSENT") == "CONFIG_ABSENT is not set (test)")
        #expect(!config.isPlausible)
    }

    @Test(
        "--require exit codes",
        arguments: [
            ("bzImage-xz", Requirement.pv, Int32(0)), ("vmlinux-pvh-only.elf", .pv, 1), ("vmlinux-pvh-only.elf", .pvh, 0),
            ("vmlinux-no-xen.elf", .pvhvm, 0), ("vmlinux-no-xen.elf", .dom0, 1), ("vmlinux-i386-pvh.elf32", .dom0, 3),
            ("vmlinux-i386-pvh.elf32", .pvhvm, 3), ("Image-arm64", .pv, 1)
        ])
    func requirement(file: String, requirement: Requirement, code: Int32) {
        #expect(requirement.exitCode(for: KernelAuditor().report(path: fixture(file))) == code)
    }

    @Test("an unreadable image answers 3 to every requirement")
    func requirementOnError() {
        let report = KernelAuditor().report(path: "/nonexistent/vmlinuz")
        #expect(report.error?.code == .unreadable)
        for requirement in Requirement.allCases { #expect(requirement.exitCode(for: report) == 3) }
    }
}

/// Section headers whose offsets and sizes do not fit in the file (found by an outside fuzz
/// campaign: each used to trap in an Int conversion or sum).
@Suite("ELF section headers that lie", .timeLimit(.minutes(2)))
struct LyingSectionHeaderTests {
    /// `image` with every section header's field at `fieldOffset` (8 bytes) set to `value`,
    /// for the sections whose sh_type is `type` (all when nil).
    static func patched(_ image: [UInt8], field fieldOffset: Int, value: UInt64, type: UInt32? = nil) -> [UInt8] {
        var bytes = image
        func le<T: FixedWidthInteger>(_ at: Int, _: T.Type) -> T {
            (0..<MemoryLayout<T>.size).reduce(T(0)) { $0 | T(bytes[at + $1]) << (8 * $1) }
        }
        let shoff = Int(le(0x28, UInt64.self)), entsize = Int(le(0x3A, UInt16.self)), count = Int(le(0x3C, UInt16.self))
        for index in 0..<count {
            let header = shoff + index * entsize
            guard header + 64 <= bytes.count else { continue }
            if let type, le(header + 4, UInt32.self) != type { continue }
            for i in 0..<8 { bytes[header + fieldOffset + i] = UInt8(truncatingIfNeeded: value >> (8 * i)) }
        }
        return bytes
    }

    @Test(
        "sh_size 2^63-1 or 2^63 and sh_offset 2^64-1 on note sections and on every section: a report, never a trap",
        arguments: [
            (32, UInt64(0x7FFF_FFFF_FFFF_FFFF), UInt32?(7)), (24, UInt64.max, UInt32?(7)), (32, UInt64(1) << 63, UInt32?.none),
            (24, UInt64.max, UInt32?.none)
        ])
    func lying(field: Int, value: UInt64, type: UInt32?) throws {
        let scratch = try ScratchDirectory()
        for name in ["vmlinux-section-notes.elf", "vmlinux-kallsyms-6.1.elf", "vmlinux-ksymtab.elf"] {
            let path = try scratch.write(name, Self.patched(try bytes(of: fixture(name)), field: field, value: value, type: type))
            let report = KernelAuditor(options: AuditOptions(symbols: true)).report(path: path)
            #expect(report.error != nil || report.verdicts != nil)
        }
    }

    @Test("a path that starts with ./ audits, and a bare name finds the config beside it")
    func relativePaths() throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.pvcheck)
        process.currentDirectoryURL = fixtures.appendingPathComponent("images")
        process.arguments = ["--json", "./vmlinux-pv-pvh.elf"]
        let out = Pipe()
        process.standardOutput = out
        try process.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
        let report = try JSONDecoder().decode(AuditReport.self, from: data)
        #expect(report.verdict(.pv)?.answer == .yes)
        #expect(report.config?.source.hasSuffix("config-6.6.0-pvkit-fixture") == true, "config-<release> beside a ./ path")
    }

    static var pvcheck: String {
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("pvcheck").path
    }
}

/// Memory limits are limits: peak memory measured by /usr/bin/time on pvcheck itself.
@Suite("memory limits", .serialized, .timeLimit(.minutes(5)))
struct MemoryLimitTests {
    static let tools = ["/usr/bin/time", "/usr/bin/gzip", "/usr/bin/bzip2", "/usr/bin/xz", "/usr/bin/zstd", "/usr/bin/lz4", "/usr/bin/lzop", "/usr/bin/cpio"]
    static var available: Bool { tools.allSatisfy { FileManager.default.isExecutableFile(atPath: $0) } }
    /// pvcheck's own size (~26 MiB: the Swift runtime, Foundation, the libraries) plus a
    /// decoder's state (xz's dictionary at the kernel's presets, 8 MiB): the README's constant.
    static let overhead = 40 << 20

    /// Peak resident bytes of one pvcheck run, and its exit status.
    static func peak(_ arguments: [String]) throws -> (bytes: Int, status: Int32) {
        let scratch = try ScratchDirectory()
        let report = scratch.url.appendingPathComponent("time").path
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/time")
        process.arguments = ["-f", "%M", "-o", report, LyingSectionHeaderTests.pvcheck] + arguments
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        let text = try String(contentsOfFile: report, encoding: .utf8)
        let kilobytes = try #require(Int(text.split(separator: "\n").last?.trimmingCharacters(in: .whitespaces) ?? ""))
        return (kilobytes * 1024, process.terminationStatus)
    }

    @Test(
        "a 256 MiB bomb in each compression stops at a 64 MiB limit with at most the constant above it",
        .enabled(if: available, "needs /usr/bin/time and the compressors"),
        arguments: [
            ("gz", "gzip -c"), ("bz2", "bzip2 -c"), ("xz", "xz -T1 -c"), ("lzma", "xz --format=lzma -c"), ("zst", "zstd -q -c"), ("lz4", "lz4 -q -l -c"),
            ("lzo", "lzop -c")
        ])
    func bombs(suffix: String, command: String) throws {
        let scratch = try ScratchDirectory()
        let bomb = scratch.url.appendingPathComponent("bomb.\(suffix)").path
        try SmallDisk.shell("head -c 256M /dev/zero | \(command) > '\(bomb)'")
        let limit = 64 << 20
        let (bytes, status) = try Self.peak(["--max-output", String(limit), bomb])
        #expect(status == 3)
        #expect(bytes <= limit + Self.overhead, "peak \(bytes >> 20) MiB for a \(limit >> 20) MiB limit")
    }

    @Test("an initramfs member of 512 MiB is streamed, never held: the peak stays far below it", .enabled(if: available, "needs cpio, zstd and /usr/bin/time"))
    func largeMember() throws {
        let scratch = try ScratchDirectory()
        let directory = scratch.url.path
        try SmallDisk.shell(
            "cd '\(directory)' && truncate -s 512M big && echo big | cpio -o -H newc --quiet | zstd -q -1 > initrd.zst && rm big")
        let (bytes, status) = try Self.peak(["--initrd", directory + "/initrd.zst", fixture("bzImage-xz")])
        #expect(status == 0)
        #expect(bytes <= 64 << 20, "peak \(bytes >> 20) MiB for a 512 MiB member")
        let report = try KernelAuditor(options: AuditOptions(initrdPath: directory + "/initrd.zst")).audit(path: fixture("bzImage-xz"))
        #expect(report.initramfs?.archives.first?.entries == 1)
    }
}

@Suite("a crash names its image and stage", .timeLimit(.minutes(2)))
struct CrashContextTests {
    @Test("SIGSEGV while a bomb decompresses: stderr names the image and the stage before Swift's backtrace")
    func namesTheImage() throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: LyingSectionHeaderTests.pvcheck)
        process.arguments = [fixture("bzImage-bomb-zstd")]
        var environment = ProcessInfo.processInfo.environment
        environment["SWIFT_BACKTRACE"] = "enable=no"
        process.environment = environment
        let err = Pipe()
        process.standardOutput = FileHandle.nullDevice
        process.standardError = err
        try process.run()
        usleep(400_000)
        kill(process.processIdentifier, SIGSEGV)
        let text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationReason == .uncaughtSignal)
        #expect(text.contains("pvcheck: crashed while auditing \(fixture("bzImage-bomb-zstd")): reading its container"), "\(text)")
    }
}
