import Foundation

/// Renders reports for people (text, colour on a terminal) and for machines (JSON).
public struct ReportRenderer: Sendable {
    public var colour: Bool
    public var explain: Bool

    public init(colour: Bool, explain: Bool) {
        self.colour = colour
        self.explain = explain
    }

    /// One JSON object per report (JSON lines for several images), keys sorted.
    public static func json(_ report: AuditReport) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let data = (try? encoder.encode(report)) ?? Data("{\"schema\":\"pvcheck/1\",\"error\":{\"code\":\"unsupported\"}}".utf8)
        return String(decoding: data, as: UTF8.self)
    }

    private func paint(_ text: String, _ code: String) -> String { colour ? "\u{1B}[\(code)m\(text)\u{1B}[0m" : text }

    func answerText(_ a: Answer) -> String { answer(a) }

    private func answer(_ a: Answer) -> String {
        let padded = a.rawValue.padding(toLength: 7, withPad: " ", startingAt: 0)
        switch a {
        case .yes: return paint(padded, "32")
        case .no: return paint(padded, "31")
        case .unknown: return paint(padded, "33")
        }
    }

    /// The human report.
    public func text(_ report: AuditReport) -> String {
        var lines: [String] = []
        if let error = report.error {
            let place = error.offset.map { " (byte \($0))" } ?? ""
            if let live = report.live { lines.append(paint("Live system: \(live.summary)", "1")) }
            lines.append("\(paint("error", "31")): \(report.path): \(error.message)\(place)")
            lines.append("  \(error.hint)")
            return lines.joined(separator: "\n")
        }
        if let live = report.live {
            lines.append(paint("Live system: \(live.summary)", "1"))
            if !live.xenDevices.isEmpty { lines.append("  Xen devices: \(live.xenDevices.joined(separator: ", "))") }
            if !live.loadedXenModules.isEmpty { lines.append("  Xen modules loaded: \(live.loadedXenModules.joined(separator: ", "))") }
            if explain { for item in live.evidence { lines.append("      · \(item)") } }
            guard report.image != nil else {
                lines.append("  Running kernel \(live.release ?? "(release unknown)"): its image is not in /boot; give it as an argument to audit it")
                return lines.joined(separator: "\n")
            }
            lines.append("  Running kernel \(live.release ?? "(release unknown)"):")
        }
        lines.append(paint(report.path, "1") + (report.isDefault == true ? "  (default kernel)" : ""))
        if let kernel = report.kernel, let image = report.image {
            var what = "  Linux \(kernel.release ?? "(release unknown)"), \(kernel.architecture) \(image.container)"
            if let header = image.setupHeader {
                what += " (boot protocol \(header.protocolString)\(header.efiStub ? ", EFI stub" : ""))"
            }
            if let compression = image.compression, let size = image.decompressedSize {
                what += ", \(compression) payload → \(Self.size(size))"
            }
            lines.append(what)
            if kernel.family == .xenLinux { lines.append("  " + paint("XenLinux kernel: PV only", "33") + " — \(kernel.familyEvidence)") }
            if let trailing = image.trailingBytes, trailing > 0 { lines.append("  \(trailing) bytes after the payload (a signature)") }
        }
        for verdict in report.verdicts ?? [] {
            lines.append("  \(verdict.mode.label.padding(toLength: 22, withPad: " ", startingAt: 0)) \(answer(verdict.answer)) \(verdict.summary)")
            if explain { for item in verdict.evidence { lines.append("      · \(item)") } }
        }
        if let modules = report.modules {
            let present = modules.frontends.filter { $0.state == .builtIn || $0.state == .module }
            let summary = present.map { "\($0.frontend.rawValue) (\($0.state.rawValue))" }.joined(separator: ", ")
            lines.append("  Frontends: \(summary.isEmpty ? "none" : summary)" + (modules.directory.map { "  [\($0)]" } ?? "  [from the config]"))
            if explain {
                for frontend in modules.frontends {
                    lines.append("      · \(frontend.frontend.alias) \(frontend.frontend.purpose): \(frontend.state.rawValue) — \(frontend.evidence)")
                }
            }
        }
        if let fixes = report.fixes {
            let counts = Dictionary(grouping: fixes, by: \.status).mapValues(\.count)
            lines.append("  Catalogue: \(counts[.fixed] ?? 0) fixed or present, \(counts[.notFixed] ?? 0) missing, \(counts[.unknown] ?? 0) unknown")
            for fix in fixes where explain || fix.status != .fixed {
                let mark = fix.status == .fixed ? paint("fixed  ", "32") : fix.status == .notFixed ? paint("missing", "31") : paint("unknown", "33")
                lines.append("    \(mark) \(fix.id): \(fix.title)" + (fix.meaning.map { " — \($0)" } ?? ""))
                if explain { for item in fix.evidence { lines.append("      · \(item)") } }
            }
        }
        lines += targetLines(report)
        if let symbols = report.symbols {
            lines.append("  Symbols: \(symbols.count) from \(symbols.source.rawValue)" + (explain ? " — \(symbols.detail)" : ""))
        }
        if explain, let notes = report.xenNotes {
            lines.append("  Xen notes (\(notes.source.rawValue)): " + (notes.isEmpty ? "none" : ""))
            for note in notes.notes {
                let value =
                    note.text.map { "\"\($0)\"" } ?? note.number.map { "0x" + String($0, radix: 16) }
                    ?? note.numbers.map { $0.map { "0x" + String($0, radix: 16) }.joined(separator: " ") } ?? "-"
                lines.append("      · \(note.name.padding(toLength: 18, withPad: " ", startingAt: 0)) \(value)\(note.remark.map { "  (\($0))" } ?? "")")
            }
            if let config = report.config { lines.append("  Config: \(config.source)") } else { lines.append("  Config: none found") }
        }
        return lines.joined(separator: "\n")
    }

    static func size(_ bytes: Int) -> String {
        bytes >= 1 << 20 ? String(format: "%.1f MiB", Double(bytes) / 1048576) : String(format: "%.1f KiB", Double(bytes) / 1024)
    }
}

/// `--require`: which verdict must be yes.
public enum Requirement: String, Sendable, CaseIterable {
    case pv, pvh, pvhvm, dom0

    /// 0 met, 1 not met, 3 cannot tell.
    public func exitCode(for report: AuditReport) -> Int32 {
        guard report.error == nil, report.verdicts != nil else { return 3 }
        let modes: [BootMode] =
            switch self {
            case .pv: [.pv]
            case .pvh: [.pvh]
            case .pvhvm: [.hvmPVDrivers]
            case .dom0: [.pvDom0, .pvhDom0]
            }
        let answers = modes.compactMap { report.verdict($0)?.answer }
        if answers.contains(.yes) { return 0 }
        if answers.contains(.unknown) { return 3 }
        return 1
    }
}
