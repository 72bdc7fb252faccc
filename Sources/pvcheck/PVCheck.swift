import ArgumentParser
import Foundation
import KernelAudit
import Logging

/// `pvcheck`: will this kernel boot as a Xen PV, PVH or HVM guest, and what will it miss?
@main
struct PVCheck: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pvcheck",
        abstract: "Audit Linux guests for Xen PV, PVH and HVM and the platforms they move to, with evidence.",
        discussion: """
            Each argument is a kernel image, a guest root directory, or a whole disk image (raw or qcow2, MBR or GPT; ext2/3/4 read without mounting, XFS and btrfs through a read-only loop mount as root). Kernels: bzImage (EFI stub, signed), vmlinux, vmlinux.gz/.xz/…, arm64 Image/Image.gz and EFI zboot, in every compression Linux uses. Config: embedded IKCONFIG, --config, config-<release> beside the image or in the guest. Modules: --modules, lib/modules/<release> beside the image or in the guest.

            --target checks a platform (xen-pv, xen-pvh, xen-hvm, aws-nitro, kvm, firecracker, cloud-hypervisor, hyperv-azure, or all): does the kernel boot there, does it and its initramfs find the root disk, does it get a network driver and a console, and what in the guest root (fstab, crypttab, root=, network configuration, the default boot entry) breaks there. Each finding comes with the change that fixes it; pvcheck never changes the image.

            Exit status: 0 audited (with --require or --target: every requirement met), 1 a requirement or target not met, 2 usage error, 3 could not tell (an unreadable, damaged or unknown input, or an unknown verdict).

            Examples:
              pvcheck /boot/vmlinuz-6.1.0-27-amd64
              pvcheck --explain --config /boot/config-6.1.0-27-amd64 vmlinuz
              pvcheck --require pv --quiet /mnt/guest/boot/vmlinuz-*  && echo "boots PV"
              pvcheck --target aws-nitro --target kvm disk.qcow2
              pvcheck --target all --jobs 8 --json images/*.qcow2 > fleet.jsonl
            """,
        version: "pvcheck 0.1 (JSON schema \(AuditReport.schema))")

    @Argument(help: "Kernel images, guest root directories or disk images (raw, qcow2) to audit.", completion: .file())
    var images: [String] = []

    @Option(help: "A mounted guest root filesystem: audit every kernel in its /boot (repeatable, for fleets).", completion: .directory)
    var root: [String] = []

    @Option(help: "Images audited at once (default: one per core).")
    var jobs: Int = ProcessInfo.processInfo.activeProcessorCount

    @Option(help: "The kernel config to use when the image carries none.", completion: .file())
    var config: String?

    @Option(help: "The module tree (lib/modules/<release>).", completion: .directory)
    var modules: String?

    @Option(help: "Exit 0 only if the kernel can boot this way: pv, pvh, pvhvm or dom0.")
    var require: RequirementArgument?

    @Option(
        help: ArgumentHelp(
            "A platform to check the guest for (repeatable or comma-separated; 'all' for every one).", valueName: "target"))
    var target: [String] = []

    @Option(help: "The target profiles directory (default: patches/targets of the catalogue PVKit ships).", completion: .directory)
    var targetDirectory: String?

    @Option(help: "The Xen release the guest will run on, for xen-pv's decompressor check (e.g. 4.14).")
    var xenVersion: String?

    @Flag(help: "Report how this machine runs now (/sys/hypervisor, /proc/xen, Xen devices, loaded modules) and audit its running kernel.")
    var live = false

    @Option(help: "Read the live facts from this tree instead of / (a captured sysfs/procfs).", completion: .directory)
    var liveRoot: String?

    @Flag(help: "One JSON object per image (JSON lines), schema \(AuditReport.schema).")
    var json = false

    @Flag(help: "Show the evidence behind every verdict.")
    var explain = false

    @Flag(name: .shortAndLong, help: "Print nothing; only the exit status.")
    var quiet = false

    @Flag(name: .shortAndLong, help: "Log each step to standard error.")
    var verbose = false

    @Flag(help: "Recover the kernel's symbol table (kallsyms, else System.map, __ksymtab_strings, .BTF, strings).")
    var symbols = false

    @Option(help: "Write the recovered symbols to FILE in System.map format (one image only).", completion: .file())
    var dumpSymbols: String?

    @Option(help: "A System.map to use when the image has no kallsyms.", completion: .file())
    var systemMap: String?

    @Option(
        help: "The initramfs to check for the frontends the root disk needs (default: initrd.img-<release> beside the image).",
        completion: .file())
    var initrd: String?

    @Flag(help: "Check the kernel against the PV fix catalogue (patches/).")
    var fixes = false

    @Option(help: "The fix catalogue directory (implies --fixes; default: the patches/ folder PVKit ships).", completion: .directory)
    var catalogue: String?

    @Flag(help: "Exit 3 when a catalogue file has a problem (without it the broken entries are skipped and reported).")
    var strict = false

    @Option(help: "The most bytes a payload may decompress to (decompression-bomb guard).")
    var maxOutput: Int = 1 << 30

    /// Runs the command with pvcheck's exit statuses: usage errors are 2 (ArgumentParser's
    /// default is 64), everything else as the command says.
    static func main() {
        CrashContext.install(program: "pvcheck")
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch {
            let code = exitCode(for: error)
            if code == .validationFailure {
                FileHandle.standardError.write(Data((fullMessage(for: error) + "\n").utf8))
                Foundation.exit(2)
            }
            exit(withError: error)
        }
    }

    func validate() throws {
        if images.isEmpty && root.isEmpty && !live && liveRoot == nil {
            throw ValidationError("Give at least one kernel image, disk image, --root DIR or --live.")
        }
        if let xenVersion, xenVersion.split(separator: ".").count < 2 || !xenVersion.split(separator: ".").allSatisfy({ Int($0) != nil }) {
            throw ValidationError("--xen-version takes a release such as 4.17, not \"\(xenVersion)\".")
        }
        if jobs < 1 { throw ValidationError("--jobs must be at least 1.") }
        if maxOutput < 1 << 20 { throw ValidationError("--max-output must be at least 1048576 bytes.") }
        if dumpSymbols != nil && (images.count != 1 || !root.isEmpty) { throw ValidationError("--dump-symbols takes exactly one image.") }
    }

    func run() throws {
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = verbose ? .debug : .warning
            return handler
        }
        var loadedCatalogue: [CatalogueEntry]? = nil
        var catalogueProblems: [CatalogueProblem] = []
        if fixes || catalogue != nil {
            guard let directory = catalogue ?? Self.defaultCatalogue() else {
                FileHandle.standardError.write(Data("pvcheck: no catalogue found; give --catalogue DIR\n".utf8))
                throw ExitCode(2)
            }
            let loaded = Catalogue.load(directory: directory)
            for problem in loaded.problems { FileHandle.standardError.write(Data("pvcheck: catalogue: \(problem)\n".utf8)) }
            loadedCatalogue = loaded.entries
            catalogueProblems = loaded.problems
        }
        let profiles = try loadTargets()
        var options = AuditOptions(
            configPath: config, modulesPath: modules, rootPath: nil,
            limits: DecompressionLimits(maxOutput: maxOutput), symbols: symbols || dumpSymbols != nil,
            systemMapPath: systemMap, initrdPath: initrd, catalogue: loadedCatalogue)
        options.targets = profiles
        options.xenVersion = xenVersion
        let auditor = KernelAuditor(options: options, logger: Logger(label: "pvcheck"))
        let inputs = images.map(AuditInput.classify) + root.map { AuditInput.root($0) }
        var liveReport: AuditReport? = nil
        if live || liveRoot != nil {
            let liveRoot = self.liveRoot.map { $0.hasSuffix("/") ? String($0.dropLast()) : $0 } ?? ""
            let facts = LiveSystem.read(root: liveRoot)
            var report: AuditReport
            if let release = facts.release, let kernel = LiveSystem.runningKernel(root: liveRoot, release: release) {
                let liveAuditor = KernelAuditor(
                    options: AuditOptions(
                        configPath: config, modulesPath: modules, rootPath: liveRoot.isEmpty ? "/" : liveRoot,
                        limits: DecompressionLimits(maxOutput: maxOutput)), logger: Logger(label: "pvcheck"))
                report = liveAuditor.report(path: kernel)
            } else {
                // The live facts stand on their own; the image is simply not there to audit.
                report = AuditReport(path: liveRoot + "/boot/vmlinuz-\(facts.release ?? "?")")
            }
            report.live = facts
            liveReport = report
        }
        let renderer = ReportRenderer(
            colour: isatty(STDOUT_FILENO) == 1 && ProcessInfo.processInfo.environment["NO_COLOR"] == nil,
            explain: explain)
        var status: Int32 = 0
        var outputs: [(report: AuditReport, symbols: SymbolTable?)] = liveReport.map { [($0, nil)] } ?? []
        let showProgress = !quiet && inputs.count > 1 && isatty(STDERR_FILENO) == 1
        outputs += Fleet.audit(
            inputs, with: auditor, jobs: jobs,
            progress: { done, total in
                guard showProgress else { return }
                let width = 30, filled = width * done / total
                FileHandle.standardError.write(
                    Data("\r[\(String(repeating: "#", count: filled))\(String(repeating: ".", count: width - filled))] \(done)/\(total)".utf8))
                if done == total { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) }
            })
        if loadedCatalogue != nil {
            for index in outputs.indices { outputs[index].report.catalogueProblems = catalogueProblems }
            if strict && !catalogueProblems.isEmpty { status = 3 }
        }
        for (report, table) in outputs {
            if let dumpSymbols, let table {
                do {
                    try table.systemMap().write(toFile: dumpSymbols, atomically: true, encoding: .utf8)
                } catch {
                    FileHandle.standardError.write(Data("pvcheck: cannot write \(dumpSymbols): \(error.localizedDescription)\n".utf8))
                    throw ExitCode(3)
                }
            }
            if !quiet { print(json ? ReportRenderer.json(report) : renderer.text(report)) }
            var code: Int32 = require.map { $0.requirement.exitCode(for: report) } ?? (report.error == nil ? 0 : 3)
            if !profiles.isEmpty, report.error == nil {
                let answers = report.targets?.map(\.answer) ?? []
                code = max(code, answers.contains(.unknown) ? 3 : answers.contains(.no) ? 1 : 0)
            }
            status = max(status, code)
        }
        let reports = outputs.map(\.report)
        if !quiet && !json && reports.count > 1 { print(renderer.summary(reports)) }
        if !quiet && json && !profiles.isEmpty && reports.count > 1 {
            FileHandle.standardError.write(Data((renderer.targetMatrix(reports).joined(separator: "\n") + "\n").utf8))
        }
        if status != 0 { throw ExitCode(status) }
    }
}

