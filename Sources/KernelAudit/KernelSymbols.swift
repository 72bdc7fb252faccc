import Foundation

/// One kernel symbol: its name, its `nm` type letter and address when the source has them.
public struct KernelSymbol: Sendable, Codable, Equatable {
    public let name: String
    /// The `nm` type letter (`T`, `t`, `D`, `A`, …), when known.
    public let type: String?
    public let address: UInt64?
}

/// A kernel's symbol table and where it came from.
public struct SymbolTable: Sendable {
    /// Where the symbols came from, best first.
    public enum Source: String, Sendable, Codable {
        case kallsyms
        case systemMap = "System.map"
        case ksymtabStrings = "__ksymtab_strings"
        case btf = ".BTF strings"
        case strings = "plain strings"
    }

    public let source: Source
    public let symbols: [KernelSymbol]
    /// How it was found (table offsets, layout, file).
    public let detail: String

    /// The symbol names, for evidence lookups.
    public var names: Set<String> { Set(symbols.map(\.name)) }

    /// Writes `System.map` lines (`address type name`); symbols without an address get zeros.
    public func systemMap() -> String {
        var text = ""
        text.reserveCapacity(symbols.count * 40)
        for symbol in symbols {
            let address = String(symbol.address ?? 0, radix: 16)
            text += String(repeating: "0", count: max(0, 16 - address.count)) + address + " " + (symbol.type ?? "?") + " " + symbol.name + "\n"
        }
        return text
    }
}

/// Summary of a symbol table in a report.
public struct SymbolsInfo: Sendable, Codable {
    public var source: SymbolTable.Source
    public var count: Int
    public var detail: String
}

/// Recovers the symbol table from the kernel image itself (`scripts/kallsyms` tables), for
/// kernels 4.20 and later (32-bit `num_syms` and markers), in both layouts: before 6.4
/// (offsets, relative base, num_syms, names, markers, [seqs_of_names], token table, token index)
/// and 6.4+ (num_syms, names, markers, token table, token index, offsets, relative base,
/// seqs_of_names). Every table is found by its own shape and cross-checked: the token index must
/// equal the offsets of the token table, the names must walk to the markers, the addresses must
/// be sorted.
enum KallsymsFinder {
    static let digitRun: [UInt8] = (0..<10).flatMap { [UInt8(ascii: "0") + UInt8($0), 0] }

    struct Tables {
        var tokenTable: Int
        var tokens: [[UInt8]]
        var tokenIndex: Int
        var markers: [UInt32]
        var markersStart: Int
        var numSymsOffset: Int
        var count: Int
        var namesStart: Int
    }

    static func find(_ bytes: UnsafeRawBufferPointer, pointerSize: Int, absolutePercpu: Bool?) -> SymbolTable? {
        let view = ByteView(bytes: bytes)
        var next = 0
        for _ in 0..<64 {
            guard let hit = view.firstOffset(of: digitRun, from: next) else { return nil }
            next = hit + 1
            guard var tables = tokenTables(view, digitZero: hit) else { continue }
            guard locateNames(view, &tables, pointerSize: pointerSize) else { continue }
            let names = decodeNames(view, tables)
            guard names.count == tables.count else { continue }
            guard let (addresses, layout) = addresses(view, tables, pointerSize: pointerSize, absolutePercpu: absolutePercpu) else { continue }
            var symbols: [KernelSymbol] = []
            symbols.reserveCapacity(names.count)
            for (index, name) in names.enumerated() {
                symbols.append(KernelSymbol(name: name.name, type: name.type, address: addresses[index]))
            }
            let detail =
                "kallsyms (\(layout)): \(tables.count) symbols, token table at payload offset \(tables.tokenTable), names at \(tables.namesStart), \(tables.markers.count) markers"
            return SymbolTable(source: .kallsyms, symbols: symbols, detail: detail)
        }
        return nil
    }

