import CQcow
import CVhdi
import CVmdk
import SystemPackage

/// libyal's handles and errors are all `intptr_t *` in C.
typealias YalHandle = UnsafeMutablePointer<Int>
typealias QcowFile = UnsafeMutablePointer<libqcow_file_t>
typealias QcowError = UnsafeMutablePointer<libqcow_error_t>

/// A whole disk image opened read-only: raw, or qcow2, VMDK, VHD and VHDX through libyal's
/// libqcow, libvmdk and libvhdi. Reads are of the virtual disk, whatever the format stores;
/// nothing is ever written (files are opened read-only).
public final class DiskImage {
    public enum Format: String, Sendable, Codable {
        case raw, qcow2, vmdk, vhd, vhdx

        /// qemu's block driver for the format (for a FUSE export to a loop device).
        var qemuDriver: String {
            switch self {
            case .raw: "raw"
            case .qcow2: "qcow2"
            case .vmdk: "vmdk"
            case .vhd: "vpc"
            case .vhdx: "vhdx"
            }
        }
    }

    public let path: String
    public let format: Format
    /// The virtual disk's size in bytes.
    public let size: UInt64
    /// Bytes of the image read so far (the virtual disk's, not the file's).
    public private(set) var bytesRead: UInt64 = 0
    private let file: FileDescriptor
    private var qcow: QcowFile?
    private var vmdk: YalHandle?
    private var vhdi: YalHandle?

    /// The qcow header's magic, "QFI\xfb".
    static let qcowMagic: [UInt8] = [0x51, 0x46, 0x49, 0xFB]

    public init(path: String) throws(GuestFileError) {
        self.path = path
        let file: FileDescriptor
        do {
            file = try FileDescriptor.open(FilePath(path), .readOnly, options: [.closeOnExec])
        } catch {
            throw GuestFileError(
                .unreadable, "cannot open \(path): \(error)",
                hint: (error as? Errno) == .noSuchFileOrDirectory ? "Check the path" : "Check the file's permissions")
        }
        var header = [UInt8](repeating: 0, count: 72)
        let headerCount: Int
        let fileSize: Int64
        do {
            headerCount = try header.withUnsafeMutableBytes { try file.read(fromAbsoluteOffset: 0, into: $0) }
            fileSize = try file.seek(offset: 0, from: .end)
        } catch {
            try? file.close()
            throw GuestFileError(.unreadable, "reading \(path) failed: \(error)", hint: "Check the device the image is on")
        }
        self.file = file
        var footer = [UInt8](repeating: 0, count: 8)
        if fileSize >= 512 {
            do {
                _ = try footer.withUnsafeMutableBytes { try file.read(fromAbsoluteOffset: fileSize - 512, into: $0) }
            } catch {
                try? file.close()
                throw GuestFileError(.unreadable, "reading the end of \(path) failed: \(error)", hint: "Check the device the image is on")
            }
        }
        func starts(_ text: String) -> Bool { headerCount >= text.utf8.count && header.starts(with: Array(text.utf8)) }
        if headerCount >= 4, Array(header[0..<4]) == Self.qcowMagic {
            format = .qcow2
        } else if starts("KDMV") || starts("# Disk DescriptorFile") {
            format = .vmdk
        } else if starts("vhdxfile") {
            format = .vhdx
        } else if starts("conectix") || footer == Array("conectix".utf8) {
            format = .vhd
        } else {
            format = .raw
            size = UInt64(fileSize)
            return
        }
        do {
            switch format {
            case .qcow2:
                try Self.checkQcowHeader(header[0..<headerCount], path: path)
                try Self.checkQcowTables(header[0..<headerCount], file: file, fileSize: UInt64(fileSize), path: path)
                let opened = try Self.openQcow(path)
                qcow = opened.handle
                size = opened.size
            case .vmdk:
                let opened = try Self.openVmdk(path)
                vmdk = opened.handle
                size = opened.size
            default:
                let opened = try Self.openVhdi(path, format: format)
                vhdi = opened.handle
                size = opened.size
            }
        } catch {
            try? file.close()
            throw error
        }
    }

