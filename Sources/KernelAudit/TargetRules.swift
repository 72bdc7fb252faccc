import Foundation
import GuestFiles

/// One platform's answer for one kernel (and its guest root): will it boot, find its root
/// disk, get its network, show a console — and what in the root breaks there.
public struct TargetVerdict: Sendable, Codable, Equatable {
    public let target: String
    public let name: String
    /// The worst of the checks (a check that could not be made is `unknown`).
    public let answer: Answer
    public let checks: [TargetCheck]
    /// Every check's fix, in order: the commands and lines to change. pvcheck changes nothing.
    public let fixes: [String]
}

/// One row of a target's verdict.
public struct TargetCheck: Sendable, Codable, Equatable {
    public enum Kind: String, Sendable, Codable, CaseIterable {
        case boots
        case rootDisk = "root-disk"
        case network
        case console
        case references

        public var label: String {
            switch self {
            case .boots: "boots"
            case .rootDisk: "root disk found"
            case .network: "network"
            case .console: "console"
            case .references: "guest references"
            }
        }
    }

    public let check: Kind
    public let answer: Answer
    public let summary: String
    public let evidence: [String]
    public let fixes: [String]
}

/// Everything the target rules look at.
struct TargetFacts {
    var report: AuditReport
    var config: KernelConfig?
    var modules: ModuleIndex?
    var initramfs: InitramfsInfo?
    var guest: GuestInfo?
    /// The kernel's path inside the guest, to find its boot entry.
    var kernelPath: String?
    /// The Xen release the guest is to run on (`--xen-version`), for the PV loader's decompressors.
    var xenVersion: String?
}

enum TargetRules {
    static func evaluate(_ profile: TargetProfile, _ facts: TargetFacts) -> TargetVerdict {
        let checks = [
            boots(profile, facts), rootDisk(profile, facts), network(profile, facts), console(profile, facts), references(profile, facts)
        ]
        // Without a guest root the console and references cannot be read: they are shown, not counted.
        let counted = facts.guest == nil ? checks.filter { $0.check != .console && $0.check != .references } : checks
        let answer: Answer =
            counted.contains { $0.answer == .no } ? .no : counted.contains { $0.answer == .unknown } ? .unknown : .yes
        return TargetVerdict(target: profile.id, name: profile.name, answer: answer, checks: checks, fixes: checks.flatMap(\.fixes))
    }

    // MARK: boots

