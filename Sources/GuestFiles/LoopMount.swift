import Foundation
import PVSystem

/// A file system Linux reads for us: XFS, btrfs and the rest that have no userspace library
/// here, mounted read-only from a loop device (root only). A qcow2, VMDK, VHD or VHDX image is
/// first exposed as a raw file by `qemu-storage-daemon`'s read-only FUSE export. The mount is private to this
/// object and removed when it goes away.
public final class LoopMount: GuestFileSystem {
    public let description: String
    public let mountPoint: String
    private let directory: HostDirectory
    private let exporter: ChildProcess?
    private let exportFile: String?
    private let scratch: String

    /// Mount options that keep the image unchanged: no log replay, no orphan cleanup.
    static func options(fileSystem: String) -> String {
        switch fileSystem {
        case "xfs": "ro,norecovery"
        case "btrfs": "ro,rescue=nologreplay"
        case "ext4", "ext3": "ro,noload"
        default: "ro"
        }
    }

    public init(disk: DiskImage, partition: DiskPartition) throws(GuestFileError) {
        let type = partition.fileSystem ?? "auto"
        description = "\(disk.path), partition \(partition.number) (\(type), mounted read-only)"
        guard getuid() == 0 else {
            throw GuestFileError(
                .needsPrivilege, "\(disk.path) partition \(partition.number) holds \(type), which pvcheck reads only through a read-only loop mount",
                hint: "Run pvcheck as root, or audit the mounted root with --root DIR")
        }
        scratch = NSTemporaryDirectory() + "pvcheck-mount-\(getpid())-\(UUID().uuidString.prefix(8))"
        mountPoint = scratch + "/root"
        do {
            try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        } catch {
            throw GuestFileError(.unreadable, "cannot make \(mountPoint): \(error.localizedDescription)", hint: "Check the temporary directory")
        }
        var source = disk.path
        var exporter: ChildProcess? = nil
        var exportFile: String? = nil
        if disk.format != .raw {
            let file = scratch + "/disk.raw"
            _ = FileManager.default.createFile(atPath: file, contents: nil)
            do {
                exporter = try Self.exportRaw(disk.path, driver: disk.format.qemuDriver, at: file)
            } catch {
                try? FileManager.default.removeItem(atPath: scratch)
                throw error
            }
            exportFile = file
            source = file
        }
        self.exporter = exporter
        self.exportFile = exportFile
        let arguments = [
            "-t", type, "-o", "\(Self.options(fileSystem: type)),loop,offset=\(partition.offset),sizelimit=\(partition.size)", source,
            mountPoint
        ]
        let outcome: String?
        do {
            let status = try ChildProcess(path: "/bin/mount", arguments: arguments).waitForExit()
            outcome = status == 0 ? nil : "exit status \(status)"
        } catch {
            outcome = "\(error)"
        }
        if let outcome {
            Self.stopExport(exporter, exportFile)
            try? FileManager.default.removeItem(atPath: scratch)
            throw GuestFileError(
                .unreadable, "mount -t \(type) of \(disk.path) partition \(partition.number) failed (\(outcome))",
                hint: "Check that this kernel supports \(type) (modprobe \(type)) and the file system is sound")
        }
        do {
            directory = try HostDirectory(mountPoint)
        } catch {
            Self.unmount(mountPoint, lazily: false)
            Self.stopExport(exporter, exportFile)
            throw error
        }
    }

    deinit {
        Self.unmount(mountPoint, lazily: false)
        Self.stopExport(exporter, exportFile)
        try? FileManager.default.removeItem(atPath: scratch)
    }

    /// Unmounts, and says so on stderr when it cannot: a mount left behind is worth knowing.
    static func unmount(_ point: String, lazily: Bool) {
        var problem: String? = nil
        do {
            let status = try ChildProcess(path: "/bin/umount", arguments: (lazily ? ["-l"] : []) + [point]).waitForExit()
            if status != 0 { problem = "umount exited \(status)" }
        } catch {
            problem = "\(error)"
        }
        if let problem {
            FileHandle.standardError.write(Data("pvcheck: could not unmount \(point) (\(problem)); remove it with umount -l \(point)\n".utf8))
        }
    }

    /// Starts qemu-storage-daemon exporting `image` read-only as a raw file at `file` (FUSE),
    /// and waits until the export is there.
    static func exportRaw(_ image: String, driver: String, at file: String) throws(GuestFileError) -> ChildProcess {
        let daemon = "/usr/bin/qemu-storage-daemon"
        guard ChildProcess.isExecutable(daemon) else {
            throw GuestFileError(
                .needsPrivilege, "reading XFS or btrfs in a \(driver) image needs qemu-storage-daemon to expose it to a loop device",
                hint: "Install qemu-system-common (Debian), or convert the image to raw: qemu-img convert -O raw")
        }
        let escaped = image.replacingOccurrences(of: ",", with: ",,")
        let child: ChildProcess
        do {
            child = try ChildProcess(
                path: daemon,
                arguments: [
                    "--blockdev", "driver=file,node-name=file,filename=\(escaped),read-only=on",
                    "--blockdev", "driver=\(driver),node-name=disk,file=file,read-only=on",
                    "--export", "type=fuse,id=raw,node-name=disk,mountpoint=\(file),writable=off"
                ])
        } catch {
            throw GuestFileError(.unreadable, "cannot start qemu-storage-daemon: \(error)", hint: "Check the qemu installation")
        }
        // The export is up when the file has the disk's size (it is empty before).
        let deadline = MonotonicClock.now() + MonotonicClock.nanoseconds(.seconds(10))
        while MonotonicClock.now() < deadline {
            if (try? child.exitStatus()) ?? nil != nil { break }
            if let size = (try? FileManager.default.attributesOfItem(atPath: file))?[.size] as? NSNumber, size.intValue > 0 { return child }
            Thread.sleep(forTimeInterval: 0.02)
        }
        stopExport(child, file)
        throw GuestFileError(.unreadable, "qemu-storage-daemon did not export \(image) within 10 s", hint: "Check that /dev/fuse exists")
    }

    static func stopExport(_ child: ChildProcess?, _ file: String?) {
        guard let child else { return }
        child.signal(SIGTERM)
        _ = try? child.waitForExit()
        if let file { unmount(file, lazily: true) }
    }

    public func kind(of path: String) -> GuestFileKind? { directory.kind(of: path) }
    public func linkTarget(of path: String) throws(GuestFileError) -> String { try directory.linkTarget(of: path) }
    public func contents(of path: String, limit: Int) throws(GuestFileError) -> [UInt8] { try directory.contents(of: path, limit: limit) }
    public func read(_ path: String, limit: Int, into allocate: (Int) -> UnsafeMutableRawBufferPointer) throws(GuestFileError) {
        try directory.read(path, limit: limit, into: allocate)
    }
    public func names(in path: String) throws(GuestFileError) -> [String] { try directory.names(in: path) }
    public func hostPath(of path: String) -> String? { directory.hostPath(of: path) }
}
