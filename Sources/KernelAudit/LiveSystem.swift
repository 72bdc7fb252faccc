import Foundation

/// How a machine is running right now, read from its /sys and /proc (or from a captured tree).
public struct LiveSystemInfo: Sendable, Codable {
    /// `pv`, `pvh`, `hvm`, `xen` (mode not stated), `none` (not on Xen).
    public var mode: String
    public var onXen: Bool
    /// This is the control domain (`/proc/xen/capabilities` says `control_d`).
    public var dom0: Bool
    public var hypervisorVersion: String?
    /// Another hypervisor's name when not on Xen (from the DMI vendor), if any.
    public var otherHypervisor: String?
    /// `/sys/bus/xen/devices`: vbd-51712, vif-0, …
    public var xenDevices: [String]
    /// Xen modules loaded (`/proc/modules`).
    public var loadedXenModules: [String]
    /// The running release (`/proc/sys/kernel/osrelease`).
    public var release: String?
    /// `/proc/config.gz` was there.
    public var runningConfig: Bool
    /// One line per fact read.
    public var evidence: [String]

    /// One line for people.
    public var summary: String {
        guard onXen else {
            return "not on Xen" + (otherHypervisor.map { " (running on \($0))" } ?? "")
        }
        let role = dom0 ? "dom0" : "domU"
        let how = mode == "xen" ? "a Xen guest (mode not stated)" : "a Xen \(mode.uppercased()) \(role)"
        return "running as \(how)" + (hypervisorVersion.map { " on Xen \($0)" } ?? "")
    }
}

/// Reads the live facts under a root (`/` for this machine; a captured tree in tests).
public enum LiveSystem {
    public static func read(root: String) -> LiveSystemInfo {
        func text(_ path: String) -> String? {
            (try? String(contentsOfFile: root + path, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        func list(_ path: String) -> [String] { ((try? FileManager.default.contentsOfDirectory(atPath: root + path)) ?? []).sorted() }
        var evidence: [String] = []
        let type = text("/sys/hypervisor/type")
        evidence.append("/sys/hypervisor/type: \(type ?? "absent")")
        let onXen = type == "xen"
        var version: String? = nil
        if let major = text("/sys/hypervisor/version/major"), let minor = text("/sys/hypervisor/version/minor") {
            version = "\(major).\(minor)\(text("/sys/hypervisor/version/extra") ?? "")"
            evidence.append("/sys/hypervisor/version: \(version!)")
        }
        var mode = onXen ? "xen" : "none"
        if onXen {
            if let guestType = text("/sys/hypervisor/guest_type") {
                evidence.append("/sys/hypervisor/guest_type: \(guestType)")
                mode = guestType.lowercased()
            } else if list("/sys/bus/pci/devices").contains(where: { device in
                text("/sys/bus/pci/devices/\(device)/vendor") == "0x5853" && text("/sys/bus/pci/devices/\(device)/device") == "0x0001"
            }) {
                evidence.append("the Xen platform PCI device (5853:0001) is present: an HVM guest")
                mode = "hvm"
            }
        }
        let capabilities = text("/proc/xen/capabilities")
        if let capabilities { evidence.append("/proc/xen/capabilities: \(capabilities.isEmpty ? "(empty)" : capabilities)") }
        let cpuFlags = text("/proc/cpuinfo")?.split(separator: "\n").first { $0.hasPrefix("flags") }
        if let cpuFlags { evidence.append("CPU flags \(cpuFlags.split(separator: " ").contains("hypervisor") ? "include" : "lack") \"hypervisor\"") }
        var other: String? = nil
        if !onXen, cpuFlags?.split(separator: " ").contains("hypervisor") == true {
            other = text("/sys/class/dmi/id/sys_vendor") ?? "an unidentified hypervisor"
        }
        let devices = list("/sys/bus/xen/devices")
        if !devices.isEmpty { evidence.append("/sys/bus/xen/devices: \(devices.joined(separator: ", "))") }
        let modules = (text("/proc/modules") ?? "").split(separator: "\n").compactMap { line -> String? in
            let name = line.split(separator: " ").first.map(String.init) ?? ""
            return name.contains("xen") ? name : nil
        }.sorted()
        let release = text("/proc/sys/kernel/osrelease")
        let config = FileManager.default.fileExists(atPath: root + "/proc/config.gz")
        return LiveSystemInfo(
            mode: mode, onXen: onXen, dom0: capabilities?.contains("control_d") == true, hypervisorVersion: version,
            otherHypervisor: other, xenDevices: devices, loadedXenModules: modules, release: release,
            runningConfig: config, evidence: evidence)
    }

    /// The running kernel's image: `/boot/vmlinuz-<release>` (or vmlinux-, Image-) under the root.
    public static func runningKernel(root: String, release: String) -> String? {
        ["vmlinuz-", "vmlinux-", "Image-"].map { root + "/boot/" + $0 + release }.first { FileManager.default.fileExists(atPath: $0) }
    }
}
