import CBlkid
import PVSystem
import SystemPackage

/// One partition of a disk image (or the whole disk when it has no partition table), with
/// the file system libblkid found in it.
public struct DiskPartition: Sendable, Codable, Equatable {
    /// 1-based, as Linux numbers them (`/dev/xvda1`); 0 for a file system on the whole disk.
    public let number: Int
    public let offset: UInt64
    public let size: UInt64
    /// The GPT type GUID or the MBR type byte ("0x83").
    public let type: String?
    /// PARTUUID: the GPT entry's GUID, or "<disk id>-<number>" on MBR.
    public let partitionUUID: String?
    /// `ext4`, `xfs`, `btrfs`, `LVM2_member`, `swap`, `vfat`, … (libblkid's TYPE).
    public let fileSystem: String?
    public let uuid: String?
    public let label: String?
    /// Why it cannot be read, when its entry lies (past the end of the disk).
    public let problem: String?
}

/// The disk's partitions as libblkid reads them: MBR (with logical partitions) and GPT.
public struct PartitionTable: Sendable, Codable {
    /// `gpt`, `dos`, or nil for a disk with a file system and no table.
    public let type: String?
    public let partitions: [DiskPartition]

    /// The regions libblkid reads to find a partition table: the first and last MiB.
    static let probeSpan: UInt64 = 1 << 20

    /// Probes `disk`. libblkid reads a descriptor: a raw image's own, or, for a qcow2 image, a
    /// sparse in-memory file the size of the virtual disk holding just the regions it probes
    /// (the first and last MiB of the disk and of each partition).
    public static func probe(_ disk: DiskImage) throws(GuestFileError) -> PartitionTable {
        guard disk.size >= 512 else {
            throw GuestFileError(.damaged, "\(disk.path) holds \(disk.size) bytes, less than one sector", hint: "This is not a disk image")
        }
        let descriptor: FileDescriptor
        var owned: FileDescriptor? = nil
        if let raw = disk.rawDescriptor {
            descriptor = raw
        } else {
            do {
                owned = try Memory.sparseFile(name: "pvcheck-probe", byteCount: disk.size)
            } catch {
                throw GuestFileError(.unreadable, "cannot make a probe file for \(disk.path): \(error)", hint: "Check the memory limits")
            }
            descriptor = owned!
            try copy(disk, 0, min(probeSpan, disk.size), to: descriptor)
            let tail = disk.size > probeSpan ? disk.size - probeSpan : 0
            try copy(disk, tail, disk.size - tail, to: descriptor)
        }
        defer { try? owned?.close() }

        guard let probe = blkid_new_probe() else { throw GuestFileError(.unreadable, "libblkid cannot start a probe", hint: "Check the memory limits") }
        defer { blkid_free_probe(probe) }
        guard blkid_probe_set_device(probe, descriptor.rawValue, 0, blkid_loff_t(disk.size)) == 0 else {
            throw GuestFileError(.unreadable, "libblkid cannot read \(disk.path)", hint: "Check the file")
        }
        _ = blkid_probe_enable_partitions(probe, 1)
        _ = blkid_probe_set_partitions_flags(probe, Int32(BLKID_PARTS_ENTRY_DETAILS))
        _ = blkid_probe_enable_superblocks(probe, 1)
        _ = blkid_probe_set_superblocks_flags(probe, Int32(BLKID_SUBLKS_TYPE | BLKID_SUBLKS_UUID | BLKID_SUBLKS_LABEL))
        let status = blkid_do_safeprobe(probe)
        if status == -2 {
            throw GuestFileError(
                .damaged, "\(disk.path) carries signatures of more than one partition table or file system at once",
                hint: "libblkid will not guess; wipe the stale signature (wipefs) on a copy")
        }
        if status < 0 { throw GuestFileError(.damaged, "libblkid cannot probe \(disk.path)", hint: "The image is damaged") }
        let tableType = value(probe, "PTTYPE")
        guard let list = blkid_probe_get_partitions(probe), blkid_partlist_numof_partitions(list) > 0 else {
            // A file system on the whole disk, or nothing.
            let type = value(probe, "TYPE")
            let whole = DiskPartition(
                number: 0, offset: 0, size: disk.size, type: nil, partitionUUID: nil, fileSystem: type, uuid: value(probe, "UUID"),
                label: value(probe, "LABEL"), problem: nil)
            return PartitionTable(type: tableType, partitions: type == nil && tableType != nil ? [] : [whole])
        }
        var partitions: [DiskPartition] = []
        for index in 0..<blkid_partlist_numof_partitions(list) {
            guard let entry = blkid_partlist_get_partition(list, index) else { continue }
            let start = blkid_partition_get_start(entry), count = blkid_partition_get_size(entry)
            let number = Int(blkid_partition_get_partno(entry))
            let typeName = blkid_partition_get_type_string(entry).map { String(cString: $0) }
            let type = typeName ?? "0x" + String(blkid_partition_get_type(entry), radix: 16)
            let partitionUUID = blkid_partition_get_uuid(entry).map { String(cString: $0) }
            // An extended partition's container entry holds no file system of its own.
            if blkid_partition_is_extended(entry) != 0 { continue }
            guard start >= 0, count > 0, UInt64(start) <= disk.size / 512, UInt64(count) <= disk.size / 512 - UInt64(start) else {
                partitions.append(
                    DiskPartition(
                        number: number, offset: UInt64(max(0, start)) &* 512, size: UInt64(max(0, count)) &* 512, type: type,
                        partitionUUID: partitionUUID, fileSystem: nil, uuid: nil, label: nil,
                        problem: "its entry (sectors \(start) + \(count)) runs past the end of the \(disk.size / 512)-sector disk"))
                continue
            }
            let offset = UInt64(start) * 512, size = UInt64(count) * 512
            if owned != nil {
                try copy(disk, offset, min(probeSpan, size), to: descriptor)
                if size > probeSpan { try copy(disk, offset + size - probeSpan, probeSpan, to: descriptor) }
            }
            let found = try superblock(descriptor, offset: offset, size: size, path: disk.path)
            partitions.append(
                DiskPartition(
                    number: number, offset: offset, size: size, type: type, partitionUUID: partitionUUID, fileSystem: found.type,
                    uuid: found.uuid, label: found.label, problem: nil))
        }
        return PartitionTable(type: tableType, partitions: partitions)
    }

