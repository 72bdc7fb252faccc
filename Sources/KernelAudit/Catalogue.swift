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
    /// 1-based column, when the problem is at a character.
    public var column: Int? = nil
    public let message: String
    public var description: String { "\(file)\(line.map { ":\($0)" } ?? "")\(column.map { ":\($0)" } ?? ""): \(message)" }

    public init(file: String, line: Int?, column: Int? = nil, message: String) {
        self.file = file
        self.line = line
        self.column = column
        self.message = message
    }
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
        var ids: [String: String] = [:]
        for name in names.filter({ $0.hasSuffix(".json") }).sorted() {
            let path = directory + "/" + name
            let data: Data
            do {
                data = try Data(contentsOf: URL(fileURLWithPath: path))
            } catch {
                problems.append(CatalogueProblem(file: path, line: nil, message: "unreadable: \((error as NSError).localizedDescription)"))
                continue
            }
            switch parse(data, file: path, seen: ids) {
            case .success(let entry):
                ids[entry.id] = path
                entries.append(entry)
            case .failure(let problem):
                problems.append(problem)
            }
        }
        return (entries, problems)
    }

    /// The keys an entry and an evidence rule may have: anything else is a problem (a typo
    /// would otherwise be a silently ignored rule).
    static let entryKeys: Set<String> = [
        "id", "title", "kind", "xsa", "cve", "component", "upstream", "stable", "absence", "match", "evidence", "verified"
    ]
    static let ruleKeys: Set<String> = [
        "symbol", "symbolAbsent", "moduleSymbol", "moduleString", "moduleParameter", "module", "config", "values", "note",
        "minimumVersion", "changelog"
    ]

    /// One entry's JSON, strictly (`file` names it in problems; `seen` maps the ids already
    /// loaded to their files). Syntax is checked first by ``JSONSyntax``, which reports line and
    /// column, trailing commas and duplicate keys (Foundation's parser accepts both or says
    /// only that the text is invalid).
    public static func parse(_ data: Data, file path: String, seen ids: [String: String] = [:]) -> Result<CatalogueEntry, CatalogueProblem> {
        let text = String(decoding: data, as: UTF8.self)
        if let syntax = JSONSyntax.check(text) {
            return .failure(CatalogueProblem(file: path, line: syntax.line, column: syntax.column, message: "not valid JSON: \(syntax.reason)"))
        }
        if let top = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] {
            let unknown = Set(top.keys).subtracting(entryKeys).sorted()
            if let key = unknown.first {
                return .failure(CatalogueProblem(file: path, line: line(of: key, in: text), message: "unknown key \"\(key)\""))
            }
            for (index, rule) in ((top["evidence"] as? [Any]) ?? []).enumerated() {
                if let rule = rule as? [String: Any], let key = Set(rule.keys).subtracting(ruleKeys).sorted().first {
                    return .failure(CatalogueProblem(file: path, line: line(of: key, in: text), message: "unknown key \"\(key)\" in evidence[\(index)]"))
                }
            }
        } else {
            return .failure(CatalogueProblem(file: path, line: 1, column: 1, message: "the top level is not a JSON object"))
        }
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
                    message: "wrong type for \"\(Self.path(context.codingPath))\""))
        } catch let DecodingError.dataCorrupted(context) {
            let line = line(of: context.codingPath.last?.stringValue, in: text)
            return .failure(
                CatalogueProblem(file: path, line: line, message: "not valid JSON" + (context.codingPath.isEmpty ? "" : place(context.codingPath))))
        } catch {
            return .failure(CatalogueProblem(file: path, line: nil, message: "\(error)"))
        }
    }

    static func place(_ codingPath: [any CodingKey]) -> String { codingPath.isEmpty ? "" : " in \(path(codingPath))" }

    /// `evidence[0].values[1]`, not Swift's "Index 0".
    static func path(_ codingPath: [any CodingKey]) -> String {
        var text = ""
        for key in codingPath {
            if let index = key.intValue {
                text += "[\(index)]"
            } else {
                text += (text.isEmpty ? "" : ".") + key.stringValue
            }
        }
        return text
    }

    static func line(of key: String?, in text: String) -> Int? {
        guard let key, let range = text.range(of: "\"\(key)\"") else { return nil }
        return text[..<range.lowerBound].filter { $0 == "\n" }.count + 1
    }

    static func validate(_ entry: CatalogueEntry, file: String, text: String, seen: [String: String]) -> CatalogueProblem? {
        func problem(_ message: String, key: String) -> CatalogueProblem { CatalogueProblem(file: file, line: line(of: key, in: text), message: message) }
        if let other = seen[entry.id] { return problem("duplicate id \(entry.id): \(other) has it too", key: "id") }
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
            let values = [rule.symbol, rule.symbolAbsent, rule.moduleSymbol, rule.moduleString, rule.moduleParameter, rule.module, rule.config, rule.note]
            if values.contains(where: { $0?.trimmingCharacters(in: .whitespaces).isEmpty == true }) || rule.values?.contains("") == true {
                return problem("evidence[\(index)]: an empty value", key: "evidence")
            }
            if let version = rule.minimumVersion, !Self.isVersion(version) {
                return problem("evidence[\(index)]: \"\(version)\" is not a version (numbers joined by single dots, like 5.9)", key: "minimumVersion")
            }
            if let note = rule.note, !XenElfNoteType.allCases.contains(where: { $0.description == note }) {
                return problem("evidence[\(index)]: \"\(note)\" is not a Xen ELF note name (elfnote.h: ENTRY, PHYS32_ENTRY, …)", key: "note")
            }
        }
        return nil
    }
}

