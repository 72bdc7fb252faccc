import Foundation
import GuestFiles
import XenABI

/// One entry of the PV kernel-fix catalogue (`patches/*.json`): a fix or feature, where it came
/// from, and the evidence rules that detect it in a kernel.
public struct CatalogueEntry: Sendable, Codable, Equatable {
    public let id: String
    public let title: String
    /// "fix" (a security or correctness fix) or "feature".
    public let kind: String
    public let xsa: String?
    public let cve: [String]?
    public let component: String
    /// Upstream commit subjects or ids.
    public let upstream: [String]
    /// Stable releases that carry it, where known (e.g. "5.10.90").
    public let stable: [String]?
    /// What its absence means for a Xen guest.
    public let absence: String
    /// `all` (every rule must hold) or `any`.
    public let match: String
    public let evidence: [EvidenceRule]
    /// The real kernels it was checked against, and the result.
    public let verified: [String]?
}

/// One piece of evidence. Exactly one of the kinds is set.
public struct EvidenceRule: Sendable, Codable, Equatable {
    /// A symbol the kernel's symbol table holds (needs --symbols data; kallsyms).
    public var symbol: String?
    /// A symbol that must be absent from the kernel's table.
    public var symbolAbsent: String?
    /// A symbol a module defines or references: `module` names it (`xen_blkfront`).
    public var moduleSymbol: String?
    /// A string in a module's file (a xenstore key it negotiates, say) of `module`.
    public var moduleString: String?
    /// A module parameter (`parm` in modinfo) of `module`.
    public var moduleParameter: String?
    public var module: String?
    /// A config option and the values that count (default y and m).
    public var config: String?
    public var values: [String]?
    /// A Xen ELF note by name (`PHYS32_ENTRY`).
    public var note: String?
    /// Kernel release at least this (e.g. "5.9").
    public var minimumVersion: String?
    /// Text the distribution's changelog of this kernel names (a CVE, a commit subject):
    /// `usr/share/doc/linux-image-<release>*/changelog.Debian.gz` of the package or guest root.
    /// Mentioned decides "fixed"; not mentioned decides nothing (older fixes predate the log).
    public var changelog: String?

    var kind: String? {
        let kinds: [(String, Any?)] = [
            ("symbol", symbol), ("symbolAbsent", symbolAbsent), ("moduleSymbol", moduleSymbol), ("moduleString", moduleString),
            ("moduleParameter", moduleParameter), ("config", config), ("note", note),
            ("minimumVersion", minimumVersion), ("changelog", changelog)
        ]
        let set = kinds.filter { $0.1 != nil }.map(\.0)
        return set.count == 1 ? set[0] : nil
    }
}

/// A catalogue entry's result: fixed / not fixed / unknown, and the evidence that decided.
public struct CatalogueResult: Sendable, Codable, Equatable {
    public enum Status: String, Sendable, Codable { case fixed, notFixed = "not fixed", unknown }
    public let id: String
    public let title: String
    public let status: Status
    public let evidence: [String]
    /// For `not fixed`: what that means for a Xen guest.
    public let meaning: String?
}

/// A problem in a catalogue file: which file, which line when known, what is wrong.
public struct CatalogueProblem: Error, Sendable, Codable, Equatable, CustomStringConvertible {
    public let file: String
    public let line: Int?
    public let message: String
    public var description: String { "\(file)\(line.map { ":\($0)" } ?? ""): \(message)" }
}

public enum Catalogue {
    /// The distribution changelog of `release`: in the package tree the image came from, or in the guest root.
    static func changelog(imagePath: String, root: String?, release: String?, limits: DecompressionLimits) -> (file: String, text: String)? {
        guard let release else { return nil }
        let boot = KernelAuditor.directory(of: imagePath)
        let bases = [KernelAuditor.directory(of: boot), root].compactMap { $0 }
        for base in bases {
            let doc = base + "/usr/share/doc"
            guard let packages = try? FileManager.default.contentsOfDirectory(atPath: doc) else { continue }
            for package in packages.sorted() where package.hasPrefix("linux-image-\(release)") {
                let file = doc + "/" + package + "/changelog.Debian.gz"
                guard let bytes = try? ImageFile.read(path: file),
                    let text = try? Decompressor.decompress(bytes.bytes, format: .gzip, at: 0, limits: limits)
                else { continue }
                return (file, String(decoding: text.output.bytes, as: UTF8.self))
            }
        }
        return nil
    }