    static func boots(_ profile: TargetProfile, _ facts: TargetFacts) -> TargetCheck {
        func row(_ answer: Answer, _ summary: String, _ evidence: [String], _ fixes: [String] = []) -> TargetCheck {
            TargetCheck(check: .boots, answer: answer, summary: summary, evidence: evidence, fixes: fixes)
        }
        let report = facts.report
        let container = report.image?.container ?? "unknown"
        let hasPVH = report.xenNotes?.note(.phys32Entry) != nil
        let architecture = report.kernel?.architecture ?? "?"
        switch profile.boot {
        case .xenPV:
            guard let verdict = report.verdict(.pv) else { return row(.unknown, "no PV verdict", []) }
            guard verdict.answer == .yes else { return row(verdict.answer, verdict.summary, verdict.evidence) }
            guard let compression = report.image?.compression else {
                return row(.yes, verdict.summary + "; the kernel is not compressed", verdict.evidence)
            }
            let since = profile.xenCompressionSince?[compression.rawValue]
            var evidence = verdict.evidence + ["\(container) with a \(compression.rawValue) payload"]
            guard let since else {
                return row(.unknown, "Xen's PV loader's support for \(compression.rawValue) is not in \(profile.id)'s data", evidence)
            }
            evidence.append("Xen's PV loader unpacks \(compression.rawValue) since Xen \(since) (when built with its library)")
            if let wanted = facts.xenVersion {
                if versionLess(wanted, since) {
                    return row(
                        .no, "Xen \(wanted)'s PV loader cannot unpack \(compression.rawValue) (since Xen \(since))", evidence,
                        ["recompress the kernel for Xen \(wanted): build it with CONFIG_KERNEL_GZIP=y, or boot it through pvgrub/PVH"])
                }
                return row(.yes, verdict.summary + "; Xen \(wanted) unpacks \(compression.rawValue) (since \(since))", evidence)
            }
            return row(.yes, verdict.summary + "; needs Xen ≥ \(since) for its \(compression.rawValue) payload", evidence)
        case .xenPVH:
            guard let verdict = report.verdict(.pvh) else { return row(.unknown, "no PVH verdict", []) }
            return row(verdict.answer, verdict.summary, verdict.evidence)
        case .firmware:
            guard let verdict = report.verdict(.hvm) else { return row(.unknown, "no HVM verdict", []) }
            return row(
                verdict.answer, verdict.answer == .yes ? "\(container) kernel for \(architecture): firmware and a boot loader start it" : verdict.summary,
                verdict.evidence)
        case .directFirecracker:
            if architecture == "arm64" { return row(.yes, "an arm64 Image: Firecracker loads it directly", ["container \(container)"]) }
            guard architecture.hasPrefix("x86") else { return row(.no, "Firecracker runs x86_64 and arm64 kernels, not \(architecture)", []) }
            if container == "elf" {
                return row(
                    .yes, hasPVH ? "an ELF vmlinux with the PVH entry note: Firecracker (≥ 1.12) boots it through PVH" : "an ELF vmlinux: Firecracker loads it",
                    ["container elf", hasPVH ? "XEN_ELFNOTE_PHYS32_ENTRY present" : "no PVH note: the 64-bit Linux boot protocol is used"])
            }
            return row(
                .no, "a \(container): Firecracker's releases load an uncompressed ELF vmlinux (bzImage loading is unreleased)",
                ["container \(container)"],
                ["extract the ELF for Firecracker: /usr/src/linux-headers-$(uname -r)/scripts/extract-vmlinux \(report.path) > vmlinux"])
        case .directCloudHypervisor:
            if architecture == "arm64" { return row(.yes, "an arm64 Image: Cloud Hypervisor boots it (UEFI or direct)", ["container \(container)"]) }
            guard architecture.hasPrefix("x86") else { return row(.no, "Cloud Hypervisor runs x86_64 and arm64 kernels, not \(architecture)", []) }
            if container == "elf" || container == "compressed-elf" {
                guard hasPVH else {
                    return row(
                        .no, "an ELF without the PVH entry note: Cloud Hypervisor boots ELF kernels only through PVH (CONFIG_PVH=y)",
                        ["container \(container)", "no XEN_ELFNOTE_PHYS32_ENTRY"], ["build the kernel with CONFIG_PVH=y"])
                }
                return row(.yes, "an ELF with the PVH entry note: Cloud Hypervisor boots it", ["XEN_ELFNOTE_PHYS32_ENTRY present"])
            }
            if container == "bzImage" {
                return row(.yes, "a bzImage: Cloud Hypervisor loads it (since v39.0)", ["container bzImage"])
            }
            return row(.no, "a \(container): Cloud Hypervisor loads an ELF with the PVH note or a bzImage", ["container \(container)"])
        }
    }

    /// "4.14" < "4.15"; numeric by component.
    static func versionLess(_ a: String, _ b: String) -> Bool {
        let x = a.split(separator: ".").map { Int($0) ?? 0 }, y = b.split(separator: ".").map { Int($0) ?? 0 }
        for i in 0..<max(x.count, y.count) {
            let l = i < x.count ? x[i] : 0, r = i < y.count ? y[i] : 0
            if l != r { return l < r }
        }
        return false
    }

    // MARK: drivers

    enum Presence: Equatable {
        case builtIn(String)
        case file(String)
        /// A module by the config, no tree to find the file in.
        case configModule(String)
        case absent(String)
    }

