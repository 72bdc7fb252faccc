import CLinux
import Synchronization

/// A value behind a lock: `Synchronization.Mutex`, with each acquire and release also told
/// to ThreadSanitizer. On Linux the Mutex waits on a futex inside the standard library, which
/// is not instrumented, so a `--sanitize=thread` run reports every pair of holders as a race;
/// with `Locked` it sees the lock's ordering. Outside such a build the annotation is a test of
/// a null weak symbol.
public struct Locked<Value: ~Copyable>: ~Copyable {
    @usableFromInline let mutex: Mutex<Value>
    /// An object whose address ThreadSanitizer's annotations name (the Mutex itself may move
    /// with its owner before it is first locked).
    @usableFromInline let token = Token()

    @usableFromInline final class Token: Sendable {
        @usableFromInline init() {}
    }

    public init(_ initialValue: consuming sending Value) {
        mutex = Mutex(initialValue)
    }

    /// Runs `body` with the value while holding the lock (`Mutex.withLock`).
    @inlinable
    public borrowing func withLock<Result: ~Copyable, E: Error>(
        _ body: (inout sending Value) throws(E) -> sending Result
    ) throws(E) -> sending Result {
        try mutex.withLock { (value: inout sending Value) throws(E) -> sending Result in
            let address = Unmanaged.passUnretained(token).toOpaque()
            pvkit_tsan_acquire(address)
            defer { pvkit_tsan_release(address) }
            return try body(&value)
        }
    }
}

extension Locked: Sendable where Value: ~Copyable {}
