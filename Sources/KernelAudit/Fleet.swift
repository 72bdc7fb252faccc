import Dispatch
import Foundation
import Synchronization

/// Audits many images at once: every core busy, results in path order so that two runs of
/// the same fleet print the same bytes.
public enum Fleet {
    /// Audits `inputs` (kernels, guest roots, disk images) on `jobs` threads; `progress(done,
    /// total)` is called as each input finishes (from worker threads). One input's failure is its
    /// own error report: it never hides another's.
    public static func audit(
        _ inputs: [AuditInput], with auditor: KernelAuditor, jobs: Int,
        progress: @escaping @Sendable (Int, Int) -> Void = { _, _ in }
    ) -> [(report: AuditReport, symbols: SymbolTable?)] {
        let results = Mutex([[(report: AuditReport, symbols: SymbolTable?)]](repeating: [], count: inputs.count))
        let done = Atomic(0)
        let queue = DispatchQueue(label: "pvcheck.fleet", attributes: .concurrent)
        let group = DispatchGroup()
        let slots = DispatchSemaphore(value: max(1, jobs))
        for (index, input) in inputs.enumerated() {
            slots.wait()
            queue.async(group: group) {
                defer { slots.signal() }
                let reports = GuestAudit.audit(input, with: auditor)
                results.withLock { $0[index] = reports }
                let finished = done.add(1, ordering: .relaxed).newValue
                progress(finished, inputs.count)
            }
        }
        group.wait()
        let all = results.withLock { $0.flatMap { $0 } }
        return all.sorted { $0.report.path < $1.report.path }
    }
}

extension ReportRenderer {
    /// The end-of-run table: one row per image, then the counts.
    public func summary(_ reports: [AuditReport]) -> String {
        func cell(_ report: AuditReport, _ mode: BootMode) -> String {
            guard report.error == nil else { return "-" }
            return report.verdict(mode)?.answer.rawValue ?? "-"
        }
        let columns: [(String, BootMode)] = [
            ("PV", .pv), ("PV dom0", .pvDom0), ("PVH", .pvh), ("HVM+PV", .hvmPVDrivers),
            ("HVM", .hvm), ("initramfs", .initramfsRootDisk)
        ]
        let nameWidth = min(60, max(5, reports.map { $0.path.count }.max() ?? 5))
        var lines = [
            "",
            "image".padding(toLength: nameWidth, withPad: " ", startingAt: 0) + "  release                  "
                + columns.map { $0.0.padding(toLength: 10, withPad: " ", startingAt: 0) }.joined()
        ]
        for report in reports {
            let name = report.path.count > nameWidth ? "…" + report.path.suffix(nameWidth - 1) : report.path
            let release = report.error.map { "error: \($0.code.rawValue)" } ?? report.kernel?.release ?? "?"
            lines.append(
                name.padding(toLength: nameWidth, withPad: " ", startingAt: 0) + "  "
                    + release.padding(toLength: 25, withPad: " ", startingAt: 0)
                    + columns.map { cell(report, $0.1).padding(toLength: 10, withPad: " ", startingAt: 0) }.joined())
        }
        if reports.contains(where: { $0.targets != nil }) { lines += targetMatrix(reports) }
        let audited = reports.filter { $0.error == nil }
        func count(_ mode: BootMode) -> Int { audited.filter { $0.verdict(mode)?.answer == .yes }.count }
        lines.append("")
        lines.append(
            "\(reports.count) images: \(count(.pv)) boot PV, \(count(.pvh)) PVH, \(count(.hvmPVDrivers)) HVM with PV drivers, "
                + "\(audited.filter { $0.verdict(.pv)?.answer != .yes && $0.verdict(.pvh)?.answer != .yes }.count) neither PV nor PVH, "
                + "\(reports.count - audited.count) could not be read")
        return lines.joined(separator: "\n")
    }
}

extension ReportRenderer {
    /// Images × targets: each cell the target's answer for that kernel.
    public func targetMatrix(_ reports: [AuditReport]) -> [String] {
        let targets = reports.first { $0.targets != nil }?.targets?.map(\.target) ?? []
        let nameWidth = min(70, max(5, reports.map { $0.path.count }.max() ?? 5))
        let width = max(9, (targets.map(\.count).max() ?? 0) + 2)
        var lines = [
            "",
            "image".padding(toLength: nameWidth, withPad: " ", startingAt: 0) + "  "
                + targets.map { $0.padding(toLength: width, withPad: " ", startingAt: 0) }.joined()
        ]
        for report in reports {
            let name = report.path.count > nameWidth ? "…" + report.path.suffix(nameWidth - 1) : report.path
            let cells = targets.map { id -> String in
                guard report.error == nil else { return "error" }
                return report.targets?.first { $0.target == id }?.answer.rawValue ?? "-"
            }
            lines.append(
                name.padding(toLength: nameWidth, withPad: " ", startingAt: 0) + "  "
                    + cells.map { $0.padding(toLength: width, withPad: " ", startingAt: 0) }.joined())
        }
        return lines
    }

    /// The `--target` part of a report: per target, each check, its fix.
    func targetLines(_ report: AuditReport) -> [String] {
        var lines: [String] = []
        if let guest = report.guest {
            var what = "  Guest: \(guest.os ?? "unknown OS") in \(guest.root)"
            if let image = guest.image {
                what +=
                    " — \(image.format.rawValue) image, \(image.partitionTable ?? "no partition table"), \(image.partitions.count) partition\(image.partitions.count == 1 ? "" : "s"), root on partition \(image.rootPartition)"
            }
            lines.append(what)
        }
        if let initramfsError = report.initramfsError {
            lines.append("  initramfs: error: \(initramfsError.message) — \(initramfsError.hint)")
        }
        for verdict in report.targets ?? [] {
            lines.append("  \(verdict.name) [\(verdict.target)]: \(answerText(verdict.answer))")
            for check in verdict.checks {
                lines.append("    \(check.check.label.padding(toLength: 18, withPad: " ", startingAt: 0)) \(answerText(check.answer)) \(check.summary)")
                if explain { for item in check.evidence { lines.append("        · \(item)") } }
                for fix in check.fixes { lines.append("        fix: \(fix)") }
            }
        }
        return lines
    }
}
