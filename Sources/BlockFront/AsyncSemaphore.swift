import Foundation

/// A counting semaphore for async callers, first come first served: a caller asking for more
/// units than are free waits, and so does everyone behind it (no starvation of large
/// requests). Waiting ends with the units, with cancellation of the waiting task (units
/// never taken), or with the semaphore's failure. Releases never block.
///
/// BlockFront holds one for the data pages of a device and one per ring for its slots: the
/// back-pressure of a full ring or an exhausted page budget.
final class AsyncSemaphore: @unchecked Sendable {  // @unchecked: every var is under `lock`
    private struct Waiter {
        let id: UInt64
        let units: Int
        let continuation: CheckedContinuation<BlockFrontError?, Never>
    }

    private let lock = NSLock()
    private var free: Int
    private var waiters: [Waiter] = []
    private var nextID: UInt64 = 0
    private var failure: BlockFrontError?

    init(units: Int) { free = units }

    /// Units free now (for tests and statistics).
    var available: Int { lock.withLock { free } }

    /// Takes `units` if they are free now and nobody waits before us; never waits. False
    /// after the semaphore failed (the device's failure reaches callers elsewhere).
    func tryAcquire(_ units: Int) -> Bool {
        lock.withLock {
            guard failure == nil, waiters.isEmpty, free >= units else { return false }
            free -= units
            return true
        }
    }

    /// Takes up to `units` of those free now, if nobody waits before us; never waits.
    /// Returns how many it took.
    func tryAcquire(upTo units: Int) -> Int {
        lock.withLock {
            guard failure == nil, waiters.isEmpty else { return 0 }
            let taken = min(units, free)
            free -= taken
            return taken
        }
    }

    /// Takes `units`, waiting for them in turn.
    ///
    /// - Throws: ``BlockFrontError/cancelled`` when the task is cancelled while waiting, or the
    ///   error the semaphore failed with.
    func acquire(_ units: Int) async throws(BlockFrontError) {
        // Fast path: nobody waiting and enough free.
        let immediate: BlockFrontError?? = lock.withLock {
            if let failure { return .some(failure) }
            if waiters.isEmpty && free >= units { free -= units; return .some(nil) }
            return nil
        }
        if let immediate {
            if let error = immediate { throw error }
            return
        }
        let id = lock.withLock {
            defer { nextID &+= 1 }; return nextID
        }
        let outcome: BlockFrontError? = await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let resume: BlockFrontError?? = lock.withLock {
                    if let failure { return .some(failure) }
                    if Task.isCancelled { return .some(.cancelled) }
                    if waiters.isEmpty && free >= units { free -= units; return .some(nil) }
                    waiters.append(Waiter(id: id, units: units, continuation: continuation))
                    return nil
                }
                if let resume { continuation.resume(returning: resume) }
            }
        } onCancel: {
            let waiter: Waiter? = lock.withLock {
                guard let index = waiters.firstIndex(where: { $0.id == id }) else { return nil }
                return waiters.remove(at: index)
            }
            waiter?.continuation.resume(returning: .cancelled)
            // Whoever was behind it may fit now.
            release(0)
        }
        if let outcome { throw outcome }
    }

    /// Gives `units` back and wakes the waiters that now fit, in order.
    func release(_ units: Int) {
        var ready: [Waiter] = []
        lock.withLock {
            free += units
            while let first = waiters.first, first.units <= free {
                free -= first.units
                ready.append(waiters.removeFirst())
            }
        }
        for waiter in ready { waiter.continuation.resume(returning: nil) }
    }

    /// Every waiter, and every later caller, gets `error` (the device closed).
    func fail(_ error: BlockFrontError) {
        let all: [Waiter] = lock.withLock {
            if failure == nil { failure = error }
            defer { waiters.removeAll() }
            return waiters
        }
        for waiter in all { waiter.continuation.resume(returning: error) }
    }
}
