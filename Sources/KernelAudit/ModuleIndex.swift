import CKmod
import Foundation

/// The xenbus frontends pvcheck looks for: the alias a frontend driver declares, and the
/// config option that builds it.
public enum XenFrontend: String, Sendable, Codable, CaseIterable {
    case vbd, vif, vscsi, pci, vkbd, vfb, p9 = "9pfs", vtpm, vdispl, vsnd, console

    /// The module alias the driver carries (`xen:<type>`).
    public var alias: String { "xen:\(rawValue)" }

    /// The Kconfig option that builds the driver.
    public var configOption: String {
        switch self {
        case .vbd: "CONFIG_XEN_BLKDEV_FRONTEND"
        case .vif: "CONFIG_XEN_NETDEV_FRONTEND"
        case .vscsi: "CONFIG_XEN_SCSI_FRONTEND"
        case .pci: "CONFIG_XEN_PCIDEV_FRONTEND"
        case .vkbd: "CONFIG_INPUT_XEN_KBDDEV_FRONTEND"
        case .vfb: "CONFIG_XEN_FBDEV_FRONTEND"
        case .p9: "CONFIG_NET_9P_XEN"
        case .vtpm: "CONFIG_TCG_XEN"
        case .vdispl: "CONFIG_DRM_XEN_FRONTEND"
        case .vsnd: "CONFIG_SND_XEN_FRONTEND"
        case .console: "CONFIG_HVC_XEN_FRONTEND"
        }
    }

    /// What the device is, for people.
    public var purpose: String {
        switch self {
        case .vbd: "block devices (xvd*)"
        case .vif: "network interfaces"
        case .vscsi: "PV SCSI"
        case .pci: "PCI passthrough"
        case .vkbd: "keyboard and mouse"
        case .vfb: "framebuffer"
        case .p9: "9pfs shared folders"
        case .vtpm: "virtual TPM"
        case .vdispl: "display"
        case .vsnd: "sound"
        case .console: "secondary consoles"
        }
    }
}

/// How a frontend is present in a kernel.
public struct FrontendPresence: Sendable, Codable, Equatable {
    public enum State: String, Sendable, Codable { case builtIn = "built-in", module, absent, unknown }
    public let frontend: XenFrontend
    public let state: State
    /// The module name (`xen_blkfront`) when known.
    public let module: String?
    /// The module file, relative to the module directory, when it is one.
    public let file: String?
    /// How this was decided.
    public let evidence: String
}

/// A module tree (`lib/modules/<version>`) read through libkmod: depmod's indexes when present,
/// otherwise the modinfo of the module files themselves and `modules.builtin.modinfo`.
final class ModuleIndex {
    let directory: String
    private let context: OpaquePointer

    /// False for a copy of a tree's indexes without its module files (from a disk image):
    /// dependencies then come from `modules.dep` itself, as libkmod would need the files.
    let hasModuleFiles: Bool

    init?(directory: String, hasModuleFiles: Bool = true) {
        self.hasModuleFiles = hasModuleFiles
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue,
            let context = kmod_new(directory, nil)
        else { return nil }
        self.directory = directory
        self.context = context
        // Without the files, libkmod reports each dependency it cannot stat: expected here.
        if !hasModuleFiles { kmod_set_log_priority(context, 0) }
    }

    deinit { kmod_unref(context) }

    /// Built-in modules' aliases from `modules.builtin.modinfo` ("module.key=value\0" records).
    lazy var builtinAliases: [String: String] = {
        guard let data = FileManager.default.contents(atPath: directory + "/modules.builtin.modinfo") else { return [:] }
        var aliases: [String: String] = [:]
        for record in data.split(separator: 0) {
            let text = String(decoding: record, as: UTF8.self)
            guard let dot = text.firstIndex(of: "."), text[text.index(after: dot)...].hasPrefix("alias=") else { continue }
            let module = String(text[..<dot])
            let alias = String(text[text.index(dot, offsetBy: 7)...])
            aliases[alias] = module
        }
        return aliases
    }()

