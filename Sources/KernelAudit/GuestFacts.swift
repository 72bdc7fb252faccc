import Foundation
import GuestFiles

/// What a guest root says about how it boots and finds its disks and network: the facts the
/// migration checks read, each with the file and line it came from.
public struct GuestInfo: Sendable, Codable {
    /// The root as read: a directory, or "image, partition N (type)".
    public var root: String
    /// The disk image it came from, when it did.
    public var image: DiskImageInfo?
    /// `PRETTY_NAME` of `/etc/os-release`.
    public var os: String?
    public var fstab: [FstabEntry] = []
    /// `/etc/crypttab`: name and device of each line.
    public var crypttab: [FstabEntry] = []
    /// The boot loader's entries, in menu order.
    public var bootEntries: [BootEntry] = []
    /// The boot loader configuration that was read.
    public var bootLoaderConfig: String?
    /// Index into ``bootEntries`` of the entry the loader boots by default.
    public var defaultEntry: Int?
    /// `GRUB_CMDLINE_LINUX` and `GRUB_CMDLINE_LINUX_DEFAULT` of `/etc/default/grub`.
    public var grubDefaults: String?
    /// Getty units enabled for a terminal (`ttyS0`, `tty1`, `hvc0`) and `/etc/inittab` gettys.
    public var gettys: [String] = []
    /// systemd's getty generator is installed: it starts a getty on hvc0 (and the kernel's
    /// `console=`) by itself.
    public var hasGettyGenerator: Bool = false
    /// Network configuration tied to an interface name or a MAC address.
    public var network: [NetworkReference] = []
    /// `/etc/initramfs-tools/initramfs.conf`'s `MODULES=`, when set.
    public var initramfsToolsModules: String?
    /// Which initramfs builders are installed (their configuration exists).
    public var installedBuilders: [InitramfsBuilder] = []
    /// Anything pvcheck could not read, with why.
    public var notes: [String] = []
}

extension GuestInfo {
    /// Reads a guest root's boot and device facts.
    public static func read(_ root: GuestRoot) -> GuestInfo { GuestFacts.read(root) }
}

/// The image a guest root came from.
public struct DiskImageInfo: Sendable, Codable {
    public var path: String
    public var format: DiskImage.Format
    public var virtualSize: UInt64
    public var partitionTable: String?
    public var partitions: [DiskPartition]
    /// The partition holding `/`.
    public var rootPartition: Int
    /// Other partitions mounted where the guest's fstab mounts them.
    public var mounts: [String]
    /// Bytes of the virtual disk read for the whole audit.
    public var bytesRead: UInt64?
}

/// One boot loader entry.
public struct BootEntry: Sendable, Codable, Equatable {
    public var title: String
    /// The kernel path as the loader names it (relative to the partition it reads).
    public var kernel: String
    public var initrd: String?
    public var commandLine: String
    /// The file and line of its `linux` line.
    public var source: String
}

/// A line of network configuration that names an interface or a MAC address.
public struct NetworkReference: Sendable, Codable, Equatable {
    public var file: String
    public var line: Int
    /// The interface name it names, when it names one (a pattern when it has `*`).
    public var interface: String?
    /// The MAC address it is tied to, when it is.
    public var mac: String?
    /// What the line is, for people: "ifupdown iface eth0", "netplan match macaddress".
    public var kind: String
}

