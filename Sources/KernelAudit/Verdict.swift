import XenABI

/// The ways a kernel can run, each judged separately.
public enum BootMode: String, Sendable, Codable, CaseIterable {
    case pv = "pv"
    case pvDom0 = "pv-dom0"
    case pvh = "pvh"
    case pvhDom0 = "pvh-dom0"
    case hvmPVDrivers = "hvm-pv-drivers"
    case hvm = "hvm"
    /// With an initramfs: can the kernel and initramfs find a root disk on xvda?
    case initramfsRootDisk = "initramfs-root-disk"

    /// The six boot modes every report judges (the initramfs verdict is added when there is one).
    public static let bootModes: [BootMode] = [.pv, .pvDom0, .pvh, .pvhDom0, .hvmPVDrivers, .hvm]

    /// The label of the human report.
    public var label: String {
        switch self {
        case .pv: "Xen PV domU"
        case .pvDom0: "Xen PV dom0"
        case .pvh: "Xen PVH domU"
        case .pvhDom0: "Xen PVH dom0"
        case .hvmPVDrivers: "Xen HVM, PV drivers"
        case .hvm: "HVM, KVM, bare metal"
        case .initramfsRootDisk: "initramfs: xvda root"
        }
    }
}

/// yes / no / unknown — never a guess.
public enum Answer: String, Sendable, Codable { case yes, no, unknown }

/// One mode's verdict, with the evidence that decided it.
public struct Verdict: Sendable, Codable, Equatable {
    public let mode: BootMode
    public let answer: Answer
    /// One line for people.
    public let summary: String
    /// Each fact that decided it: a note, a config line, a module file, a header field.
    public let evidence: [String]
}

/// What kind of kernel this is, as far as Xen is concerned.
public enum KernelFamily: String, Sendable, Codable {
    /// Mainline "paravirt ops" kernel: one image for PV, PVH, HVM and bare metal.
    case pvops
    /// A XenLinux-forked kernel (2.6.18-xen style): PV only.
    case xenLinux = "xenlinux"
    /// An arm64 kernel: Xen on Arm has no PV or PVH, only guests with PV drivers.
    case arm64
    /// Neither x86 nor arm64.
    case other
}

/// Everything the verdict rules look at, gathered by the auditor.
struct VerdictFacts {
    var architecture: String
    var elfMachine: UInt16?
    var notes: XenNoteSet
    /// (p_paddr, p_memsz) of each PT_LOAD segment.
    var loadSegments: [(paddr: UInt64, memsz: UInt64)]
    var config: KernelConfig?
    var frontends: [FrontendPresence]?
    var family: KernelFamily
    var familyEvidence: String
}

/// Xen's acceptance rules (libelf-dominfo, xg_dom_*) combined with the kernel config.
enum VerdictRules {
    static func decide(_ f: VerdictFacts) -> [Verdict] {
        let pv = pvDomU(f)
        let pvh = pvhDomU(f)
        return [pv, pvDom0(f, pv), pvh, pvhDom0(f, pvh), hvmPVDrivers(f), hvm(f)]
    }

    static func hex(_ value: UInt64) -> String { "0x" + String(value, radix: 16) }

    static func noteEvidence(_ n: XenNote) -> String {
        let value = n.text.map { "\"\($0)\"" } ?? n.number.map(hex) ?? n.numbers.map { $0.map(hex).joined(separator: ",") } ?? "\(n.size) bytes"
        return "Xen note \(n.name) = \(value)" + (n.offset.map { " (ELF offset \($0))" } ?? "")
    }