extension Catalogue {
    /// "5.9", "6.1.0": at least two numbers, single dots, nothing else.
    static func isVersion(_ text: String) -> Bool {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        return parts.count >= 2 && parts.allSatisfy { !$0.isEmpty && $0.allSatisfy(\.isASCII) && $0.allSatisfy(\.isNumber) }
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

/// Finds where a JSON text first goes wrong, with line, column and what: a small
/// recursive-descent check (RFC 8259) that also refuses trailing commas and duplicate keys.
/// Written here because no position-reporting JSON parser is among the packages we may use.
enum JSONSyntax {
    struct Problem: Equatable {
        let line: Int
        let column: Int
        let reason: String
    }

    static func check(_ text: String) -> Problem? {
        let bytes = Array(text.utf8)
        var i = 0
        struct Failure: Error {
            let at: Int
            let reason: String
        }
        func space() { while i < bytes.count, [0x20, 0x0A, 0x0D, 0x09].contains(bytes[i]) { i += 1 } }
        func describe() -> String { i < bytes.count ? "\"\(String(decoding: [bytes[i]], as: UTF8.self))\"" : "the end of the text" }
        func expect(_ c: UInt8, _ what: String) throws(Failure) {
            guard i < bytes.count, bytes[i] == c else { throw Failure(at: i, reason: "expected \(what), found \(describe())") }
            i += 1
        }
        func literal(_ word: String) throws(Failure) {
            let start = i
            for c in word.utf8 {
                guard i < bytes.count, bytes[i] == c else { throw Failure(at: start, reason: "expected a value, found \(describe())") }
                i += 1
            }
        }
        func string() throws(Failure) -> String {
            let start = i
            try expect(0x22, "a string")
            while i < bytes.count, bytes[i] != 0x22 {
                if bytes[i] == 0x5C { i += 1 }
                guard i < bytes.count, bytes[i] >= 0x20 else { throw Failure(at: i, reason: "a control character or the end inside a string") }
                i += 1
            }
            try expect(0x22, "the end of the string")
            return String(decoding: bytes[(start + 1)..<(i - 1)], as: UTF8.self)
        }
        func number() throws(Failure) {
            let start = i
            while i < bytes.count, "+-0123456789.eE".utf8.contains(bytes[i]) { i += 1 }
            guard i > start else { throw Failure(at: i, reason: "expected a value, found \(describe())") }
        }
        func value(_ depth: Int) throws(Failure) {
            guard depth < 64 else { throw Failure(at: i, reason: "nested deeper than 64 levels") }
            space()
            guard i < bytes.count else { throw Failure(at: i, reason: "expected a value, found the end of the text") }
            switch bytes[i] {
            case 0x7B:
                i += 1
                space()
                if i < bytes.count, bytes[i] == 0x7D {
                    i += 1
                    return
                }
                var keys = Set<String>()
                while true {
                    space()
                    let at = i
                    if i < bytes.count, bytes[i] == 0x7D { throw Failure(at: at, reason: "a trailing comma before \"}\"") }
                    let key = try string()
                    guard keys.insert(key).inserted else { throw Failure(at: at, reason: "duplicate key \"\(key)\"") }
                    space()
                    try expect(0x3A, "\":\"")
                    try value(depth + 1)
                    space()
                    if i < bytes.count, bytes[i] == 0x2C {
                        i += 1
                        continue
                    }
                    try expect(0x7D, "\",\" or \"}\"")
                    return
                }
            case 0x5B:
                i += 1
                space()
                if i < bytes.count, bytes[i] == 0x5D {
                    i += 1
                    return
                }
                while true {
                    space()
                    if i < bytes.count, bytes[i] == 0x5D { throw Failure(at: i, reason: "a trailing comma before \"]\"") }
                    try value(depth + 1)
                    space()
                    if i < bytes.count, bytes[i] == 0x2C {
                        i += 1
                        continue
                    }
                    try expect(0x5D, "\",\" or \"]\"")
                    return
                }
            case 0x22: _ = try string()
            case 0x74: try literal("true")
            case 0x66: try literal("false")
            case 0x6E: try literal("null")
            default: try number()
            }
        }
        do throws(Failure) {
            try value(0)
            space()
            if i < bytes.count { throw Failure(at: i, reason: "text after the end of the value") }
            return nil
        } catch {
            let before = bytes[..<min(error.at, bytes.count)]
            let line = before.filter { $0 == 0x0A }.count + 1
            let column = before.count - (before.lastIndex(of: 0x0A).map { $0 + 1 } ?? 0) + 1
            return Problem(line: line, column: column, reason: error.reason)
        }
    }
}