    static func superblock(_ descriptor: FileDescriptor, offset: UInt64, size: UInt64, path: String) throws(GuestFileError) -> (
        type: String?, uuid: String?, label: String?
    ) {
        guard let probe = blkid_new_probe() else { throw GuestFileError(.unreadable, "libblkid cannot start a probe", hint: "Check the memory limits") }
        defer { blkid_free_probe(probe) }
        guard blkid_probe_set_device(probe, descriptor.rawValue, blkid_loff_t(offset), blkid_loff_t(size)) == 0 else {
            throw GuestFileError(.unreadable, "libblkid cannot read \(path) at \(offset)", hint: "Check the file")
        }
        _ = blkid_probe_enable_superblocks(probe, 1)
        _ = blkid_probe_set_superblocks_flags(probe, Int32(BLKID_SUBLKS_TYPE | BLKID_SUBLKS_UUID | BLKID_SUBLKS_LABEL))
        guard blkid_do_safeprobe(probe) == 0 else { return (nil, nil, nil) }
        return (value(probe, "TYPE"), value(probe, "UUID"), value(probe, "LABEL"))
    }

    static func value(_ probe: blkid_probe, _ name: String) -> String? {
        var data: UnsafePointer<CChar>? = nil
        var length = 0
        guard blkid_probe_lookup_value(probe, name, &data, &length) == 0, let data else { return nil }
        return String(cString: data)
    }

    static func copy(_ disk: DiskImage, _ offset: UInt64, _ count: UInt64, to descriptor: FileDescriptor) throws(GuestFileError) {
        guard count > 0 else { return }
        let bytes = try disk.bytes(at: offset, count: Int(count))
        do {
            _ = try bytes.withUnsafeBytes { try descriptor.writeAll(toAbsoluteOffset: Int64(offset), $0) }
        } catch {
            throw GuestFileError(.unreadable, "cannot fill the probe file for \(disk.path): \(error)", hint: "Check the memory limits")
        }
    }
}