    var hasDepmodIndex: Bool { FileManager.default.fileExists(atPath: directory + "/modules.alias.bin") }

    /// Module files (relative paths) whose name mentions "xen", any compression. Taken from
    /// `modules.order` when the tree has it (a line per module, far cheaper than walking
    /// thousands of files), else found by walking `kernel/`, `updates/` and `extra/`.
    lazy var xenModuleFiles: [String] = {
        let suffixes = ["", ".xz", ".zst", ".gz"]
        if let order = FileManager.default.contents(atPath: directory + "/modules.order") {
            var files: [String] = []
            for line in order.split(separator: UInt8(ascii: "\n")) {
                let path = String(decoding: line, as: UTF8.self)
                guard moduleName(fromPath: path).contains("xen") else { continue }
                let base = path.hasSuffix(".o") ? String(path.dropLast(2)) + ".ko" : path
                if let found = suffixes.lazy.map({ base + $0 }).first(where: { access(self.directory + "/" + $0, F_OK) == 0 }) {
                    files.append(found)
                }
            }
            if !files.isEmpty { return files }
        }
        var files: [String] = []
        for top in ["kernel", "updates", "extra"] {
            guard let walker = FileManager.default.enumerator(atPath: directory + "/" + top) else { continue }
            while let path = walker.nextObject() as? String {
                if suffixes.contains(where: { path.hasSuffix(".ko" + $0) }), moduleName(fromPath: path).contains("xen") {
                    files.append(top + "/" + path)
                }
            }
        }
        return files.sorted()
    }()

    /// The file of a module by name (`xen_blkfront`), among the xen module files or via depmod.
    func file(ofModule name: String) -> String? {
        if hasDepmodIndex, let found = lookupByName(name) { return found }
        return xenModuleFiles.first { moduleName(fromPath: $0) == name }
    }

    private func lookupByName(_ name: String) -> String? {
        var module: OpaquePointer? = nil
        guard kmod_module_new_from_name(context, name, &module) == 0, let module else { return nil }
        defer { kmod_module_unref(module) }
        guard let path = kmod_module_get_path(module) else { return nil }
        var file = String(cString: path)
        if file.hasPrefix(directory + "/") { file.removeFirst(directory.count + 1) }
        return file
    }

    /// modinfo `key` values of a module file (`parm`, `alias`, …), read by libkmod.
    func info(ofFile relative: String, key: String) -> [String] {
        var module: OpaquePointer? = nil
        guard kmod_module_new_from_path(context, directory + "/" + relative, &module) == 0, let module else { return [] }
        defer { kmod_module_unref(module) }
        var list: OpaquePointer? = nil
        guard kmod_module_get_info(module, &list) >= 0 else { return [] }
        defer { kmod_module_info_free_list(list) }
        var values: [String] = []
        var entry = list
        while let current = entry {
            if let k = kmod_module_info_get_key(current), String(cString: k) == key, let value = kmod_module_info_get_value(current) {
                values.append(String(cString: value))
            }
            entry = kmod_list_next(list, current)
        }
        return values
    }

    /// A module file's bytes, decompressed when it is .xz/.zst/.gz.
    func contents(ofFile relative: String, limits: DecompressionLimits) -> ImageBuffer? {
        guard let file = try? ImageFile.read(path: directory + "/" + relative) else { return nil }
        guard let format = CompressionFormat.detect(ByteView(bytes: file.bytes)) else { return file }
        return (try? Decompressor.decompress(file.bytes, format: format, at: 0, limits: limits))?.output
    }

    /// Aliases of one module file, read by libkmod from its `.modinfo` (compressed or not).
    func aliases(ofFile relative: String) -> [String] { info(ofFile: relative, key: "alias") }

