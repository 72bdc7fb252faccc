import Glibc  // malloc, realloc, free
import PVSystem

/// Bytes of an image held in memory this value owns: a file read whole, or a decompressed
/// payload. Grows by `realloc`; the decompressors write straight into it.
public final class ImageBuffer: @unchecked Sendable {  // @unchecked: filled by one decompressor, then only read
    private(set) var base: UnsafeMutableRawPointer?
    private(set) var capacity: Int
    /// Bytes in use.
    public private(set) var count: Int = 0

    /// A read-only file mapping instead of malloc'd memory (unmapped on deinit).
    private let mapped: Bool

    init(capacity: Int) {
        self.capacity = max(capacity, 4096)
        base = malloc(self.capacity)
        precondition(base != nil, "out of memory allocating \(self.capacity) bytes")
        mapped = false
        adviseHugePages()
    }

    /// A copy of `bytes`.
    convenience init(copying bytes: UnsafeRawBufferPointer) {
        self.init(capacity: max(1, bytes.count))
        _ = reserve(extra: bytes.count, limit: Int.max)
        if let source = bytes.baseAddress, let target = freeSpace.baseAddress { target.copyMemory(from: source, byteCount: bytes.count) }
        commit(bytes.count)
    }

    /// Maps `count` bytes of an open file privately, read-only: no copy, no zeroed pages.
    /// (A file truncated by someone else while it is mapped would fault; pvcheck reads
    /// kernels, not files being rewritten.)
    init?(mapping fd: Int32, count: Int) {
        guard count > 0, let address = try? Memory.mapPrivately(fd, byteCount: count, context: "an image") else { return nil }  // the caller reads it instead
        base = address
        capacity = count
        self.count = count
        mapped = true
    }

    /// Large payloads fill tens of MiB of fresh memory: transparent huge pages cut the page
    /// faults by 512×. Advice only; ignored where THP is off.
    private func adviseHugePages() {
        guard capacity >= 4 << 20, let base else { return }
        Memory.adviseHugePages(base, byteCount: capacity)
    }

    /// The bytes in use. Valid while this buffer is alive and not growing.
    public var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: base, count: count) }

    /// A consumer of a decompressor's output: given the bytes held and the stream offset of the
    /// first, it returns how many it is done with.
    typealias Consumer = (UnsafeRawBufferPointer, Int) throws(KernelAuditError) -> Int

    /// With a consumer the buffer is a window over a stream (see ``drain()``).
    var consumer: Consumer?
    /// Bytes already handed to the consumer and dropped from the front.
    private(set) var dropped = 0
    /// Every byte written: the dropped ones and those held.
    var produced: Int { dropped + count }

    /// Hands the bytes held to the consumer and drops those it is done with.
    func drain() throws(KernelAuditError) {
        guard let consumer, count > 0, let base else { return }
        let used = try consumer(bytes, dropped)
        guard used > 0 else { return }
        precondition(used <= count, "a consumer used more bytes than it was given")
        base.copyMemory(from: base + used, byteCount: count - used)
        count -= used
        dropped += used
    }

    /// Gives back the capacity past the bytes in use (after a reservation at the limit).
    func releaseUnused() {
        guard !mapped, capacity > count + (1 << 20), let base, let moved = realloc(base, max(count, 1)) else { return }
        self.base = moved
        capacity = max(count, 1)
    }

    /// Makes room for at least `extra` more bytes, within `limit` in all.
    /// - Returns: false when the limit forbids it.
    func reserve(extra: Int, limit: Int) -> Bool {
        precondition(!mapped, "a mapped file does not grow")
        let needed = count + extra
        guard needed <= limit else { return false }
        if needed <= capacity { return true }
        let grown = min(max(needed, capacity + capacity / 2), limit)
        guard let moved = realloc(base, grown) else { return false }
        base = moved
        capacity = grown
        adviseHugePages()
        return true
    }

    /// Free space after the bytes in use.
    var freeSpace: UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: base! + count, count: capacity - count)
    }

    /// Marks `n` bytes of `freeSpace` as written.
    func commit(_ n: Int) {
        precondition(count + n <= capacity)
        count += n
    }

    /// Forgets the bytes past `count`.
    func truncate(to count: Int) {
        precondition(count <= self.count)
        self.count = count
    }

    deinit {
        if mapped, let base { Memory.unmap(base, byteCount: capacity) } else { free(base) }
    }
}