extension PVCheck {
    /// The profiles `--target` names, from `--target-directory` or the shipped `patches/targets`.
    func loadTargets() throws -> [TargetProfile] {
        let wanted = target.flatMap { $0.split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) } }.filter { !$0.isEmpty }
        guard !wanted.isEmpty else { return [] }
        guard let directory = targetDirectory ?? Self.defaultCatalogue().map({ $0 + "/targets" }) else {
            FileHandle.standardError.write(Data("pvcheck: no target profiles found; give --target-directory DIR\n".utf8))
            throw ExitCode(2)
        }
        let loaded = TargetCatalogue.load(directory: directory)
        for problem in loaded.problems { FileHandle.standardError.write(Data("pvcheck: target profile: \(problem)\n".utf8)) }
        if !loaded.problems.isEmpty { throw ExitCode(3) }
        if wanted.contains("all") { return loaded.profiles }
        var profiles: [TargetProfile] = []
        for id in wanted {
            guard let profile = loaded.profiles.first(where: { $0.id == id }) else {
                FileHandle.standardError.write(
                    Data("pvcheck: unknown target \"\(id)\"; known: \(loaded.profiles.map(\.id).joined(separator: ", ")), all\n".utf8))
                throw ExitCode(2)
            }
            if !profiles.contains(profile) { profiles.append(profile) }
        }
        return profiles
    }

    /// `$PVCHECK_CATALOGUE`, else a `patches` folder of JSON entries in a directory above the
    /// executable (the repository, for a build from source), else `../share/pvkit/patches`.
    static func defaultCatalogue() -> String? {
        if let given = ProcessInfo.processInfo.environment["PVCHECK_CATALOGUE"] { return given }
        var directory = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
        for _ in 0..<6 {
            for candidate in [directory.appendingPathComponent("patches"), directory.appendingPathComponent("share/pvkit/patches")] {
                if let names = try? FileManager.default.contentsOfDirectory(atPath: candidate.path), names.contains(where: { $0.hasSuffix(".json") }) {
                    return candidate.path
                }
            }
            directory.deleteLastPathComponent()
        }
        return nil
    }
}

struct RequirementArgument: ExpressibleByArgument {
    let requirement: Requirement
    init?(argument: String) {
        guard let value = Requirement(rawValue: argument) else { return nil }
        requirement = value
    }
    static var allValueStrings: [String] { Requirement.allCases.map(\.rawValue) }
}
