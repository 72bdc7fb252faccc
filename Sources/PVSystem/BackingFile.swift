import CLinux
import Glibc

/// A virtual disk's backing file (a regular file or a block device): vectored reads and
/// writes at an offset, `fdatasync`, hole punching, and a guarded read-only mapping. With
/// `direct`, I/O goes through a second descriptor opened `O_DIRECT`, falling back to the
/// buffered one for a request the device refuses unaligned (`EINVAL`).
public final class BackingFile: Sendable {
    public let path: String
    /// Its size in bytes (a block device's from `lseek(SEEK_END)`).
    public let byteCount: UInt64
    private let buffered: Int32
    /// The `O_DIRECT` descriptor, or `buffered`.
    private let file: Int32

    /// `O_DIRECT` (not exported by Swift's Glibc module).
    #if arch(arm64)
        public static let directFlag: Int32 = 0o200000
    #else
        public static let directFlag: Int32 = 0o40000
    #endif

    /// Opens `path` (read-only, or read-write).
    public init(path: String, readOnly: Bool, direct: Bool) throws(SystemError) {
        let mode = (readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC
        let buffered = try retryingSyscall32("open", context: path) { open(path, mode) }
        var file = buffered
        if direct {
            do { file = try retryingSyscall32("open", context: "\(path) (O_DIRECT)") { open(path, mode | Self.directFlag) } } catch {
                close(buffered)
                throw error
            }
        }
        var status = stat()
        guard fstat(buffered, &status) == 0 else {
            let code = Glibc.errno
            if file != buffered { close(file) }
            close(buffered)
            throw SystemError("fstat", errno: code, context: path)
        }
        var bytes = UInt64(status.st_size)
        if (status.st_mode & S_IFMT) == S_IFBLK { bytes = UInt64(max(0, lseek(buffered, 0, SEEK_END))) }
        self.path = path
        byteCount = bytes
        self.buffered = buffered
        self.file = file
    }

    deinit {
        if file != buffered { close(file) }
        close(buffered)
    }

    /// Reads the vectors' bytes at `offset`; true when every byte came. C: `preadv`.
    public func read(_ vectors: IOVectors, at offset: UInt64) -> Bool { move(vectors, at: offset, write: false) }

    /// Writes the vectors' bytes at `offset`; true when every byte went. C: `pwritev`.
    public func write(_ vectors: IOVectors, at offset: UInt64) -> Bool { move(vectors, at: offset, write: true) }

    private func move(_ vectors: IOVectors, at offset: UInt64, write: Bool) -> Bool {
        func attempt(_ fd: Int32) -> Int {
            vectors.vectors.withUnsafeBufferPointer { v in
                while true {
                    let done =
                        write
                        ? pwritev(fd, v.baseAddress, Int32(v.count), off_t(truncatingIfNeeded: offset))
                        : preadv(fd, v.baseAddress, Int32(v.count), off_t(truncatingIfNeeded: offset))
                    if done < 0 && Glibc.errno == EINTR { continue }
                    return done
                }
            }
        }
        var done = attempt(file)
        if done < 0 && Glibc.errno == EINVAL && file != buffered { done = attempt(buffered) }
        return done == vectors.byteCount
    }

    /// Commits written data to the device. C: `fdatasync`.
    public func sync() -> Bool {
        while true {
            if fdatasync(file) == 0 { return true }
            if Glibc.errno != EINTR { return false }
        }
    }

    /// Deallocates `count` bytes at `offset` (they read back as zeros), keeping the size.
    /// C: `fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)`.
    public func punchHole(at offset: UInt64, count: UInt64) -> Bool {
        fallocate(file, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off_t(truncatingIfNeeded: offset), off_t(truncatingIfNeeded: count)) == 0
    }

    /// The first `byteCount` bytes mapped read-only for guarded copies; nil when the file
    /// cannot be mapped (a character device, some FUSE file systems).
    public func mapForReading(byteCount: Int) -> GuardedMapping? {
        GuardedMapping(descriptor: buffered, byteCount: byteCount)
    }
}

/// The segments of one vectored read or write (`iovec`s), adjacent ones joined; reused
/// between requests without allocating.
public struct IOVectors {
    fileprivate var vectors: [iovec] = []
    /// Bytes in all segments.
    public private(set) var byteCount = 0

    public init() {}

    public mutating func removeAll() {
        vectors.removeAll(keepingCapacity: true)
        byteCount = 0
    }

    /// Adds `count` bytes at `pointer` (joined to the last segment when they follow it).
    public mutating func append(_ pointer: UnsafeMutableRawPointer, count: Int) {
        if let last = vectors.last, last.iov_base! + last.iov_len == pointer {
            vectors[vectors.count - 1].iov_len += count
        } else {
            vectors.append(iovec(iov_base: pointer, iov_len: count))
        }
        byteCount += count
    }

    /// Each segment in order.
    public func forEach(_ body: (UnsafeMutableRawPointer, Int) -> Bool) -> Bool {
        for vector in vectors where !body(vector.iov_base!, vector.iov_len) { return false }
        return true
    }
}

/// A file mapped read-only and shared, for serving reads with one copy out of the page
/// cache and no system call. Copies are guarded: a page the file no longer has (it was cut
/// short under the backend, or the device failed to read it) raises SIGBUS, which fails that
/// copy instead of the process.
///
/// The SIGBUS handler and the copies that rely on it are the C shim's static functions with a
/// thread-local escape; they are all called from this file so they share one copy of it.
public struct GuardedMapping: Sendable {
    /// The mapping (read-only; every copy out of it is checked).
    public var base: UnsafeMutableRawPointer { start.pointer }
    private let start: MemoryAddress
    public let byteCount: Int

    /// SIGBUS handled for guarded copies (installed once, before the first mapping).
    private static let guarded: Bool = pvkit_guard_copies() == 0

    init?(descriptor: Int32, byteCount: Int) {
        guard byteCount > 0, Self.guarded else { return nil }
        let mapped = mmap(nil, byteCount, PROT_READ, MAP_SHARED, descriptor, 0)
        guard let mapped, mapped != MAP_FAILED else { return nil }
        start = MemoryAddress(mapped)
        self.byteCount = byteCount
    }

    /// Copies `count` bytes at `offset` of the file to `target`. False when the file faulted
    /// (the copy stopped part way).
    public func copy(from offset: Int, to target: UnsafeMutableRawPointer, count: Int) -> Bool {
        precondition(offset >= 0 && count >= 0 && offset <= byteCount - count, "a copy within the mapping")
        return pvkit_guarded_copy(target, base + offset, count) == 0
    }

    public func unmap() { munmap(base, byteCount) }
}
