import Foundation
import KernelAudit
import Testing

/// Every input a fuzz campaign crashed on, kept in fixtures/fuzz/<target>/, replayed through the
/// same entry point: each is now a clear error, never a crash.
@Suite("fuzz regressions", .timeLimit(.minutes(2)))
struct FuzzRegressionTests {
    static func inputs(_ target: String) -> [String] {
        let directory = fixtures.appendingPathComponent("fuzz/\(target)").path
        return ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).sorted().map { directory + "/" + $0 }
    }

    @Test("disk images: a qcow2 cut inside a data cluster (libqcow 20201213 copied past its buffer; pvcheck took SIGSEGV)")
    func diskImages() throws {
        let inputs = Self.inputs("disk-image")
        #expect(!inputs.isEmpty)
        for path in inputs {
            let reports = GuestAudit.audit(AuditInput.classify(path), with: KernelAuditor()).map(\.report)
            let error = try #require(reports.first?.error, "\(path)")
            #expect(error.code == .badDiskImage && error.message.contains("past the end of the file"), "\(error.message)")
        }
    }

    @Test("kernel images: each a report or an error")
    func kernels() throws {
        for path in Self.inputs("kernel") {
            let report = KernelAuditor(options: AuditOptions(symbols: true)).report(path: path)
            #expect(report.error != nil || report.verdicts != nil)
        }
    }
}
