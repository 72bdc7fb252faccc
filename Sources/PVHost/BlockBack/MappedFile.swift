import CLinux
#if canImport(Glibc)
import Glibc
#endif

/// A backing file mapped read-only and shared, for serving reads with one copy out of the page
/// cache and no system call. Copies are guarded: a page the file no longer has (it was cut
/// short under the backend, or the device failed to read it) raises SIGBUS, which fails that
/// copy instead of the process.
///
/// The SIGBUS handler and the copies that rely on it are the C shim's static functions with a
/// thread-local escape; they are all called from this file so they share one copy of it.
struct MappedFile: @unchecked Sendable {
    let base: UnsafeMutableRawPointer
    let byteCount: Int

    /// SIGBUS handled for guarded copies (installed once, before the first mapping).
    private static let guarded: Bool = pvkit_guard_copies() == 0

    /// Maps `byteCount` bytes of `descriptor`; nil when the file cannot be mapped (a character
    /// device, some FUSE file systems) or the handler could not be installed.
    init?(descriptor: Int32, byteCount: Int) {
        guard byteCount > 0, Self.guarded else { return nil }
        let mapped = mmap(nil, byteCount, PROT_READ, MAP_SHARED, descriptor, 0)
        guard let mapped, mapped != MAP_FAILED else { return nil }
        base = mapped
        self.byteCount = byteCount
    }

    /// Copies `count` bytes at `offset` of the file to `target`. False when the file faulted
    /// (the copy stopped part way).
    func copy(from offset: Int, to target: UnsafeMutableRawPointer, count: Int) -> Bool {
        precondition(offset >= 0 && count >= 0 && offset <= byteCount - count, "a copy within the mapping")
        return pvkit_guarded_copy(target, base + offset, count) == 0
    }

    func unmap() { munmap(base, byteCount) }
}
