import Foundation

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
final class Transfer: RequestOwner, @unchecked Sendable {  // @unchecked: every var is under `lock`
    private let lock = NSLock()
    private var outstanding = 0
    private var submitting = true
    private var error: BlockFrontError?
    private var continuation: CheckedContinuation<Void, Never>?

    /// A request of this transfer went out (its completion will call ``complete(_:tag:)``).
    func started(tag: Int) { lock.withLock { outstanding += 1 } }

    /// Records an error without a request (submission stopped).
    func fail(_ error: BlockFrontError) { lock.withLock { if self.error == nil { self.error = error } } }

    /// Its continuation is resumed by the last completion: nothing to batch.
    var collectsBatches: Bool { false }

    func wake() {}

    /// A request ended.
    func complete(_ error: BlockFrontError?, tag: Int) {
        let resume: CheckedContinuation<Void, Never>? = lock.withLock {
            if let error, self.error == nil { self.error = error }
            outstanding -= 1
            guard outstanding == 0, !submitting else { return nil }
            defer { continuation = nil }
            return continuation
        }
        resume?.resume()
    }

    /// Called once everything is submitted: waits for the requests in flight.
    func finish() async throws(BlockFrontError) {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let done: Bool = lock.withLock {
                submitting = false
                if outstanding == 0 { return true }
                self.continuation = continuation
                return false
            }
            if done { continuation.resume() }
        }
        if let error = lock.withLock({ error }) { throw error }
    }
}

/// Orders barrier writes against everything else: ordinary transfers enter side by side; a
/// barrier waits for those in flight to end and holds later ones back until it is done.
final class OrderingGate: @unchecked Sendable {  // @unchecked: every var is under `lock`
    private let lock = NSLock()
    private var active = 0
    private var barrier = false
    private var open = true
    private var entering: [CheckedContinuation<Void, Never>] = []
    private var draining: CheckedContinuation<Void, Never>?

    /// Enters `count` times unless a barrier holds the gate (then the caller must wait with
    /// ``enter()``).
    func tryEnter(_ count: Int = 1) -> Bool {
        lock.withLock {
            guard !barrier || !open else { return false }
            active += count
            return true
        }
    }

    func enter() async {
        while !tryEnter() { await waitForBarrierEnd() }
    }

    private func waitForBarrierEnd() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let ended: Bool = lock.withLock {
                if !barrier || !open { return true }
                entering.append(continuation)
                return false
            }
            if ended { continuation.resume() }
        }
    }

    func leave(_ count: Int = 1) {
        guard count > 0 else { return }
        let resume: CheckedContinuation<Void, Never>? = lock.withLock {
            active -= count
            guard active == 0 else { return nil }
            defer { draining = nil }
            return draining
        }
        resume?.resume()
    }

    /// Waits for any other barrier, then for everything in flight to end.
    func exclusive() async {
        await enterAlone()
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let now: Bool = lock.withLock {
                if active == 0 || !open { return true }
                draining = continuation
                return false
            }
            if now { continuation.resume() }
        }
    }

    private func enterAlone() async {
        while !lock.withLock({ () -> Bool in
            guard !barrier || !open else { return false }
            barrier = true
            return true
        }) {
            await waitForBarrierEnd()
        }
    }

    func endExclusive() {
        let waiting: [CheckedContinuation<Void, Never>] = lock.withLock {
            barrier = false
            defer { entering.removeAll() }
            return entering
        }
        for continuation in waiting { continuation.resume() }
    }

    /// The device failed: nobody waits here any more.
    func release() {
        let (waiting, drain): ([CheckedContinuation<Void, Never>], CheckedContinuation<Void, Never>?) = lock.withLock {
            open = false
            defer { entering.removeAll(); draining = nil }
            return (entering, draining)
        }
        for continuation in waiting { continuation.resume() }
        drain?.resume()
    }
}