    static func presence(_ module: TargetProfile.Module, _ facts: TargetFacts) -> Presence {
        if let index = facts.modules {
            switch index.location(ofModule: module.module) {
            case .builtIn: return .builtIn("\(module.module) is built in (modules.builtin of \(index.directory))")
            case .file(let file): return .file(file)
            case .absent: break
            }
        }
        if let config = facts.config {
            switch config.state(module.config) {
            case .builtIn: return .builtIn(config.evidence(module.config))
            case .module where facts.modules == nil: return .configModule(config.evidence(module.config))
            case .module: return .absent("\(config.evidence(module.config)), but no \(module.module) file in \(facts.modules!.directory)")
            default: return .absent(config.evidence(module.config))
            }
        }
        if let index = facts.modules { return .absent("no module \(module.module) in \(index.directory)") }
        return .absent("no config and no module tree to tell")
    }

    struct ChoiceResult {
        var choice: TargetProfile.DriverChoice
        var evidence: [String] = []
        /// Modules (and their dependencies) that are files but not in the initramfs.
        var missingFromInitramfs: [String] = []
        /// Modules the kernel does not have at all.
        var absent: [String] = []
        var unconfirmed = false
        var builtIn: [String] = [], inInitramfs: [String] = [], loadable: [String] = []
        var dependencies = Set<String>()
        var satisfied: Bool { missingFromInitramfs.isEmpty && absent.isEmpty }

        /// "virtio-blk: virtio_blk, virtio_pci in the initramfs (with 4 dependencies)".
        var summary: String {
            var parts: [String] = []
            if !builtIn.isEmpty { parts.append("\(builtIn.joined(separator: ", ")) built in") }
            if !inInitramfs.isEmpty {
                parts.append(
                    "\(inInitramfs.joined(separator: ", ")) in the initramfs"
                        + (dependencies.isEmpty ? "" : " with \(dependencies.count) dependenc\(dependencies.count == 1 ? "y" : "ies")"))
            }
            if !loadable.isEmpty { parts.append("\(loadable.joined(separator: ", ")) loadable from the root") }
            return "\(choice.name): " + parts.joined(separator: "; ")
        }
    }

    static func check(_ choice: TargetProfile.DriverChoice, _ facts: TargetFacts, needsInitramfs: Bool) -> ChoiceResult {
        var result = ChoiceResult(choice: choice)
        for module in choice.modules {
            switch presence(module, facts) {
            case .builtIn(let why):
                result.builtIn.append(module.module)
                result.evidence.append(why)
            case .absent(let why):
                result.absent.append(module.module)
                result.evidence.append(why)
            case .configModule(let why):
                if needsInitramfs {
                    if let initramfs = facts.initramfs {
                        if initramfs.modules.contains(module.module) {
                            result.inInitramfs.append(module.module)
                            result.evidence.append("\(why); \(module.module) is in \(initramfs.path) (its dependencies unchecked: no module tree)")
                        } else {
                            result.missingFromInitramfs.append(module.module)
                            result.evidence.append("\(why); \(module.module) is not in \(initramfs.path)")
                        }
                    } else {
                        result.missingFromInitramfs.append(module.module)
                        result.evidence.append("\(why); no initramfs found")
                    }
                } else {
                    result.unconfirmed = true
                    result.loadable.append(module.module)
                    result.evidence.append("\(why) (no module tree to confirm the file)")
                }
            case .file(let file):
                guard needsInitramfs else {
                    result.loadable.append(module.module)
                    result.evidence.append("\(module.module) is a module the root can load: \(file)")
                    continue
                }
                let dependencies = facts.modules?.dependencies(ofModule: module.module).sorted() ?? []
                let needed =
                    [module.module]
                    + dependencies.filter {
                        if case .file = facts.modules?.location(ofModule: $0) { return true }
                        return false
                    }
                guard let initramfs = facts.initramfs else {
                    result.missingFromInitramfs += needed
                    result.evidence.append("\(module.module) is a module (\(file)) and no initramfs was found to load it from")
                    continue
                }
                let missing = needed.filter { !initramfs.modules.contains($0) }
                result.missingFromInitramfs += missing
                if missing.isEmpty {
                    result.inInitramfs.append(module.module)
                    result.dependencies.formUnion(needed.dropFirst())
                }
                let depText = dependencies.isEmpty ? "" : " with \(dependencies.joined(separator: ", ")) (modules.dep)"
                result.evidence.append(
                    missing.isEmpty
                        ? "\(module.module)\(depText) in \(initramfs.path)"
                        : "\(module.module) is a module (\(file)); not in \(initramfs.path): \(missing.joined(separator: ", "))")
            }
        }
        var seen = Set<String>()
        result.missingFromInitramfs = result.missingFromInitramfs.filter { seen.insert($0).inserted }
        return result
    }

