#if canImport(Glibc)
import Glibc
#endif
import CLinux

/// A Linux eventfd used as one direction of a notification channel.
///
/// `notify()` adds one; `wait()` blocks until the count is non-zero and resets it, so several
/// notifications before a wait coalesce into one wake-up, like an event channel's pending bit.
/// Counts how often it was notified, so benchmarks can report events per request.
public final class EventFD: @unchecked Sendable {
    /// The eventfd. Owned: closed on deinit.
    public let fileDescriptor: Int32

    /// Creates an eventfd.
    ///
    /// - Parameter inheritable: leave it open across `exec` for a child process.
    public init(inheritable: Bool = false) throws(SystemError) {
        let flags = inheritable ? Int32(0) : Int32(EFD_CLOEXEC)
        fileDescriptor = Int32(try retryingSyscall("eventfd") { Int(eventfd(0, flags)) })
    }

    /// Takes over an eventfd this process inherited.
    public init(adopting fileDescriptor: Int32) {
        self.fileDescriptor = fileDescriptor
    }

    /// Signals the waiter. C: `eventfd_write(fd, 1)`.
    public func notify() throws(SystemError) {
        var one: UInt64 = 1
        _ = try retryingSyscall("write", context: "eventfd \(fileDescriptor)") { write(fileDescriptor, &one, 8) }
    }

    /// Blocks until notified at least once since the last wait.
    ///
    /// - Returns: how many notifications this wake-up coalesced.
    @discardableResult
    public func wait() throws(SystemError) -> UInt64 {
        var count: UInt64 = 0
        _ = try retryingSyscall("read", context: "eventfd \(fileDescriptor)") { read(fileDescriptor, &count, 8) }
        return count
    }

    deinit { close(fileDescriptor) }
}