    /// Walks back 48 tokens from the "0" token to the table's start, reads 256 tokens and finds
    /// the token index (256 little-endian u16 offsets) right after them.
    static func tokenTables(_ view: ByteView, digitZero: Int) -> Tables? {
        let b = view.bytes
        var start = digitZero
        for _ in 0..<48 {
            guard start >= 2, b[start - 1] == 0 else { return nil }
            start -= 1
            var begin = start
            while begin > 0, b[begin - 1] != 0, start - begin < 64 { begin -= 1 }
            guard begin < start else { return nil }  // tokens are never empty
            start = begin
        }
        var tokens: [[UInt8]] = []
        var offsets: [Int] = []
        var position = start
        for _ in 0..<256 {
            var end = position
            while end < b.count, b[end] != 0, end - position < 64 { end += 1 }
            guard end < b.count, b[end] == 0, end > position else { return nil }
            tokens.append(Array(b[position..<end]))
            offsets.append(position - start)
            position = end + 1
        }
        for pad in 0..<16 {
            let index = position + pad
            guard index % 2 == 0, index + 512 <= b.count else { continue }
            if (0..<256).allSatisfy({ Int(view.le(UInt16.self, index + 2 * $0)!) == offsets[$0] }) {
                return Tables(
                    tokenTable: start, tokens: tokens, tokenIndex: index, markers: [], markersStart: 0,
                    numSymsOffset: 0, count: 0, namesStart: 0)
            }
        }
        return nil
    }

    /// Finds the markers (u32: 0, then increasing) before the token table — possibly with
    /// `kallsyms_seqs_of_names` in between — and `num_syms` + names before them, accepting only
    /// a count whose records walk exactly onto every marker.
    static func locateNames(_ view: ByteView, _ t: inout Tables, pointerSize: Int) -> Bool {
        let align = pointerSize
        var candidate = (t.tokenTable - 4) & ~3
        let floor = max(0, t.tokenTable - (8 << 20))
        while candidate > floor {
            defer { candidate -= 4 }
            guard view.le(UInt32.self, candidate) == 0, let second = view.le(UInt32.self, candidate + 4),
                second >= 256, second <= 0x40000
            else { continue }
            var markers: [UInt32] = [0, second]
            var position = candidate + 8
            while position + 4 <= t.tokenTable, let value = view.le(UInt32.self, position),
                value > markers.last!, value - markers.last! <= 0x40000
            {
                markers.append(value)
                position += 4
            }
            let m = markers.count
            // num_syms: a u32 in ((m-1)·256, m·256] before the names.
            var numSyms = (candidate - 4) & ~3
            let namesFloor = max(0, candidate - (32 << 20))
            while numSyms > namesFloor {
                defer { numSyms -= 4 }
                guard let n = view.le(UInt32.self, numSyms), Int(n) > (m - 1) * 256, Int(n) <= m * 256 else { continue }
                let namesStart = (numSyms + 4 + align - 1) & ~(align - 1)
                if let end = walk(view, from: namesStart, count: Int(n), markers: markers), end <= candidate, candidate - end < 8 {
                    t.markers = markers
                    t.markersStart = candidate
                    t.numSymsOffset = numSyms
                    t.count = Int(n)
                    t.namesStart = namesStart
                    return true
                }
            }
        }
        return false
    }

    /// A name record's length at `position` (one byte, or two when the first has bit 7: big
    /// symbols, 6.x) and where its bytes start; nil past the end.
    @inline(__always)
    static func recordLength(_ b: UnsafeRawBufferPointer, at position: Int) -> (length: Int, start: Int)? {
        guard position < b.count else { return nil }
        let first = Int(b[position])
        guard first & 0x80 != 0 else { return (first, position + 1) }
        guard position + 1 < b.count else { return nil }
        return ((first & 0x7F) | Int(b[position + 1]) << 7, position + 2)
    }

    /// Walks `count` name records; nil unless every 256th lands on its marker.
    static func walk(_ view: ByteView, from start: Int, count: Int, markers: [UInt32]) -> Int? {
        let b = view.bytes
        var position = start
        for index in 0..<count {
            if index & 0xFF == 0, position - start != Int(markers[index >> 8]) { return nil }
            guard let record = recordLength(b, at: position) else { return nil }
            position = record.start + record.length
            guard position <= b.count else { return nil }
        }
        return position
    }

