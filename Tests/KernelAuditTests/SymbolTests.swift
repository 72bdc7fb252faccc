import Foundation
import KernelAudit
import Testing

/// Symbol recovery on the fixtures: kallsyms in both layouts, then each fallback in order.
@Suite("symbols: kallsyms and the fallbacks", .timeLimit(.minutes(5)))
struct SymbolTests {
    func symbols(_ name: String, systemMap: String? = nil) throws -> SymbolTable? {
        try KernelAuditor(options: AuditOptions(symbols: true, systemMapPath: systemMap)).auditWithSymbols(path: fixture(name)).symbols
    }

    @Test(
        "kallsyms tables in the pre-6.4 (with seqs_of_names) and 6.4+ layouts",
        arguments: ["vmlinux-kallsyms-6.1.elf", "vmlinux-kallsyms-6.4.elf"])
    func kallsyms(_ name: String) throws {
        let table = try #require(try symbols(name))
        #expect(table.source == .kallsyms)
        #expect(table.symbols.count == 705)
        #expect(table.detail.contains(name.contains("6.1") ? "before 6.4" : "6.4+"))
        let first = try #require(table.symbols.first)
        #expect(first.name == "_text" && first.type == "T" && first.address == 0xFFFF_FFFF_8100_0000)
        #expect(table.symbols.first { $0.name == "startup_xen" }?.address == 0xFFFF_FFFF_8100_0100)
        #expect(table.symbols.first { $0.name == "pvkit_fixture_fn_0699" }?.type == "T")
        #expect(table.symbols.last?.name == "linux_banner")
        // The dump is System.map: "address type name".
        let lines = table.systemMap().split(separator: "\n")
        #expect(lines.count == 705 && lines[1] == "ffffffff81000100 T startup_xen")
    }

    @Test("no kallsyms: a System.map beside the image, or given")
    func systemMap() throws {
        let beside = try #require(try symbols("vmlinux-pv-pvh.elf"))
        #expect(beside.source == .systemMap && beside.symbols.count == 705)
        let given = try #require(try symbols("vmlinux-ksymtab.elf", systemMap: fixture("System.map-6.6.0-pvkit-fixture")))
        #expect(given.source == .systemMap)
    }

    @Test("a stub System.map is refused and the next fallback answers")
    func stub() throws {
        let scratch = try ScratchDirectory()
        let stub = try scratch.write("System.map-stub", Array("ffffffffffffffff B The real System.map is in the linux-image-6.1.0-56-amd64-dbg package\n".utf8))
        let table = try #require(try symbols("vmlinux-ksymtab.elf", systemMap: stub))
        #expect(table.source == .ksymtabStrings)
        #expect(table.detail.contains("stub"))
        #expect(table.symbols.map(\.name) == ["gnttab_try_end_foreign_access", "xenbus_register_frontend", "xen_domain_type"])
        #expect(table.symbols.allSatisfy { $0.address == nil })
    }

    @Test(".BTF strings, then plain strings")
    func btfAndStrings() throws {
        let btf = try #require(try symbols("vmlinux-btf.elf"))
        #expect(btf.source == .btf)
        #expect(btf.names == ["int", "xen_blkif_interrupt", "gnttab_end_foreign_access"])
        let plain = try #require(try symbols("Image-arm64"))
        #expect(plain.source == .strings)
    }

    @Test("a kallsyms table with a damaged name or marker is not taken for one")
    func damaged() throws {
        var image = try bytes(of: fixture("vmlinux-kallsyms-6.4.elf"))
        let table = try #require(try symbols("vmlinux-kallsyms-6.4.elf"))
        #expect(table.source == .kallsyms)
        // The second marker: the bytes of the first 256 name records (length byte + type + name).
        let secondMarker = UInt32(table.symbols.prefix(256).reduce(0) { $0 + 2 + $1.name.utf8.count })
        let pattern: [UInt8] = [0, 0, 0, 0] + withUnsafeBytes(of: secondMarker.littleEndian, Array.init)
        let at = try #require((0..<(image.count - 8)).first { Array(image[$0..<$0 + 8]) == pattern })
        image[at + 4] &+= 1
        let scratch = try ScratchDirectory()
        let path = try scratch.write("vmlinux-damaged", image)
        let recovered = try KernelAuditor(options: AuditOptions(symbols: true)).auditWithSymbols(path: path).symbols
        #expect(recovered?.source != .kallsyms)
    }
}
