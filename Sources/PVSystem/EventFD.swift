import CLinux
import Glibc

/// A Linux eventfd: one direction of a notification channel, and the project's only owner of
/// one (event channels of pvhost's guests, the event loop's wake-up).
///
/// ``notify()`` adds one; ``wait()`` blocks until the count is non-zero and resets it, so
/// several notifications before a wait coalesce into one wake-up, like an event channel's
/// pending bit. An event loop watches ``fileDescriptor`` and takes the count with
/// ``consume()``, which never blocks.
public final class EventFD: Sendable {
    /// The eventfd. Owned: closed on deinit.
    public let fileDescriptor: Int32
    /// `O_NONBLOCK` was set when this object took it (``consume()`` then reads at once).
    private let nonBlocking: Bool

    /// Creates an eventfd.
    ///
    /// - Parameters:
    ///   - inheritable: leave it open across `exec` for a child process.
    ///   - nonBlocking: ``consume()`` reads at once (``wait()`` still waits).
    ///   - semaphore: each ``wait()`` takes one notification, not all (C: `EFD_SEMAPHORE`): a
    ///     count of jobs for a set of worker threads.
    public init(inheritable: Bool = false, nonBlocking: Bool = false, semaphore: Bool = false) throws(SystemError) {
        let flags = (inheritable ? Int32(0) : Int32(EFD_CLOEXEC)) | (nonBlocking ? Int32(EFD_NONBLOCK) : 0) | (semaphore ? Int32(EFD_SEMAPHORE) : 0)
        fileDescriptor = try retryingSyscall32("eventfd") { eventfd(0, flags) }
        self.nonBlocking = nonBlocking
    }

    /// Takes over an eventfd this process inherited or received.
    public init(adopting fileDescriptor: Int32) {
        self.fileDescriptor = fileDescriptor
        nonBlocking = fcntl(fileDescriptor, F_GETFL) & O_NONBLOCK != 0
    }

    /// Signals the waiter. C: `eventfd_write(fd, 1)`.
    ///
    /// - Throws: ``SystemError`` (`EBADF` when the descriptor is not an eventfd any more).
    public func notify(_ count: UInt64 = 1) throws(SystemError) {
        var one: UInt64 = count
        _ = try retryingSyscall("write", context: "eventfd \(fileDescriptor)") { write(fileDescriptor, &one, 8) }
    }

    /// Blocks the calling thread until notified at least once since the last wait (also when
    /// the descriptor is non-blocking). Never on Swift's cooperative pool: tasks wait through
    /// an ``EventLoop``.
    ///
    /// - Returns: how many notifications this wake-up coalesced.
    @discardableResult
    public func wait() throws(SystemError) -> UInt64 {
        while true {
            var count: UInt64 = 0
            let n = read(fileDescriptor, &count, 8)
            if n == 8 { return count }
            let code = Glibc.errno
            if n < 0 && code == EINTR { continue }
            guard n < 0 && code == EAGAIN else { throw SystemError("read", errno: n < 0 ? code : EIO, context: "eventfd \(fileDescriptor)") }
            var entry = pollfd(fd: fileDescriptor, events: Int16(POLLIN), revents: 0)
            _ = try retryingSyscall32("poll", context: "eventfd \(fileDescriptor)") { poll(&entry, 1, -1) }
        }
    }

    /// Takes the notifications counted so far without blocking: 0 when there were none.
    /// (A blocking eventfd is looked at first, one more system call.)
    @discardableResult
    public func consume() -> UInt64 {
        if !nonBlocking && !isPending { return 0 }
        var count: UInt64 = 0
        while true {
            let n = read(fileDescriptor, &count, 8)
            if n == 8 { return count }
            if n < 0 && Glibc.errno == EINTR { continue }
            return 0  // EAGAIN: another reader took them
        }
    }

    /// Whether a notification is waiting (C: `poll` with no timeout).
    public var isPending: Bool {
        var entry = pollfd(fd: fileDescriptor, events: Int16(POLLIN), revents: 0)
        while true {
            let ready = poll(&entry, 1, 0)
            if ready >= 0 { return ready == 1 }
            if Glibc.errno != EINTR { return false }
        }
    }

    deinit { close(fileDescriptor) }
}
