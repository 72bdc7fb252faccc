import Dispatch
import Foundation
import Synchronization

/// Audits many images at once: every core busy, results in path order so that two runs of
/// the same fleet print the same bytes.
public enum Fleet {
    /// One image to audit, with whether `--root` found it as the default kernel.
    public struct Target: Sendable {
        public let path: String
        public let isDefault: Bool?
        /// The guest root it came from: its modules, config and initramfs are looked up there.
        public let rootPath: String?
        public init(path: String, isDefault: Bool?, rootPath: String? = nil) {
            self.path = path
            self.isDefault = isDefault
            self.rootPath = rootPath
        }
    }

    /// Audits `targets` on `jobs` threads; `progress(done, total)` is called as each finishes
    /// (from worker threads).
    public static func audit(
        _ targets: [Target], with auditor: KernelAuditor, jobs: Int,
        progress: @escaping @Sendable (Int, Int) -> Void = { _, _ in }
    ) -> [(report: AuditReport, symbols: SymbolTable?)] {
        let results = Mutex([(report: AuditReport, symbols: SymbolTable?)?](repeating: nil, count: targets.count))
        let done = Atomic(0)
        let queue = DispatchQueue(label: "pvcheck.fleet", attributes: .concurrent)
        let group = DispatchGroup()
        let slots = DispatchSemaphore(value: max(1, jobs))
        for (index, target) in targets.enumerated() {
            slots.wait()
            queue.async(group: group) {
                defer { slots.signal() }
                var options = auditor.options
                if let root = target.rootPath { options.rootPath = root }
                var result = KernelAuditor(options: options, logger: auditor.logger).reportWithSymbols(path: target.path)
                result.report.isDefault = target.isDefault
                results.withLock { $0[index] = result }
                let finished = done.add(1, ordering: .relaxed).newValue
                progress(finished, targets.count)
            }
        }
        group.wait()
        let all = results.withLock { $0.compactMap { $0 } }
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