/// Reads a guest root's boot and device facts.
enum GuestFacts {
    static func read(_ root: GuestRoot) -> GuestInfo {
        var info = GuestInfo(root: root.description)
        if let text = root.text(of: "/etc/os-release") ?? root.text(of: "/usr/lib/os-release") {
            info.os = keyValues(text)["PRETTY_NAME"]
        }
        info.fstab = FstabEntry.parse(root.text(of: "/etc/fstab") ?? "")
        // crypttab: name device keyfile options; keep the device in the device field.
        info.crypttab = FstabEntry.parse(root.text(of: "/etc/crypttab") ?? "").map {
            FstabEntry(device: $0.mountPoint, mountPoint: $0.device, type: "crypt", options: $0.options, line: $0.line)
        }
        readBootLoader(root, into: &info)
        if let text = root.text(of: "/etc/default/grub") {
            let values = keyValues(text)
            let line = [values["GRUB_CMDLINE_LINUX"], values["GRUB_CMDLINE_LINUX_DEFAULT"]].compactMap { $0 }.joined(separator: " ")
            info.grubDefaults = line.trimmingCharacters(in: .whitespaces)
        }
        info.gettys = gettys(root)
        info.hasGettyGenerator = ["/lib/systemd/system-generators/systemd-getty-generator", "/usr/lib/systemd/system-generators/systemd-getty-generator"]
            .contains { root.isFile($0) }
        info.network = networkReferences(root)
        if let conf = root.text(of: "/etc/initramfs-tools/initramfs.conf") { info.initramfsToolsModules = keyValues(conf)["MODULES"] }
        if root.isFile("/etc/initramfs-tools/initramfs.conf") || root.isFile("/usr/sbin/mkinitramfs") { info.installedBuilders.append(.initramfsTools) }
        if root.isFile("/etc/dracut.conf") || root.isDirectory("/etc/dracut.conf.d") || root.isFile("/usr/bin/dracut") {
            info.installedBuilders.append(.dracut)
        }
        if root.isFile("/etc/mkinitcpio.conf") { info.installedBuilders.append(.mkinitcpio) }
        return info
    }

    /// `KEY=value` and `KEY="value"` lines (os-release, /etc/default/grub, initramfs.conf).
    static func keyValues(_ text: String) -> [String: String] {
        var values: [String: String] = [:]
        for line in text.split(separator: "\n") {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            guard !trimmed.hasPrefix("#"), let equals = trimmed.firstIndex(of: "=") else { continue }
            var value = String(trimmed[trimmed.index(after: equals)...])
            if value.count >= 2, let first = value.first, first == "\"" || first == "'", value.last == first { value = String(value.dropFirst().dropLast()) }
            values[String(trimmed[..<equals])] = value
        }
        return values
    }

    // MARK: boot loaders

