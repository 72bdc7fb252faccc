import Foundation

/// A whole disk image opened as a guest root: its partitions found by libblkid, the root file
/// system chosen (the one with `/etc/fstab` and `/boot` or `/usr`), and the other partitions
/// its fstab names (a separate `/boot`, `/usr`) mounted where the guest mounts them.
public final class GuestDisk {
    public let image: DiskImage
    public let table: PartitionTable
    /// The partition that holds `/`.
    public let rootPartition: DiskPartition
    public let root: GuestRoot
    /// Partitions that could not be opened, with why (reported, not fatal).
    public private(set) var notes: [String] = []

    /// File systems read in-process (libext2fs); others need a loop mount.
    static let libraryFileSystems: Set<String> = ["ext2", "ext3", "ext4"]

    public init(path: String) throws(GuestFileError) {
        image = try DiskImage(path: path)
        table = try PartitionTable.probe(image)
        let readable = table.partitions.filter { $0.problem == nil && $0.fileSystem != nil }
        var candidates: [(DiskPartition, GuestFileSystem)] = []
        var notes: [String] = table.partitions.compactMap { partition in partition.problem.map { "partition \(partition.number): \($0)" } }
        var firstError: GuestFileError? = nil
        for partition in readable where Self.isMountable(partition.fileSystem!) {
            do {
                let fileSystem = try Self.open(image, partition)
                candidates.append((partition, fileSystem))
            } catch {
                notes.append("partition \(partition.number) (\(partition.fileSystem!)): \(error.message)")
                if firstError == nil || error.code == .needsPrivilege { firstError = error }
            }
        }
        func score(_ fileSystem: GuestFileSystem) -> Int {
            let root = GuestRoot(root: fileSystem)
            return (root.isFile("/etc/fstab") ? 2 : 0) + (root.isDirectory("/usr") ? 1 : 0) + (root.isDirectory("/boot") ? 1 : 0)
        }
        let ranked = candidates.map { ($0, $1, score($1)) }.filter { $0.2 >= 2 }.sorted { $0.2 > $1.2 }
        guard let (partition, fileSystem, _) = ranked.first else {
            if let firstError { throw firstError }
            if let volume = table.partitions.first(where: { $0.fileSystem == "LVM2_member" }) {
                throw GuestFileError(
                    .unsupported,
                    "\(path) keeps its file systems in LVM (partition \(volume.number) is an LVM physical volume): pvcheck does not activate volume groups",
                    hint:
                        "Activate it read-only on a copy (losetup -r -P -f --show IMAGE; vgchange -ay --readonly VG), mount the root logical volume read-only, and give it with --root"
                )
            }
            let found = table.partitions.map { "\($0.number): \($0.fileSystem ?? "no file system")" }.joined(separator: ", ")
            throw GuestFileError(
                .noRoot,
                "\(path) (\(image.format.rawValue), \(table.type ?? "no partition table")) has no partition with a Linux root file system (\(found.isEmpty ? "no partitions" : found))",
                hint: "pvcheck reads ext2/3/4 itself and XFS or btrfs as root; LVM volumes must be activated and mounted (--root)")
        }
        rootPartition = partition
        root = GuestRoot(root: fileSystem, owners: [image])
        // The guest's own mounts of other partitions of this disk.
        for mount in FstabEntry.parse(root.text(of: "/etc/fstab") ?? "") where mount.mountPoint.hasPrefix("/") && mount.mountPoint != "/" {
            guard let other = candidates.first(where: { $0.0 != partition && mount.names($0.0) }) else { continue }
            root.mount(other.1, at: mount.mountPoint)
        }
        self.notes = notes
    }

    static func isMountable(_ type: String) -> Bool {
        libraryFileSystems.contains(type) || ["xfs", "btrfs", "f2fs", "jfs", "reiserfs"].contains(type)
    }

    static func open(_ image: DiskImage, _ partition: DiskPartition) throws(GuestFileError) -> GuestFileSystem {
        if libraryFileSystems.contains(partition.fileSystem ?? "") { return try Ext4Volume(disk: image, partition: partition) }
        return try LoopMount(disk: image, partition: partition)
    }
}

/// One line of `/etc/fstab` (or the device field of `/etc/crypttab`).
public struct FstabEntry: Sendable, Codable, Equatable {
    /// The first field: `UUID=…`, `LABEL=…`, `PARTUUID=…`, `/dev/xvda1`, ….
    public let device: String
    public let mountPoint: String
    public let type: String
    public let options: String
    /// 1-based line number in the file.
    public let line: Int

    public init(device: String, mountPoint: String, type: String, options: String, line: Int) {
        self.device = device
        self.mountPoint = mountPoint
        self.type = type
        self.options = options
        self.line = line
    }

    /// The entries of an fstab's text; comments and blank lines skipped, `\040` decoded.
    public static func parse(_ text: String) -> [FstabEntry] {
        var entries: [FstabEntry] = []
        for (index, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard let first = fields.first, !first.hasPrefix("#"), fields.count >= 2 else { continue }
            func field(_ i: Int) -> String { i < fields.count ? String(fields[i]).replacingOccurrences(of: "\\040", with: " ") : "" }
            entries.append(FstabEntry(device: field(0), mountPoint: field(1), type: field(2), options: field(3), line: index + 1))
        }
        return entries
    }

    /// Whether this entry's device field names `partition` (by UUID, LABEL or PARTUUID).
    public func names(_ partition: DiskPartition) -> Bool {
        let (key, value) = splitTag
        switch key {
        case "UUID": return partition.uuid?.lowercased() == value.lowercased()
        case "LABEL": return partition.label == value
        case "PARTUUID": return partition.partitionUUID?.lowercased() == value.lowercased()
        default: return false
        }
    }

    /// `UUID=abc` → ("UUID", "abc"); a path → ("", path).
    public var splitTag: (String, String) {
        guard !device.hasPrefix("/"), let equals = device.firstIndex(of: "=") else { return ("", device) }
        var value = String(device[device.index(after: equals)...])
        if value.count >= 2, value.hasPrefix("\""), value.hasSuffix("\"") { value = String(value.dropFirst().dropLast()) }
        return (String(device[..<equals]), value)
    }
}