    /// Expands every name through the token table into (type letter, name), writing each name's
    /// bytes straight into its String.
    static func decodeNames(_ view: ByteView, _ t: Tables) -> [(type: String, name: String)] {
        let b = view.bytes
        // Flatten the tokens: one byte buffer and (start, length) per token.
        var flat: [UInt8] = []
        var spans: [(Int, Int)] = []
        for token in t.tokens {
            spans.append((flat.count, token.count))
            flat += token
        }
        var names: [(type: String, name: String)] = []
        names.reserveCapacity(t.count)
        var position = t.namesStart
        flat.withUnsafeBufferPointer { tokenBytes in
            for _ in 0..<t.count {
                // The walk in locateNames proved every record lies inside the image.
                let (length, start) = recordLength(b, at: position)!
                position = start
                var expanded = 0
                for i in 0..<length { expanded += spans[Int(b[position + i])].1 }
                guard expanded > 0 else {
                    names.append(("?", ""))
                    position += length
                    continue
                }
                let type = String(UnicodeScalar(tokenBytes[spans[Int(b[position])].0]))
                let name = String(unsafeUninitializedCapacity: expanded - 1) { out in
                    var written = 0, skip = 1
                    for i in 0..<length {
                        let (start, count) = spans[Int(b[position + i])]
                        for j in 0..<count {
                            if skip > 0 { skip -= 1; continue }
                            out[written] = tokenBytes[start + j]
                            written += 1
                        }
                    }
                    return written
                }
                names.append((type, name))
                position += length
            }
        }
        return names
    }

    /// The addresses, trying the layouts in turn; kallsyms is sorted by address, so the layout
    /// whose addresses are sorted is the right one.
    static func addresses(_ view: ByteView, _ t: Tables, pointerSize: Int, absolutePercpu: Bool?) -> ([UInt64], String)? {
        let n = t.count
        let afterIndex = (t.tokenIndex + 512 + 7) & ~7
        let beforeNumSyms = (t.numSymsOffset - 8) & ~7
        var candidates: [(offsets: Int, base: Int?, layout: String)] = [
            ((beforeNumSyms - 4 * n) & ~3, beforeNumSyms, "before 6.4, base-relative"),
            ((beforeNumSyms - 4 * n) & ~7, beforeNumSyms, "before 6.4, base-relative"),
            (afterIndex, (afterIndex + 4 * n + 7) & ~7, "6.4+, base-relative")
        ]
        if pointerSize == 8 {
            candidates += [((t.numSymsOffset - 8 * n) & ~7, nil, "before 6.4, absolute"), (afterIndex, nil, "6.4+, absolute")]
        }
        var best: ([UInt64], String, Int)? = nil
        for candidate in candidates {
            guard candidate.offsets >= 0 else { continue }
            let modes: [Bool] = candidate.base == nil ? [false] : (absolutePercpu.map { [$0] } ?? [true, false])
            for percpu in modes {
                guard let addresses = read(view, candidate.offsets, n, base: candidate.base, absolutePercpu: percpu, pointerSize: pointerSize) else { continue }
                // Absolute per-CPU tables hold kernel text as negative offsets: without any, the
                // mode is wrong (every address would be a small absolute value).
                if percpu, candidate.base != nil, !(0..<n).contains(where: { Int32(bitPattern: view.le(UInt32.self, candidate.offsets + 4 * $0)!) < 0 }) {
                    continue
                }
                var unsorted = 0
                for i in 1..<max(addresses.count, 1) where addresses[i] < addresses[i - 1] { unsorted += 1 }
                let layout = candidate.layout + (candidate.base != nil && percpu ? ", absolute per-CPU" : "")
                if best == nil || unsorted < best!.2 { best = (addresses, layout, unsorted) }
                if unsorted == 0 { return (addresses, layout) }
            }
        }
        guard let best, best.2 < n / 100 else { return nil }
        return (best.0, best.1 + " (\(best.2) out of order)")
    }