    /// The distribution changelog of `release` inside a guest root.
    static func changelog(in guest: GuestRoot, release: String?, limits: DecompressionLimits) -> (file: String, text: String)? {
        guard let release else { return nil }
        for package in guest.names(in: "/usr/share/doc") ?? [] where package.hasPrefix("linux-image-\(release)") {
            let file = "/usr/share/doc/" + package + "/changelog.Debian.gz"
            guard let bytes = try? guest.contents(of: file, limit: 64 << 20) else { continue }
            let text: Decompressed? = bytes.withUnsafeBytes { try? Decompressor.decompress($0, format: .gzip, at: 0, limits: limits) }
            if let text { return (file, String(decoding: text.output.bytes, as: UTF8.self)) }
        }
        return nil
    }

    /// Loads every `*.json` in `directory`; broken entries become problems, the rest load.
    public static func load(directory: String) -> (entries: [CatalogueEntry], problems: [CatalogueProblem]) {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: directory) else {
            return ([], [CatalogueProblem(file: directory, line: nil, message: "cannot list the catalogue directory")])
        }
        var entries: [CatalogueEntry] = [], problems: [CatalogueProblem] = []
        var ids = Set<String>()
        for name in names.filter({ $0.hasSuffix(".json") }).sorted() {
            let path = directory + "/" + name
            guard let data = FileManager.default.contents(atPath: path) else {
                problems.append(CatalogueProblem(file: path, line: nil, message: "unreadable"))
                continue
            }
            switch parse(data, file: path, seen: ids) {
            case .success(let entry):
                ids.insert(entry.id)
                entries.append(entry)
            case .failure(let problem):
                problems.append(problem)
            }
        }
        return (entries, problems)
    }

    /// One entry's JSON (`file` names it in problems; `seen` holds the ids already loaded).
    public static func parse(_ data: Data, file path: String, seen ids: Set<String> = []) -> Result<CatalogueEntry, CatalogueProblem> {
        let text = String(decoding: data, as: UTF8.self)
        do {
            let entry = try JSONDecoder().decode(CatalogueEntry.self, from: data)
            if let problem = validate(entry, file: path, text: text, seen: ids) { return .failure(problem) }
            return .success(entry)
        } catch let DecodingError.keyNotFound(key, context) {
            return .failure(
                CatalogueProblem(
                    file: path, line: line(of: context.codingPath.last?.stringValue, in: text),
                    message: "missing \"\(key.stringValue)\"\(place(context.codingPath))"))
        } catch let DecodingError.typeMismatch(_, context), let DecodingError.valueNotFound(_, context) {
            return .failure(
                CatalogueProblem(
                    file: path, line: line(of: context.codingPath.last?.stringValue, in: text),
                    message: "wrong type for \"\(context.codingPath.map(\.stringValue).joined(separator: "."))\""))
        } catch let DecodingError.dataCorrupted(context) {
            let line = JSONSyntax.firstErrorLine(text) ?? line(of: context.codingPath.last?.stringValue, in: text)
            return .failure(
                CatalogueProblem(file: path, line: line, message: "not valid JSON" + (context.codingPath.isEmpty ? "" : place(context.codingPath))))
        } catch {
            return .failure(CatalogueProblem(file: path, line: nil, message: "\(error)"))
        }
    }

    static func place(_ path: [any CodingKey]) -> String {
        path.isEmpty ? "" : " in \(path.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: "."))"
    }

    static func line(of key: String?, in text: String) -> Int? {
        guard let key, let range = text.range(of: "\"\(key)\"") else { return nil }
        return text[..<range.lowerBound].filter { $0 == "\n" }.count + 1
    }

    static func validate(_ entry: CatalogueEntry, file: String, text: String, seen: Set<String>) -> CatalogueProblem? {
        func problem(_ message: String, key: String) -> CatalogueProblem { CatalogueProblem(file: file, line: line(of: key, in: text), message: message) }
        if seen.contains(entry.id) { return problem("duplicate id \(entry.id)", key: "id") }
        if entry.id.isEmpty || !entry.id.allSatisfy({ $0.isLowercase || $0.isNumber || $0 == "-" }) {
            return problem("id must be lower-case words joined by -", key: "id")
        }
        if !["fix", "feature"].contains(entry.kind) { return problem("kind must be \"fix\" or \"feature\"", key: "kind") }
        if !["all", "any"].contains(entry.match) { return problem("match must be \"all\" or \"any\"", key: "match") }
        if entry.evidence.isEmpty { return problem("no evidence rules", key: "evidence") }
        for (index, rule) in entry.evidence.enumerated() {
            guard let kind = rule.kind else { return problem("evidence[\(index)] must set exactly one rule kind", key: "evidence") }
            if ["moduleSymbol", "moduleString", "moduleParameter"].contains(kind) && rule.module == nil {
                return problem("evidence[\(index)]: \(kind) needs \"module\"", key: "evidence")
            }
            if kind == "minimumVersion", KernelVersion(rule.minimumVersion!) == nil {
                return problem("evidence[\(index)]: \"\(rule.minimumVersion!)\" is not a version", key: "minimumVersion")
            }
        }
        return nil
    }
}

