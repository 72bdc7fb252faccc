import PVSystem

/// A counting semaphore for async callers, first come first served: a caller asking for more
/// units than are free waits, and so does everyone behind it (no starvation of large
/// requests). Waiting ends with the units, with cancellation of the waiting task (units
/// never taken), or with the semaphore's failure. Releases never block.
///
/// BlockFront holds one for the data pages of a device and one per ring for its slots: the
/// back-pressure of a full ring or an exhausted page budget.
final class AsyncSemaphore: Sendable {
    private struct Waiter {
        let id: UInt64
        let units: Int
        let continuation: CheckedContinuation<BlockFrontError?, Never>
    }

    private struct State {
        var free: Int
        var waiters: [Waiter] = []
        var nextID: UInt64 = 0
        var failure: BlockFrontError?
    }

    private let state: Locked<State>

    init(units: Int) { state = Locked(State(free: units)) }

    /// Units free now (for tests and statistics).
    var available: Int { state.withLock { $0.free } }

    /// Takes `units` if they are free now and nobody waits before us; never waits. False
    /// after the semaphore failed (the device's failure reaches callers elsewhere).
    func tryAcquire(_ units: Int) -> Bool {
        state.withLock { state in
            guard state.failure == nil, state.waiters.isEmpty, state.free >= units else { return false }
            state.free -= units
            return true
        }
    }

    /// Takes up to `units` of those free now, if nobody waits before us; never waits.
    /// Returns how many it took.
    func tryAcquire(upTo units: Int) -> Int {
        state.withLock { state in
            guard state.failure == nil, state.waiters.isEmpty else { return 0 }
            let taken = min(units, state.free)
            state.free -= taken
            return taken
        }
    }

    /// Takes `units`, waiting for them in turn.
    ///
    /// - Throws: ``BlockFrontError/cancelled`` when the task is cancelled while waiting, or the
    ///   error the semaphore failed with.
    func acquire(_ units: Int) async throws(BlockFrontError) {
        // Fast path: nobody waiting and enough free. Otherwise the caller's ticket.
        let immediate: Result<UInt64, BlockFrontError>? = state.withLock { state in
            if let failure = state.failure { return .failure(failure) }
            if state.waiters.isEmpty && state.free >= units {
                state.free -= units
                return nil
            }
            defer { state.nextID &+= 1 }
            return .success(state.nextID)
        }
        guard let immediate else { return }
        let id = try immediate.get()
        let outcome: BlockFrontError? = await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let resume: BlockFrontError?? = state.withLock { state in
                    if let failure = state.failure { return .some(failure) }
                    if Task.isCancelled { return .some(.cancelled) }
                    if state.waiters.isEmpty && state.free >= units {
                        state.free -= units
                        return .some(nil)
                    }
                    state.waiters.append(Waiter(id: id, units: units, continuation: continuation))
                    return nil
                }
                if let resume { continuation.resume(returning: resume) }
            }
        } onCancel: {
            let waiter: Waiter? = state.withLock { state in
                guard let index = state.waiters.firstIndex(where: { $0.id == id }) else { return nil }
                return state.waiters.remove(at: index)
            }
            waiter?.continuation.resume(returning: .cancelled)
            // Whoever was behind it may fit now.
            release(0)
        }
        if let outcome { throw outcome }
    }

    /// Gives `units` back and wakes the waiters that now fit, in order.
    func release(_ units: Int) {
        let ready: [Waiter] = state.withLock { state in
            var ready: [Waiter] = []
            state.free += units
            while let first = state.waiters.first, first.units <= state.free {
                state.free -= first.units
                ready.append(state.waiters.removeFirst())
            }
            return ready
        }
        for waiter in ready { waiter.continuation.resume(returning: nil) }
    }

    /// Every waiter, and every later caller, gets `error` (the device closed).
    func fail(_ error: BlockFrontError) {
        let all: [Waiter] = state.withLock { state in
            if state.failure == nil { state.failure = error }
            defer { state.waiters.removeAll() }
            return state.waiters
        }
        for waiter in all { waiter.continuation.resume(returning: error) }
    }
}
