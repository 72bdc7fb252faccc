import Foundation
import Testing

/// Package.swift's targets, read from its text: each `.target`, `.executableTarget`,
/// `.systemLibrary` and `.testTarget` with its name, path and the dependencies it names.
struct Manifest {
    struct Target {
        let kind: String
        let name: String
        let path: String?
        let dependencies: Set<String>
    }

    let targets: [Target]

    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    init() throws {
        let text = try String(contentsOf: Self.root.appendingPathComponent("Package.swift"), encoding: .utf8)
        var found: [Target] = []
        let kinds = [".target(", ".executableTarget(", ".systemLibrary(", ".testTarget("]
        var index = text.startIndex
        while index < text.endIndex {
            guard
                let (kind, range) = kinds.compactMap({ kind in text.range(of: kind, range: index..<text.endIndex).map { (kind, $0) } })
                    .min(by: { $0.1.lowerBound < $1.1.lowerBound })
            else { break }
            // The call's text, to its closing parenthesis.
            var depth = 1
            var end = range.upperBound
            while end < text.endIndex, depth > 0 {
                if text[end] == "(" { depth += 1 } else if text[end] == ")" { depth -= 1 }
                end = text.index(after: end)
            }
            let call = String(text[range.upperBound..<end])
            let name = try #require(Self.firstQuoted(after: "name:", in: call), "a target without a name in Package.swift: \(call.prefix(80))")
            var dependencies: Set<String> = []
            if let list = call.range(of: "dependencies:") {
                let rest = call[list.upperBound...]
                if let open = rest.firstIndex(of: "["), let close = Self.matchingBracket(rest, from: open) {
                    let body = String(rest[rest.index(after: open)..<close])
                    // Plain names and products (`.product(name: "Atomics", …)`).
                    let pattern = try Regex(#""([A-Za-z0-9_-]+)""#)
                    for match in body.matches(of: pattern) {
                        let before = body[..<match.range.lowerBound]
                        if before.hasSuffix("package: ") { continue }
                        dependencies.insert(String(match.output[1].substring ?? ""))
                    }
                }
            }
            found.append(Target(kind: kind, name: name, path: Self.firstQuoted(after: "path:", in: call), dependencies: dependencies))
            index = end
        }
        targets = found
    }

    static func firstQuoted(after label: String, in text: String) -> String? {
        guard let labelRange = text.range(of: label) else { return nil }
        let rest = text[labelRange.upperBound...]
        guard let open = rest.firstIndex(of: "\""), let close = rest[rest.index(after: open)...].firstIndex(of: "\"") else { return nil }
        return String(rest[rest.index(after: open)..<close])
    }

    static func matchingBracket(_ text: Substring, from open: Substring.Index) -> Substring.Index? {
        var depth = 0
        var index = open
        while index < text.endIndex {
            if text[index] == "[" {
                depth += 1
            } else if text[index] == "]" {
                depth -= 1
                if depth == 0 { return index }
            }
            index = text.index(after: index)
        }
        return nil
    }

    /// The library, system-library and executable targets whose sources are under `Sources/`.
    var sourceModules: [Target] {
        targets.filter { $0.kind != ".testTarget(" && ($0.path.map { $0.hasPrefix("Sources/") } ?? true) }
    }

    func target(_ name: String) -> Target? { targets.first { $0.name == name } }
}

@Suite("Package layout: the README's module table, the pure modules", .timeLimit(.minutes(1)))
struct PackageLayoutTests {
    /// Modules whose code is pure: no libc, no Foundation, no system module; they depend only on
    /// each other and on swift-atomics.
    static let pure: Set<String> = ["XenABI", "XenRing", "XenStoreWire", "XenStoredCore", "XenGrants", "PacketOffload", "NBDProtocol"]
    static let forbiddenImports: Set<String> = ["Glibc", "Musl", "Foundation", "FoundationEssentials", "Dispatch", "CLinux", "SystemPackage", "PVSystem"]

    /// The first column of README.md's table under "Modules — who imports what", and the
    /// dependencies column, by module.
    static func readmeTable() throws -> [String: Set<String>] {
        let readme = try String(contentsOf: Manifest.root.appendingPathComponent("README.md"), encoding: .utf8)
        let section = try #require(readme.range(of: "## Modules — who imports what"), "README.md has no module section")
        var rows: [String: Set<String>] = [:]
        for line in readme[section.upperBound...].split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("## ") { break }
            guard line.hasPrefix("| `") else { continue }
            let cells = line.split(separator: "|", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
            guard cells.count >= 4 else { continue }
            let names = cells[1].split(separator: "`", omittingEmptySubsequences: false).enumerated().filter { $0.offset % 2 == 1 }.map { String($0.element) }
            let uses =
                cells[3] == "—"
                ? [] : cells[3].split(separator: "`", omittingEmptySubsequences: false).enumerated().filter { $0.offset % 2 == 1 }.map { String($0.element) }
            for name in names { rows[name] = Set(uses) }
        }
        return rows
    }