/// A kernel release's numbers: "6.1.0-56-amd64" → 6.1.0.
struct KernelVersion: Comparable {
    let parts: [Int]
    init?(_ text: String) {
        let numbers = text.prefix { $0.isNumber || $0 == "." }.split(separator: ".").compactMap { Int($0) }
        guard numbers.count >= 2 else { return nil }
        parts = numbers
    }
    static func < (a: KernelVersion, b: KernelVersion) -> Bool {
        for i in 0..<max(a.parts.count, b.parts.count) {
            let x = i < a.parts.count ? a.parts[i] : 0, y = i < b.parts.count ? b.parts[i] : 0
            if x != y { return x < y }
        }
        return false
    }
}

/// What the catalogue rules look at, gathered once per kernel.
struct CatalogueFacts {
    var symbols: SymbolTable?
    var config: KernelConfig?
    var notes: XenNoteSet
    var release: String?
    var modules: ModuleIndex?
    var limits: DecompressionLimits
    /// The kernel's distribution changelog, decompressed: (file, text), when there is one.
    var changelog: (file: String, text: String)?
    var moduleCache: [String: (bytes: ImageBuffer, symbols: Set<String>)?] = [:]

    /// A module's bytes and symbol names, read once.
    mutating func module(_ name: String) -> (contents: (bytes: ImageBuffer, symbols: Set<String>)?, file: String?) {
        guard let modules, let file = modules.file(ofModule: name) else { return (nil, nil) }
        if let cached = moduleCache[name] { return (cached, file) }
        var loaded: (bytes: ImageBuffer, symbols: Set<String>)? = nil
        if let bytes = modules.contents(ofFile: file, limits: limits), let elf = try? ElfFile(bytes.bytes) {
            loaded = (bytes, elf.symbolNames())
        }
        moduleCache[name] = loaded
        return (loaded, file)
    }
}

enum CatalogueEvaluator {
    /// true / false / nil (no data to decide), with the evidence line.
    static func evaluate(_ rule: EvidenceRule, _ facts: inout CatalogueFacts) -> (Bool?, String) {
        if let name = rule.symbol ?? rule.symbolAbsent {
            let wanted = rule.symbol != nil
            guard let table = facts.symbols, table.source == .kallsyms || table.source == .systemMap else {
                return (nil, "symbol \(name): no full symbol table")
            }
            let present = table.symbols.contains { $0.name == name }
            return (present == wanted, "symbol \(name) \(present ? "present" : "absent") in \(table.source.rawValue)")
        }
        if let name = rule.moduleSymbol, let module = rule.module {
            if let config = facts.config, let option = frontendOption(module), config.state(option) == .builtIn {
                guard let table = facts.symbols, table.source == .kallsyms else { return (nil, "\(module) is built in; no kallsyms to look in") }
                // Built in: its references are invisible, but the kernel must define what it would call.
                let present = table.symbols.contains { $0.name == name }
                return (present ? nil : false, "\(module) is built in; \(name) \(present ? "defined" : "not defined") in the kernel")
            }
            let (contents, file) = facts.module(module)
            guard let contents, let file else { return (nil, "module \(module): not found") }
            let present = contents.symbols.contains(name)
            return (present, "\(file) \(present ? "references" : "does not reference") \(name)")
        }
        if let text = rule.moduleString, let module = rule.module {
            if let config = facts.config, let option = frontendOption(module), config.state(option) == .builtIn {
                return (nil, "\(module) is built in: its strings are not told apart from the kernel's")
            }
            let (contents, file) = facts.module(module)
            guard let contents, let file else { return (nil, "module \(module): not found") }
            let present = ByteView(bytes: contents.bytes.bytes).firstOffset(of: Array(text.utf8)) != nil
            return (present, "\(file) \(present ? "contains" : "does not contain") \"\(text)\"")
        }
        if let parameter = rule.moduleParameter, let module = rule.module {
            guard let modules = facts.modules, let file = modules.file(ofModule: module) else { return (nil, "module \(module): not found") }
            let present = modules.info(ofFile: file, key: "parm").contains { $0.hasPrefix(parameter + ":") }
            return (present, "\(file) \(present ? "has" : "has no") parameter \(parameter)")
        }
        if let option = rule.config {
            guard let config = facts.config else { return (nil, "\(option): no kernel config") }
            let values = rule.values ?? ["y", "m"]
            let value = config.values[option]
            return (value.map { values.contains($0) } ?? false, config.evidence(option))
        }
        if let name = rule.note {
            guard let type = XenElfNoteType.allCases.first(where: { $0.description == name }) else { return (nil, "unknown note \(name)") }
            let present = facts.notes.note(type) != nil
            return (present, "Xen note \(name) \(present ? "present" : "absent")")
        }
        if let text = rule.changelog {
            guard let changelog = facts.changelog else { return (nil, "no distribution changelog for this kernel") }
            guard let range = changelog.text.range(of: text) else { return (nil, "\(changelog.file) does not mention \(text)") }
            let number = changelog.text[..<range.lowerBound].filter { $0 == "\n" }.count + 1
            let lineStart = changelog.text[..<range.lowerBound].lastIndex(of: "\n").map { changelog.text.index(after: $0) } ?? changelog.text.startIndex
            let line = changelog.text[lineStart...].prefix { $0 != "\n" }.trimmingCharacters(in: .whitespaces)
            return (true, "\(changelog.file) line \(number): \(line)")
        }
        if let minimum = rule.minimumVersion {
            guard let release = facts.release, let version = KernelVersion(release), let wanted = KernelVersion(minimum) else {
                return (nil, "release unknown")
            }
            return (version >= wanted, "release \(release) \(version >= wanted ? "≥" : "<") \(minimum)")
        }
        return (nil, "unsupported rule")
    }