    /// Resolves one alias through depmod's index (`modules.alias.bin`, `modules.builtin.alias.bin`).
    func lookup(_ alias: String) -> (module: String, file: String?)? {
        var list: OpaquePointer? = nil
        guard kmod_module_new_from_lookup(context, alias, &list) >= 0, let list else { return nil }
        defer { kmod_module_unref_list(list) }
        guard let module = kmod_module_get_module(list) else { return nil }
        defer { kmod_module_unref(module) }
        let name = String(cString: kmod_module_get_name(module))
        guard let path = kmod_module_get_path(module) else { return (name, nil) }
        var file = String(cString: path)
        if file.hasPrefix(directory + "/") { file.removeFirst(directory.count + 1) }
        return (name, file)
    }

    /// Where a module is in this tree: built in (`modules.builtin`), a file, or absent. Names
    /// are exact (`nvme` is never `nvmem`); `-` and `_` are the same, as for modprobe.
    enum ModuleLocation: Equatable {
        case builtIn
        case file(String)
        case absent
    }

    func location(ofModule given: String) -> ModuleLocation {
        let name = given.replacingOccurrences(of: "-", with: "_")
        if hasDepmodIndex {
            var list: OpaquePointer? = nil
            guard kmod_module_new_from_lookup(context, name, &list) >= 0, let list else { return .absent }
            defer { kmod_module_unref_list(list) }
            var entry: OpaquePointer? = list
            while let current = entry {
                if let module = kmod_module_get_module(current) {
                    defer { kmod_module_unref(module) }
                    // A lookup of a name may also match an alias of another module: only the module itself counts.
                    if String(cString: kmod_module_get_name(module)) == name {
                        guard let path = kmod_module_get_path(module) else { return .builtIn }
                        var file = String(cString: path)
                        if file.hasPrefix(directory + "/") { file.removeFirst(directory.count + 1) }
                        return .file(file)
                    }
                }
                entry = kmod_list_next(list, current)
            }
            return .absent
        }
        if builtinNames.contains(name) { return .builtIn }
        return allModuleFiles[name].map { .file($0) } ?? .absent
    }

    /// The modules `name` needs loaded first, and theirs, from `modules.dep` (or each file's
    /// modinfo `depends` when the tree has no index), in no particular order.
    func dependencies(ofModule given: String) -> Set<String> {
        var seen = Set<String>()
        var pending = [given.replacingOccurrences(of: "-", with: "_")]
        while let name = pending.popLast() {
            for dependency in directDependencies(name) where !seen.contains(dependency) {
                seen.insert(dependency)
                pending.append(dependency)
            }
        }
        seen.remove(given.replacingOccurrences(of: "-", with: "_"))
        return seen
    }

    private func directDependencies(_ name: String) -> [String] {
        guard case .file(let file) = location(ofModule: name) else { return [] }
        if !hasModuleFiles { return depFile[file] ?? [] }
        if hasDepmodIndex {
            var module: OpaquePointer? = nil
            guard kmod_module_new_from_name(context, name, &module) == 0, let module else { return [] }
            defer { kmod_module_unref(module) }
            guard let list = kmod_module_get_dependencies(module) else { return [] }
            defer { kmod_module_unref_list(list) }
            var names: [String] = []
            var entry: OpaquePointer? = list
            while let current = entry {
                if let dependency = kmod_module_get_module(current) {
                    names.append(String(cString: kmod_module_get_name(dependency)))
                    kmod_module_unref(dependency)
                }
                entry = kmod_list_next(list, current)
            }
            return names
        }
        return info(ofFile: file, key: "depends").flatMap { $0.split(separator: ",").map { String($0) } }
    }

    /// `modules.dep`: module file → the names of the modules it depends on.
    lazy var depFile: [String: [String]] = {
        guard let data = FileManager.default.contents(atPath: directory + "/modules.dep") else { return [:] }
        var lines: [String: [String]] = [:]
        for line in data.split(separator: UInt8(ascii: "\n")) {
            guard let colon = line.firstIndex(of: UInt8(ascii: ":")) else { continue }
            let file = String(decoding: line[..<colon], as: UTF8.self)
            lines[file] = line[line.index(after: colon)...].split(separator: UInt8(ascii: " ")).map {
                moduleName(fromPath: String(decoding: $0, as: UTF8.self))
            }
        }
        return lines
    }()

