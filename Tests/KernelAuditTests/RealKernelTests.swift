import Foundation
import KernelAudit
import Testing

/// Real Debian kernels (fetched by scripts/fetch-kernels.sh, which `make test` runs) against
/// Xen's own `readnotes` and binutils' `readelf -n` on the same vmlinux.
@Suite("real Debian kernels", .serialized, .timeLimit(.minutes(10)))
struct RealKernelTests {
    struct Kernel: Sendable, CustomTestStringConvertible {
        let suite: String
        let compression: CompressionFormat
        let tool: [String]
        var testDescription: String { "Debian \(suite)" }
    }

    static let kernels = [
        Kernel(suite: "bookworm", compression: .xz, tool: ["xz", "-dc"]),
        Kernel(suite: "trixie", compression: .zstd, tool: ["zstd", "-dcq"])
    ]

    /// The extracted package root, or nil with the reason printed (only when the registry was unreachable).
    static func root(_ suite: String) throws -> String? {
        let cache = ProcessInfo.processInfo.environment["PVKIT_CACHE"] ?? (NSHomeDirectory() + "/.cache/pvkit")
        let statusFile = cache + "/kernels/\(suite)/STATUS"
        let status = try #require(
            try? String(contentsOfFile: statusFile, encoding: .utf8),
            "no \(statusFile): run scripts/fetch-kernels.sh (make test does)")
        if status.hasPrefix("unreachable") {
            print("skipping Debian \(suite) kernel: the package registry was unreachable (\(status.trimmingCharacters(in: .newlines)))")
            return nil
        }
        return String(status.dropFirst(3).trimmingCharacters(in: .whitespacesAndNewlines))
    }

    static func image(in root: String) throws -> String {
        let names = try FileManager.default.contentsOfDirectory(atPath: root + "/boot").filter { $0.hasPrefix("vmlinuz-") }
        return root + "/boot/" + (try #require(names.first))
    }

    /// Extracts the payload with the system's decompressor, independently of pvcheck's.
    static func vmlinux(_ kernel: Kernel, image: String, report: AuditReport, into scratch: ScratchDirectory) throws -> String {
        let file = try bytes(of: image)
        let offset = try #require(report.image?.payloadOffset), length = try #require(report.image?.payloadLength)
        let payload = try scratch.write("payload", Array(file[offset..<offset + length]))
        let out = scratch.url.appendingPathComponent("vmlinux").path
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", "\(kernel.tool.joined(separator: " ")) < '\(payload)' > '\(out)' 2>/dev/null; exit 0"]
        try process.run()
        process.waitUntilExit()
        return out
    }

    @Test("verdicts, release and modules of a real kernel", arguments: kernels)
    func audit(_ kernel: Kernel) throws {
        guard let root = try Self.root(kernel.suite) else { return }
        let image = try Self.image(in: root)
        let report = try KernelAuditor().audit(path: image)
        #expect(report.image?.container == "bzImage" && report.image?.setupHeader?.efiStub == true)
        #expect(report.image?.compression == kernel.compression)
        #expect(report.kernel?.release.map { image.hasSuffix($0) } == true)
        #expect(report.config?.source.contains("/boot/config-") == true)
        #expect(report.verdicts?.allSatisfy { $0.answer == .yes } == true, "\(report.verdicts ?? [])")
        let vbd = report.modules?.frontends.first { $0.frontend == .vbd }
        #expect(vbd?.state == .module && vbd?.file?.contains("xen-blkfront.ko") == true)
    }

    @Test("notes equal Xen's readnotes and readelf -n", arguments: kernels)
    func notesMatchXenTools(_ kernel: Kernel) throws {
        guard let root = try Self.root(kernel.suite) else { return }
        let readnotes = "/usr/lib/xen-4.17/bin/readnotes"
        try #require(FileManager.default.isExecutableFile(atPath: readnotes), "xen-utils-4.17 is not installed: make test installs it")
        let image = try Self.image(in: root)
        let report = try KernelAuditor().audit(path: image)
        let notes = try #require(report.xenNotes)
        let scratch = try ScratchDirectory()
        let vmlinux = try Self.vmlinux(kernel, image: image, report: report, into: scratch)

        // readnotes: "NAME: value" for known notes, "unknown note type 0xN" for the rest.
        let xen = try shell([readnotes, vmlinux])
        var compared = 0
        for line in xen.split(separator: "\n") {
            if line.hasPrefix("unknown note type ") {
                let type = UInt32(line.dropFirst("unknown note type 0x".count), radix: 16)
                #expect(notes.notes.contains { $0.type == type }, "readnotes saw note \(line), pvcheck did not")
                compared += 1
                continue
            }
            guard let colon = line.firstIndex(of: ":") else { continue }
            let name = String(line[..<colon])
            let value = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            guard let mine = notes.notes.first(where: { $0.name == name }) else {
                Issue.record("readnotes printed \(name), pvcheck has no such note")
                continue
            }
            compared += 1
            if let text = mine.text {
                #expect(text == value, "\(name)")
            } else if name == "L1_MFN_VALID" {
                #expect(value == "mask=0x\(String(mine.numbers?.first ?? 0, radix: 16)) value=0x\(String(mine.numbers?.last ?? 0, radix: 16))")
            } else {
                let token = value.split(separator: " ").first.map(String.init) ?? ""
                let number = token.hasPrefix("0x") ? UInt64(token.dropFirst(2), radix: 16) : UInt64(token)
                #expect(number == mine.number, "\(name): readnotes \(value), pvcheck \(mine.number.map { String($0, radix: 16) } ?? "nil")")
            }
        }
        #expect(compared == notes.notes.count, "readnotes and pvcheck disagree on how many notes there are")

        // readelf -n: the descriptor sizes of the "Xen" notes, in order.
        let elf = try shell(["readelf", "-nW", vmlinux])
        let sizes = elf.split(separator: "\n").compactMap { line -> Int? in
            let fields = line.split(whereSeparator: \.isWhitespace)
            guard fields.count >= 2, fields[0] == "Xen", fields[1].hasPrefix("0x") else { return nil }
            return Int(fields[1].dropFirst(2), radix: 16)
        }
        #expect(sizes == notes.notes.map(\.size))
        #expect(report.kernel?.banner?.hasPrefix("Linux version ") == true)
    }

    @Test("the real image cut at 12 offsets gives clear errors, never a crash", arguments: kernels)
    func cuts(_ kernel: Kernel) throws {
        guard let root = try Self.root(kernel.suite) else { return }
        let image = try bytes(of: try Self.image(in: root))
        let scratch = try ScratchDirectory()
        for fraction in [0.0001, 0.01, 0.02, 0.1, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9, 0.99, 0.999] {
            let length = Int(Double(image.count) * fraction)
            let path = try scratch.write("cut", Array(image[..<length]))
            do {
                _ = try KernelAuditor().audit(path: path)
                Issue.record("a \(kernel.suite) image cut to \(length) of \(image.count) bytes was accepted")
            } catch {
                #expect([.truncated, .badHeader, .corruptStream].contains(error.code), "\(length): \(error)")
            }
        }
    }
}