    static func read(_ view: ByteView, _ start: Int, _ n: Int, base: Int?, absolutePercpu: Bool, pointerSize: Int) -> [UInt64]? {
        guard let base else {
            guard start + 8 * n <= view.count else { return nil }
            return (0..<n).map { view.le(UInt64.self, start + 8 * $0)! }
        }
        guard start + 4 * n <= view.count, let relative = pointerSize == 8 ? view.le(UInt64.self, base) : view.le(UInt32.self, base).map(UInt64.init) else {
            return nil
        }
        guard relative != 0 else { return nil }
        var addresses = [UInt64](repeating: 0, count: n)
        for i in 0..<n {
            let offset = Int32(bitPattern: view.le(UInt32.self, start + 4 * i)!)
            if absolutePercpu {
                addresses[i] = offset >= 0 ? UInt64(offset) : relative &- 1 &- UInt64(bitPattern: Int64(offset))
            } else {
                addresses[i] = relative &+ UInt64(UInt32(bitPattern: offset))
            }
        }
        return addresses
    }
}

/// The fallbacks, in order, when kallsyms is not there.
enum SymbolFallbacks {
    /// A `System.map`: "address type name" lines. Debian ships a one-line stub pointing at the
    /// -dbg package; that is detected and refused.
    static func systemMap(path: String) -> (table: SymbolTable?, note: String) {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return (nil, "no \(path)") }
        if text.contains("The real System.map") || text.utf8.count < 1024 {
            return (nil, "\(path) is a stub (Debian ships the real one in the -dbg package)")
        }
        var symbols: [KernelSymbol] = []
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: " ", maxSplits: 2)
            guard fields.count == 3, let address = UInt64(fields[0], radix: 16) else { continue }
            symbols.append(KernelSymbol(name: String(fields[2]), type: String(fields[1]), address: address))
        }
        return symbols.isEmpty ? (nil, "\(path) holds no symbols") : (SymbolTable(source: .systemMap, symbols: symbols, detail: path), path)
    }

    /// NUL-separated names of a section (`__ksymtab_strings`: exported symbols).
    static func strings(of section: UnsafeRawBufferPointer, source: SymbolTable.Source, detail: String) -> SymbolTable? {
        let names = section.split(separator: 0).compactMap { bytes -> String? in
            guard bytes.count >= 2, bytes.allSatisfy({ $0 == 0x5F || ($0 >= 0x30 && $0 <= 0x39) || ($0 | 0x20 >= 0x61 && $0 | 0x20 <= 0x7A) || $0 == 0x2E })
            else { return nil }
            return String(decoding: bytes, as: UTF8.self)
        }
        guard !names.isEmpty else { return nil }
        var seen = Set<String>()
        let unique = names.filter { seen.insert($0).inserted }
        return SymbolTable(source: source, symbols: unique.map { KernelSymbol(name: $0, type: nil, address: nil) }, detail: detail)
    }

    /// The string section of `.BTF` (header: magic 0xEB9F, hdr_len, type/str offsets).
    static func btfStrings(_ section: UnsafeRawBufferPointer) -> SymbolTable? {
        let view = ByteView(bytes: section)
        guard view.le(UInt16.self, 0) == 0xEB9F, let headerLength = view.le(UInt32.self, 4),
            let stringOffset = view.le(UInt32.self, 16), let stringLength = view.le(UInt32.self, 20)
        else { return nil }
        let start = Int(headerLength) + Int(stringOffset), end = start + Int(stringLength)
        guard start >= 0, end <= section.count, start < end else { return nil }
        return strings(of: UnsafeRawBufferPointer(rebasing: section[start..<end]), source: .btf, detail: ".BTF string table (\(stringLength) bytes)")
    }

    /// Identifier-like NUL-terminated strings of the image: the last resort, names only.
    static func plainStrings(_ bytes: UnsafeRawBufferPointer) -> SymbolTable? {
        strings(of: bytes, source: .strings, detail: "identifier-like strings of the image").map { table in
            SymbolTable(source: .strings, symbols: Array(table.symbols.filter { $0.name.utf8.count >= 4 }.prefix(1 << 20)), detail: table.detail)
        }
    }
}

/// The System.map reader, for callers that hold a map of their own.
public enum SymbolFallbacksProbe {
    /// Reads a System.map; nil with the reason when it is missing, empty or Debian's stub.
    public static func systemMap(_ path: String) -> (table: SymbolTable?, note: String) { SymbolFallbacks.systemMap(path: path) }
}
