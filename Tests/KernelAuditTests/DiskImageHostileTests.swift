import Foundation
import GuestFiles
import KernelAudit
import Testing

/// Small disk images made here with util-linux's sfdisk, e2fsprogs' mkfs.ext4 -d and
/// qemu-img, holding fixtures/root; then damaged on purpose.
enum SmallDisk {
    static let tools = ["/usr/sbin/sfdisk", "/usr/sbin/mkfs.ext4", "/usr/bin/qemu-img"]
    static var available: Bool { tools.allSatisfy { FileManager.default.isExecutableFile(atPath: $0) } }

    static func shell(_ command: String) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", command]
        try process.run()
        process.waitUntilExit()
        #expect(process.terminationStatus == 0, "\(command)")
    }

    /// A 64 MiB raw disk (`table` gpt or dos) with one ext4 partition from 1 MiB holding `root`.
    static func make(in scratch: ScratchDirectory, table: String = "dos", root: String = fixtures.appendingPathComponent("root").path) throws -> String {
        let path = scratch.url.appendingPathComponent("disk-\(table).raw").path
        try shell(
            "truncate -s 64M '\(path)' && printf 'label: \(table)\\nstart=2048, size=120000\\n' | /usr/sbin/sfdisk -q '\(path)'"
                + " && /usr/sbin/mkfs.ext4 -q -F -b 4096 -E offset=1048576 -d '\(root)' '\(path)' 15000")
        return path
    }

    /// A 192 MiB raw disk with one btrfs partition holding fixtures/root (mkfs.btrfs --rootdir).
    static func makeBtrfs(in scratch: ScratchDirectory) throws -> String {
        let path = scratch.url.appendingPathComponent("btrfs.raw").path, volume = path + ".volume"
        try shell(
            "truncate -s 192M '\(path)' && printf 'label: gpt\\nstart=2048, size=389120\\n' | /usr/sbin/sfdisk -q '\(path)'"
                + " && truncate -s 190M '\(volume)' && mkfs.btrfs -q -f -r '\(fixtures.appendingPathComponent("root").path)' '\(volume)'"
                + " && dd if='\(volume)' of='\(path)' bs=1M seek=1 conv=notrunc status=none && rm '\(volume)'")
        return path
    }

    static func patch(_ path: String, at offset: Int, _ bytes: [UInt8]) throws {
        let handle = try #require(FileHandle(forUpdatingAtPath: path))
        try handle.seek(toOffset: UInt64(offset))
        try handle.write(contentsOf: Data(bytes))
        try handle.close()
    }

    static func audit(_ path: String) -> [AuditReport] {
        GuestAudit.audit(AuditInput.classify(path), with: KernelAuditor()).map(\.report)
    }
}

