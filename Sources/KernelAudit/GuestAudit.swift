import Foundation
import GuestFiles

/// What one command-line argument is: a kernel file, a guest root directory, or a whole disk image.
public enum AuditInput: Sendable, Equatable {
    case kernel(String)
    case root(String)
    case diskImage(String)

    public var path: String {
        switch self {
        case .kernel(let path), .root(let path), .diskImage(let path): path
        }
    }

    /// A directory is a root; a file with a qcow header, a partition table or a file-system
    /// superblock (and no kernel setup header) is a disk image; anything else is a kernel.
    public static func classify(_ path: String) -> AuditInput {
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue { return .root(path) }
        guard let handle = FileHandle(forReadingAtPath: path) else { return .kernel(path) }
        defer { try? handle.close() }
        let head = [UInt8]((try? handle.read(upToCount: 4096)) ?? Data())
        func at(_ offset: Int, _ bytes: [UInt8]) -> Bool { head.count >= offset + bytes.count && Array(head[offset..<offset + bytes.count]) == bytes }
        // qcow, VMDK (sparse or a descriptor), VHDX, dynamic VHD (a footer copy at the start).
        if at(0, [0x51, 0x46, 0x49, 0xFB]) || at(0, Array("KDMV".utf8)) || at(0, Array("# Disk DescriptorFile".utf8))
            || at(0, Array("vhdxfile".utf8)) || at(0, Array("conectix".utf8))
        {
            return .diskImage(path)
        }
        if at(0x202, Array("HdrS".utf8)) || at(0, [0x7F, 0x45, 0x4C, 0x46]) || at(0, [0x4D, 0x5A]) { return .kernel(path) }
        // A fixed VHD: a raw disk with its footer in the last 512 bytes.
        if let end = try? handle.seekToEnd(), end >= 1024 {
            try? handle.seek(toOffset: end - 512)
            if (try? handle.read(upToCount: 8)) == Data("conectix".utf8) { return .diskImage(path) }
        }
        if at(512, Array("EFI PART".utf8)) || at(0, Array("XFSB".utf8)) || at(1080, [0x53, 0xEF]) { return .diskImage(path) }
        // An MBR: the boot signature and at least one partition entry with a type.
        if at(510, [0x55, 0xAA]), (0..<4).contains(where: { head.count > 446 + $0 * 16 + 4 && head[446 + $0 * 16 + 4] != 0 }) {
            return .diskImage(path)
        }
        return .kernel(path)
    }
}

/// The guest side of the pipeline: open the root (a directory, or a disk image's partitions and
/// file systems), read its facts, find its kernels, audit each in the guest's context.
public enum GuestAudit {
    /// Audits every kernel of a guest root or disk image. A guest that cannot be opened is one
    /// error report; so is one without kernels.
    public static func audit(_ input: AuditInput, with auditor: KernelAuditor) -> [(report: AuditReport, symbols: SymbolTable?)] {
        switch input {
        case .kernel(let path): return [auditor.reportWithSymbols(path: path)]
        case .root(let directory):
            do {
                let root = try GuestRoot(directory: directory)
                return audit(root, image: nil, name: directory, hostPrefix: directory.hasSuffix("/") ? String(directory.dropLast()) : directory, with: auditor)
            } catch {
                return [errorReport(input.path, error)]
            }
        case .diskImage(let path):
            let disk: GuestDisk
            CrashContext.set("opening the disk image \(path)")
            defer { CrashContext.set(nil) }
            do {
                disk = try GuestDisk(path: path)
            } catch {
                return [errorReport(path, error)]
            }
            var image = DiskImageInfo(
                path: path, format: disk.image.format, virtualSize: disk.image.size, partitionTable: disk.table.type,
                partitions: disk.table.partitions, rootPartition: disk.rootPartition.number,
                mounts: disk.root.mounts.filter { $0.point != "/" }.map { "\($0.point): \($0.fileSystem.description)" })
            var results = audit(disk.root, image: image, name: path, hostPrefix: nil, with: auditor)
            image.bytesRead = disk.image.bytesRead
            for index in results.indices { results[index].report.guest?.image = image }
            return results
        }
    }

    static func errorReport(_ path: String, _ error: GuestFileError) -> (report: AuditReport, symbols: SymbolTable?) {
        var report = AuditReport(path: path)
        let code: KernelAuditError.Code =
            switch error.code {
            case .unreadable: .unreadable
            case .unsupported: .unsupported
            case .needsPrivilege: .needsPrivilege
            case .damaged, .noRoot, .notFound, .tooLarge: .badDiskImage
            }
        report.error = .init(code: code, message: error.message, offset: nil, hint: error.hint)
        return (report, nil)
    }

    /// The kernels in the guest's /boot, and the one `/vmlinuz` (or `/boot/vmlinuz`) names.
    public static func kernels(in root: GuestRoot) -> (paths: [String], defaultPath: String?) {
        let names = root.names(in: "/boot") ?? []
        let kernels = names.filter { name in
            (name.hasPrefix("vmlinuz-") || name.hasPrefix("vmlinux-") || name.hasPrefix("Image-")) && root.isFile("/boot/" + name)
        }.map { "/boot/" + $0 }
        var defaultPath: String? = nil
        for link in ["/vmlinuz", "/boot/vmlinuz"] {
            guard root.linkTarget(of: link) != nil, let resolved = try? root.resolve(link) else { continue }
            if let found = kernels.first(where: { (try? root.resolve($0)) == resolved }) {
                defaultPath = found
                break
            }
        }
        return (kernels, defaultPath)
    }

    static func audit(_ root: GuestRoot, image: DiskImageInfo?, name: String, hostPrefix: String?, with auditor: KernelAuditor) -> [(
        report: AuditReport, symbols: SymbolTable?
    )] {
        CrashContext.set("reading the guest root \(name)")
        var facts = GuestFacts.read(root)
        facts.image = image
        let (kernels, defaultPath) = kernels(in: root)
        guard !kernels.isEmpty else {
            var report = AuditReport(path: name)
            report.error = .init(
                code: .noKernel, message: "no kernels (vmlinuz-*, vmlinux-*, Image-*) in /boot of \(root.description)", offset: nil,
                hint: "Check that this is the guest's root (a separate /boot partition is mounted when fstab names it)")
            report.guest = facts
            return [(report, nil)]
        }
        let scratch = NSTemporaryDirectory() + "pvcheck-\(getpid())-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        return kernels.map { kernel in
            var result: (report: AuditReport, symbols: SymbolTable?)
            do throws(KernelAuditError) {
                result = try auditor.audit(guestKernel: kernel, in: root, facts: facts, scratch: scratch)
            } catch {
                var report = AuditReport(path: kernel)
                report.error = .init(code: error.code, message: error.message, offset: error.offset, hint: error.hint)
                report.guest = facts
                result = (report, nil)
            }
            result.report.path = hostPrefix.map { $0 + kernel } ?? "\(name):\(kernel)"
            result.report.isDefault = kernel == defaultPath
            return result
        }
    }
}
