import Foundation
import GuestFiles
import KernelAudit
import Testing

/// Real Debian 12 guests made from Debian's packages by scripts/make-guests.sh (which `make
/// test` runs), as directories and as whole disk images, against Debian's own tools' view of
/// them: `lsinitramfs`/`lsinitrd` listings, the kernel's config, the files themselves.
enum Guests {
    static let cache = (ProcessInfo.processInfo.environment["PVKIT_CACHE"] ?? (NSHomeDirectory() + "/.cache/pvkit")) + "/guests"
    static let status = (try? String(contentsOfFile: cache + "/STATUS", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
    static var available: Bool { status?.hasPrefix("ok ") == true }
    static var reason: Comment { "no guest images in \(cache): \(status ?? "run scripts/make-guests.sh as root (make test does)")" }

    static let variants = ["most", "dep", "dracut", "xvda", "no-nvme"]
    static let images = ["ext4-gpt.raw", "ext4-mbr.qcow2", "xfs-mbr.raw", "xfs-gpt.qcow2"]
    static let uuid = "0f3c2a4e-7d1b-4c55-9a66-5e2f4b1c8d01"

    static func root(_ variant: String) -> String { cache + "/\(variant)/root" }
    static func release(_ variant: String) throws -> String {
        try String(contentsOfFile: cache + "/\(variant)/release", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// The module names Debian's lsinitramfs (or dracut's lsinitrd) lists.
    static func listedModules(_ variant: String) throws -> Set<String> {
        let listing = try String(contentsOfFile: cache + "/\(variant)/initrd.list", encoding: .utf8)
        var names = Set<String>()
        for line in listing.split(separator: "\n") {
            // lsinitrd prints `ls -l` lines: the path is the last field.
            guard let path = line.split(separator: " ").last else { continue }
            for suffix in [".ko", ".ko.xz", ".ko.zst", ".ko.gz"] where path.hasSuffix(suffix) {
                let file = path.split(separator: "/").last!.dropLast(suffix.count)
                names.insert(file.replacingOccurrences(of: "-", with: "_"))
            }
        }
        return names
    }

    /// kmod's `modinfo -F filename`: "(builtin)" or the module's path under the root.
    static func modinfo(_ variant: String, _ module: String) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/sbin/modinfo")
        process.arguments = ["-b", root(variant), "-k", try release(variant), "-F", "filename", module]
        let out = Pipe()
        process.standardOutput = out
        try process.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    static func profiles() throws -> [TargetProfile] {
        let loaded = TargetCatalogue.load(directory: fixtures.deletingLastPathComponent().appendingPathComponent("patches/targets").path)
        #expect(loaded.problems.isEmpty)
        return loaded.profiles
    }

    static func audit(_ input: AuditInput) throws -> AuditReport {
        var options = AuditOptions()
        options.targets = try profiles()
        let reports = GuestAudit.audit(input, with: KernelAuditor(options: options)).map(\.report)
        #expect(reports.count == 1, "one kernel per guest")
        return try #require(reports.first)
    }

    static func check(_ report: AuditReport, _ target: String, _ kind: TargetCheck.Kind) throws -> TargetCheck {
        let verdict = try #require(report.targets?.first { $0.target == target }, "no \(target) verdict")
        return try #require(verdict.checks.first { $0.check == kind })
    }
}

@Suite("real Debian guests: roots and disk images", .serialized, .enabled(if: Guests.available, Guests.reason), .timeLimit(.minutes(10)))
struct GuestImageTests {
    @Test("the initramfs's modules are exactly lsinitramfs's / lsinitrd's; the builder is recognised", arguments: Guests.variants)
    func initramfsGroundTruth(_ variant: String) throws {
        let report = try Guests.audit(.root(Guests.root(variant)))
        #expect(report.error == nil)
        let initramfs = try #require(report.initramfs)
        #expect(Set(initramfs.modules) == (try Guests.listedModules(variant)))
        #expect(initramfs.builder == (variant == "dracut" ? .dracut : .initramfsTools))
        #expect(report.kernel?.release == (try Guests.release(variant)))
    }

    @Test("MODULES=most on the cloud kernel: every target finds its root disk; the console is ttyS0; nothing in the root breaks")
    func most() throws {
        let report = try Guests.audit(.root(Guests.root("most")))
        let config = try String(contentsOfFile: Guests.root("most") + "/boot/config-\(try Guests.release("most"))", encoding: .utf8)
        #expect(config.contains("CONFIG_BLK_DEV_NVME=y"), "the premise: Debian's cloud kernel has NVMe built in")
        #expect(try Guests.modinfo("most", "nvme") == "(builtin)")
        let ena = try Guests.modinfo("most", "ena")
        #expect(try Guests.check(report, "aws-nitro", .network).evidence.contains { ena.hasSuffix($0.components(separatedBy: ": ").last ?? "-") })
        let nitro = try Guests.check(report, "aws-nitro", .rootDisk)
        #expect(nitro.answer == .yes && nitro.summary.contains("nvme") && nitro.summary.contains("built in"))
        #expect(try Guests.check(report, "aws-nitro", .network).answer == .yes)
        #expect(try Guests.check(report, "aws-nitro", .console).answer == .yes)
        #expect(try Guests.check(report, "aws-nitro", .references).answer == .yes)
        #expect(try Guests.check(report, "kvm", .rootDisk).answer == .yes)
        #expect(try Guests.listedModules("most").isSuperset(of: ["virtio_blk", "virtio_pci", "xen_blkfront"]))
        #expect(try Guests.check(report, "xen-pv", .rootDisk).answer == .yes)
        #expect(try Guests.check(report, "xen-pv", .console).answer == .no, "console=ttyS0 shows nothing on PV, whose console is hvc0")
        let pv = try Guests.check(report, "xen-pv", .boots)
        #expect(pv.answer == .yes && pv.summary.contains("Xen ≥"))
        #expect(try Guests.check(report, "firecracker", .boots).answer == .no, "a bzImage: releases load an ELF vmlinux")
        #expect(report.targets?.first { $0.target == "aws-nitro" }?.answer == .yes)
        #expect(report.guest?.bootEntries.first?.kernel == "/boot/vmlinuz-\(try Guests.release("most"))")
        #expect(report.isDefault == true)
    }

    @Test("fstab, crypttab and root= naming /dev/xvd*, a MAC-pinned network and an hvc0 console break on Nitro, with the fix for each")
    func xvda() throws {
        let report = try Guests.audit(.diskImage(Guests.cache + "/xvda/ext4-gpt.raw"))
        let references = try Guests.check(report, "aws-nitro", .references)
        #expect(references.answer == .no)
        #expect(references.evidence.contains { $0.contains("/etc/fstab line 1 names /dev/xvda1") })
        #expect(references.evidence.contains { $0.contains("/etc/crypttab") && $0.contains("/dev/xvdc1") })
        #expect(references.evidence.contains { $0.contains("root=/dev/xvda1") })
        #expect(references.evidence.contains { $0.contains("70-persistent-net.rules") && $0.contains("00:16:3e:12:34:56") })
        #expect(references.evidence.contains { $0.contains("netplan") })
        // The image knows partition 1's UUID: the rewritten fstab line uses it.
        #expect(references.fixes.contains("in /etc/fstab line 1: UUID=\(Guests.uuid) / auto errors=remount-ro"))
        #expect(references.fixes.contains { $0.contains("UUID=$(blkid -s UUID -o value /dev/xvdb)") })
        let console = try Guests.check(report, "aws-nitro", .console)
        #expect(console.answer == .no && console.summary.contains("hvc0") && console.fixes.first?.contains("console=ttyS0") == true)
        #expect(try Guests.check(report, "xen-pv", .references).answer == .no, "the MAC changes on any move")
        #expect(try Guests.check(report, "xen-pv", .console).answer == .yes)
        #expect(try Guests.check(report, "kvm", .references).evidence.contains { $0.contains("xen_emul_unplug=never") && $0.contains("no effect") })
    }

    @Test("linux-image-amd64 with MODULES=list and no nvme: Nitro's root disk is not found, and the fix is the initramfs-tools line")
    func noNVMe() throws {
        let release = try Guests.release("no-nvme")
        let config = try String(contentsOfFile: Guests.root("no-nvme") + "/boot/config-\(release)", encoding: .utf8)
        #expect(config.contains("CONFIG_BLK_DEV_NVME=m"), "the premise: nvme is a module in Debian's generic kernel")
        #expect(!(try Guests.listedModules("no-nvme")).contains("nvme"))
        let nvme = try Guests.modinfo("no-nvme", "nvme")
        let report = try Guests.audit(.root(Guests.root("no-nvme")))
        let nitro = try Guests.check(report, "aws-nitro", .rootDisk)
        #expect(nitro.answer == .no)
        let relative = try #require(nvme.components(separatedBy: "/lib/modules/\(release)/").last)
        #expect(nitro.evidence.contains { $0.contains("nvme is a module (\(relative))") }, "modinfo says \(nvme)")
        #expect(nitro.fixes == ["printf '%s\\n' nvme nvme_core >> /etc/initramfs-tools/modules && update-initramfs -u -k \(release)"])
        #expect(try Guests.check(report, "kvm", .rootDisk).answer == .yes, "virtio_blk and virtio_pci were listed")
        #expect(try Guests.check(report, "hyperv-azure", .rootDisk).answer == .no)
        #expect(report.targets?.first { $0.target == "aws-nitro" }?.answer == .no)
    }

    @Test("MODULES=dep keeps only the build machine's disk drivers: each target's root disk follows lsinitramfs, and the fix is the modules line")
    func dep() throws {
        let listed = try Guests.listedModules("dep")
        #expect(listed.count < (try Guests.listedModules("most")).count, "the premise: dep keeps fewer modules than most")
        let report = try Guests.audit(.root(Guests.root("dep")))
        #expect(report.guest?.initramfsToolsModules == "dep")
        let pv = try Guests.check(report, "xen-pv", .rootDisk)
        #expect(pv.answer == (listed.contains("xen_blkfront") ? .yes : .no))
        if pv.answer == .no {
            #expect(pv.fixes == ["printf '%s\\n' xen_blkfront >> /etc/initramfs-tools/modules && update-initramfs -u -k \(try Guests.release("dep"))"])
            #expect(pv.evidence.contains("/etc/initramfs-tools/initramfs.conf: MODULES=dep"))
        }
        #expect(try Guests.check(report, "aws-nitro", .rootDisk).answer == .yes, "nvme is built into the cloud kernel")
    }

    @Test("dracut's initramfs: recognised, and its fix is an add_drivers line")
    func dracut() throws {
        let report = try Guests.audit(.root(Guests.root("dracut")))
        #expect(report.initramfs?.builder == .dracut)
        #expect(try Guests.check(report, "kvm", .rootDisk).answer == .yes)
        let networkd = try Guests.check(report, "aws-nitro", .references)
        #expect(networkd.evidence.contains { $0.contains("10-eth0.network") && $0.contains("eth0") })
    }

    @Test("every disk image of a variant gives the root directory's answers, finds partition 1 and is never changed", arguments: Guests.variants)
    func images(_ variant: String) throws {
        let fromRoot = try Guests.audit(.root(Guests.root(variant)))
        for name in Guests.images {
            let path = Guests.cache + "/\(variant)/\(name)"
            // The checksum of a 2 GiB raw file costs seconds: every qcow2, and the raw images of one variant.
            let checksummed = name.hasSuffix(".qcow2") || variant == "most"
            let before = checksummed ? try digest(path) : ""
            let modified = try FileManager.default.attributesOfItem(atPath: path)[.modificationDate] as? Date
            let report = try Guests.audit(AuditInput.classify(path))
            #expect(report.error == nil, "\(name): \(report.error?.message ?? "")")
            let image = try #require(report.guest?.image, "\(name)")
            #expect(image.format == (name.hasSuffix(".qcow2") ? .qcow2 : .raw))
            #expect(image.partitionTable == (name.contains("gpt") ? "gpt" : "dos"))
            #expect(image.rootPartition == 1)
            #expect(image.partitions.first?.uuid == Guests.uuid)
            #expect(image.partitions.first?.fileSystem == (name.hasPrefix("xfs") ? "xfs" : "ext4"))
            #expect(report.initramfs?.modules == fromRoot.initramfs?.modules, "\(name)")
            let answers = { (report: AuditReport) in report.targets?.flatMap { verdict in verdict.checks.map { "\(verdict.target) \($0.check) \($0.answer)" } }
            }
            #expect(answers(report) == answers(fromRoot), "\(name)")
            if checksummed { #expect(try digest(path) == before, "\(name) changed") }
            #expect(try FileManager.default.attributesOfItem(atPath: path)[.modificationDate] as? Date == modified, "\(name) was written")
        }
    }

    @Test("auditing a 2 GiB image reads only what it needs")
    func readsLittle() throws {
        let report = try Guests.audit(.diskImage(Guests.cache + "/most/ext4-mbr.qcow2"))
        let read = try #require(report.guest?.image?.bytesRead)
        let kernel = try #require(report.image?.fileSize)
        let initrd = try #require(
            try FileManager.default.attributesOfItem(atPath: Guests.root("most") + "/boot/initrd.img-\(try Guests.release("most"))")[.size] as? Int)
        // The kernel, the initramfs, depmod's indexes and the small files, not the 2 GiB.
        #expect(read < UInt64(kernel + initrd) + 64 << 20, "read \(read) bytes")
    }

    @Test("the command line: a fleet of images, JSON lines, a target matrix on stderr, the worst exit status")
    func fleet() throws {
        let images = ["most/ext4-mbr.qcow2", "no-nvme/ext4-gpt.raw", "xvda/xfs-gpt.qcow2"].map { Guests.cache + "/" + $0 }
        let result = try run("pvcheck", ["--target", "aws-nitro,kvm", "--json", "--jobs", "3"] + images)
        #expect(result.status == 1)
        let reports = try result.stdout.split(separator: "\n").map { try JSONDecoder().decode(AuditReport.self, from: Data($0.utf8)) }
        #expect(reports.count == 3 && reports.allSatisfy { $0.targets?.count == 2 })
        #expect(result.stderr.contains("aws-nitro") && result.stderr.contains("kvm"))
        let good = try run("pvcheck", ["--target", "aws-nitro", "--quiet", Guests.cache + "/most/ext4-gpt.raw"])
        #expect(good.status == 0)
    }
}

/// SHA-256 of a file by coreutils, independent of pvcheck.
func digest(_ path: String) throws -> String {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/sha256sum")
    process.arguments = [path]
    let out = Pipe()
    process.standardOutput = out
    try process.run()
    let data = out.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return String(decoding: data, as: UTF8.self).split(separator: " ").first.map(String.init) ?? ""
}
