import PVSystem
import Synchronization

/// Closes a frontend device once, whoever asks first (its user, or the device's own failure):
/// stops the handshake (so its last state write cannot land after Closing), fails the
/// device's waiters with the reason, says Closing (or records the error, as
/// `xenbus_dev_error`), waits (up to 5 s) for the backend's Closing, says Closed, waits (up to
/// 5 s) for the backend's Closed — it has let go of the rings by then — and releases the
/// transport (revoking grants with try semantics). Later callers wait for the first.
public final class FrontendCloser<Reason: Error & Sendable & CustomStringConvertible>: Sendable {
    private let xenbus: XenbusFrontend
    private let lifecycle: Task<Void, Never>
    private let fail: @Sendable (Reason?) -> Void
    private let release: @Sendable () async -> Void
    private let started = Locked(false)
    private let done = Locked<[CheckedContinuation<Void, Never>]?>([])

    /// `fail` ends the device's waiters (nil: closed by its user); `release` stops its I/O and
    /// frees the transport once the backend is Closed (or the wait ran out).
    public init(
        xenbus: XenbusFrontend, lifecycle: Task<Void, Never>, fail: @escaping @Sendable (Reason?) -> Void,
        release: @escaping @Sendable () async -> Void
    ) {
        self.xenbus = xenbus
        self.lifecycle = lifecycle
        self.fail = fail
        self.release = release
    }

    public func close(reason: Reason?) async {
        let first = started.withLock { started in
            defer { started = true }; return !started
        }
        guard first else {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let finished = done.withLock { waiting in
                    guard waiting != nil else { return true }
                    waiting!.append(continuation)
                    return false
                }
                if finished { continuation.resume() }
            }
            return
        }
        lifecycle.cancel()
        await lifecycle.value
        fail(reason)
        if let reason { await xenbus.fail(errno: 5, "\(reason)") } else { try? await xenbus.switchState(.closing) }
        // The backend answers Closing and goes Closed after we do (Linux blkback unmaps only
        // then): Closed, then wait for its Closed, then revoke — waiting for its Closed first
        // would always run out the clock against Linux.
        await xenbus.waitForBackend(in: [.closing, .closed, .unknown], timeout: .seconds(5))
        try? await xenbus.switchState(.closed)
        await xenbus.waitForBackend(in: [.closed, .unknown], timeout: .seconds(5))
        await release()
        let waiting = done.withLock { waiting in
            defer { waiting = nil }; return waiting ?? []
        }
        for continuation in waiting { continuation.resume() }
    }
}