    @Test("every module under Sources/ has a row in README.md's table, every row is a module, and its 'depends on' column is its Package.swift dependencies")
    func readmeModuleTable() throws {
        let manifest = try Manifest()
        let rows = try Self.readmeTable()
        let modules = Set(manifest.sourceModules.map(\.name))
        #expect(modules.subtracting(rows.keys).sorted() == [], "modules missing from README.md's table")
        #expect(Set(rows.keys).subtracting(modules).sorted() == [], "README.md rows that are no module of Package.swift")
        for target in manifest.sourceModules {
            guard let listed = rows[target.name] else { continue }
            let local = target.dependencies.filter { manifest.target($0) != nil }
            #expect(listed == local, "\(target.name): README.md says it depends on \(listed.sorted()), Package.swift on \(local.sorted())")
        }
    }

    @Test("pure modules import neither libc nor Foundation, and depend only on pure modules and swift-atomics")
    func pureModules() throws {
        let manifest = try Manifest()
        for name in Self.pure.sorted() {
            let target = try #require(manifest.target(name), "\(name) is no target of Package.swift")
            #expect(target.dependencies.subtracting(Self.pure).subtracting(["Atomics"]).sorted() == [], "\(name) depends on more than pure modules")
            let directory = Manifest.root.appendingPathComponent("Sources/\(name)")
            let files = try #require(FileManager.default.enumerator(atPath: directory.path)).compactMap { $0 as? String }.filter { $0.hasSuffix(".swift") }
            #expect(!files.isEmpty, "\(name) has no sources")
            for file in files {
                let text = try String(contentsOf: directory.appendingPathComponent(file), encoding: .utf8)
                for line in text.split(separator: "\n") {
                    let words = line.split(separator: " ")
                    guard let at = words.firstIndex(of: "import"), at + 1 < words.count else { continue }
                    guard words[..<at].allSatisfy({ $0.hasPrefix("@") || ["public", "internal", "package", "private", "fileprivate"].contains($0) }) else {
                        continue
                    }
                    let module = String(words[at + 1].split(separator: ".").first ?? "")
                    #expect(!Self.forbiddenImports.contains(module), "\(name)/\(file) imports \(module)")
                }
            }
        }
    }

    /// Where `@unchecked Sendable` may appear at most (issue 18: under 15 in all).
    static let uncheckedLimit = 14

    @Test("every @unchecked Sendable in Sources, Tests and Benchmarks gives its reason on the line, and there are at most 14")
    func uncheckedSendable() throws {
        var found: [String] = []
        for folder in ["Sources", "Tests", "Benchmarks"] {
            let directory = Manifest.root.appendingPathComponent(folder)
            let files = try #require(FileManager.default.enumerator(atPath: directory.path)).compactMap { $0 as? String }.filter { $0.hasSuffix(".swift") }
            for file in files {
                let text = try String(contentsOf: directory.appendingPathComponent(file), encoding: .utf8)
                for (number, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() where line.contains("@unchecked Sendable") {
                    // A declaration that claims it (not a comment or a string that names it).
                    let code = line.split(separator: "//", maxSplits: 1).first ?? ""
                    let modifiers: Set<Substring> = ["public", "private", "fileprivate", "internal", "package", "final", "open"]
                    let keyword = code.split(separator: " ").first { !modifiers.contains($0) }
                    guard code.contains("@unchecked Sendable"), let keyword, ["class", "struct", "enum", "extension", "actor"].contains(keyword) else {
                        continue
                    }
                    found.append("\(folder)/\(file):\(number + 1)")
                    #expect(line.contains("// @unchecked: "), "\(folder)/\(file):\(number + 1) claims Sendable without its reason on the line")
                }
            }
        }
        #expect(!found.isEmpty, "the scan found the known uses")
        #expect(
            found.count <= Self.uncheckedLimit, "\(found.count) uses of @unchecked Sendable (at most \(Self.uncheckedLimit)): \(found.joined(separator: ", "))")
    }
}