    static func builder(_ facts: TargetFacts) -> InitramfsBuilder? {
        facts.initramfs?.builder ?? facts.guest?.installedBuilders.first
    }

    static func rootDisk(_ profile: TargetProfile, _ facts: TargetFacts) -> TargetCheck {
        if facts.config == nil && facts.modules == nil {
            return TargetCheck(
                check: .rootDisk, answer: .unknown, summary: "no kernel config and no module tree: the disk drivers cannot be checked",
                evidence: [], fixes: [])
        }
        let results = profile.rootDisk.map { check($0, facts, needsInitramfs: true) }
        var evidence =
            facts.initramfs.map { info in
                [
                    "initramfs \(info.path): \(info.modules.count) modules\(info.builder.map { ", built by \($0.rawValue) (\(info.builderEvidence ?? ""))" } ?? "")"
                ]
            } ?? ["no initramfs found"]
        if let mode = facts.guest?.initramfsToolsModules { evidence.append("/etc/initramfs-tools/initramfs.conf: MODULES=\(mode)") }
        if let best = results.first(where: { $0.satisfied && $0.choice.fallback != true }) {
            return TargetCheck(
                check: .rootDisk, answer: .yes, summary: best.summary, evidence: evidence + best.evidence,
                fixes: [])
        }
        let release = facts.report.kernel?.release ?? "<release>"
        let primary = results.first { $0.choice.fallback != true && $0.absent.isEmpty }
        var fixes: [String] = []
        if let primary, !primary.missingFromInitramfs.isEmpty {
            let top = primary.choice.modules.map(\.module).filter { primary.missingFromInitramfs.contains($0) }
            let modules = top.isEmpty ? primary.missingFromInitramfs : top
            if facts.initramfs == nil {
                fixes.append(
                    "build an initramfs for \(release) that holds \(modules.joined(separator: ", ")) (update-initramfs -c -k \(release), or dracut -f --kver \(release))"
                )
            } else {
                fixes.append((builder(facts) ?? .initramfsTools).fix(adding: modules, release: release, target: profile.id))
            }
        } else if primary == nil, let first = results.first(where: { $0.choice.fallback != true }) {
            let options = profile.rootDisk[0].modules.filter { first.absent.contains($0.module) }.map(\.config)
            fixes.append("install a kernel built with \(options.joined(separator: ", ")) (Debian's linux-image-cloud-amd64 and linux-image-amd64 have them)")
        }
        if let fallback = results.first(where: { $0.satisfied && $0.choice.fallback == true }) {
            return TargetCheck(
                check: .rootDisk, answer: .yes,
                summary:
                    "only through \(fallback.choice.name): \(results.filter { $0.choice.fallback != true }.map(\.choice.name).joined(separator: " and ")) not usable",
                evidence: evidence + results.flatMap(\.evidence), fixes: fixes)
        }
        let why = results.filter { $0.choice.fallback != true }.map { result in
            result.absent.isEmpty
                ? "\(result.choice.name): \(result.missingFromInitramfs.joined(separator: ", ")) not in the initramfs"
                : "\(result.choice.name): the kernel has no \(result.absent.joined(separator: ", "))"
        }
        return TargetCheck(
            check: .rootDisk, answer: .no, summary: "the root disk will not be found — \(why.joined(separator: "; "))",
            evidence: evidence + results.flatMap(\.evidence), fixes: fixes)
    }

