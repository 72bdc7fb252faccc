import Foundation
import KernelAudit
import Testing

/// Fleets: many images and roots at once, sorted output, the worst exit status.
@Suite("fleets", .timeLimit(.minutes(5)))
struct FleetTests {
    /// A second guest root: a copy of fixtures/root without its /vmlinuz link.
    let scratch: ScratchDirectory
    var secondRoot: String { scratch.url.appendingPathComponent("second").path }

    init() throws {
        scratch = try ScratchDirectory()
        try FileManager.default.copyItem(atPath: fixtures.appendingPathComponent("root").path, toPath: scratch.url.appendingPathComponent("second").path)
        try FileManager.default.removeItem(atPath: scratch.url.appendingPathComponent("second/vmlinuz").path)
    }

    var arguments: [String] {
        [
            "--root", fixtures.appendingPathComponent("root").path, "--root", secondRoot,
            fixture("bzImage-zstd"), fixture("vmlinux-no-xen.elf"), fixture("Image-arm64.gz"), fixture("not-a-kernel-object.elf32"),
            fixture("bzImage-lz4"), fixture("vmlinux-pvh-only.elf")
        ]
    }

    @Test("the same fleet prints the same bytes, whatever the parallelism")
    func stable() throws {
        let one = try run("pvcheck", ["--json", "--jobs", "1"] + arguments)
        let many = try run("pvcheck", ["--json", "--jobs", "4"] + arguments)
        let again = try run("pvcheck", ["--json", "--jobs", "4"] + arguments)
        #expect(one.stdout == many.stdout && many.stdout == again.stdout)
        let paths = try many.stdout.split(separator: "\n").map { try JSONDecoder().decode(AuditReport.self, from: Data($0.utf8)).path }
        #expect(paths.count == 10)
        #expect(paths == paths.sorted())
    }

    @Test("the exit status is the worst one")
    func worst() throws {
        #expect(try run("pvcheck", ["--quiet"] + arguments).status == 3)
        #expect(try run("pvcheck", ["--quiet", "--require", "hvm-pv-drivers"] + arguments).status == 2)  // not a requirement
        #expect(try run("pvcheck", ["--quiet", "--require", "pv", fixture("bzImage-xz"), fixture("vmlinux-pvh-only.elf")]).status == 1)
        #expect(try run("pvcheck", ["--quiet", "--require", "pvh", fixture("bzImage-xz"), fixture("vmlinux-pvh-only.elf")]).status == 0)
    }

    @Test("each root's kernels use that root's modules and initramfs; a summary table ends the text")
    func summary() throws {
        let result = try run("pvcheck", arguments)
        #expect(result.stdout.contains("10 images: "))
        #expect(result.stdout.contains("could not be read"))
        let json = try run("pvcheck", ["--json"] + arguments)
        let reports = try json.stdout.split(separator: "\n").map { try JSONDecoder().decode(AuditReport.self, from: Data($0.utf8)) }
        let pvh = try #require(reports.first { $0.path.hasSuffix("second/boot/vmlinuz-6.6.0-pvkit-fixture") })
        #expect(pvh.modules?.directory?.contains("second/lib/modules") == true)
        #expect(pvh.isDefault == false)
        #expect(pvh.verdict(.initramfsRootDisk)?.answer == .yes)
        #expect(!json.stdout.contains("images: "), "JSON lines stay pure")
    }

    @Test("a root's links resolve inside the root: live/pvh's boot -> ../../root/boot names the guest's /root/boot, so it has no kernels")
    func confinedLinks() throws {
        let result = try run("pvcheck", ["--json", "--root", fixtures.appendingPathComponent("live/pvh").path])
        let report = try JSONDecoder().decode(AuditReport.self, from: Data(result.stdout.utf8))
        #expect(report.error?.code == .noKernel)
        #expect(result.status == 3)
    }

    @Test("the library runs a fleet in path order")
    func library() {
        let inputs = ["bzImage-xz", "bzImage-gzip", "vmlinux.gz"].map { AuditInput.kernel(fixture($0)) }
        let reports = Fleet.audit(inputs, with: KernelAuditor(), jobs: 3).map(\.report)
        #expect(reports.map(\.path) == inputs.map(\.path).sorted())
        #expect(reports.allSatisfy { $0.verdict(.pv)?.answer == .yes })
    }
}
