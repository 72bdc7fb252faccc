import PVSystem

/// Whoever is told when a request ends: a ``Transfer`` (one awaited call) or a
/// ``BlockIOQueue`` (many requests, completions collected).
protocol RequestOwner: AnyObject, Sendable {
    /// The request named `tag` ended (nil: successfully).
    func complete(_ error: BlockFrontError?, tag: Int)
    /// A request named `tag` is about to go on a ring (its end will be reported).
    func started(tag: Int)
    /// Whether ``wake()`` is wanted once the completion thread has delivered its whole
    /// batch (otherwise each completion wakes its caller itself).
    var collectsBatches: Bool { get }
    /// After a batch of completions: wake whoever waits for them.
    func wake()
}

/// One caller's operation, cut into requests that may sit on several rings: it ends when the
/// last request has ended and every request was submitted; the first error wins.
final class Transfer: RequestOwner, Sendable {
    private struct State {
        var outstanding = 0
        var submitting = true
        var error: BlockFrontError?
        var continuation: CheckedContinuation<Void, Never>?
    }

    private let state = Locked(State())

    /// A request of this transfer went out (its completion will call ``complete(_:tag:)``).
    func started(tag: Int) { state.withLock { $0.outstanding += 1 } }

    /// Records an error without a request (submission stopped).
    func fail(_ error: BlockFrontError) { state.withLock { if $0.error == nil { $0.error = error } } }

    /// Its continuation is resumed by the last completion: nothing to batch.
    var collectsBatches: Bool { false }

    func wake() {}

    /// A request ended.
    func complete(_ error: BlockFrontError?, tag: Int) {
        let resume: CheckedContinuation<Void, Never>? = state.withLock { state in
            if let error, state.error == nil { state.error = error }
            state.outstanding -= 1
            guard state.outstanding == 0, !state.submitting else { return nil }
            defer { state.continuation = nil }
            return state.continuation
        }
        resume?.resume()
    }

    /// Called once everything is submitted: waits for the requests in flight.
    func finish() async throws(BlockFrontError) {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let done: Bool = state.withLock { state in
                state.submitting = false
                if state.outstanding == 0 { return true }
                state.continuation = continuation
                return false
            }
            if done { continuation.resume() }
        }
        if let error = state.withLock({ $0.error }) { throw error }
    }
}

/// Orders barrier writes against everything else: ordinary transfers enter side by side; a
/// barrier waits for those in flight to end and holds later ones back until it is done.
final class OrderingGate: Sendable {
    private struct State {
        var active = 0
        var barrier = false
        var open = true
        var entering: [CheckedContinuation<Void, Never>] = []
        var draining: CheckedContinuation<Void, Never>?
    }

    private let state = Locked(State())

    /// Enters `count` times unless a barrier holds the gate (then the caller must wait with
    /// ``enter()``).
    func tryEnter(_ count: Int = 1) -> Bool {
        state.withLock { state in
            guard !state.barrier || !state.open else { return false }
            state.active += count
            return true
        }
    }

    func enter() async {
        while !tryEnter() { await waitForBarrierEnd() }
    }

    private func waitForBarrierEnd() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let ended: Bool = state.withLock { state in
                if !state.barrier || !state.open { return true }
                state.entering.append(continuation)
                return false
            }
            if ended { continuation.resume() }
        }
    }

    func leave(_ count: Int = 1) {
        guard count > 0 else { return }
        let resume: CheckedContinuation<Void, Never>? = state.withLock { state in
            state.active -= count
            guard state.active == 0 else { return nil }
            defer { state.draining = nil }
            return state.draining
        }
        resume?.resume()
    }

    /// Waits for any other barrier, then for everything in flight to end.
    func exclusive() async {
        await enterAlone()
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let now: Bool = state.withLock { state in
                if state.active == 0 || !state.open { return true }
                state.draining = continuation
                return false
            }
            if now { continuation.resume() }
        }
    }

    private func enterAlone() async {
        while !state.withLock({ state -> Bool in
            guard !state.barrier || !state.open else { return false }
            state.barrier = true
            return true
        }) {
            await waitForBarrierEnd()
        }
    }

    func endExclusive() {
        let waiting: [CheckedContinuation<Void, Never>] = state.withLock { state in
            state.barrier = false
            defer { state.entering.removeAll() }
            return state.entering
        }
        for continuation in waiting { continuation.resume() }
    }

    /// The device failed: nobody waits here any more.
    func release() {
        let (waiting, drain): ([CheckedContinuation<Void, Never>], CheckedContinuation<Void, Never>?) = state.withLock { state in
            state.open = false
            defer {
                state.entering.removeAll()
                state.draining = nil
            }
            return (state.entering, state.draining)
        }
        for continuation in waiting { continuation.resume() }
        drain?.resume()
    }
}