    static func frontendOption(_ module: String) -> String? {
        switch module {
        case "xen_blkfront": "CONFIG_XEN_BLKDEV_FRONTEND"
        case "xen_netfront": "CONFIG_XEN_NETDEV_FRONTEND"
        default: nil
        }
    }

    static func evaluate(_ entry: CatalogueEntry, _ facts: inout CatalogueFacts) -> CatalogueResult {
        let results = entry.evidence.map { evaluate($0, &facts) }
        let answers = results.map(\.0)
        let status: CatalogueResult.Status
        if entry.match == "all" {
            status = answers.contains(false) ? .notFixed : answers.allSatisfy { $0 == true } ? .fixed : .unknown
        } else {
            status = answers.contains(true) ? .fixed : answers.allSatisfy { $0 == false } ? .notFixed : .unknown
        }
        return CatalogueResult(
            id: entry.id, title: entry.title, status: status, evidence: results.map(\.1),
            meaning: status == .notFixed ? entry.absence : nil)
    }
}

/// Finds where a JSON text first goes wrong (Foundation's decoder says only that it does):
/// a small recursive-descent syntax check that returns the line of the first error.
enum JSONSyntax {
    static func firstErrorLine(_ text: String) -> Int? {
        let bytes = Array(text.utf8)
        var i = 0
        struct Failure: Error { let at: Int }
        func space() { while i < bytes.count, [0x20, 0x0A, 0x0D, 0x09].contains(bytes[i]) { i += 1 } }
        func expect(_ c: UInt8) throws { guard i < bytes.count, bytes[i] == c else { throw Failure(at: i) }; i += 1 }
        func literal(_ word: String) throws { for c in word.utf8 { try expect(c) } }
        func string() throws {
            try expect(0x22)
            while i < bytes.count, bytes[i] != 0x22 {
                if bytes[i] == 0x5C { i += 1 }
                guard i < bytes.count, bytes[i] >= 0x20 else { throw Failure(at: i) }
                i += 1
            }
            try expect(0x22)
        }
        func number() throws {
            let start = i
            while i < bytes.count, "+-0123456789.eE".utf8.contains(bytes[i]) { i += 1 }
            guard i > start else { throw Failure(at: i) }
        }
        func value(_ depth: Int) throws {
            guard depth < 64 else { throw Failure(at: i) }
            space()
            guard i < bytes.count else { throw Failure(at: i) }
            switch bytes[i] {
            case 0x7B:
                i += 1; space()
                if i < bytes.count, bytes[i] == 0x7D { i += 1; return }
                while true {
                    space(); try string(); space(); try expect(0x3A); try value(depth + 1); space()
                    if i < bytes.count, bytes[i] == 0x2C { i += 1; continue }
                    try expect(0x7D); return
                }
            case 0x5B:
                i += 1; space()
                if i < bytes.count, bytes[i] == 0x5D { i += 1; return }
                while true {
                    try value(depth + 1); space()
                    if i < bytes.count, bytes[i] == 0x2C { i += 1; continue }
                    try expect(0x5D); return
                }
            case 0x22: try string()
            case 0x74: try literal("true")
            case 0x66: try literal("false")
            case 0x6E: try literal("null")
            default: try number()
            }
        }
        do {
            try value(0)
            space()
            if i < bytes.count { throw Failure(at: i) }
            return nil
        } catch let failure as Failure {
            return bytes[..<min(failure.at, bytes.count)].filter { $0 == 0x0A }.count + 1
        } catch {
            return nil
        }
    }
}