    /// `modules.builtin`'s names (one `kernel/…/name.ko` per line).
    lazy var builtinNames: Set<String> = {
        guard let data = FileManager.default.contents(atPath: directory + "/modules.builtin") else { return [] }
        return Set(data.split(separator: UInt8(ascii: "\n")).map { moduleName(fromPath: String(decoding: $0, as: UTF8.self)) })
    }()

    /// Every module file of the tree by name, from `modules.order` or a walk.
    lazy var allModuleFiles: [String: String] = {
        var files: [String: String] = [:]
        for top in ["kernel", "updates", "extra"] {
            guard let walker = FileManager.default.enumerator(atPath: directory + "/" + top) else { continue }
            while let path = walker.nextObject() as? String {
                if [".ko", ".ko.xz", ".ko.zst", ".ko.gz"].contains(where: { path.hasSuffix($0) }) {
                    files[moduleName(fromPath: path)] = top + "/" + path
                }
            }
        }
        return files
    }()

    /// Resolves every frontend: through depmod's index when the tree has one, else from the
    /// modinfo of the module files themselves. In that case only files whose name mentions
    /// "xen" are opened (every Xen frontend's does), which keeps a 4000-module tree fast.
    func resolve() -> [FrontendPresence] {
        if hasDepmodIndex {
            return XenFrontend.allCases.map { frontend in
                guard let found = lookup(frontend.alias) else {
                    return FrontendPresence(
                        frontend: frontend, state: .absent, module: nil, file: nil,
                        evidence: "depmod's index in \(directory) has no module for \(frontend.alias)")
                }
                guard let file = found.file else {
                    return FrontendPresence(
                        frontend: frontend, state: .builtIn, module: found.module, file: nil,
                        evidence: "depmod's index maps \(frontend.alias) to built-in \(found.module)")
                }
                return FrontendPresence(
                    frontend: frontend, state: .module, module: found.module, file: file,
                    evidence: "depmod's index maps \(frontend.alias) to \(file)")
            }
        }
        var byAlias: [String: (module: String, file: String)] = [:]
        let candidates = xenModuleFiles
        for file in candidates {
            for alias in aliases(ofFile: file) where alias.hasPrefix("xen:") {
                byAlias[alias] = (moduleName(fromPath: file), file)
            }
        }
        return XenFrontend.allCases.map { frontend in
            if let module = builtinAliases[frontend.alias] {
                return FrontendPresence(
                    frontend: frontend, state: .builtIn, module: module, file: nil,
                    evidence: "\(module).alias=\(frontend.alias) in modules.builtin.modinfo")
            }
            if let found = byAlias[frontend.alias] {
                return FrontendPresence(
                    frontend: frontend, state: .module, module: found.module, file: found.file,
                    evidence: "alias \(frontend.alias) in the modinfo of \(found.file)")
            }
            return FrontendPresence(
                frontend: frontend, state: .absent, module: nil, file: nil,
                evidence:
                    "no module in \(directory) declares \(frontend.alias) (\(candidates.count) xen module files read, modules.builtin.modinfo \(builtinAliases.isEmpty ? "absent" : "read"))"
            )
        }
    }
}

/// `kernel/drivers/block/xen-blkfront.ko.xz` → `xen_blkfront`.
func moduleName(fromPath path: String) -> String {
    var name = path.utf8.split(separator: UInt8(ascii: "/")).last.map { Array($0) } ?? Array(path.utf8)
    for suffix in [".xz", ".zst", ".gz", ".ko"] where name.count > suffix.utf8.count && name.suffix(suffix.utf8.count).elementsEqual(suffix.utf8) {
        name.removeLast(suffix.utf8.count)
    }
    return String(decoding: name.map { $0 == UInt8(ascii: "-") ? UInt8(ascii: "_") : $0 }, as: UTF8.self)
}