func shell(_ arguments: [String]) throws -> String {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = arguments
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = Pipe()
    try process.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return String(decoding: data, as: UTF8.self)
}

/// Symbol recovery from real kernels, cross-checked against facts the image states twice.
@Suite("real Debian kernels: kallsyms", .serialized, .timeLimit(.minutes(10)))
struct RealKernelSymbolTests {
    @Test("the whole kallsyms table, agreeing with the Xen notes and the ELF", arguments: RealKernelTests.kernels)
    func kallsyms(_ kernel: RealKernelTests.Kernel) throws {
        guard let root = try RealKernelTests.root(kernel.suite) else { return }
        let image = try RealKernelTests.image(in: root)
        let (report, table) = try KernelAuditor(options: AuditOptions(symbols: true)).auditWithSymbols(path: image)
        let symbols = try #require(table)
        #expect(symbols.source == .kallsyms)
        #expect(report.symbols?.count == symbols.symbols.count)
        #expect(symbols.symbols.count > 90_000, "\(symbols.detail)")
        // kallsyms is sorted by address; every name decodes to something with a type letter.
        let addresses = symbols.symbols.compactMap(\.address)
        #expect(addresses.count == symbols.symbols.count)
        #expect(zip(addresses, addresses.dropFirst()).allSatisfy { $0 <= $1 })
        #expect(symbols.symbols.allSatisfy { !$0.name.isEmpty && $0.type?.count == 1 })
        func address(_ name: String) -> UInt64? { symbols.symbols.first { $0.name == name }?.address }
        let notes = try #require(report.xenNotes)
        // The PV entry note is startup_xen; the PVH entry is pvh_start_xen's physical address.
        #expect(address("startup_xen") == notes.number(.entry))
        let virtBase = try #require(notes.number(.virtBase))
        #expect(address("pvh_start_xen").map { $0 &- virtBase } == notes.number(.phys32Entry))
        #expect(address("_text") == 0xFFFF_FFFF_8100_0000)
        // Symbols the kernel-fix catalogue will look for.
        for name in ["gnttab_try_end_foreign_access", "xen_start_kernel", "linux_banner", "xenbus_probe"] {
            #expect(address(name) != nil, "\(name) missing")
        }
    }

    @Test("Debian's System.map is a stub and is refused")
    func systemMapStub() throws {
        guard let root = try RealKernelTests.root("bookworm") else { return }
        let map = try FileManager.default.contentsOfDirectory(atPath: root + "/boot").first { $0.hasPrefix("System.map-") }
        let result = SymbolFallbacksProbe.systemMap(root + "/boot/" + (try #require(map)))
        #expect(result.table == nil && result.note.contains("stub"))
    }
}
