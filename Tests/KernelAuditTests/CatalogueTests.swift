import Foundation
import KernelAudit
import Testing

/// The kernel-fix catalogue in `patches/`: schema, loading with file and line, evaluation.
@Suite("fix catalogue", .timeLimit(.minutes(5)))
struct CatalogueTests {
    static let directory = KernelAuditTests.fixtures.deletingLastPathComponent().appendingPathComponent("patches").path

    @Test("every entry in patches/ loads and validates")
    func schema() {
        let (entries, problems) = Catalogue.load(directory: Self.directory)
        #expect(problems.isEmpty, "\(problems)")
        #expect(entries.count >= 20)
        #expect(Set(entries.map(\.id)).count == entries.count)
        let xsas = Set(entries.compactMap(\.xsa))
        #expect(xsas.isSuperset(of: ["XSA-391", "XSA-396", "XSA-403", "XSA-465", "XSA-466"]))
        for topic in [
            "pvh-guest", "pv-dom0", "blkfront-persistent-grants", "blkfront-indirect-descriptors", "blkfront-multi-queue",
            "netfront-multi-queue", "netfront-split-event-channels", "netfront-xdp", "balloon", "save-restore"
        ] {
            #expect(entries.contains { $0.id == topic }, "\(topic) missing")
        }
        #expect(entries.allSatisfy { !$0.absence.isEmpty && !$0.evidence.isEmpty && !($0.verified ?? []).isEmpty })
    }

    @Test("a broken entry is reported with its file and line; the others still load")
    func broken() throws {
        let scratch = try ScratchDirectory()
        let good = try String(contentsOfFile: Self.directory + "/balloon.json", encoding: .utf8)
        _ = try scratch.write("balloon.json", Array(good.utf8))
        _ = try scratch.write("bad-json.json", Array("{\n  \"id\": \"x\",\n  \"title\": oops\n}\n".utf8))
        _ = try scratch.write("missing.json", Array("{\n  \"id\": \"missing-title\",\n  \"kind\": \"fix\"\n}\n".utf8))
        let twoKinds = good.replacingOccurrences(of: "\"config\": \"CONFIG_XEN_BALLOON\"", with: "\"config\": \"CONFIG_XEN_BALLOON\", \"note\": \"ENTRY\"")
            .replacingOccurrences(of: "\"id\": \"balloon\"", with: "\"id\": \"two-kinds\"")
        _ = try scratch.write("two-kinds.json", Array(twoKinds.utf8))
        let (entries, problems) = Catalogue.load(directory: scratch.url.path)
        #expect(entries.map(\.id) == ["balloon"])
        #expect(problems.count == 3)
        let json = try #require(problems.first { $0.file.hasSuffix("bad-json.json") })
        #expect(json.line == 3, "\(json)")
        #expect(problems.first { $0.file.hasSuffix("missing.json") }?.message.contains("missing") == true)
        let rule = try #require(problems.first { $0.file.hasSuffix("two-kinds.json") })
        #expect(rule.message.contains("exactly one rule kind") && rule.line != nil)
    }

    @Test("lax input is refused with line and column: trailing commas, duplicate keys, unknown keys, empty values, unknown notes, bad versions")
    func strict() throws {
        let scratch = try ScratchDirectory()
        let good = try String(contentsOfFile: Self.directory + "/balloon.json", encoding: .utf8)
        func variant(_ name: String, _ text: String) throws {
            _ = try scratch.write(name + ".json", Array(text.replacingOccurrences(of: "\"id\": \"balloon\"", with: "\"id\": \"\(name)\"").utf8))
        }
        try variant(
            "trailing",
            good.replacingOccurrences(of: "\"match\": \"all\"", with: "\"match\": \"all\",").replacingOccurrences(
                of: "\"match\": \"any\"", with: "\"match\": \"any\","))
        let lastBrace = try #require(good.lastIndex(of: "}"))
        try variant("trailing", String(good[..<lastBrace]).trimmingCharacters(in: .whitespacesAndNewlines) + ",\n}\n")
        try variant("duplicate", good.replacingOccurrences(of: "\"kind\": \"feature\"", with: "\"kind\": \"feature\", \"kind\": \"fix\""))
        try variant("unknown", good.replacingOccurrences(of: "\"kind\": \"feature\"", with: "\"kind\": \"feature\", \"kinds\": 1"))
        try variant("empty", good.replacingOccurrences(of: "\"config\": \"CONFIG_XEN_BALLOON\"", with: "\"config\": \"\""))
        try variant("note", good.replacingOccurrences(of: "\"config\": \"CONFIG_XEN_BALLOON\"", with: "\"note\": \"NO_SUCH_NOTE\""))
        try variant("version", good.replacingOccurrences(of: "\"config\": \"CONFIG_XEN_BALLOON\"", with: "\"minimumVersion\": \"5..9\""))
        // Two files with the same id: the second (by name) is the problem, naming the first.
        _ = try scratch.write("again.json", Array(good.utf8))
        _ = try scratch.write("balloon.json", Array(good.utf8))
        let (entries, problems) = Catalogue.load(directory: scratch.url.path)
        func problem(_ name: String) -> CatalogueProblem? { problems.first { $0.file.hasSuffix("/\(name).json") } }
        #expect(entries.map(\.id) == ["balloon"] && entries.count == 1, "\(problems)")
        let trailing = try #require(problem("trailing"))
        #expect(trailing.message.contains("trailing comma") && trailing.line != nil && trailing.column != nil, "\(trailing)")
        #expect(problem("duplicate")?.message.contains("duplicate key \"kind\"") == true)
        #expect(problem("unknown")?.message.contains("unknown key \"kinds\"") == true)
        #expect(problem("empty")?.message.contains("empty value") == true)
        #expect(problem("note")?.message.contains("NO_SUCH_NOTE") == true)
        #expect(problem("version")?.message.contains("5..9") == true)
        let again = try #require(problems.first { $0.message.contains("duplicate id balloon") })
        #expect(again.message.contains("again.json") && again.file.hasSuffix("/balloon.json"), "both files are named: \(again)")
    }