    static func network(_ profile: TargetProfile, _ facts: TargetFacts) -> TargetCheck {
        if facts.config == nil && facts.modules == nil {
            return TargetCheck(
                check: .network, answer: .unknown, summary: "no kernel config and no module tree: the network drivers cannot be checked",
                evidence: [], fixes: [])
        }
        let results = profile.network.map { check($0, facts, needsInitramfs: false) }
        if let best = results.first(where: { $0.satisfied && $0.choice.fallback != true }) {
            return TargetCheck(
                check: .network, answer: best.unconfirmed ? .unknown : .yes, summary: best.summary,
                evidence: best.evidence, fixes: [])
        }
        if let fallback = results.first(where: { $0.satisfied }) {
            return TargetCheck(
                check: .network, answer: .yes, summary: "only through \(fallback.choice.name)", evidence: results.flatMap(\.evidence), fixes: [])
        }
        let options = profile.network[0].modules.map(\.config)
        return TargetCheck(
            check: .network, answer: .no,
            summary: "no network driver: \(results.map { "\($0.choice.name) needs \($0.absent.joined(separator: ", "))" }.joined(separator: "; "))",
            evidence: results.flatMap(\.evidence), fixes: ["install a kernel built with \(options.joined(separator: ", "))"])
    }

    // MARK: console and references

    /// The kernel command line the guest boots the audited kernel with: its boot entry's,
    /// else the default entry's, else /etc/default/grub's.
    static func commandLine(_ facts: TargetFacts) -> (line: String, source: String)? {
        guard let guest = facts.guest else { return nil }
        if let entry = bootEntry(facts) { return (entry.commandLine, entry.source) }
        if let defaults = guest.grubDefaults { return (defaults, "/etc/default/grub") }
        return nil
    }

    static func bootEntry(_ facts: TargetFacts) -> BootEntry? {
        guard let guest = facts.guest else { return nil }
        let name = (facts.kernelPath ?? facts.report.path).split(separator: "/").last.map(String.init)
        if let name, let entry = guest.bootEntries.first(where: { $0.kernel.split(separator: "/").last.map(String.init) == name }) { return entry }
        return guest.defaultEntry.flatMap { $0 < guest.bootEntries.count ? guest.bootEntries[$0] : nil }
    }

    static func parameters(_ line: String) -> [(key: String, value: String?)] {
        line.split(separator: " ").map { word in
            guard let equals = word.firstIndex(of: "=") else { return (String(word), nil) }
            return (String(word[..<equals]), String(word[word.index(after: equals)...]))
        }
    }

    static func consoleFix(_ profile: TargetProfile, _ facts: TargetFacts) -> String {
        let wanted = profile.consoles[0] + (profile.consoles[0].hasPrefix("ttyS") ? ",115200" : "")
        if facts.guest?.bootLoaderConfig?.contains("grub2") == true {
            return "grubby --update-kernel=ALL --args=console=\(wanted)"
        }
        return "add console=\(wanted) to GRUB_CMDLINE_LINUX in /etc/default/grub, then update-grub"
    }