    static func readBootLoader(_ root: GuestRoot, into info: inout GuestInfo) {
        for path in ["/boot/grub/grub.cfg", "/boot/grub2/grub.cfg", "/grub/grub.cfg", "/grub2/grub.cfg"] {
            guard let text = root.text(of: path, limit: 4 << 20) else { continue }
            let parsed = parseGrub(text, file: path)
            guard !parsed.entries.isEmpty else { continue }
            info.bootLoaderConfig = path
            info.bootEntries = parsed.entries
            info.defaultEntry = defaultIndex(parsed.defaultValue, entries: parsed.entries, ids: parsed.ids, root: root)
            return
        }
        if let names = root.names(in: "/boot/loader/entries") {
            var entries: [BootEntry] = []
            for name in names where name.hasSuffix(".conf") {
                let path = "/boot/loader/entries/" + name
                guard let text = root.text(of: path) else { continue }
                var entry = BootEntry(title: name, kernel: "", initrd: nil, commandLine: "", source: path)
                for (index, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
                    let parts = line.split(separator: " ", maxSplits: 1).map(String.init)
                    guard parts.count == 2 else { continue }
                    switch parts[0] {
                    case "title": entry.title = parts[1]
                    case "linux":
                        entry.kernel = parts[1]
                        entry.source = "\(path) line \(index + 1)"
                    case "initrd": entry.initrd = parts[1]
                    case "options": entry.commandLine = parts[1]
                    default: break
                    }
                }
                if !entry.kernel.isEmpty { entries.append(entry) }
            }
            if !entries.isEmpty {
                info.bootLoaderConfig = "/boot/loader/entries"
                // Newest version first, as the BLS sort puts it.
                info.bootEntries = entries.sorted { $0.kernel.compare($1.kernel, options: .numeric) == .orderedDescending }
                info.defaultEntry = 0
                return
            }
        }
        for path in ["/boot/extlinux/extlinux.conf", "/extlinux/extlinux.conf", "/boot/syslinux/syslinux.cfg"] {
            guard let text = root.text(of: path) else { continue }
            var entries: [BootEntry] = [], defaultLabel: String? = nil
            for (index, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
                let parts = line.trimmingCharacters(in: .whitespaces).split(separator: " ", maxSplits: 1).map(String.init)
                guard parts.count == 2 else { continue }
                switch parts[0].lowercased() {
                case "default": defaultLabel = parts[1]
                case "label": entries.append(BootEntry(title: parts[1], kernel: "", initrd: nil, commandLine: "", source: path))
                case "kernel", "linux":
                    if !entries.isEmpty {
                        entries[entries.count - 1].kernel = parts[1]
                        entries[entries.count - 1].source = "\(path) line \(index + 1)"
                    }
                case "append": if !entries.isEmpty { entries[entries.count - 1].commandLine = parts[1] }
                case "initrd": if !entries.isEmpty { entries[entries.count - 1].initrd = parts[1] }
                default: break
                }
            }
            entries.removeAll { $0.kernel.isEmpty }
            guard !entries.isEmpty else { continue }
            info.bootLoaderConfig = path
            info.bootEntries = entries
            info.defaultEntry = defaultLabel.flatMap { label in entries.firstIndex { $0.title == label } } ?? 0
            return
        }
        for path in ["/boot/grub/menu.lst", "/boot/grub/grub.conf", "/grub/menu.lst"] {
            guard let text = root.text(of: path) else { continue }
            var entries: [BootEntry] = [], defaultValue = 0
            for (index, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
                // `key value` or `key=value`; the value keeps its own `=` (kernel parameters).
                let trimmed = line.trimmingCharacters(in: .whitespaces)
                guard let end = trimmed.firstIndex(where: { $0 == " " || $0 == "\t" || $0 == "=" }) else { continue }
                let key = String(trimmed[..<end])
                let rest = trimmed[end...].drop { $0 == " " || $0 == "\t" || $0 == "=" }.trimmingCharacters(in: .whitespaces)
                let parts = [key] + rest.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
                switch key {
                case "default": defaultValue = Int(rest) ?? 0
                case "title": entries.append(BootEntry(title: rest, kernel: "", initrd: nil, commandLine: "", source: path))
                case "kernel":
                    guard !entries.isEmpty, parts.count >= 2 else { continue }
                    entries[entries.count - 1].kernel = parts[1]
                    entries[entries.count - 1].commandLine = parts.dropFirst(2).joined(separator: " ")
                    entries[entries.count - 1].source = "\(path) line \(index + 1)"
                case "initrd": if !entries.isEmpty, parts.count >= 2 { entries[entries.count - 1].initrd = parts[1] }
                default: break
                }
            }
            entries.removeAll { $0.kernel.isEmpty }
            guard !entries.isEmpty else { continue }
            info.bootLoaderConfig = path
            info.bootEntries = entries
            info.defaultEntry = defaultValue < entries.count ? defaultValue : 0
            return
        }
    }

    /// grub.cfg's menu entries (top level, then those in submenus, as "Advanced options>…"),
    /// and its `set default=` value.
    static func parseGrub(_ text: String, file: String) -> (entries: [BootEntry], defaultValue: String?, ids: [String?]) {
        var entries: [BootEntry] = [], ids: [String?] = []
        var defaultValue: String? = nil
        var stack: [(title: String, isEntry: Bool)] = []
        var current: BootEntry? = nil, currentID: String? = nil
        for (index, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.hasPrefix("set default=") {
                var value = String(line.dropFirst("set default=".count))
                if value.hasPrefix("\""), value.hasSuffix("\""), value.count >= 2 { value = String(value.dropFirst().dropLast()) }
                if defaultValue == nil { defaultValue = value }
            } else if line.hasPrefix("menuentry ") || line.hasPrefix("submenu ") {
                let title = quoted(line) ?? "?"
                let isEntry = line.hasPrefix("menuentry ")
                let menu = stack.filter { !$0.isEntry }.map(\.title)
                if isEntry {
                    current = BootEntry(title: (menu + [title]).joined(separator: ">"), kernel: "", initrd: nil, commandLine: "", source: file)
                    currentID = line.range(of: "$menuentry_id_option '").map { range in
                        String(line[range.upperBound...].prefix { $0 != "'" })
                    }
                }
                if line.hasSuffix("{") { stack.append((title, isEntry)) }
            } else if line == "}" {
                if let last = stack.popLast(), last.isEntry, let entry = current {
                    if !entry.kernel.isEmpty {
                        entries.append(entry)
                        ids.append(currentID)
                    }
                    current = nil
                }
            } else if current != nil, line.hasPrefix("linux") || line.hasPrefix("linuxefi") || line.hasPrefix("linux16") {
                let parts = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
                guard parts.count >= 2 else { continue }
                current!.kernel = parts[1]
                current!.commandLine = parts.dropFirst(2).joined(separator: " ")
                current!.source = "\(file) line \(index + 1)"
            } else if current != nil, line.hasPrefix("initrd") {
                let parts = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
                if parts.count >= 2 { current!.initrd = parts[1] }
            }
        }
        return (entries, defaultValue, ids)
    }

