import DequeModule
import PVSystem

/// Units taken and given back by tasks: waiters resume in order. A cancelled waiter gets no
/// unit (``acquire()`` returns false).
final class AsyncGate: Sendable {
    private struct State {
        var available: Int
        var waiters: Deque<(id: UInt64, continuation: CheckedContinuation<Bool, Never>)> = []
        var nextID: UInt64 = 0
    }
    private let state: Locked<State>

    init(units: Int) { state = Locked(State(available: units)) }

    /// Takes a unit, waiting for one; false when the task was cancelled first.
    func acquire() async -> Bool {
        let id: UInt64? = state.withLock { s in
            if s.available > 0 {
                s.available -= 1
                return nil
            }
            defer { s.nextID &+= 1 }
            return s.nextID
        }
        guard let id else { return true }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
                let now: Bool? = state.withLock { s in
                    if Task.isCancelled { return false }
                    if s.available > 0 {
                        s.available -= 1
                        return true
                    }
                    s.waiters.append((id, continuation))
                    return nil
                }
                if let now { continuation.resume(returning: now) }
            }
        } onCancel: {
            let waiter = state.withLock { s -> CheckedContinuation<Bool, Never>? in
                guard let index = s.waiters.firstIndex(where: { $0.id == id }) else { return nil }
                return s.waiters.remove(at: index).continuation
            }
            waiter?.resume(returning: false)
        }
    }

    /// Gives a unit back (to the first waiter, if any).
    func release() {
        let waiter = state.withLock { s -> CheckedContinuation<Bool, Never>? in
            if let first = s.waiters.popFirst() { return first.continuation }
            s.available += 1
            return nil
        }
        waiter?.resume(returning: true)
    }
}