    static func console(_ profile: TargetProfile, _ facts: TargetFacts) -> TargetCheck {
        guard let (line, source) = commandLine(facts) else {
            return TargetCheck(
                check: .console, answer: .unknown,
                summary: facts.guest == nil
                    ? "no guest root: give --root or a disk image to read the boot loader's console" : "no boot loader configuration found",
                evidence: [], fixes: [])
        }
        let consoles = parameters(line).filter { $0.key == "console" }.compactMap { $0.value?.split(separator: ",").first.map(String.init) }
        var evidence = ["command line (\(source)): \(line)"]
        if let gettys = facts.guest?.gettys, !gettys.isEmpty { evidence.append("getty units: \(gettys.joined(separator: ", "))") }
        if consoles.isEmpty {
            if let fallback = profile.defaultConsole {
                return TargetCheck(
                    check: .console, answer: .yes, summary: "no console= given: the kernel uses \(fallback) there", evidence: evidence, fixes: [])
            }
            return TargetCheck(
                check: .console, answer: .no,
                summary:
                    "no console= given: the kernel writes to the VGA console only, and \(profile.name) shows \(profile.consoles.joined(separator: " or "))",
                evidence: evidence, fixes: [consoleFix(profile, facts)])
        }
        let shown = consoles.filter { profile.consoles.contains($0) }
        // A getty on a console the platform shows gives a login there even when the kernel's
        // messages go elsewhere (systemd's getty generator starts one on hvc0 by itself).
        var logins = (facts.guest?.gettys ?? []).filter { profile.consoles.contains($0) }
        if facts.guest?.hasGettyGenerator == true, profile.consoles.contains("hvc0"), !logins.contains("hvc0") { logins.append("hvc0") }
        if shown.isEmpty, let login = logins.first {
            return TargetCheck(
                check: .console, answer: .yes,
                summary:
                    "a login on \(login) (\(facts.guest?.gettys.contains(login) == true ? "getty unit" : "systemd's getty generator")); the kernel's messages go to \(consoles.joined(separator: ", ")), which \(profile.name) does not show",
                evidence: evidence, fixes: [])
        }
        if !shown.isEmpty {
            return TargetCheck(
                check: .console, answer: .yes, summary: "console=\(shown.joined(separator: ", console=")) is shown by \(profile.name)", evidence: evidence,
                fixes: [])
        }
        return TargetCheck(
            check: .console, answer: .no,
            summary: "console=\(consoles.joined(separator: ", console=")) shows nothing on \(profile.name), whose console is \(profile.consoles[0])",
            evidence: evidence, fixes: [consoleFix(profile, facts)])
    }

    /// `/dev/xvda1` → ("xvd", "xvda1"); nil for names that are stable (`/dev/disk/by-uuid/…`, `/dev/mapper/…`).
    static func diskName(_ device: String) -> (family: String, name: String)? {
        guard device.hasPrefix("/dev/") else { return nil }
        let name = String(device.dropFirst(5))
        for family in ["xvd", "nvme", "vd", "sd", "hd"] where name.hasPrefix(family) {
            let rest = name.dropFirst(family.count)
            guard let first = rest.first, first.isLetter || (family == "nvme" && first.isNumber) else { continue }
            return (family, name)
        }
        return nil
    }

    /// The UUID the image's partition of that name has, when the name is of the first disk.
    static func uuid(for name: String, _ facts: TargetFacts) -> String? {
        guard let partitions = facts.guest?.image?.partitions else { return nil }
        let digits = String(name.reversed().prefix { $0.isNumber }.reversed())
        let disk = name.dropLast(digits.count)
        let firstDisk = disk.hasSuffix("a") || disk.hasSuffix("n1p") || disk.hasSuffix("n1")
        guard firstDisk, let number = Int(digits) else { return nil }
        return partitions.first { $0.number == number }?.uuid
    }

    static func glob(_ pattern: String, _ name: String) -> Bool {
        let parts = pattern.split(separator: "*", omittingEmptySubsequences: false).map(String.init)
        guard parts.count > 1 else { return pattern == name }
        var rest = Substring(name)
        guard rest.hasPrefix(parts[0]) else { return false }
        rest = rest.dropFirst(parts[0].count)
        for (index, part) in parts.enumerated().dropFirst() {
            if index == parts.count - 1 { return part.isEmpty || rest.hasSuffix(part) }
            guard let range = rest.range(of: part) else { return false }
            rest = rest[range.upperBound...]
        }
        return true
    }

