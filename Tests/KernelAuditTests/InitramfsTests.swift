import Foundation
import KernelAudit
import Testing

/// "The kernel is fine, but the initramfs cannot see xvda": the initramfs verdict.
@Suite("initramfs", .timeLimit(.minutes(5)))
struct InitramfsTests {
    func report(_ image: String, initrd: String? = nil, root: String? = nil) throws -> AuditReport {
        try KernelAuditor(options: AuditOptions(rootPath: root, initrdPath: initrd)).audit(path: image)
    }

    @Test("Debian's shape: an uncompressed early cpio, then a zstd one holding xen-blkfront")
    func found() throws {
        let root = fixtures.appendingPathComponent("root").path
        let report = try report(root + "/boot/vmlinuz-6.6.0-pvkit-fixture", root: root)
        let initramfs = try #require(report.initramfs)
        #expect(initramfs.archives.map(\.compression) == [nil, .zstd])
        #expect(initramfs.archives[0].entries == 2)
        #expect(initramfs.blockFrontend == "usr/lib/modules/6.6.0-pvkit-fixture/kernel/drivers/block/xen-blkfront.ko")
        #expect(initramfs.netFrontend?.hasSuffix("xen-netfront.ko.xz") == true)
        #expect(initramfs.moduleReleases == ["6.6.0-pvkit-fixture"])
        #expect(initramfs.suspiciousNames.isEmpty)
        let verdict = try #require(report.verdict(.initramfsRootDisk))
        #expect(verdict.answer == .yes)
        #expect(report.verdicts?.count == 7)
    }

    @Test(
        "verdicts",
        arguments: [
            ("initrd-no-blkfront.img", Answer.no, "not in the initramfs"),
            ("initrd-other-release.img", .no, "6.1.0-other")
        ])
    func verdicts(initrd: String, answer: Answer, phrase: String) throws {
        let report = try report(fixture("bzImage-xz"), initrd: fixture(initrd))
        let verdict = try #require(report.verdict(.initramfsRootDisk))
        #expect(verdict.answer == answer)
        #expect(verdict.summary.contains(phrase))
    }

    @Test("a kernel without blkfront cannot be saved by its initramfs")
    func noBlkfront() throws {
        let root = fixtures.appendingPathComponent("root").path
        let report = try report(root + "/boot/vmlinuz-6.1.0-pvkit-hvm", root: root)
        #expect(report.initramfs?.archives.map(\.compression) == [nil, .gzip])
        #expect(report.verdict(.initramfsRootDisk)?.answer == .no)
    }

    /// A newc header with the given fields and name.
    func member(_ name: String, nameSize: String? = nil, fileSize: Int = 0, magic: String = "070701") -> [UInt8] {
        let size = nameSize ?? String(format: "%08X", name.utf8.count + 1)
        var header = Array(magic.utf8)
        for field in [
            "00000001", "000081A4", "00000000", "00000000", "00000001", "00000000", String(format: "%08X", fileSize),
            "00000000", "00000000", "00000000", "00000000", size, "00000000"
        ] { header += Array(field.utf8) }
        var bytes = header + Array(name.utf8) + [0]
        while bytes.count % 4 != 0 { bytes.append(0) }
        bytes += [UInt8](repeating: 0x41, count: fileSize)
        while bytes.count % 4 != 0 { bytes.append(0) }
        return bytes
    }

    /// The initramfs's own error: the kernel's verdicts stand beside it.
    func initrdError(_ bytes: [UInt8]) throws -> AuditReport.ErrorInfo? {
        let scratch = try ScratchDirectory()
        let path = try scratch.write("initrd", bytes)
        let report = try KernelAuditor(options: AuditOptions(initrdPath: path)).audit(path: fixture("bzImage-xz"))
        #expect(report.verdict(.pv)?.answer == .yes, "a damaged initramfs must not hide the kernel's verdicts")
        return report.initramfsError
    }

    @Test("hostile archives are errors naming the byte")
    func hostile() throws {
        let trailer = member("TRAILER!!!")
        #expect(try initrdError(member("init", fileSize: 40).dropLast(20) + [])?.code == .truncated)
        let absurd = try initrdError(member("init", nameSize: "7FFFFFFF") + trailer)
        #expect(absurd?.code == .corruptStream && absurd?.message.contains("absurd") == true && absurd?.offset == 94)
        #expect(try initrdError(member("init", magic: "070707") + trailer)?.code == .corruptStream)
        var notHex = member("init") + trailer
        notHex[15] = UInt8(ascii: "z")  // inside the mode field
        #expect(try initrdError(notHex)?.code == .corruptStream)
        #expect(try initrdError([])?.code == .empty)
        #expect(try initrdError(Array(repeating: 0x55, count: 300))?.code == .corruptStream)
        // A compressed archive cut short.
        let good = try bytes(of: fixture("initrd-no-blkfront.img"))
        #expect(try initrdError(Array(good.prefix(good.count / 2)))?.code == .truncated)
    }

    @Test("names that would escape the root are reported, and nothing is written")
    func traversal() throws {
        let scratch = try ScratchDirectory()
        let path = try scratch.write("initrd", member("../../etc/evil") + member("/abs/path") + member("TRAILER!!!"))
        let report = try report(fixture("bzImage-xz"), initrd: path)
        #expect(report.initramfs?.suspiciousNames == ["../../etc/evil", "/abs/path"])
        #expect(!FileManager.default.fileExists(atPath: scratch.url.deletingLastPathComponent().appendingPathComponent("etc/evil").path))
    }

    @Test("a cut at every 13th byte of a real-shaped initramfs is an error, never a crash")
    func cuts() throws {
        let original = try bytes(of: fixtures.appendingPathComponent("root/boot/initrd.img-6.6.0-pvkit-fixture").path)
        for length in stride(from: 1, to: original.count - 600, by: 13) {
            let error = try initrdError(Array(original[..<length]))
            #expect(error != nil, "cut at \(length) of \(original.count) was accepted")
        }
    }
}