    static func quoted(_ line: String) -> String? {
        guard let open = line.firstIndex(where: { $0 == "'" || $0 == "\"" }) else { return nil }
        let quote = line[open]
        let rest = line[line.index(after: open)...]
        guard let close = rest.firstIndex(of: quote) else { return nil }
        return String(rest[..<close])
    }

    static func defaultIndex(_ value: String?, entries: [BootEntry], ids: [String?], root: GuestRoot) -> Int {
        var value = value ?? "0"
        if value == "${saved_entry}" || value == "saved" {
            let env = root.text(of: "/boot/grub/grubenv") ?? root.text(of: "/boot/grub2/grubenv") ?? ""
            value = keyValues(env)["saved_entry"] ?? "0"
        }
        if let number = Int(value) { return number < entries.count ? number : 0 }
        if let byID = ids.firstIndex(where: { $0 == value }) { return byID }
        if let byTitle = entries.firstIndex(where: { $0.title == value || $0.title.hasSuffix(">" + value) }) { return byTitle }
        return 0
    }

    // MARK: consoles and network

    static func gettys(_ root: GuestRoot) -> [String] {
        var found: [String] = []
        for directory in ["/etc/systemd/system/getty.target.wants", "/etc/systemd/system/multi-user.target.wants"] {
            for name in root.names(in: directory) ?? [] {
                for prefix in ["serial-getty@", "getty@", "console-getty"] where name.hasPrefix(prefix) {
                    let terminal = name.dropFirst(prefix.count).replacingOccurrences(of: ".service", with: "")
                    found.append(terminal.isEmpty ? "console" : terminal)
                }
            }
        }
        for line in (root.text(of: "/etc/inittab") ?? "").split(separator: "\n") where !line.hasPrefix("#") && line.contains("getty") {
            if let terminal = line.split(separator: " ").first(where: { $0.hasPrefix("tty") || $0.hasPrefix("hvc") || $0.hasPrefix("xvc") }) {
                found.append(String(terminal))
            }
        }
        return Array(Set(found)).sorted()
    }

