import CExt2fs

/// An ext2/3/4 file system inside a disk image, read through libext2fs without mounting it
/// (no root needed). The io channel reads the virtual disk, so raw and qcow2 are the same here.
public final class Ext4Volume: GuestFileSystem {
    public let description: String
    private let disk: DiskImage
    private let handle: OpaquePointer

    public init(disk: DiskImage, partition: DiskPartition) throws(GuestFileError) {
        self.disk = disk
        description = "\(disk.path), \(partition.number == 0 ? "whole disk" : "partition \(partition.number)") (\(partition.fileSystem ?? "ext4"))"
        var opened: OpaquePointer? = nil
        let context = Unmanaged.passUnretained(disk).toOpaque()
        let code = pvkit_ext2_open(Ext4Volume.readDisk, context, partition.offset, partition.size, &opened)
        guard code == 0, let opened else {
            throw GuestFileError(
                .damaged, "\(description) cannot be opened by libext2fs: \(Self.message(code))",
                hint: "The file system is damaged; check a copy with e2fsck -n")
        }
        handle = opened
    }

    deinit { pvkit_ext2_close(handle) }

    /// libext2fs's read callback: the disk is the context.
    private static let readDisk: pvkit_ext2_read_fn = { context, offset, buffer, count in
        guard let context, let buffer else { return 22 }
        let disk = Unmanaged<DiskImage>.fromOpaque(context).takeUnretainedValue()
        do {
            try disk.read(at: offset, into: UnsafeMutableRawBufferPointer(start: buffer, count: count))
            return 0
        } catch {
            return 5  // EIO
        }
    }

    static func message(_ code: Int) -> String {
        guard let text = pvkit_ext2_message(code) else { return "error \(code)" }
        return String(cString: text)
    }

    /// The volume's UUID and label, as libext2fs reads the superblock.
    public var identity: (uuid: String, label: String) {
        var uuid = [UInt8](repeating: 0, count: 16)
        var label = [CChar](repeating: 0, count: 17)
        pvkit_ext2_identity(handle, &uuid, &label)
        let hex = uuid.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }
        let text = [hex[0..<4], hex[4..<6], hex[6..<8], hex[8..<10], hex[10..<16]].map { $0.joined() }.joined(separator: "-")
        return (text, String(decoding: label.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
    }

    private func stat(_ path: String) -> (inode: UInt32, mode: UInt16, size: UInt64)? {
        var inode: UInt32 = 0, mode: UInt16 = 0, size: UInt64 = 0
        guard pvkit_ext2_stat(handle, path, &inode, &mode, &size) == 0 else { return nil }
        return (inode, mode, size)
    }

    public func kind(of path: String) -> GuestFileKind? {
        guard let found = stat(path) else { return nil }
        switch found.mode & 0o170000 {
        case 0o100000: return .file(size: found.size)
        case 0o040000: return .directory
        case 0o120000: return .symbolicLink
        default: return .other
        }
    }

    public func linkTarget(of path: String) throws(GuestFileError) -> String {
        guard let found = stat(path), found.mode & 0o170000 == 0o120000 else {
            throw GuestFileError(.notFound, "\(path) is not a symbolic link in \(description)", hint: "Check the guest's files")
        }
        var buffer = [CChar](repeating: 0, count: 4097)
        var length = 0
        let code = pvkit_ext2_readlink(handle, found.inode, &buffer, 4096, &length)
        guard code == 0, length <= 4096 else {
            throw GuestFileError(
                .damaged, "the link \(path) in \(description) cannot be read: \(Self.message(code))", hint: "The file system is damaged")
        }
        return String(decoding: buffer[0..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    public func contents(of path: String, limit: Int) throws(GuestFileError) -> [UInt8] {
        var storage = UnsafeMutableRawBufferPointer(start: nil, count: 0)
        defer { storage.deallocate() }
        try read(path, limit: limit) { count in
            storage = .allocate(byteCount: count, alignment: 16)
            return storage
        }
        return [UInt8](storage)
    }

    public func read(_ path: String, limit: Int, into allocate: (Int) -> UnsafeMutableRawBufferPointer) throws(GuestFileError) {
        guard let found = stat(path), found.mode & 0o170000 == 0o100000 else {
            throw GuestFileError(.notFound, "\(path) is not a regular file in \(description)", hint: "Check the guest's files")
        }
        guard found.size <= UInt64(limit) else {
            throw GuestFileError(
                .tooLarge, "\(path) in \(description) is \(found.size) bytes, more than the \(limit) read", hint: "The file is not what it should be")
        }
        let buffer = allocate(Int(found.size))
        guard buffer.count == Int(found.size) else {
            throw GuestFileError(.unreadable, "no room to read \(path) (\(found.size) bytes)", hint: "Check the memory limits")
        }
        guard found.size > 0 else { return }
        var got = 0
        let code = pvkit_ext2_read(handle, found.inode, 0, buffer.baseAddress, buffer.count, &got)
        guard code == 0, got == buffer.count else {
            throw GuestFileError(
                .damaged, "reading \(path) in \(description) failed after \(got) of \(buffer.count) bytes: \(Self.message(code))",
                hint: "The file system or the image is damaged; check a copy with e2fsck -n")
        }
    }

    public func names(in path: String) throws(GuestFileError) -> [String] {
        guard let found = stat(path), found.mode & 0o170000 == 0o040000 else {
            throw GuestFileError(.notFound, "\(path) is not a directory in \(description)", hint: "Check the guest's files")
        }
        final class Collector { var names: [String] = [] }
        let collector = Collector()
        let code = withExtendedLifetime(collector) {
            pvkit_ext2_list(
                handle, found.inode,
                { context, name, length in
                    guard let context, let name else { return 1 }
                    let collector = Unmanaged<Collector>.fromOpaque(context).takeUnretainedValue()
                    let bytes = UnsafeRawBufferPointer(start: name, count: length)
                    collector.names.append(String(decoding: bytes, as: UTF8.self))
                    return collector.names.count > 1_000_000 ? 1 : 0
                }, Unmanaged.passUnretained(collector).toOpaque())
        }
        guard code == 0 else {
            throw GuestFileError(.damaged, "listing \(path) in \(description) failed: \(Self.message(code))", hint: "The file system is damaged")
        }
        return collector.names.sorted()
    }

    public func hostPath(of path: String) -> String? { nil }
}