    deinit {
        if let handle = vmdk {
            var error: YalHandle? = nil
            _ = libvmdk_handle_close(handle, &error)
            libvmdk_error_free(&error)
            var optional: YalHandle? = handle
            _ = libvmdk_handle_free(&optional, &error)
            libvmdk_error_free(&error)
        }
        if let handle = vhdi {
            var error: YalHandle? = nil
            _ = libvhdi_file_close(handle, &error)
            libvhdi_error_free(&error)
            var optional: YalHandle? = handle
            _ = libvhdi_file_free(&optional, &error)
            libvhdi_error_free(&error)
        }
        if let opened = qcow {
            var handle: QcowFile? = opened
            var error: QcowError? = nil
            _ = libqcow_file_close(opened, &error)
            libqcow_error_free(&error)
            _ = libqcow_file_free(&handle, &error)
            libqcow_error_free(&error)
        }
        try? file.close()
    }

    /// Refuses what libqcow would read wrongly for an audit: a backing file (the data is
    /// elsewhere) and encryption (no key is given).
    static func checkQcowHeader(_ header: ArraySlice<UInt8>, path: String) throws(GuestFileError) {
        func be(_ at: Int, _ count: Int) -> UInt64? {
            guard header.count >= at + count else { return nil }
            return header[header.startIndex + at..<header.startIndex + at + count].reduce(0) { $0 << 8 | UInt64($1) }
        }
        guard let version = be(4, 4), version >= 2, version <= 3 else {
            throw GuestFileError(
                .unsupported, "\(path) is qcow version \(be(4, 4).map(String.init) ?? "?"), not 2 or 3",
                hint: "Convert it with qemu-img convert -O qcow2")
        }
        let backingOffset = be(8, 8) ?? 0
        if backingOffset != 0 {
            throw GuestFileError(
                .unsupported, "\(path) is a qcow\(version) overlay: its data continues in a backing file",
                hint: "Audit the flattened disk: qemu-img convert -O qcow2 \(path) flat.qcow2")
        }
        let cryptMethod = be(32, 4) ?? 0
        if cryptMethod != 0 {
            throw GuestFileError(
                .unsupported, "\(path) is encrypted (qcow crypt method \(cryptMethod))", hint: "Audit a decrypted copy (qemu-img convert)")
        }
    }