    @Test("catalogue problems are in the JSON; --strict makes them the exit status")
    func strictExit() throws {
        let scratch = try ScratchDirectory()
        let good = try String(contentsOfFile: Self.directory + "/balloon.json", encoding: .utf8)
        _ = try scratch.write("balloon.json", Array(good.utf8))
        _ = try scratch.write("broken.json", Array("{\"id\": \"broken\",}".utf8))
        let lax = try run("pvcheck", ["--json", "--catalogue", scratch.url.path, fixture("vmlinux-pv-pvh.elf")])
        let report = try JSONDecoder().decode(AuditReport.self, from: Data(lax.stdout.utf8))
        #expect(report.catalogueProblems?.first?.file.hasSuffix("broken.json") == true)
        #expect(lax.status == 0)
        #expect(try run("pvcheck", ["--quiet", "--strict", "--catalogue", scratch.url.path, fixture("vmlinux-pv-pvh.elf")]).status == 3)
    }

    func results(_ path: String, root: String? = nil) throws -> [String: CatalogueResult.Status] {
        let entries = Catalogue.load(directory: Self.directory).entries
        let report = try KernelAuditor(options: AuditOptions(rootPath: root, catalogue: entries)).audit(path: path)
        return Dictionary(uniqueKeysWithValues: (report.fixes ?? []).map { ($0.id, $0.status) })
    }

    @Test("fixed, not fixed and unknown on the fixtures, with the evidence that decided")
    func onFixtures() throws {
        // kallsyms with gnttab_try_end_foreign_access but no xen_hypercall_pv; no module tree.
        let kallsyms = try results(fixture("vmlinux-kallsyms-6.4.elf"))
        #expect(kallsyms["xsa-396-gnttab-try-end-foreign-access"] == .fixed)
        #expect(kallsyms["xsa-466-no-hypercall-page"] == .notFixed)
        #expect(kallsyms["xsa-391-blkfront-lateeoi"] == .unknown)
        #expect(kallsyms["xsa-465-netfront-removal-crash"] == .unknown, "no changelog: a logic fix cannot be seen")
        // A root whose module files carry modinfo but no symbol table and no parameters.
        let root = KernelAuditTests.fixtures.appendingPathComponent("root").path
        let guest = try results(root + "/boot/vmlinuz-6.6.0-pvkit-fixture", root: root)
        #expect(guest["xsa-403-blkfront-bounce"] == .notFixed)
        #expect(guest["xsa-391-netfront-lateeoi"] == .notFixed)
        #expect(guest["pvh-guest"] == .fixed && guest["pv-dom0"] == .fixed && guest["balloon"] == .notFixed)
        #expect(guest["xsa-465-netfront-removal-crash"] == .fixed, "the guest root's changelog.Debian.gz names CVE-2024-53240")
        // No symbols (System.map beside this one is the fixture's): notes and config still decide.
        let hvmOnly = try results(fixture("vmlinux-no-xen.elf"))
        #expect(hvmOnly["pvh-guest"] == .notFixed && hvmOnly["pv-guest"] == .notFixed)
    }

    @Test("pvcheck --fixes and --catalogue on the command line")
    func commandLine() throws {
        let text = try run("pvcheck", ["--fixes", "--explain", fixture("vmlinux-kallsyms-6.4.elf")])
        #expect(text.status == 0)
        #expect(text.stdout.contains("missing xsa-466-no-hypercall-page"))
        #expect(text.stdout.contains("· symbol xen_hypercall_pv absent in kallsyms"))
        let scratch = try ScratchDirectory()
        _ = try scratch.write("bad.json", Array("{ nope".utf8))
        let broken = try run("pvcheck", ["--catalogue", scratch.url.path, fixture("bzImage-xz")])
        #expect(broken.status == 0 && broken.stderr.contains("bad.json"))
    }
}

/// Every catalogue entry against the real Debian kernels it was verified on.
@Suite("fix catalogue on real Debian kernels", .serialized, .timeLimit(.minutes(10)))
struct RealKernelCatalogueTests {
    @Test("every entry is fixed or present", arguments: RealKernelTests.kernels)
    func all(_ kernel: RealKernelTests.Kernel) throws {
        guard let root = try RealKernelTests.root(kernel.suite) else { return }
        let entries = Catalogue.load(directory: CatalogueTests.directory).entries
        let report = try KernelAuditor(options: AuditOptions(catalogue: entries)).audit(path: try RealKernelTests.image(in: root))
        let fixes = try #require(report.fixes)
        #expect(fixes.count == entries.count)
        for fix in fixes { #expect(fix.status == .fixed, "\(fix.id): \(fix.status) — \(fix.evidence)") }
    }
}
