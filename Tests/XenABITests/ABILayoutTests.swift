import CXenReference
import Foundation
import Testing
import XenABI

/// Every layout and constant against Xen's own C headers (`/usr/include/xen`, libxen-dev 4.17).
@Suite("ABI against /usr/include/xen", .timeLimit(.minutes(5)))
struct ABILayoutTests {
    static func cFacts() -> [String: Int64] {
        var count = 0
        let table = cxr_abi_facts(&count)!
        var facts: [String: Int64] = [:]
        for index in 0..<count { facts[String(cString: table[index].name)] = table[index].value }
        return facts
    }

    @Test("every C fact has a Swift counterpart with the same value")
    func factsMatch() {
        let c = Self.cFacts()
        let swift = swiftABIFacts()
        #expect(c.count > 300, "the C table lost facts: \(c.count)")
        for (name, value) in c.sorted(by: { $0.key < $1.key }) {
            guard let mine = swift[name] else {
                Issue.record("C fact \(name) = \(value) has no Swift counterpart")
                continue
            }
            #expect(mine == value, "\(name): Swift \(mine), C \(value)")
        }
        for name in swift.keys.sorted() where c[name] == nil {
            Issue.record("Swift fact \(name) is not checked by the C table")
        }
    }

    @Test("xsd_errors table order and errno values")
    func xsErrorTable() {
        var names: [String] = []
        var index = 0
        var errnum: Int32 = 0
        while let name = cxr_xsd_error(index, &errnum) {
            let text = String(cString: name)
            names.append(text)
            #expect(XsErrorName(rawValue: text)?.errno == errnum, "\(text): errno \(errnum)")
            index += 1
        }
        #expect(names == XsErrorName.allCases.map(\.rawValue))
    }

    /// The x86-32 blkif layout (`x86_32-abi`), checked by compiling Xen's header for i386
    /// with static assertions generated from the Swift layout.
    @Test("blkif x86_32-abi layout compiles against the i386 header")
    func blkifX86_32() throws {
        let l = BlkifLayout.x86_32
        let checks: [(String, Int)] = [
            ("sizeof(struct blkif_request)", l.requestSize),
            ("offsetof(struct blkif_request, operation)", l.requestOperation),
            ("offsetof(struct blkif_request, nr_segments)", l.requestSegmentCount),
            ("offsetof(struct blkif_request, handle)", l.requestHandle),
            ("offsetof(struct blkif_request, id)", l.requestID),
            ("offsetof(struct blkif_request, sector_number)", l.requestSector),
            ("offsetof(struct blkif_request, seg)", l.requestSegments),
            ("sizeof(struct blkif_request_discard)", l.discardSize),
            ("offsetof(struct blkif_request_discard, flag)", l.discardFlag),
            ("offsetof(struct blkif_request_discard, handle)", l.discardHandle),
            ("offsetof(struct blkif_request_discard, id)", l.discardID),
            ("offsetof(struct blkif_request_discard, sector_number)", l.discardSector),
            ("offsetof(struct blkif_request_discard, nr_sectors)", l.discardSectorCount),
            ("sizeof(struct blkif_request_indirect)", l.indirectSize),
            ("offsetof(struct blkif_request_indirect, indirect_op)", l.indirectOperation),
            ("offsetof(struct blkif_request_indirect, nr_segments)", l.indirectSegmentCount),
            ("offsetof(struct blkif_request_indirect, id)", l.indirectID),
            ("offsetof(struct blkif_request_indirect, sector_number)", l.indirectSector),
            ("offsetof(struct blkif_request_indirect, handle)", l.indirectHandle),
            ("offsetof(struct blkif_request_indirect, indirect_grefs)", l.indirectGrants),
            ("sizeof(struct blkif_response)", l.responseSize),
            ("offsetof(struct blkif_response, id)", l.responseID),
            ("offsetof(struct blkif_response, operation)", l.responseOperation),
            ("offsetof(struct blkif_response, status)", l.responseStatus),
            ("sizeof(union blkif_sring_entry)", l.slotSize)
        ]
        var source = "#include <stdint.h>\n#include <stddef.h>\n#include <xen/io/blkif.h>\n"
        for (expression, value) in checks {
            source += "_Static_assert(\(expression) == \(value), \"\(expression) is not \(value)\");\n"
        }
        let result = try compileC(source, arguments: ["-target", "i386-linux-gnu", "-ffreestanding", "-fsyntax-only"])
        #expect(result.status == 0, "i386 layout differs:\n\(result.output)")
    }

    /// The check above must be able to fail: a wrong value is rejected by the compiler.
    @Test("the i386 layout check rejects a wrong offset")
    func blkifX86_32CheckCanFail() throws {
        let source =
            "#include <stdint.h>\n#include <stddef.h>\n#include <xen/io/blkif.h>\n"
            + "_Static_assert(offsetof(struct blkif_request, id) == 8, \"id\");\n"
        let result = try compileC(source, arguments: ["-target", "i386-linux-gnu", "-ffreestanding", "-fsyntax-only"])
        #expect(result.status != 0)
        #expect(result.output.contains("static assertion failed"), "clang did not judge the assertion: \(result.output)")
    }
}

/// Runs the toolchain's clang on a C source and returns its status and output.
func compileC(_ source: String, arguments: [String]) throws -> (status: Int32, output: String) {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("pvkit-abi-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: directory) }
    let file = directory.appendingPathComponent("check.c")
    try source.write(to: file, atomically: true, encoding: .utf8)
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = ["clang"] + arguments + [file.path]
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    try process.run()
    let output = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: output, as: UTF8.self))
}
