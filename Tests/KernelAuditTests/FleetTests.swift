import Foundation
import KernelAudit
import Testing

/// Fleets: many images and roots at once, sorted output, the worst exit status.
@Suite("fleets", .timeLimit(.minutes(5)))
struct FleetTests {
    var arguments: [String] {
        [
            "--root", fixtures.appendingPathComponent("root").path, "--root", fixtures.appendingPathComponent("live/pvh").path,
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
        let pvh = try #require(reports.first { $0.path.hasSuffix("live/pvh/boot/vmlinuz-6.6.0-pvkit-fixture") })
        #expect(pvh.modules?.directory?.contains("live/pvh/lib/modules") == true)
        #expect(pvh.isDefault == false)
        #expect(pvh.verdict(.initramfsRootDisk)?.answer == .yes)
        #expect(!json.stdout.contains("images: "), "JSON lines stay pure")
    }

    @Test("the library runs a fleet in path order")
    func library() {
        let targets = ["bzImage-xz", "bzImage-gzip", "vmlinux.gz"].map { Fleet.Target(path: fixture($0), isDefault: nil) }
        let reports = Fleet.audit(targets, with: KernelAuditor(), jobs: 3).map(\.report)
        #expect(reports.map(\.path) == targets.map(\.path).sorted())
        #expect(reports.allSatisfy { $0.verdict(.pv)?.answer == .yes })
    }
}
