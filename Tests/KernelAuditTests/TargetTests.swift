import Foundation
import GuestFiles
import KernelAudit
import Testing

/// The target profiles, the guest facts' parsers and the target rules on small guest roots
/// written here (the real Debian guests are in GuestImageTests).
@Suite("targets and guest facts", .timeLimit(.minutes(5)))
struct TargetTests {
    static let targets = fixtures.deletingLastPathComponent().appendingPathComponent("patches/targets").path

    @Test("every shipped profile loads; the eight platforms are there")
    func shipped() {
        let loaded = TargetCatalogue.load(directory: Self.targets)
        #expect(loaded.problems.isEmpty)
        #expect(
            Set(loaded.profiles.map(\.id)) == ["xen-pv", "xen-pvh", "xen-hvm", "aws-nitro", "kvm", "firecracker", "cloud-hypervisor", "hyperv-azure"])
        let pv = loaded.profiles.first { $0.id == "xen-pv" }
        #expect(pv?.xenCompressionSince?["zstd"] == "4.15" && pv?.xenCompressionSince?["lz4"] == "4.4")
    }

    @Test("a broken profile is a problem naming its file; the others load")
    func strict() throws {
        let scratch = try ScratchDirectory()
        let good = try String(contentsOfFile: Self.targets + "/kvm.json", encoding: .utf8)
        _ = try scratch.write("kvm.json", Array(good.utf8))
        _ = try scratch.write("extra.json", Array(good.replacingOccurrences(of: "\"id\": \"kvm\"", with: "\"id\": \"extra\", \"colour\": 1").utf8))
        _ = try scratch.write("wrong-id.json", Array(good.utf8))
        _ = try scratch.write("typo.json", Array("{\"id\": \"typo\", \"name\": 3}".utf8))
        _ = try scratch.write("comma.json", Array("{\"id\": \"comma\",}".utf8))
        let loaded = TargetCatalogue.load(directory: scratch.url.path)
        #expect(loaded.profiles.map(\.id) == ["kvm"])
        #expect(loaded.problems.count == 4)
        #expect(loaded.problems.contains { $0.contains("extra.json") && $0.contains("\"colour\"") })
        #expect(loaded.problems.contains { $0.contains("wrong-id.json") && $0.contains("is not the file's name") })
        #expect(loaded.problems.contains { $0.contains("typo.json") && ($0.contains("wrong type") || $0.contains("missing")) })
        #expect(loaded.problems.contains { $0.contains("comma.json") })
    }

    /// A guest root from a dictionary of files (relative path → contents) and links.
    func guest(_ files: [String: String], links: [String: String] = [:]) throws -> (ScratchDirectory, String) {
        let scratch = try ScratchDirectory()
        let root = scratch.url.appendingPathComponent("root").path
        for (path, text) in files {
            let full = root + "/" + path
            try FileManager.default.createDirectory(atPath: (full as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try text.write(toFile: full, atomically: false, encoding: .utf8)
        }
        for (path, target) in links {
            let full = root + "/" + path
            try FileManager.default.createDirectory(atPath: (full as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try FileManager.default.createSymbolicLink(atPath: full, withDestinationPath: target)
        }
        return (scratch, root)
    }

    @Test("boot loaders: grub.cfg with submenus and a saved default, BLS entries, extlinux, menu.lst")
    func bootLoaders() throws {
        let grub = """
            set default="${saved_entry}"
            menuentry 'Debian GNU/Linux' --class debian $menuentry_id_option 'gnulinux-simple-x' {
            \tlinux\t/boot/vmlinuz-6.1.0-1-amd64 root=UUID=abc ro quiet
            \tinitrd\t/boot/initrd.img-6.1.0-1-amd64
            }
            submenu 'Advanced options for Debian GNU/Linux' $menuentry_id_option 'gnulinux-advanced-x' {
            \tmenuentry 'Debian GNU/Linux, with Linux 6.1.0-2-amd64' --class debian $menuentry_id_option 'gnulinux-6.1.0-2-advanced-x' {
            \t\tlinux\t/boot/vmlinuz-6.1.0-2-amd64 root=UUID=abc ro console=ttyS0
            \t}
            }
            """
        let (scratch, root) = try guest(["boot/grub/grub.cfg": grub, "boot/grub/grubenv": "saved_entry=gnulinux-6.1.0-2-advanced-x\n"])
        defer { withExtendedLifetime(scratch) {} }
        let facts = try GuestInfo.read(GuestRoot(directory: root))
        #expect(facts.bootEntries.map(\.kernel) == ["/boot/vmlinuz-6.1.0-1-amd64", "/boot/vmlinuz-6.1.0-2-amd64"])
        #expect(facts.bootEntries[1].title == "Advanced options for Debian GNU/Linux>Debian GNU/Linux, with Linux 6.1.0-2-amd64")
        #expect(facts.defaultEntry == 1)
        #expect(facts.bootEntries[1].commandLine == "root=UUID=abc ro console=ttyS0")

        let (bls, blsRoot) = try guest([
            "boot/loader/entries/a-6.5.conf": "title Fedora (6.5)\nlinux /vmlinuz-6.5\noptions root=UUID=1 ro\n",
            "boot/loader/entries/a-6.10.conf": "title Fedora (6.10)\nlinux /vmlinuz-6.10\noptions root=UUID=1 ro console=ttyS0\n"
        ])
        defer { withExtendedLifetime(bls) {} }
        let blsFacts = try GuestInfo.read(GuestRoot(directory: blsRoot))
        #expect(blsFacts.bootEntries.first?.kernel == "/vmlinuz-6.10", "the newest version sorts first")
        #expect(blsFacts.defaultEntry == 0)

        let (ext, extRoot) = try guest([
            "boot/extlinux/extlinux.conf":
                "DEFAULT second\nLABEL first\n  KERNEL /boot/vmlinuz-a\n  APPEND root=/dev/vda1\nLABEL second\n  LINUX /boot/vmlinuz-b\n  APPEND root=/dev/vda1 console=ttyS0\n"
        ])
        defer { withExtendedLifetime(ext) {} }
        let extFacts = try GuestInfo.read(GuestRoot(directory: extRoot))
        #expect(extFacts.defaultEntry == 1 && extFacts.bootEntries[1].commandLine == "root=/dev/vda1 console=ttyS0")

        let (legacy, legacyRoot) = try guest([
            "boot/grub/menu.lst": "default 0\ntitle Amazon Linux\nkernel /boot/vmlinuz-4.14 root=/dev/xvda1 console=hvc0\ninitrd /boot/initramfs-4.14.img\n"
        ])
        defer { withExtendedLifetime(legacy) {} }
        let legacyFacts = try GuestInfo.read(GuestRoot(directory: legacyRoot))
        #expect(legacyFacts.bootEntries.first?.commandLine == "root=/dev/xvda1 console=hvc0")
    }

    @Test("network configuration: names and MACs from ifupdown, netplan, networkd, NetworkManager, ifcfg and udev")
    func network() throws {
        let (scratch, root) = try guest([
            "etc/network/interfaces": "auto lo\niface lo inet loopback\nauto eth0\niface eth0 inet dhcp\n",
            "etc/netplan/01.yaml": "network:\n  ethernets:\n    ens5:\n      dhcp4: true\n    id0:\n      match:\n        macaddress: 02:00:00:00:00:01\n",
            "etc/systemd/network/10.network": "[Match]\nName=en*\n",
            "etc/NetworkManager/system-connections/wired.nmconnection": "[connection]\ninterface-name=enp1s0\n",
            "etc/sysconfig/network-scripts/ifcfg-eth1": "DEVICE=eth1\nHWADDR=02:00:00:00:00:02\n",
            "etc/udev/rules.d/70-persistent-net.rules": "SUBSYSTEM==\"net\", ATTR{address}==\"02:00:00:00:00:03\", NAME=\"eth2\"\n"
        ])
        defer { withExtendedLifetime(scratch) {} }
        let references = try GuestInfo.read(GuestRoot(directory: root)).network
        #expect(Set(references.compactMap(\.interface)) == ["eth0", "ens5", "id0", "en*", "enp1s0", "eth1", "eth2"])
        #expect(Set(references.compactMap(\.mac)) == ["02:00:00:00:00:01", "02:00:00:00:00:02", "02:00:00:00:00:03"])
    }

    @Test("the rules on a small root: a module kernel with no initramfs, a boot entry for another kernel, xen_nopv on Xen HVM")
    func rules() throws {
        let release = "6.6.0-pvkit-fixture"
        let kernel = try bytes(of: fixture("bzImage-xz"))
        let config = try String(contentsOfFile: fixture("config-6.6.0-pvkit-fixture"), encoding: .utf8)
        let (scratch, root) = try guest([
            "etc/fstab": "/dev/sda1 / ext4 defaults 0 1\nLABEL=boot /boot ext4 defaults 0 2\n",
            "boot/config-\(release)": config,
            "boot/grub/grub.cfg": "menuentry 'other' {\n\tlinux /boot/vmlinuz-other root=/dev/sda1 xen_nopv net.ifnames=0\n}\n",
            "etc/network/interfaces": "auto eth0\niface eth0 inet dhcp\n",
            "usr/.keep": ""
        ])
        defer { withExtendedLifetime(scratch) {} }
        try Data(kernel).write(to: URL(fileURLWithPath: root + "/boot/vmlinuz-\(release)"))
        var options = AuditOptions()
        options.targets = TargetCatalogue.load(directory: Self.targets).profiles
        let report = try #require(GuestAudit.audit(.root(root), with: KernelAuditor(options: options)).first?.report)
        func check(_ target: String, _ kind: TargetCheck.Kind) -> TargetCheck? {
            report.targets?.first { $0.target == target }?.checks.first { $0.check == kind }
        }
        // The fixture's config has blkfront as a module and there is no initramfs.
        let pv = try #require(check("xen-pv", .rootDisk))
        #expect(pv.answer == .no && pv.summary.contains("xen_blkfront"))
        #expect(pv.fixes.first?.hasPrefix("build an initramfs for \(release)") == true)
        let references = try #require(check("xen-hvm", .references))
        #expect(references.evidence.contains { $0.contains("xen_nopv") })
        #expect(references.evidence.contains { $0.contains("boots /boot/vmlinuz-other, not vmlinuz-\(release)") })
        #expect(references.evidence.contains { $0.contains("/dev/sda1") }, "Xen names its disks xvd*")
        #expect(!references.evidence.contains { $0.contains("eth0") }, "net.ifnames=0 keeps eth0")
        #expect(check("kvm", .references)?.evidence.contains { $0.contains("/dev/sda1") } == false, "virtio-scsi disks are sd*")
        #expect(report.targets?.first { $0.target == "xen-pv" }?.answer == .no)
    }

    @Test("a kernel alone: boots, root disk and network judged; console and references shown as unknown, not counted")
    func kernelAlone() throws {
        let result = try run("pvcheck", ["--json", "--target", "xen-pvh", "--config", fixture("config-6.6.0-pvkit-fixture"), fixture("vmlinux-pv-pvh.elf")])
        let report = try JSONDecoder().decode(AuditReport.self, from: Data(result.stdout.utf8))
        let verdict = try #require(report.targets?.first)
        #expect(verdict.checks.first { $0.check == .console }?.answer == .unknown)
        #expect(verdict.checks.first { $0.check == .boots }?.answer == .yes)
        #expect(result.status == (verdict.answer == .yes ? 0 : verdict.answer == .no ? 1 : 3))
        #expect(try run("pvcheck", ["--target", "nowhere", fixture("vmlinux-pv-pvh.elf")]).status == 2)
        #expect(try run("pvcheck", ["--xen-version", "four", fixture("vmlinux-pv-pvh.elf")]).status == 2)
        let old = try run("pvcheck", ["--json", "--target", "xen-pv", "--xen-version", "4.14", fixture("bzImage-zstd")])
        let boots = try JSONDecoder().decode(AuditReport.self, from: Data(old.stdout.utf8)).targets?.first?.checks.first
        #expect(boots?.answer == .no && boots?.summary.contains("4.15") == true)
    }

    @Test("pvcheck --help wraps its own paragraphs: no line of the overview breaks mid-sentence")
    func help() throws {
        let help = try run("pvcheck", ["--help"]).stdout
        #expect(!help.contains("requirement not met,\n"))
        #expect(help.contains("--target"))
    }
}