@Suite("disk images: hostile and damaged", .enabled(if: SmallDisk.available, "needs sfdisk, mkfs.ext4 and qemu-img"), .timeLimit(.minutes(5)))
struct DiskImageHostileTests {
    @Test("a good small image: ext4 read without mounting, raw, qcow2, VMDK (sparse and stream-optimized), VHD and VHDX, MBR and GPT")
    func good() throws {
        let scratch = try ScratchDirectory()
        for table in ["dos", "gpt"] {
            let raw = try SmallDisk.make(in: scratch, table: table)
            var paths = [raw]
            for (format, options, suffix) in [
                ("qcow2", "", "qcow2"), ("vmdk", "", "vmdk"), ("vmdk", "-o subformat=streamOptimized", "stream.vmdk"), ("vpc", "", "vhd"),
                ("vpc", "-o subformat=fixed", "fixed.vhd"), ("vhdx", "", "vhdx")
            ] {
                try SmallDisk.shell("qemu-img convert -q -f raw -O \(format) \(options) '\(raw)' '\(raw).\(suffix)'")
                paths.append(raw + "." + suffix)
            }
            for path in paths {
                #expect(AuditInput.classify(path) == .diskImage(path), "\(path)")
                let reports = SmallDisk.audit(path)
                #expect(reports.count == 2, "fixtures/root holds two kernels")
                #expect(reports.allSatisfy { $0.error == nil }, "\(reports.compactMap(\.error?.message))")
                #expect(reports.contains { $0.isDefault == true && $0.path.hasSuffix(":/boot/vmlinuz-6.6.0-pvkit-fixture") })
                #expect(reports.first?.guest?.image?.partitionTable == table, "\(path)")
                let format = reports.first?.guest?.image?.format
                #expect(
                    format
                        == (path.hasSuffix("vhd")
                            ? .vhd : path.hasSuffix("vhdx") ? .vhdx : path.hasSuffix("vmdk") ? .vmdk : path.hasSuffix("qcow2") ? .qcow2 : .raw))
                #expect(reports.contains { $0.modules?.frontends.contains { $0.frontend == .vbd && $0.state != .absent } == true })
            }
        }
    }

    @Test(
        "btrfs through a read-only loop mount, raw and qcow2 (FUSE export); an LVM physical volume is named with what to do",
        .enabled(if: getuid() == 0 && FileManager.default.isExecutableFile(atPath: "/usr/sbin/mkfs.btrfs"), "needs root and btrfs-progs"))
    func mounted() throws {
        let scratch = try ScratchDirectory()
        let raw = try SmallDisk.makeBtrfs(in: scratch)
        try SmallDisk.shell("qemu-img convert -q -f raw -O qcow2 '\(raw)' '\(raw).qcow2'")
        for path in [raw, raw + ".qcow2"] {
            let before = try digest(path)
            let reports = SmallDisk.audit(path)
            #expect(reports.count == 2 && reports.allSatisfy { $0.error == nil }, "\(reports.compactMap(\.error?.message))")
            #expect(reports.first?.guest?.image?.partitions.first?.fileSystem == "btrfs")
            #expect(try digest(path) == before)
        }
        #expect(!(try String(contentsOfFile: "/proc/mounts", encoding: .utf8)).contains("pvcheck-mount"), "every mount is gone")
        let lvm = scratch.url.appendingPathComponent("lvm.raw").path
        try SmallDisk.shell(
            "truncate -s 64M '\(lvm)' && printf 'label: dos\\nstart=2048, size=120000\\n' | /usr/sbin/sfdisk -q '\(lvm)'"
                + " && L=$(losetup --find --show --offset 1048576 --sizelimit 61440000 '\(lvm)') && pvcreate -q -ff -y --devices $L $L; s=$?; losetup -d $L; exit $s"
        )
        let error = try #require(SmallDisk.audit(lvm).first?.error)
        #expect(error.code == .unsupported && error.message.contains("LVM") && error.hint.contains("vgchange -ay --readonly"))
    }

    @Test("a partition entry past the end of the disk is named, never followed")
    func lyingTable() throws {
        let scratch = try ScratchDirectory()
        let path = try SmallDisk.make(in: scratch)
        // MBR entry 1's sector count (bytes 12–15 of the entry at 446).
        try SmallDisk.patch(path, at: 446 + 12, le32(0xFFFF_0000))
        let before = try digest(path)
        let report = try #require(SmallDisk.audit(path).first)
        let error = try #require(report.error)
        #expect(error.code == .badDiskImage)
        #expect(error.message.contains("past the end") || error.message.contains("no partition"), "\(error.message)")
        #expect(try digest(path) == before)
    }

    @Test("a corrupt superblock is a clear error; a wiped one means no root")
    func corruptSuperblock() throws {
        let scratch = try ScratchDirectory()
        let path = try SmallDisk.make(in: scratch)
        // s_inodes_count and s_blocks_count (offsets 0 and 4 of the superblock), magic kept.
        try SmallDisk.patch(path, at: 1_048_576 + 1024, [UInt8](repeating: 0xFF, count: 8) + [UInt8](repeating: 0, count: 16))
        let damaged = try #require(SmallDisk.audit(path).first?.error)
        #expect(damaged.code == .badDiskImage)
        #expect(damaged.message.contains("libext2fs") || damaged.message.contains("no partition"), "\(damaged.message)")
        try SmallDisk.patch(path, at: 1_048_576 + 1024, [UInt8](repeating: 0, count: 1024))
        let wiped = try #require(SmallDisk.audit(path).first?.error)
        #expect(wiped.code == .badDiskImage && wiped.message.contains("no partition with a Linux root"), "\(wiped.message)")
    }

    @Test("a qcow2 whose L1 table points outside the file is an error from libqcow, not a crash")
    func qcowOutside() throws {
        let scratch = try ScratchDirectory()
        let raw = try SmallDisk.make(in: scratch)
        let qcow = raw + ".qcow2"
        try SmallDisk.shell("qemu-img convert -q -f raw -O qcow2 '\(raw)' '\(qcow)'")
        // l1_table_offset: big-endian u64 at byte 40 of the header.
        try SmallDisk.patch(qcow, at: 40, [0, 0, 0x10, 0, 0, 0, 0, 0])
        let error = try #require(SmallDisk.audit(qcow).first?.error)
        #expect(error.code == .badDiskImage || error.code == .unreadable, "\(error)")
        // A backing file is refused with what to do.
        let overlay = scratch.url.appendingPathComponent("overlay.qcow2").path
        try SmallDisk.shell("qemu-img create -q -f qcow2 -F raw -b '\(raw)' '\(overlay)'")
        let refused = try #require(SmallDisk.audit(overlay).first?.error)
        #expect(refused.code == .unsupported && refused.hint.contains("qemu-img convert"))
        // So is a VMDK snapshot delta.
        let base = scratch.url.appendingPathComponent("base.vmdk").path, delta = scratch.url.appendingPathComponent("delta.vmdk").path
        try SmallDisk.shell("qemu-img convert -q -f raw -O vmdk '\(raw)' '\(base)' && qemu-img create -q -f vmdk -b '\(base)' -F vmdk '\(delta)'")
        let snapshot = try #require(SmallDisk.audit(delta).first?.error)
        #expect(snapshot.code == .unsupported && snapshot.message.contains("snapshot"), "\(snapshot.message)")
    }

    @Test("an image cut at 27 places, raw, qcow2, VMDK, VHD and VHDX: each an error or a report, never a crash, never a write")
    func truncated() throws {
        let scratch = try ScratchDirectory()
        let raw = try SmallDisk.make(in: scratch)
        for (format, suffix) in [("qcow2", "qcow2"), ("vmdk", "vmdk"), ("vpc", "vhd"), ("vhdx", "vhdx")] {
            try SmallDisk.shell("qemu-img convert -q -f raw -O \(format) '\(raw)' '\(raw).\(suffix)'")
        }
        for source in [raw] + ["qcow2", "vmdk", "vhd", "vhdx"].map({ raw + "." + $0 }) {
            let whole = try bytes(of: source)
            // The raw disk's data ends near 1 MiB + the file system; cut inside it as well as at the ends.
            let cuts = (0..<24).map { whole.count * $0 / 24 + ($0 % 3) * 511 } + [512, 1_049_600, 1_052_672]
            for cut in cuts where cut < whole.count {
                let path = try scratch.write("cut", Array(whole[..<cut]))
                let before = try digest(path)
                for report in SmallDisk.audit(path) {
                    if let error = report.error { #expect(!error.message.isEmpty && !error.hint.isEmpty) }
                }
                #expect(try digest(path) == before)
            }
        }
    }

    @Test("links resolve inside the guest: absolute and ../ links reach the guest's files, loops end in an error")
    func confinedLinks() throws {
        let scratch = try ScratchDirectory()
        let root = scratch.url.appendingPathComponent("root").path
        let manager = FileManager.default
        try manager.createDirectory(atPath: root + "/etc", withIntermediateDirectories: true)
        try manager.createDirectory(atPath: root + "/boot", withIntermediateDirectories: true)
        try manager.createDirectory(atPath: root + "/usr", withIntermediateDirectories: true)
        try "guest\n".write(toFile: root + "/etc/hostname", atomically: true, encoding: .utf8)
        try manager.createSymbolicLink(atPath: root + "/boot/absolute", withDestinationPath: "/etc/hostname")
        try manager.createSymbolicLink(atPath: root + "/boot/climbing", withDestinationPath: "../../../../../../etc/hostname")
        try manager.createSymbolicLink(atPath: root + "/boot/loop-a", withDestinationPath: "loop-b")
        try manager.createSymbolicLink(atPath: root + "/boot/loop-b", withDestinationPath: "/boot/loop-a")
        try manager.createSymbolicLink(atPath: root + "/etc/fstab", withDestinationPath: "fstab")
        let guest = try GuestRoot(directory: root)
        #expect(guest.text(of: "/boot/absolute") == "guest\n")
        #expect(guest.text(of: "/boot/climbing") == "guest\n")
        #expect(try guest.resolve("/boot/climbing") == "/etc/hostname")
        #expect(throws: GuestFileError.self) { try guest.resolve("/boot/loop-a") }
        #expect(guest.text(of: "/etc/fstab") == nil)
        // The same root as an image: libext2fs resolves nothing on the host either.
        let image = try SmallDisk.make(in: scratch, root: root)
        let disk = try GuestDisk(path: image)
        #expect(disk.root.text(of: "/boot/absolute") == "guest\n")
        #expect(throws: GuestFileError.self) { try disk.root.resolve("/boot/loop-a") }
        let report = try #require(SmallDisk.audit(image).first)
        #expect(report.error?.code == .noKernel)
    }
}
