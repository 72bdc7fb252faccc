import Foundation
import KernelAudit
import Testing

/// `--live` on captured /sys and /proc trees: PV, PV dom0, PVH, HVM with PV drivers, bare metal, KVM.
@Suite("live system", .timeLimit(.minutes(5)))
struct LiveSystemTests {
    struct Case: Sendable, CustomTestStringConvertible {
        let tree: String
        let mode: String
        let dom0: Bool
        let devices: [String]
        let summary: String
        var testDescription: String { tree }
    }

    static let cases = [
        Case(tree: "pv", mode: "pv", dom0: false, devices: ["vbd-51712", "vif-0"], summary: "running as a Xen PV domU on Xen 4.17.3"),
        Case(tree: "pv-dom0", mode: "pv", dom0: true, devices: [], summary: "running as a Xen PV dom0 on Xen 4.17.3"),
        Case(tree: "pvh", mode: "pvh", dom0: false, devices: ["console-1", "vbd-51712", "vif-0"], summary: "running as a Xen PVH domU on Xen 4.17.3"),
        Case(tree: "hvm", mode: "hvm", dom0: false, devices: ["vbd-768", "vif-0"], summary: "running as a Xen HVM domU on Xen 4.17.3"),
        Case(tree: "bare-metal", mode: "none", dom0: false, devices: [], summary: "not on Xen"),
        Case(tree: "kvm", mode: "none", dom0: false, devices: [], summary: "not on Xen (running on QEMU)")
    ]

    @Test("facts read from the tree", arguments: cases)
    func facts(_ c: Case) {
        let info = LiveSystem.read(root: fixtures.appendingPathComponent("live/\(c.tree)").path)
        #expect(info.mode == c.mode)
        #expect(info.onXen == (c.mode != "none"))
        #expect(info.dom0 == c.dom0)
        #expect(info.xenDevices == c.devices)
        #expect(info.summary == c.summary)
        #expect(info.loadedXenModules == (c.mode == "none" ? [] : ["xen_blkfront", "xen_netfront"]))
        #expect(!info.evidence.isEmpty)
    }

    @Test("--live-root reports the machine and audits its running kernel")
    func commandLine() throws {
        let result = try run("pvcheck", ["--json", "--live-root", fixtures.appendingPathComponent("live/pvh").path])
        #expect(result.status == 0)
        let report = try JSONDecoder().decode(AuditReport.self, from: Data(result.stdout.utf8))
        #expect(report.live?.mode == "pvh")
        #expect(report.kernel?.release == "6.6.0-pvkit-fixture")
        #expect(report.verdict(.pvh)?.answer == .yes)
        #expect(report.verdict(.initramfsRootDisk)?.answer == .yes)
        let text = try run("pvcheck", ["--live-root", fixtures.appendingPathComponent("live/bare-metal").path])
        #expect(text.status == 0 && text.stdout.contains("Live system: not on Xen"))
        #expect(text.stdout.contains("its image is not in /boot"))
    }

    @Test("this machine: --live works wherever it runs")
    func thisMachine() throws {
        let result = try run("pvcheck", ["--live", "--json"])
        let report = try JSONDecoder().decode(AuditReport.self, from: Data(result.stdout.utf8))
        let live = try #require(report.live)
        #expect(live.summary.hasPrefix(live.onXen ? "running as" : "not on Xen"))
        #expect(result.status == 0 || report.error != nil)
    }
}

@Suite("live system: broken trees", .timeLimit(.minutes(5)))
struct BrokenLiveTreeTests {
    @Test("garbage, binary and missing files are read as absent, never a crash")
    func garbage() throws {
        let scratch = try ScratchDirectory()
        let root = scratch.url.path
        for (path, bytes) in [
            ("sys/hypervisor/type", [0xFF, 0xFE, 0x00, 0x78] as [UInt8]), ("sys/hypervisor/guest_type", Array("PV\u{0}junk".utf8)),
            ("sys/hypervisor/version/major", Array("four".utf8)), ("proc/cpuinfo", [UInt8](repeating: 0x80, count: 4096)),
            ("proc/modules", Array("\n\n   \nxen\n".utf8)), ("proc/sys/kernel/osrelease", Array("../../../etc/passwd\n".utf8))
        ] {
            try FileManager.default.createDirectory(atPath: (root + "/" + path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            _ = try scratch.write(path, bytes)
        }
        try FileManager.default.createDirectory(atPath: root + "/sys/bus/xen/devices/not-a-device", withIntermediateDirectories: true)
        let info = LiveSystem.read(root: root)
        #expect(!info.onXen && info.mode == "none")
        #expect(info.summary == "not on Xen")
        #expect(LiveSystem.runningKernel(root: root, release: info.release ?? "") == nil)
        let result = try run("pvcheck", ["--live-root", root])
        #expect(result.status == 0 && result.stdout.contains("not on Xen"))
    }
}