    /// Every L1 and L2 entry must name clusters inside the file before libqcow reads any: a
    /// table pointing past the end (a cut image) made libqcow 20201213 copy past its own buffer
    /// (found by the disk-image fuzz target under ASan). The walk reads the L1 table and each L2
    /// table once (for a 2 GiB image with 64 KiB clusters: 4 L2 tables, 256 KiB).
    static func checkQcowTables(_ header: ArraySlice<UInt8>, file: FileDescriptor, fileSize: UInt64, path: String) throws(GuestFileError) {
        func be(_ bytes: ArraySlice<UInt8>, _ at: Int, _ count: Int) -> UInt64 {
            bytes[bytes.startIndex + at..<bytes.startIndex + at + count].reduce(0) { $0 << 8 | UInt64($1) }
        }
        func damaged(_ what: String) -> GuestFileError {
            GuestFileError(
                .damaged, "\(path) is a damaged qcow2 image: \(what)", hint: "The image is cut short or its tables lie; check it with qemu-img check")
        }
        guard header.count >= 72 else { throw damaged("its header is cut short") }
        let clusterBits = be(header, 20, 4)
        guard clusterBits >= 9, clusterBits <= 21 else { throw damaged("cluster_bits \(clusterBits) is outside 9–21") }
        let clusterSize = UInt64(1) << clusterBits
        let l1Size = be(header, 36, 4), l1Offset = be(header, 40, 8)
        guard l1Offset <= fileSize, l1Size <= (fileSize - l1Offset) / 8 else {
            throw damaged("its L1 table (\(l1Size) entries at \(l1Offset)) runs past the end of the \(fileSize)-byte file")
        }
        func read(_ offset: UInt64, _ count: Int) throws(GuestFileError) -> [UInt8] {
            var bytes = [UInt8](repeating: 0, count: count)
            let got: Int
            do {
                got = try bytes.withUnsafeMutableBytes { try file.read(fromAbsoluteOffset: Int64(offset), into: $0) }
            } catch {
                throw GuestFileError(.unreadable, "reading \(path) at \(offset) failed: \(error)", hint: "Check the device the image is on")
            }
            guard got == count else { throw damaged("a table at \(offset) is cut short") }
            return bytes
        }
        /// A cluster of `count` bytes at `offset` lies inside the file.
        func inside(_ offset: UInt64, _ count: UInt64) -> Bool { offset <= fileSize && count <= fileSize - offset }
        let offsetMask: UInt64 = 0x00FF_FFFF_FFFF_FE00
        let compressedOffsetBits = 62 - (clusterBits - 8)
        let l1 = try read(l1Offset, Int(l1Size) * 8)[...]
        for index in 0..<Int(l1Size) {
            let l2Offset = be(l1, index * 8, 8) & offsetMask
            guard l2Offset != 0 else { continue }
            guard inside(l2Offset, clusterSize) else { throw damaged("L1 entry \(index) names an L2 table at \(l2Offset), past the end of the file") }
            let l2 = try read(l2Offset, Int(clusterSize))[...]
            for slot in 0..<Int(clusterSize / 8) {
                let entry = be(l2, slot * 8, 8)
                if entry & (1 << 62) != 0 {
                    // Compressed: the host offset in the low bits, then the count of extra 512-byte sectors.
                    let host = entry & ((1 << compressedOffsetBits) - 1)
                    let sectors = ((entry & ((1 << 62) - 1)) >> compressedOffsetBits) + 1
                    guard inside(host, 0), sectors * 512 <= fileSize - host + 512 else {
                        throw damaged("L2 table at \(l2Offset), entry \(slot), names compressed data past the end of the file")
                    }
                } else if entry & offsetMask != 0 {
                    guard inside(entry & offsetMask, clusterSize) else {
                        throw damaged("L2 table at \(l2Offset), entry \(slot), names a cluster at \(entry & offsetMask), past the end of the file")
                    }
                }
            }
        }
    }

    static func openQcow(_ path: String) throws(GuestFileError) -> (handle: QcowFile, size: UInt64) {
        var error: QcowError? = nil
        var handle: QcowFile? = nil
        guard libqcow_file_initialize(&handle, &error) == 1, let opened = handle else {
            throw GuestFileError(.unreadable, "libqcow cannot start: \(message(&error))", hint: "Check libqcow's installation")
        }
        handle = opened
        guard libqcow_file_open(opened, path, Int32(LIBQCOW_ACCESS_FLAG_READ.rawValue), &error) == 1 else {
            let text = message(&error)
            _ = libqcow_file_free(&handle, &error)
            libqcow_error_free(&error)
            throw GuestFileError(.damaged, "\(path) is not a qcow image libqcow can read: \(text)", hint: "Check it with qemu-img check")
        }
        var size: size64_t = 0
        guard libqcow_file_get_media_size(opened, &size, &error) == 1 else {
            let text = message(&error)
            _ = libqcow_file_close(opened, &error)
            _ = libqcow_file_free(&handle, &error)
            libqcow_error_free(&error)
            throw GuestFileError(.damaged, "\(path) has no readable disk size: \(text)", hint: "Check it with qemu-img check")
        }
        return (opened, UInt64(size))
    }