    static func references(_ profile: TargetProfile, _ facts: TargetFacts) -> TargetCheck {
        guard let guest = facts.guest else {
            return TargetCheck(
                check: .references, answer: .unknown, summary: "no guest root: give --root or a disk image to check fstab, boot loader and network",
                evidence: [], fixes: [])
        }
        var broken: [String] = [], notes: [String] = [], fixes: [String] = []
        func device(_ entry: FstabEntry, file: String) {
            guard let (family, name) = diskName(entry.device), !profile.diskNames.contains(family) else { return }
            broken.append(
                "\(file) line \(entry.line) names \(entry.device): \(profile.name) names its disks \(profile.diskNames.map { "/dev/\($0)*" }.joined(separator: " or "))"
            )
            let uuid = uuid(for: name, facts)
            let tag = uuid.map { "UUID=\($0)" } ?? "UUID=$(blkid -s UUID -o value \(entry.device))"
            if file == "/etc/fstab" {
                fixes.append("in /etc/fstab line \(entry.line): \(tag) \(entry.mountPoint) \(entry.type) \(entry.options)".trimmingCharacters(in: .whitespaces))
            } else {
                fixes.append("in \(file) line \(entry.line): \(entry.mountPoint) \(tag)")
            }
        }
        for entry in guest.fstab { device(entry, file: "/etc/fstab") }
        for entry in guest.crypttab { device(entry, file: "/etc/crypttab") }
        let line = commandLine(facts)
        let parameters = line.map { Self.parameters($0.line) } ?? []
        if let root = parameters.first(where: { $0.key == "root" })?.value, let (family, name) = diskName(root), !profile.diskNames.contains(family) {
            broken.append("the kernel command line (\(line!.source)) has root=\(root)")
            let uuid = uuid(for: name, facts).map { "UUID=\($0)" } ?? "UUID=$(blkid -s UUID -o value \(root))"
            fixes.append("boot with root=\(uuid) instead of root=\(root): fix GRUB_CMDLINE_LINUX or GRUB_DEVICE in /etc/default/grub, then update-grub")
        }
        let ifnamesOff = parameters.contains { $0.key == "net.ifnames" && $0.value == "0" }
        let expected = ifnamesOff ? ["eth*"] : profile.interfaceNames
        var networkBroken = false
        for reference in guest.network {
            if let mac = reference.mac {
                broken.append(
                    "\(reference.file) line \(reference.line) (\(reference.kind)) is tied to MAC \(mac): the NIC's address changes on \(profile.name)")
                networkBroken = true
            } else if let interface = reference.interface, !interface.contains("*"), !expected.contains(where: { glob($0, interface) }) {
                broken.append(
                    "\(reference.file) line \(reference.line) (\(reference.kind)) names \(interface); on \(profile.name) NICs are named \(expected.joined(separator: " or "))\(ifnamesOff ? " (net.ifnames=0)" : "")"
                )
                networkBroken = true
            }
        }
        if networkBroken {
            fixes.append(
                "match the NIC by a pattern instead of a name or MAC (netplan match: {name: \"e*\"}; networkd Name=e*), or boot with net.ifnames=0 and configure eth0; delete /etc/udev/rules.d/70-persistent-net.rules"
            )
        }
        if let index = guest.defaultEntry, index < guest.bootEntries.count, let kernel = facts.kernelPath?.split(separator: "/").last {
            let entry = guest.bootEntries[index]
            if entry.kernel.split(separator: "/").last != kernel {
                broken.append("the boot loader's default entry (\"\(entry.title)\", \(entry.source)) boots \(entry.kernel), not \(kernel)")
                fixes.append("make the default entry boot \(kernel): grub-set-default, or GRUB_DEFAULT in /etc/default/grub, then update-grub")
            }
        }
        for parameter in parameters where parameter.key.hasPrefix("xen") {
            let text = parameter.key + (parameter.value.map { "=\($0)" } ?? "")
            if profile.xenOnly?.contains(parameter.key) == true {
                broken.append("the command line has \(text), which turns off the PV drivers \(profile.name) needs")
                fixes.append("remove \(text) from the kernel command line (/etc/default/grub, then update-grub)")
            } else if !profile.id.hasPrefix("xen") {
                notes.append("the command line has \(text): a Xen parameter, no effect on \(profile.name)")
            }
        }
        if broken.isEmpty {
            return TargetCheck(
                check: .references, answer: .yes,
                summary: "fstab, crypttab, the boot loader and the network configuration name nothing \(profile.name) renames",
                evidence: ["\(guest.fstab.count) fstab entries, \(guest.crypttab.count) crypttab entries, \(guest.network.count) network references"] + notes,
                fixes: [])
        }
        return TargetCheck(
            check: .references, answer: .no, summary: "\(broken.count) reference\(broken.count == 1 ? "" : "s") in the guest break on \(profile.name)",
            evidence: broken + notes, fixes: fixes)
    }
}
