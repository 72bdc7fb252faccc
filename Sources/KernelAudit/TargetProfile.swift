import Foundation

/// What one platform needs from a guest, loaded from `patches/targets/<id>.json`: adding a
/// platform is a data change.
public struct TargetProfile: Sendable, Codable, Equatable {
    /// How the platform loads the kernel.
    public enum Loader: String, Sendable, Codable {
        /// Xen's PV domain builder (ELF notes, its own decompressors).
        case xenPV = "xen-pv"
        /// Xen's PVH domain builder (the PHYS32_ENTRY note).
        case xenPVH = "xen-pvh"
        /// Firmware (BIOS/UEFI) and a boot loader in the guest: any bootable x86 or arm64 kernel.
        case firmware
        /// Firecracker's direct boot: an ELF vmlinux (PVH entry when it has one).
        case directFirecracker = "direct-firecracker"
        /// Cloud Hypervisor's direct boot: an ELF with the PVH note, or a bzImage since v39.
        case directCloudHypervisor = "direct-cloud-hypervisor"
    }

    /// One module a driver needs, and the Kconfig option that builds it.
    public struct Module: Sendable, Codable, Equatable {
        public let module: String
        public let config: String
    }

    /// One way to reach a device: every module listed (their dependencies are found in
    /// `modules.dep`). A fallback works but is not what the platform is meant to use.
    public struct DriverChoice: Sendable, Codable, Equatable {
        public let name: String
        public let modules: [Module]
        public let fallback: Bool?
    }

    public let id: String
    public let name: String
    public let boot: Loader
    /// Compression → the first Xen release whose PV loader unpacks it (xen-pv only).
    public let xenCompressionSince: [String: String]?
    public let rootDisk: [DriverChoice]
    public let network: [DriverChoice]
    /// Consoles the platform shows (`console=` names, without options).
    public let consoles: [String]
    /// The console the kernel uses there with no `console=` at all (hvc0 on Xen PV).
    public let defaultConsole: String?
    /// Disk name prefixes the kernel gives there (`xvd`, `nvme`, `vd`, `sd`).
    public let diskNames: [String]
    /// Interface names the platform's NICs get (patterns with `*`) without `net.ifnames=0`.
    public let interfaceNames: [String]
    /// Command-line parameters that break this platform (`xen_nopv` on Xen HVM).
    public let xenOnly: [String]?
    /// Where the facts come from.
    public let sources: [String]

    static let keys: Set<String> = [
        "id", "name", "boot", "xenCompressionSince", "rootDisk", "network", "consoles", "defaultConsole", "diskNames", "interfaceNames",
        "xenOnly", "sources"
    ]
}

/// A target profile that does not load: the message names the file.
public struct TargetProfileProblem: Error, Sendable {
    public let message: String
}

/// The target profiles of a directory.
public enum TargetCatalogue {
    /// One profile's JSON, strictly: an unknown key, a missing one or a wrong type is a problem.
    public static func parse(_ data: Data, file path: String) -> Result<TargetProfile, TargetProfileProblem> {
        func problem(_ text: String) -> Result<TargetProfile, TargetProfileProblem> { .failure(TargetProfileProblem(message: "\(path): \(text)")) }
        do {
            let object = try JSONSerialization.jsonObject(with: data)
            guard let top = object as? [String: Any] else { return problem("the top level is not an object") }
            let unknown = Set(top.keys).subtracting(TargetProfile.keys)
            if !unknown.isEmpty {
                return problem("unknown key\(unknown.count > 1 ? "s" : "") \(unknown.sorted().map { "\"\($0)\"" }.joined(separator: ", "))")
            }
            let profile = try JSONDecoder().decode(TargetProfile.self, from: data)
            guard !profile.rootDisk.isEmpty, !profile.network.isEmpty, !profile.consoles.isEmpty else {
                return problem("rootDisk, network and consoles must each list at least one entry")
            }
            return .success(profile)
        } catch let DecodingError.keyNotFound(key, _) {
            return problem("missing \"\(key.stringValue)\"")
        } catch let DecodingError.typeMismatch(_, context) {
            return problem("wrong type at \(context.codingPath.map { $0.intValue.map { "[\($0)]" } ?? "." + $0.stringValue }.joined())")
        } catch let DecodingError.dataCorrupted(context) {
            return problem(context.debugDescription)
        } catch {
            return problem("not valid JSON (\((error as NSError).userInfo[NSDebugDescriptionErrorKey] as? String ?? "\(error)"))")
        }
    }

    /// Loads every `*.json` in `directory`, strictly: an unknown key, a missing one, a wrong
    /// type or an id that is not the file's name is a problem naming the file.
    public static func load(directory: String) -> (profiles: [TargetProfile], problems: [String]) {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: directory) else {
            return ([], ["cannot list the target directory \(directory)"])
        }
        var profiles: [TargetProfile] = [], problems: [String] = []
        for name in names.filter({ $0.hasSuffix(".json") }).sorted() {
            let path = directory + "/" + name
            guard let data = FileManager.default.contents(atPath: path) else {
                problems.append("\(path): cannot be read")
                continue
            }
            switch parse(data, file: path) {
            case .success(let profile):
                guard profile.id + ".json" == name else {
                    problems.append("\(path): id \"\(profile.id)\" is not the file's name")
                    continue
                }
                profiles.append(profile)
            case .failure(let problem):
                problems.append(problem.message)
            }
        }
        return (profiles, problems)
    }
}