    static func openVmdk(_ path: String) throws(GuestFileError) -> (handle: YalHandle, size: UInt64) {
        var error: YalHandle? = nil
        var handle: YalHandle? = nil
        guard libvmdk_handle_initialize(&handle, &error) == 1, let opened = handle else {
            throw GuestFileError(.unreadable, "libvmdk cannot start: \(vmdkMessage(&error))", hint: "Check libvmdk's installation")
        }
        func fail(_ what: String) -> GuestFileError {
            let text = vmdkMessage(&error)
            _ = libvmdk_handle_close(opened, &error)
            libvmdk_error_free(&error)
            _ = libvmdk_handle_free(&handle, &error)
            libvmdk_error_free(&error)
            return GuestFileError(.damaged, "\(path) \(what): \(text)", hint: "Check it with qemu-img check, or convert it with qemu-img convert -O raw")
        }
        guard libvmdk_handle_open(opened, path, Int32(LIBVMDK_ACCESS_FLAG_READ.rawValue), &error) == 1 else {
            throw fail("is not a VMDK image libvmdk can read")
        }
        // A snapshot delta's data continues in its parent (0xffffffff: no parent).
        var parent: UInt32 = 0xFFFF_FFFF
        if libvmdk_handle_get_parent_content_identifier(opened, &parent, &error) == 1, parent != 0xFFFF_FFFF {
            _ = libvmdk_handle_close(opened, &error)
            _ = libvmdk_handle_free(&handle, &error)
            libvmdk_error_free(&error)
            throw GuestFileError(
                .unsupported, "\(path) is a VMDK snapshot: its data continues in a parent image",
                hint: "Audit the merged disk: qemu-img convert -O qcow2 \(path) flat.qcow2")
        }
        libvmdk_error_free(&error)
        // Split and flat VMDKs keep their data in extent files named by the descriptor.
        guard libvmdk_handle_open_extent_data_files(opened, &error) == 1 else { throw fail("has extent files libvmdk cannot open") }
        var size: size64_t = 0
        guard libvmdk_handle_get_media_size(opened, &size, &error) == 1 else { throw fail("has no readable disk size") }
        return (opened, UInt64(size))
    }

    static func openVhdi(_ path: String, format: Format) throws(GuestFileError) -> (handle: YalHandle, size: UInt64) {
        var error: YalHandle? = nil
        var handle: YalHandle? = nil
        guard libvhdi_file_initialize(&handle, &error) == 1, let opened = handle else {
            throw GuestFileError(.unreadable, "libvhdi cannot start: \(vhdiMessage(&error))", hint: "Check libvhdi's installation")
        }
        func fail(_ code: GuestFileError.Code, _ what: String, hint: String) -> GuestFileError {
            let text = error == nil ? "" : ": " + vhdiMessage(&error)
            _ = libvhdi_file_close(opened, &error)
            libvhdi_error_free(&error)
            _ = libvhdi_file_free(&handle, &error)
            libvhdi_error_free(&error)
            return GuestFileError(code, "\(path) \(what)\(text)", hint: hint)
        }
        guard libvhdi_file_open(opened, path, Int32(LIBVHDI_ACCESS_FLAG_READ.rawValue), &error) == 1 else {
            throw fail(.damaged, "is not a \(format.rawValue.uppercased()) image libvhdi can read", hint: "Check it with qemu-img check")
        }
        var diskType: UInt32 = 0
        if libvhdi_file_get_disk_type(opened, &diskType, &error) == 1, diskType == UInt32(LIBVHDI_DISK_TYPE_DIFFERENTIAL.rawValue) {
            throw fail(
                .unsupported, "is a differencing \(format.rawValue.uppercased()): its data continues in a parent image",
                hint: "Audit the merged disk: qemu-img convert -O qcow2 \(path) flat.qcow2")
        }
        libvhdi_error_free(&error)
        var size: size64_t = 0
        guard libvhdi_file_get_media_size(opened, &size, &error) == 1 else {
            throw fail(.damaged, "has no readable disk size", hint: "Check it with qemu-img check")
        }
        return (opened, UInt64(size))
    }