    static func pvDomU(_ f: VerdictFacts) -> Verdict {
        var evidence: [String] = []
        func no(_ why: String) -> Verdict { Verdict(mode: .pv, answer: .no, summary: why, evidence: evidence) }
        if f.family == .arm64 { return Verdict(mode: .pv, answer: .no, summary: "Xen on Arm has no PV guests", evidence: [f.familyEvidence]) }
        guard f.family != .other else { return no("not an x86 kernel (\(f.architecture))") }
        let n = f.notes
        guard !n.isEmpty else { return no("no Xen ELF notes: Xen's loader says \"Not a Xen-ELF image\"") }
        evidence.append("Xen notes from the \(n.source.rawValue)")
        let loader = n.text(.loader), guestOS = n.text(.guestOS), xenVersion = n.text(.xenVersion)
        for type in [XenElfNoteType.loader, .guestOS, .xenVersion] { if let note = n.note(type) { evidence.append(noteEvidence(note)) } }
        guard loader?.hasPrefix("generic") == true || guestOS?.hasPrefix("linux") == true else {
            return no("neither LOADER \"generic\" nor GUEST_OS \"linux\": Xen's PV loader refuses it")
        }
        guard xenVersion?.hasPrefix("xen-3.0") == true else {
            return no("XEN_VERSION is \(xenVersion.map { "\"\($0)\"" } ?? "missing"), not \"xen-3.0…\": Xen's PV loader refuses it")
        }
        guard let entryNote = n.note(.entry), let entry = entryNote.number else {
            if let config = f.config { evidence.append(config.evidence("CONFIG_XEN_PV")) }
            return no("no ENTRY note: no PV entry point (Linux emits one only with CONFIG_XEN_PV)")
        }
        evidence.append(noteEvidence(entryNote))
        if !n.unknownRequiredTokens.isEmpty {
            return no("FEATURES requires \(n.unknownRequiredTokens.joined(separator: ", ")), which Xen does not know: its loader refuses the kernel")
        }
        if n.requiredFeatures.contains(.dom0) {
            return no("FEATURES requires dom0 (\"!dom0\"): it can only boot as dom0")
        }
        // Addresses, as libelf_parse_dominfo checks them.
        let virtBase = n.number(.virtBase)
        let paddrOffset = n.number(.paddrOffset)
        if paddrOffset != nil && virtBase == nil {
            return no("PADDR_OFFSET without VIRT_BASE: Xen's loader rejects the image")
        }
        if let base = virtBase, let pstart = f.loadSegments.map(\.paddr).min(),
            let pend = f.loadSegments.map({ $0.paddr &+ $0.memsz }).max()
        {
            let bias = base &- (paddrOffset ?? (n.source == .legacyGuestSection ? base : 0))
            let kstart = pstart &+ bias, kend = pend &+ bias
            evidence.append("kernel spans \(hex(kstart))..\(hex(kend)) (VIRT_BASE \(hex(base)), PADDR_OFFSET \(hex(paddrOffset ?? 0)))")
            guard base <= kstart, kstart <= entry, entry < kend else {
                return no("ENTRY \(hex(entry)) lies outside the kernel's virtual range \(hex(kstart))..\(hex(kend))")
            }
            if let p2m = n.number(.initP2M), p2m >= kstart && p2m < kend {
                return no("INIT_P2M \(hex(p2m)) lies inside the kernel image")
            }
        }
        if let config = f.config {
            evidence.append(config.evidence("CONFIG_XEN_PV"))
            if !config.state("CONFIG_XEN_PV").isEnabled && f.family == .pvops {
                return no("the config says CONFIG_XEN_PV is not set, though the notes carry an ENTRY")
            }
        }
        if n.note(.hypercallPage) == nil { evidence.append("no HYPERCALL_PAGE note: normal for kernels since 4.x, which build their own") }
        let bits = f.elfMachine == 3 ? "32-bit" : "64-bit"
        return Verdict(mode: .pv, answer: .yes, summary: "Xen's PV loader accepts it (\(bits), entry \(hex(entry)))", evidence: evidence)
    }

    static func pvDom0(_ f: VerdictFacts, _ pv: Verdict) -> Verdict {
        guard pv.answer == .yes || f.notes.requiredFeatures.contains(.dom0) else {
            return Verdict(mode: .pvDom0, answer: pv.answer == .unknown ? .unknown : .no, summary: "not a PV kernel: \(pv.summary)", evidence: pv.evidence)
        }
        var evidence: [String] = []
        let supported = f.notes.supportedFeatures
        if let note = f.notes.note(.supportedFeatures) { evidence.append(noteEvidence(note)) }
        if let note = f.notes.note(.features) { evidence.append(noteEvidence(note)) }
        guard supported.contains(.dom0) else {
            return Verdict(mode: .pvDom0, answer: .no, summary: "XENFEAT_dom0 is not among the supported features", evidence: evidence)
        }
        evidence.append("XENFEAT_dom0 supported")
        guard let config = f.config else {
            return Verdict(mode: .pvDom0, answer: .unknown, summary: "notes allow dom0; no config to confirm CONFIG_XEN_PV_DOM0", evidence: evidence)
        }
        evidence.append(config.evidence("CONFIG_XEN_PV_DOM0"))
        return config.state("CONFIG_XEN_PV_DOM0").isEnabled
            ? Verdict(mode: .pvDom0, answer: .yes, summary: "XENFEAT_dom0 and CONFIG_XEN_PV_DOM0", evidence: evidence)
            : Verdict(mode: .pvDom0, answer: .no, summary: "CONFIG_XEN_PV_DOM0 is not set", evidence: evidence)
    }

    static func pvhDomU(_ f: VerdictFacts) -> Verdict {
        if f.family == .arm64 { return Verdict(mode: .pvh, answer: .no, summary: "Xen on Arm has no PVH guests", evidence: [f.familyEvidence]) }
        guard f.family == .pvops || f.family == .xenLinux else {
            return Verdict(mode: .pvh, answer: .no, summary: "not an x86 kernel (\(f.architecture))", evidence: [])
        }
        var evidence: [String] = []
        guard let note = f.notes.note(.phys32Entry), let entry = note.number else {
            if let config = f.config { evidence.append(config.evidence("CONFIG_XEN_PVH")) }
            return Verdict(
                mode: .pvh, answer: .no,
                summary: "no PHYS32_ENTRY note: Xen says \"not capable of booting inside a HVM container\"", evidence: evidence)
        }
        evidence.append(noteEvidence(note))
        if let reloc = f.notes.note(.phys32Reloc) { evidence.append(noteEvidence(reloc)) }
        if let config = f.config {
            evidence.append(config.evidence("CONFIG_XEN_PVH"))
            if !config.state("CONFIG_XEN_PVH").isEnabled {
                return Verdict(
                    mode: .pvh, answer: .no, summary: "PHYS32_ENTRY present but CONFIG_XEN_PVH is not set: it would boot without Xen support",
                    evidence: evidence)
            }
        }
        return Verdict(mode: .pvh, answer: .yes, summary: "PHYS32_ENTRY \(hex(entry)): Xen boots it in a PVH container", evidence: evidence)
    }

    static func pvhDom0(_ f: VerdictFacts, _ pvh: Verdict) -> Verdict {
        guard pvh.answer == .yes else {
            return Verdict(mode: .pvhDom0, answer: pvh.answer, summary: "not a PVH kernel: \(pvh.summary)", evidence: pvh.evidence)
        }
        guard let config = f.config else {
            return Verdict(mode: .pvhDom0, answer: .unknown, summary: "PVH-capable; no config to confirm CONFIG_XEN_DOM0", evidence: pvh.evidence)
        }
        let evidence = pvh.evidence + [config.evidence("CONFIG_XEN_DOM0")]
        return config.state("CONFIG_XEN_DOM0").isEnabled
            ? Verdict(mode: .pvhDom0, answer: .yes, summary: "PHYS32_ENTRY and CONFIG_XEN_DOM0", evidence: evidence)
            : Verdict(mode: .pvhDom0, answer: .no, summary: "CONFIG_XEN_DOM0 is not set", evidence: evidence)
    }

    static func frontendState(_ f: VerdictFacts, _ frontend: XenFrontend) -> (enabled: Bool?, evidence: String) {
        if let presence = f.frontends?.first(where: { $0.frontend == frontend }), presence.state != .unknown {
            return (presence.state != .absent, "\(frontend.alias): \(presence.state.rawValue) — \(presence.evidence)")
        }
        if let config = f.config {
            return (config.state(frontend.configOption).isEnabled, config.evidence(frontend.configOption))
        }
        return (nil, "\(frontend.alias): no config and no module tree")
    }

    static func hvmPVDrivers(_ f: VerdictFacts) -> Verdict {
        if f.family == .xenLinux {
            return Verdict(mode: .hvmPVDrivers, answer: .no, summary: "a XenLinux kernel only boots PV", evidence: [f.familyEvidence])
        }
        guard f.family == .pvops || f.family == .arm64 else {
            return Verdict(mode: .hvmPVDrivers, answer: .no, summary: "not an x86 or arm64 kernel", evidence: [])
        }
        guard let config = f.config else {
            return Verdict(
                mode: .hvmPVDrivers, answer: .unknown, summary: "no kernel config: cannot tell whether PV drivers are built",
                evidence: ["give the config with --config, or put config-<version> beside the image"])
        }
        let option = f.family == .arm64 ? "CONFIG_XEN" : "CONFIG_XEN_PVHVM"
        var evidence = [config.evidence(option)]
        guard config.state(option).isEnabled else {
            return Verdict(mode: .hvmPVDrivers, answer: .no, summary: "\(option) is not set: HVM guests use emulated devices only", evidence: evidence)
        }
        let block = frontendState(f, .vbd), net = frontendState(f, .vif)
        evidence += [block.evidence, net.evidence]
        let platform = f.family == .arm64 ? "PV drivers over Xen on Arm" : "PV drivers via xen-platform-pci"
        switch (block.enabled, net.enabled) {
        case (true?, true?):
            return Verdict(mode: .hvmPVDrivers, answer: .yes, summary: "\(platform): blkfront and netfront", evidence: evidence)
        case (false?, _), (_, false?):
            let missing = [block.enabled == false ? "blkfront" : nil, net.enabled == false ? "netfront" : nil].compactMap { $0 }
            return Verdict(
                mode: .hvmPVDrivers, answer: .no, summary: "\(platform), but without \(missing.joined(separator: " and ")): emulated devices for those",
                evidence: evidence)
        default:
            return Verdict(mode: .hvmPVDrivers, answer: .unknown, summary: "\(option) set; frontends cannot be confirmed", evidence: evidence)
        }
    }

    static func hvm(_ f: VerdictFacts) -> Verdict {
        switch f.family {
        case .pvops:
            return Verdict(
                mode: .hvm, answer: .yes, summary: "a pvops kernel: boots on bare metal, KVM and HVM with emulated devices",
                evidence: [f.familyEvidence])
        case .arm64:
            return Verdict(
                mode: .hvm, answer: .yes, summary: "an arm64 kernel: boots on bare metal, KVM and as a Xen on Arm guest",
                evidence: [f.familyEvidence])
        case .xenLinux:
            return Verdict(
                mode: .hvm, answer: .no, summary: "a XenLinux kernel: PV only, it cannot boot on bare metal, HVM or KVM — convert it before moving off PV",
                evidence: [f.familyEvidence])
        case .other:
            return Verdict(mode: .hvm, answer: .unknown, summary: "not an x86 or arm64 kernel (\(f.architecture))", evidence: [])
        }
    }
}