    static func networkReferences(_ root: GuestRoot) -> [NetworkReference] {
        var references: [NetworkReference] = []
        func lines(_ path: String) -> [(Int, String)] {
            (root.text(of: path) ?? "").split(separator: "\n", omittingEmptySubsequences: false).enumerated().map {
                ($0.offset + 1, $0.element.trimmingCharacters(in: .whitespaces))
            }
        }
        func files(_ directory: String, _ suffix: String = "") -> [String] {
            (root.names(in: directory) ?? []).filter { suffix.isEmpty || $0.hasSuffix(suffix) }.map { directory + "/" + $0 }
        }
        // ifupdown
        for path in ["/etc/network/interfaces"] + files("/etc/network/interfaces.d") {
            for (number, line) in lines(path) {
                let words = line.split(separator: " ").map(String.init)
                guard words.count >= 2, ["auto", "allow-hotplug", "iface"].contains(words[0]), words[1] != "lo" else { continue }
                references.append(NetworkReference(file: path, line: number, interface: words[1], mac: nil, kind: "ifupdown \(words[0]) \(words[1])"))
            }
        }
        // netplan: interface keys under ethernets:, macaddress: matches.
        for path in files("/etc/netplan", ".yaml") {
            var inEthernets = false, keyIndent: Int? = nil
            for (number, raw) in (root.text(of: path) ?? "").split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
                let indent = raw.prefix { $0 == " " }.count
                let line = raw.trimmingCharacters(in: .whitespaces)
                if line.isEmpty || line.hasPrefix("#") { continue }
                if line == "ethernets:" {
                    inEthernets = true
                    keyIndent = nil
                    continue
                }
                guard inEthernets else { continue }
                if let keyIndent, indent < keyIndent, line.hasSuffix(":") && indent <= keyIndent - 2 { inEthernets = false }
                if keyIndent == nil { keyIndent = indent }
                if indent == keyIndent, line.hasSuffix(":") {
                    let name = String(line.dropLast())
                    references.append(NetworkReference(file: path, line: number + 1, interface: name, mac: nil, kind: "netplan ethernets \(name)"))
                } else if line.hasPrefix("macaddress:") {
                    let mac = line.dropFirst("macaddress:".count).trimmingCharacters(in: CharacterSet(charactersIn: " \"'"))
                    references.append(NetworkReference(file: path, line: number + 1, interface: nil, mac: mac, kind: "netplan match macaddress"))
                } else if line.hasPrefix("name:") {
                    let name = line.dropFirst("name:".count).trimmingCharacters(in: CharacterSet(charactersIn: " \"'"))
                    references.append(NetworkReference(file: path, line: number + 1, interface: name, mac: nil, kind: "netplan match name"))
                }
            }
        }
        // systemd-networkd and .link files
        for path in files("/etc/systemd/network", ".network") + files("/etc/systemd/network", ".link") {
            for (number, line) in lines(path) {
                if line.hasPrefix("Name=") {
                    for name in line.dropFirst(5).split(separator: " ") {
                        references.append(NetworkReference(file: path, line: number, interface: String(name), mac: nil, kind: "systemd-networkd Name=\(name)"))
                    }
                } else if line.hasPrefix("MACAddress=") {
                    references.append(
                        NetworkReference(file: path, line: number, interface: nil, mac: String(line.dropFirst(11)), kind: "systemd-networkd MACAddress="))
                }
            }
        }
        // NetworkManager and RHEL ifcfg
        for path in files("/etc/NetworkManager/system-connections") + files("/etc/sysconfig/network-scripts").filter({ $0.contains("/ifcfg-") }) {
            for (number, line) in lines(path) {
                for key in ["interface-name=", "DEVICE="] where line.hasPrefix(key) {
                    let name = line.dropFirst(key.count).trimmingCharacters(in: CharacterSet(charactersIn: "\"'"))
                    if name != "lo" { references.append(NetworkReference(file: path, line: number, interface: name, mac: nil, kind: "\(key)\(name)")) }
                }
                for key in ["mac-address=", "HWADDR="] where line.hasPrefix(key) {
                    let mac = line.dropFirst(key.count).trimmingCharacters(in: CharacterSet(charactersIn: "\"'"))
                    references.append(NetworkReference(file: path, line: number, interface: nil, mac: mac, kind: "\(key)"))
                }
            }
        }
        // udev's persistent names: a MAC pinned to a name.
        for path in ["/etc/udev/rules.d/70-persistent-net.rules"] {
            for (number, line) in lines(path) where !line.hasPrefix("#") && line.contains("ATTR{address}") {
                let mac = line.components(separatedBy: "ATTR{address}==\"").dropFirst().first?.prefix { $0 != "\"" }
                let name = line.components(separatedBy: "NAME=\"").dropFirst().first?.prefix { $0 != "\"" }
                references.append(
                    NetworkReference(file: path, line: number, interface: name.map(String.init), mac: mac.map(String.init), kind: "udev persistent name"))
            }
        }
        return references
    }
}