    /// A libyal error as text, and the error freed: each library has its own `*_error_sprint`
    /// and `*_error_free`, the same shape. The messages are one line per layer; the innermost
    /// (last) says what was wrong.
    static func yalMessage(
        _ error: inout YalHandle?, sprint: (YalHandle?, UnsafeMutablePointer<CChar>, Int) -> Int32,
        free: (UnsafeMutablePointer<YalHandle?>) -> Void
    ) -> String {
        guard error != nil else { return "no reason given" }
        var buffer = [CChar](repeating: 0, count: 512)
        _ = buffer.withUnsafeMutableBufferPointer { sprint(error, $0.baseAddress!, $0.count) }
        free(&error)
        let text = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return text.split(separator: "\n").last.map(String.init) ?? text
    }

    static func vmdkMessage(_ error: inout YalHandle?) -> String {
        yalMessage(&error, sprint: { libvmdk_error_sprint($0, $1, $2) }, free: { libvmdk_error_free($0) })
    }

    static func vhdiMessage(_ error: inout YalHandle?) -> String {
        yalMessage(&error, sprint: { libvhdi_error_sprint($0, $1, $2) }, free: { libvhdi_error_free($0) })
    }

    static func message(_ error: inout QcowError?) -> String {
        yalMessage(&error, sprint: { libqcow_error_sprint($0, $1, $2) }, free: { libqcow_error_free($0) })
    }

    /// Fills `buffer` from `offset` of the virtual disk; a read past its end is an error.
    public func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(GuestFileError) {
        guard buffer.count > 0 else { return }
        let (end, overflow) = offset.addingReportingOverflow(UInt64(buffer.count))
        guard !overflow, end <= size else {
            throw GuestFileError(
                .damaged, "a read of \(buffer.count) bytes at \(offset) runs past the end of \(path) (\(size) bytes)",
                hint: "The partition table or file system describes a larger disk: the image is cut short or damaged")
        }
        if format != .raw {
            var done = 0
            while done < buffer.count {
                let at = off64_t(offset) + off64_t(done)
                let target = buffer.baseAddress! + done, count = buffer.count - done
                var n = -1
                var reason = ""
                if let qcow {
                    var error: QcowError? = nil
                    n = libqcow_file_read_buffer_at_offset(qcow, target, count, at, &error)
                    if n <= 0 { reason = Self.message(&error) }
                } else if let vmdk {
                    var error: YalHandle? = nil
                    n = libvmdk_handle_read_buffer_at_offset(vmdk, target, count, at, &error)
                    if n <= 0 { reason = Self.vmdkMessage(&error) }
                } else if let vhdi {
                    var error: YalHandle? = nil
                    n = libvhdi_file_read_buffer_at_offset(vhdi, target, count, at, &error)
                    if n <= 0 { reason = Self.vhdiMessage(&error) }
                }
                guard n > 0 else {
                    throw GuestFileError(
                        .damaged, "reading \(path) at \(offset + UInt64(done)) failed: \(reason)",
                        hint: "The \(format.rawValue) image's tables point outside the file or it is cut short; check it with qemu-img check")
                }
                done += n
            }
        } else {
            var done = 0
            while done < buffer.count {
                let n: Int
                do {
                    n = try file.read(fromAbsoluteOffset: Int64(offset) + Int64(done), into: UnsafeMutableRawBufferPointer(rebasing: buffer[done...]))
                } catch {
                    throw GuestFileError(.unreadable, "reading \(path) at \(offset + UInt64(done)) failed: \(error)", hint: "Check the device the image is on")
                }
                guard n > 0 else {
                    throw GuestFileError(.damaged, "\(path) ends at \(offset + UInt64(done)), inside a read", hint: "The image is cut short")
                }
                done += n
            }
        }
        bytesRead &+= UInt64(buffer.count)
    }

    /// `count` bytes at `offset`.
    public func bytes(at offset: UInt64, count: Int) throws(GuestFileError) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        let result: Result<Void, GuestFileError> = bytes.withUnsafeMutableBytes { buffer in
            Result { () throws(GuestFileError) in try read(at: offset, into: buffer) }
        }
        try result.get()
        return bytes
    }

    /// The raw file's descriptor, for libraries that probe a descriptor (libblkid); nil for the other formats.
    var rawDescriptor: FileDescriptor? { format == .raw ? file : nil }
}
