#if canImport(Glibc)
    import Glibc
#endif
import CLinux

/// A region of memory that several processes map: a memfd, and this process's mapping of it.
///
/// pvhost creates guest memory this way and passes the fd (SCM_RIGHTS or inheritance); each
/// side maps it with ``init(mapping:byteCount:)``. The mapping is removed and the fd closed
/// when the value is dropped. Pointers obtained from it must not outlive it.
public final class SharedMemoryRegion: Sendable {
    /// The memfd. Owned: closed on deinit.
    public let fileDescriptor: Int32
    /// Bytes mapped.
    public let byteCount: Int
    /// The mapping, page-aligned.
    public var baseAddress: UnsafeMutableRawPointer { base.pointer }
    private let base: MemoryAddress

    /// Creates a zero-filled memfd of `byteCount` bytes and maps it shared.
    ///
    /// - Parameters:
    ///   - name: shown in `/proc/<pid>/fd` and `/proc/<pid>/maps`.
    ///   - inheritable: leave the fd open across `exec` (for a child process to map it).
    public init(creating name: String, byteCount: Int, inheritable: Bool = false) throws(SystemError) {
        precondition(byteCount > 0, "a shared region needs at least one byte")
        let flags: UInt32 = inheritable ? 0 : UInt32(MFD_CLOEXEC)
        let fd = Int32(try retryingSyscall("memfd_create", context: name) { Int(memfd_create(name, flags)) })
        do throws(SystemError) {
            _ = try retryingSyscall("ftruncate", context: name) { Int(ftruncate(fd, off_t(byteCount))) }
            base = MemoryAddress(try Self.map(fd: fd, byteCount: byteCount))
        } catch {
            close(fd)
            throw error
        }
        fileDescriptor = fd
        self.byteCount = byteCount
    }

    /// Maps an existing memfd (or any shared file) that this process now owns.
    ///
    /// - Parameter fileDescriptor: taken over; closed when the region is dropped.
    public init(mapping fileDescriptor: Int32, byteCount: Int) throws(SystemError) {
        var status = stat()
        _ = try retryingSyscall("fstat") { Int(fstat(fileDescriptor, &status)) }
        guard Int(status.st_size) >= byteCount else {
            throw SystemError("mmap", errno: EINVAL, context: "fd \(fileDescriptor) holds \(status.st_size) bytes, \(byteCount) wanted")
        }
        base = MemoryAddress(try Self.map(fd: fileDescriptor, byteCount: byteCount))
        self.fileDescriptor = fileDescriptor
        self.byteCount = byteCount
    }

    private static func map(fd: Int32, byteCount: Int) throws(SystemError) -> UnsafeMutableRawPointer {
        let address = mmap(nil, byteCount, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        guard let address, address != MAP_FAILED else { throw SystemError("mmap", errno: errno, context: "\(byteCount) bytes") }
        return address
    }

    /// The whole mapping.
    public var bytes: UnsafeMutableRawBufferPointer { UnsafeMutableRawBufferPointer(start: baseAddress, count: byteCount) }

    /// Bytes `[offset, offset + count)` of the mapping.
    public func slice(offset: Int, count: Int) -> UnsafeMutableRawBufferPointer {
        precondition(offset >= 0 && count >= 0 && offset + count <= byteCount, "slice outside the region")
        return UnsafeMutableRawBufferPointer(start: baseAddress + offset, count: count)
    }

    deinit {
        munmap(baseAddress, byteCount)
        close(fileDescriptor)
    }
}

extension SharedMemoryRegion {
    /// Maps the region's pages `pages` (4 KiB page numbers, in that order) side by side at a
    /// new address, like a kernel's `vmap`: a multi-page ring whose granted pages are scattered
    /// in a guest's memory is contiguous in the alias. Both views share the same memory.
    public func alias(pages: [Int]) throws(SystemError) -> PageAlias {
        precondition(!pages.isEmpty && pages.allSatisfy { $0 >= 0 && ($0 + 1) * 4096 <= byteCount }, "alias of pages outside the region")
        let length = pages.count * 4096
        guard let reserved = mmap(nil, length, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), reserved != MAP_FAILED else {
            throw SystemError("mmap", errno: errno, context: "reserving \(pages.count) pages")
        }
        for (slot, page) in pages.enumerated() {
            let placed = mmap(reserved + slot * 4096, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fileDescriptor, off_t(page * 4096))
            guard placed == reserved + slot * 4096 else {
                let code = errno
                munmap(reserved, length)
                throw SystemError("mmap", errno: code, context: "page \(page) of the alias")
            }
        }
        return PageAlias(address: reserved, byteCount: length)
    }
}

/// A contiguous view of scattered pages of a ``SharedMemoryRegion`` (see
/// ``SharedMemoryRegion/alias(pages:)``); unmapped when dropped. The region's memory itself
/// stays (the memfd is shared), but pointers into the alias must not outlive it.
public final class PageAlias: Sendable {
    public var address: UnsafeMutableRawPointer { base.pointer }
    public let byteCount: Int
    private let base: MemoryAddress
    init(address: UnsafeMutableRawPointer, byteCount: Int) {
        base = MemoryAddress(address)
        self.byteCount = byteCount
    }
    deinit { munmap(address, byteCount) }
}
