import PVSystem

/// Memory for one request's data, reused from request to request (a fresh quarter-megabyte
/// array per READ cost a page fault per page and an `munmap`, a quarter of the export's CPU).
final class RequestBuffer: Sendable {
    private let start: MemoryAddress
    let capacity: Int

    init(capacity: Int) {
        self.capacity = capacity
        start = MemoryAddress(UnsafeMutableRawPointer.allocate(byteCount: max(capacity, 1), alignment: 4096))
    }

    deinit { start.pointer.deallocate() }

    /// The first `count` bytes (the task holding the buffer owns them).
    func bytes(_ count: Int) -> UnsafeMutableRawBufferPointer {
        precondition(count >= 0 && count <= capacity, "within the buffer")
        return UnsafeMutableRawBufferPointer(start: start.pointer, count: count)
    }
}

/// A connection's free buffers (at most one per request in flight).
final class RequestBuffers: Sendable {
    private let free = Locked<[RequestBuffer]>([])

    /// A buffer of at least `count` bytes.
    func take(_ count: Int) -> RequestBuffer {
        let reused = free.withLock { list -> RequestBuffer? in
            if let index = list.lastIndex(where: { $0.capacity >= count }) { return list.remove(at: index) }
            // None is big enough: one too small goes, so the list stays one per request.
            _ = list.popLast()
            return nil
        }
        return reused ?? RequestBuffer(capacity: max(count, 64 << 10))
    }

    func give(_ buffer: RequestBuffer) { free.withLock { $0.append(buffer) } }
}
