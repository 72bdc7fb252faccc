import Foundation
import KernelAudit
import Testing

/// The `pvcheck` executable: exit statuses, JSON lines, quiet, help, completions, --root.
@Suite("pvcheck command line", .timeLimit(.minutes(5)))
struct CommandLineTests {
    @Test(
        "exit statuses",
        arguments: [
            (["--require", "pv", "bzImage-xz"], Int32(0)),
            (["--require", "pv", "vmlinux-pvh-only.elf"], 1),
            (["--require", "pvh", "vmlinux-pvh-only.elf"], 0),
            (["--require", "dom0", "vmlinux-i386-pvh.elf32"], 3),
            (["--require", "pvhvm", "Image-arm64.gz"], 0),
            (["not-a-kernel-object.elf32"], 3),
            (["bzImage-zstd", "vmlinux-no-xen.elf"], 0),
            (["--require", "pv", "bzImage-zstd", "vmlinux-no-xen.elf"], 1),
            (["--require", "bogus", "bzImage-xz"], 2),
            ([], 2)
        ] as [([String], Int32)])
    func exitStatus(arguments: [String], status: Int32) throws {
        let resolved = arguments.map { $0.hasPrefix("-") || ["pv", "pvh", "pvhvm", "dom0", "bogus"].contains($0) ? $0 : fixture($0) }
        let result = try run("pvcheck", resolved)
        #expect(result.status == status, "stdout: \(result.stdout) stderr: \(result.stderr)")
    }

    @Test("--json writes one versioned object per image")
    func jsonLines() throws {
        let result = try run("pvcheck", ["--json", fixture("bzImage-xz"), fixture("not-a-kernel-object.elf32"), fixture("Image-arm64")])
        let lines = result.stdout.split(separator: "\n")
        #expect(lines.count == 3)
        let decoder = JSONDecoder()
        let all = try lines.map { try decoder.decode(AuditReport.self, from: Data($0.utf8)) }
        #expect(all.map(\.path) == all.map(\.path).sorted(), "reports come in path order")
        #expect(all.allSatisfy { $0.schema == "pvcheck/1" })
        let reports = [fixture("bzImage-xz"), fixture("not-a-kernel-object.elf32"), fixture("Image-arm64")].compactMap { path in all.first { $0.path == path } }
        try #require(reports.count == 3)
        #expect(reports[0].verdict(.pv)?.answer == .yes)
        #expect(reports[0].image?.compression == .xz)
        #expect(reports[1].error?.code == .notAKernel && reports[1].error?.offset == 16)
        #expect(reports[2].kernel?.family == .arm64)
        // Keys a consumer can rely on.
        let line = try #require(lines.first { $0.contains("bzImage-xz") })
        let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] ?? [:]
        let keys = Set(object.keys)
        #expect(keys.isSuperset(of: ["schema", "path", "image", "kernel", "xenNotes", "verdicts"]))
    }

    @Test("--quiet prints nothing; errors still set the status")
    func quiet() throws {
        let ok = try run("pvcheck", ["--quiet", "--require", "pvh", fixture("bzImage-lz4")])
        #expect(ok.status == 0 && ok.stdout.isEmpty)
        let bad = try run("pvcheck", ["--quiet", fixture("config-6.6.0-pvkit-fixture")])
        #expect(bad.status == 3 && bad.stdout.isEmpty)
    }

    @Test("text output: a verdict line per mode, evidence only with --explain, no colour off a terminal")
    func text() throws {
        let plain = try run("pvcheck", [fixture("bzImage-xz")])
        #expect(plain.stdout.contains("Xen PV domU            yes"))
        #expect(plain.stdout.contains("Xen PVH dom0           yes"))
        #expect(!plain.stdout.contains("·"))
        #expect(!plain.stdout.contains("\u{1B}["))
        let explained = try run("pvcheck", ["--explain", fixture("bzImage-xz")])
        #expect(explained.stdout.contains("· Xen note ENTRY = 0xffffffff81000100"))
        #expect(explained.stdout.contains("Config: "))
        let error = try run("pvcheck", [fixture("bomb-64MiB.gz"), "--max-output", "16777216"])
        #expect(error.status == 3)
        #expect(error.stdout.contains("decompresses past the limit of 16777216 bytes"))
    }

    @Test("--root audits every kernel and marks the default")
    func root() throws {
        let result = try run("pvcheck", ["--json", "--root", fixtures.appendingPathComponent("root").path])
        let reports = try result.stdout.split(separator: "\n").map { try JSONDecoder().decode(AuditReport.self, from: Data($0.utf8)) }
        #expect(reports.count == 2)
        #expect(reports.filter { $0.isDefault == true }.map { ($0.path as NSString).lastPathComponent } == ["vmlinuz-6.6.0-pvkit-fixture"])
        #expect(reports.first { $0.isDefault == true }?.modules?.directory != nil)
        let missing = try run("pvcheck", ["--root", "/nonexistent-pvkit"])
        #expect(missing.status == 3)
    }

    @Test("--help has examples; completion scripts generate")
    func helpAndCompletions() throws {
        let help = try run("pvcheck", ["--help"])
        #expect(help.status == 0 && help.stdout.contains("Examples:") && help.stdout.contains("--require"))
        for shell in ["bash", "zsh", "fish"] {
            let script = try run("pvcheck", ["--generate-completion-script", shell])
            #expect(script.status == 0 && script.stdout.contains("pvcheck"))
        }
    }
}
