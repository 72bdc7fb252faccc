import DequeModule
import Foundation
import PVPlatform
import PVSystem
import XenABI

/// A submission and completion queue on a disk, for a caller that keeps many requests in
/// flight (io_uring's shape): operations are queued without waiting, go on the rings together
/// at ``submit()`` — one publish and at most one notification per ring — and their completions
/// are collected in batches by ``completions(atLeast:)``, one wake-up per batch of responses
/// rather than one resumed task per request.
///
/// Data moves through ``BlockBuffer``s (in place; through zeroed bounce pages for a backend
/// that is not trusted), which the queue keeps alive until their operation completes, so no
/// request can outlive the memory it moves. Each operation holds one of ``depth`` places from
/// the call that queues it until its completion is collected.
///
/// Ordering and safety are the device's: the same ring slots, page budget and barrier gate as
/// the async calls, the same checks on every response; an operation larger than one request
/// is cut as theirs are and completes when all of its requests have. When a ring slot or the
/// page budget is short, operations stay queued (back-pressure) and go out as room is made.
///
/// ```swift
/// let queue = disk.makeIOQueue(depth: 32)
/// for (n, buffer) in buffers.enumerated() { try queue.read(at: UInt64(n * 8), into: buffer, tag: n) }
/// queue.submit()
/// for completion in try await queue.completions(atLeast: buffers.count) { … }
/// ```
///
/// With a handler (``BlockFront/makeIOQueue(depth:handler:)``) completions are handed over on
/// the completion thread of the ring that carried them, and what the handler submits goes to
/// that ring first: a steady load then stays with the threads already serving it.
public final class BlockIOQueue: RequestOwner, Sendable {
    /// An operation that ended: the tag it was queued with and its error (nil: success).
    public struct Completion: Sendable, Equatable {
        public let tag: Int
        public let error: BlockFrontError?
        public init(tag: Int, error: BlockFrontError?) {
            self.tag = tag
            self.error = error
        }
    }

    /// Operations that may be queued, in flight or completed and not yet collected at once
    /// (1…65 536: the depth asked for, clamped).
    public let depth: Int

    /// The depth a queue gets for `asked` (its tables are allocated up front).
    static func clamp(_ asked: Int) -> Int { min(max(1, asked), 65_536) }

    private let disk: BlockFront
    private var core: Core { disk.core }
    private let lock: Locked<State>
    /// Serialises ``submit()`` end to end (requests leave in the order they were queued);
    /// holds the ring the next request goes to first (round robin).
    private let submitting = Locked(0)

    private struct State {
        let depth: Int
        var operations: [Operation]
        var freePlaces: [Int]
        /// Requests queued and not yet on a ring, in order.
        var queued: Deque<Piece> = []
        /// Requests on a ring (or parked for a reconnect) and not yet ended.
        var onRings = 0
        /// Gate entries of ended requests, given back together at ``wake()``.
        var leaving = 0
        /// A submit is scheduled for when the device is connected again.
        var retrying = false
        var done: [Completion] = []
        /// The places of `done`, freed when they are collected.
        var donePlaces: [Int] = []
        var waiter: (continuation: CheckedContinuation<Void, Never>, atLeast: Int)?

        /// Takes the completions, freeing their places.
        mutating func collect() -> [Completion] {
            defer {
                freePlaces += donePlaces
                donePlaces.removeAll(keepingCapacity: true)
                done.removeAll(keepingCapacity: true)
            }
            return done
        }

        /// Enough completions collected: `atLeast`, or all there will be.
        func isReady(_ atLeast: Int) -> Bool {
            let outstanding = depth - freePlaces.count
            return done.count >= min(atLeast, outstanding)
        }

        /// One request of the operation at `place` ended; the operation completes with its
        /// last.
        mutating func record(_ error: BlockFrontError?, place: Int) {
            if let error, operations[place].error == nil { operations[place].error = error }
            operations[place].remaining -= 1
            if operations[place].remaining == 0 {
                done.append(Completion(tag: operations[place].tag, error: operations[place].error))
                donePlaces.append(place)
                operations[place].buffer = nil
            }
        }
    }
    /// When set, completions go to it on the ring's completion thread instead of waiting for
    /// ``completions(atLeast:)``.
    private let handler: (@Sendable (BlockIOQueue, [Completion]) -> Void)?

    private struct Operation {
        var tag = 0
        /// Requests of the operation not yet ended.
        var remaining = 0
        var error: BlockFrontError?
        /// Kept alive while a request uses its memory.
        var buffer: BlockBuffer?
    }

    /// One request of an operation.
    private struct Piece {
        let place: Int
        let operation: BlkifOperation
        let chunk: RequestPlan.Chunk
        let address: MemoryAddress?
        let granted: ArraySlice<SharedPage>?
        var budget: Int { granted == nil ? chunk.budget : chunk.indirectPages }
    }

    init(disk: BlockFront, depth: Int, handler: (@Sendable (BlockIOQueue, [Completion]) -> Void)?) {
        self.disk = disk
        self.depth = depth
        self.handler = handler
        lock = Locked(State(depth: depth, operations: Array(repeating: Operation(), count: depth), freePlaces: Array((0..<depth).reversed())))
    }

    /// Operations queued, in flight, or completed and not yet collected.
    public var occupied: Int { lock.withLock { s in depth - s.freePlaces.count } }

    // MARK: Queueing

    /// Queues a read of `count` bytes (default: to the end of the buffer) at `sector` into
    /// `buffer` from `byteOffset` (a multiple of the page size). Sent by ``submit()``.
    ///
    /// - Throws: ``BlockFrontError/queueFull(depth:)`` when ``depth`` operations are
    ///   outstanding; the device's checks (alignment, range, the buffer's own device).
    public func read(at sector: UInt64, into buffer: BlockBuffer, byteOffset: Int = 0, count: Int? = nil, tag: Int) throws(BlockFrontError) {
        try queue(.read, sector: sector, buffer: buffer, byteOffset: byteOffset, count: count, tag: tag)
    }

    /// Queues a write of `count` bytes (default: to the end of the buffer) of `buffer` from
    /// `byteOffset` at `sector`; durable after a flush. Sent by ``submit()``.
    public func write(at sector: UInt64, from buffer: BlockBuffer, byteOffset: Int = 0, count: Int? = nil, tag: Int) throws(BlockFrontError) {
        guard !disk.info.readOnly else { throw .readOnly }
        try queue(.write, sector: sector, buffer: buffer, byteOffset: byteOffset, count: count, tag: tag)
    }

    /// Queues a flush (BLKIF_OP_FLUSH_DISKCACHE): every write completed before it is sent is
    /// durable when it completes.
    public func flush(tag: Int) throws(BlockFrontError) {
        let (info, _, failure) = core.snapshot
        if let failure { throw failure }
        guard let info, info.flush else { throw .notSupported("flush") }
        let place = try takePlace()
        lock.withLock { s in
            s.operations[place] = Operation(tag: tag, remaining: 1, error: nil, buffer: nil)
            s.queued.append(
                Piece(place: place, operation: .flushDiskCache, chunk: RequestPlan.Chunk(offset: 0, length: 0, sector: 0), address: nil, granted: nil))
        }
    }

    private func queue(_ operation: BlkifOperation, sector: UInt64, buffer: BlockBuffer, byteOffset: Int, count: Int?, tag: Int) throws(BlockFrontError) {
        let (info, pool, failure) = core.snapshot
        if let failure { throw failure }
        guard let info, let pool else { throw .closed("not connected") }
        let bytes = try disk.window(buffer, byteOffset, count)
        try disk.check(sector: sector, count: bytes.count, info: info)
        // In place when the backend is trusted (up to the negotiated indirect segments per
        // request); otherwise through pool pages, as the async calls do.
        let granted = info.trusted ? buffer.pages.pages[(byteOffset / XenPage.size)...] : nil
        let fits = (pool.limit - Blkif.maxIndirectPagesPerRequest) / 2
        let wanted = min(info.indirectSegments, fits, granted == nil ? BlockFront.copiedRequestSegments : Int.max)
        let most = wanted <= Blkif.maxSegmentsPerRequest ? Blkif.maxSegmentsPerRequest : wanted
        let place = try takePlace()
        lock.withLock { s in
            if bytes.count <= most * XenPage.size {
                s.operations[place] = Operation(tag: tag, remaining: 1, error: nil, buffer: buffer)
                s.queued.append(
                    Piece(
                        place: place, operation: operation, chunk: RequestPlan.Chunk(offset: 0, length: bytes.count, sector: sector),
                        address: bytes.baseAddress.map(MemoryAddress.init), granted: granted))
                return
            }
            let chunks = RequestPlan(sector: sector, byteCount: bytes.count, maxSegments: most).chunks
            s.operations[place] = Operation(tag: tag, remaining: chunks.count, error: nil, buffer: buffer)
            for chunk in chunks {
                s.queued.append(Piece(place: place, operation: operation, chunk: chunk, address: bytes.baseAddress.map(MemoryAddress.init), granted: granted))
            }
        }
    }

    private func takePlace() throws(BlockFrontError) -> Int {
        let place: Int? = lock.withLock { s in s.freePlaces.popLast() }
        guard let place else { throw .queueFull(depth: depth) }
        return place
    }

    // MARK: Submission

    /// Puts the queued requests on the rings, as many as slots and the page budget allow now
    /// (the rest go out at a later ``submit()`` or ``completions(atLeast:)``), and notifies each
    /// ring's backend once if it asked.
    public func submit() {
        // Requests a halted ring refused are parked after the submission lock is let go:
        // parking one can end it, and its completion can submit again (from this thread).
        let (failed, parked): ([(Int, BlockFrontError)], [(InFlight, BlockFrontError)]) = submitting.withLock { nextRing in
            let rings = core.currentRings
            guard let pool = core.currentPool, !rings.isEmpty else {
                retryWhenConnected()
                return ([], [])
            }
            // Everything queued, taken at once; what finds no room goes back in front.
            var pieces: Deque<Piece> = []
            lock.withLock { s in swap(&pieces, &s.queued) }
            guard !pieces.isEmpty else { return ([], []) }
            // The gate and the rings' slots taken for the whole batch (an even share of each
            // ring), the unused given back after.
            guard core.gate.tryEnter(pieces.count) else {
                lock.withLock { s in s.queued.prepend(contentsOf: pieces) }
                return ([], [])
            }
            // From a ring's completion thread (a handler), that ring first: the requests stay
            // with the threads already serving them. Otherwise an even share of each ring.
            let home = BlockQueue.home.flatMap { address in rings.firstIndex { UnsafeRawPointer(Unmanaged.passUnretained($0).toOpaque()) == address } }
            var room = Array(repeating: 0, count: rings.count)
            if let home { room[home] = rings[home].slots.tryAcquire(upTo: pieces.count) }
            let rest = pieces.count - room.reduce(0, +)
            if rest > 0 {
                let others = rings.count - (home == nil ? 0 : 1)
                let share = others == 0 ? 0 : (rest + others - 1) / others
                for ring in rings.indices where ring != home { room[ring] = rings[ring].slots.tryAcquire(upTo: share) }
            }
            var batches: [[InFlight]] = Array(repeating: [], count: rings.count)
            var failed: [(Int, BlockFrontError)] = []
            var sent = 0
            while let piece = pieces.first {
                let preferred = home.flatMap { room[$0] > 0 ? $0 : nil }
                guard let ring = preferred ?? (0..<rings.count).lazy.map({ [start = nextRing] in (start + $0) % rings.count }).first(where: { room[$0] > 0 })
                else { break }
                let budget = piece.budget
                guard budget == 0 || pool.budget.tryAcquire(budget) else { break }
                pieces.removeFirst()
                room[ring] -= 1
                if ring != home { nextRing = ring + 1 }
                sent += 1
                do throws(BlockFrontError) {
                    batches[ring].append(
                        try core.prepare(
                            piece.operation, chunk: piece.chunk, buffer: piece.address?.pointer, granted: piece.granted,
                            discard: nil, pool: pool, budget: budget, owner: self, tag: piece.place))
                } catch {
                    rings[ring].slots.release(1)
                    pool.budget.release(budget)
                    failed.append((piece.place, error))
                }
            }
            for (ring, unused) in room.enumerated() where unused > 0 { rings[ring].slots.release(unused) }
            core.gate.leave(pieces.count)
            lock.withLock { s in
                s.onRings += sent
                if !pieces.isEmpty { s.queued.prepend(contentsOf: pieces) }
            }
            var parked: [(InFlight, BlockFrontError)] = []
            for (ring, var entries) in batches.enumerated() where !entries.isEmpty {
                do throws(BlockFrontError) { try rings[ring].submit(&entries) } catch {
                    // Halted by a backend restart meanwhile: re-issued on the next connection.
                    parked += entries.map { ($0, error) }
                }
            }
            return (failed, parked)
        }
        for (entry, error) in parked { core.park(entry, error: error) }
        for (place, error) in failed { complete(error, tag: place) }
        if !failed.isEmpty { wake() }
        failQueuedIfClosed()
    }

    /// Between connections (the backend restarting): what is queued goes out once the device
    /// is connected again, without waiting for the caller to submit again (a handler has
    /// nothing else to wake it). One retry at a time.
    private func retryWhenConnected() {
        let schedule: Bool = lock.withLock { s in
            guard !s.queued.isEmpty, !s.retrying else { return false }
            s.retrying = true
            return true
        }
        guard schedule else { return }
        Task { [core] in
            _ = try? await core.waitForConnection()
            lock.withLock { s in s.retrying = false }
            submit()
        }
    }

    /// A closed device ends what is still queued, with its error.
    private func failQueuedIfClosed() {
        guard let failure = core.currentFailure else { return }
        let failed: Bool = lock.withLock { s in
            defer { s.queued.removeAll() }
            for piece in s.queued { s.record(failure, place: piece.place) }
            return !s.queued.isEmpty
        }
        if failed { wake() }
    }

    // MARK: Completion

    /// Waits until at least `atLeast` operations have completed (or every outstanding one, if
    /// fewer are), and returns every completion collected so far; their places are free
    /// again. Queued requests that found no room are sent first, waiting for room when none
    /// of this queue's requests is in flight to make some.
    ///
    /// - Throws: ``BlockFrontError/cancelled`` when the task is cancelled while waiting (the
    ///   requests stay in flight; a later call collects them).
    public func completions(atLeast: Int = 1) async throws(BlockFrontError) -> [Completion] {
        while true {
            submit()
            // Nothing of ours in flight will free room: wait for it like the async calls.
            let stalled: Piece? = lock.withLock { s in
                guard s.onRings == 0, let piece = s.queued.popFirst() else { return nil }
                s.onRings += 1
                return piece
            }
            guard let piece = stalled else { break }
            await core.gate.enter()
            do throws(BlockFrontError) {
                try await core.submit(
                    piece.operation, chunk: piece.chunk, buffer: piece.address?.pointer, granted: piece.granted, discard: nil,
                    owner: self, tag: piece.place)
            } catch {
                complete(error, tag: piece.place)
                wake()
            }
        }
        let cancelled: Bool = await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let now: Bool = lock.withLock { s in
                    if Task.isCancelled || s.isReady(atLeast) { return true }
                    s.waiter = (continuation, atLeast)
                    return false
                }
                if now { continuation.resume() }
            }
            return Task.isCancelled
        } onCancel: {
            let waiting = lock.withLock { s in
                defer { s.waiter = nil }; return s.waiter
            }
            waiting?.continuation.resume()
        }
        let collected: [Completion]? = lock.withLock { s in
            if cancelled && !s.isReady(atLeast) { return nil }
            return s.collect()
        }
        guard let collected else { throw .cancelled }
        return collected
    }

    // MARK: RequestOwner

    func started(tag: Int) {}

    /// Completions are collected and their gate entries given back at ``wake()``.
    var collectsBatches: Bool { true }

    /// A request that went on a ring (or was about to) ended.
    func complete(_ error: BlockFrontError?, tag: Int) {
        lock.withLock { s in
            s.onRings -= 1
            s.leaving += 1
            s.record(error, place: tag)
        }
    }

    func wake() {
        let (ended, overflow) = lock.withLock { s in
            defer { s.leaving = 0 }; return (s.leaving, !s.queued.isEmpty)
        }
        core.gate.leave(ended)
        // Room was made: what waited for it goes out now.
        if overflow { submit() }
        if let handler {
            let collected: [Completion] = lock.withLock { s in s.collect() }
            if !collected.isEmpty { handler(self, collected) }
            return
        }
        let ready: CheckedContinuation<Void, Never>? = lock.withLock { s in
            guard let waiter = s.waiter, s.isReady(waiter.atLeast) else { return nil }
            s.waiter = nil
            return waiter.continuation
        }
        ready?.resume()
    }
}

extension BlockFront {
    /// A submission and completion queue on this disk holding up to `depth` operations (see
    /// ``BlockIOQueue``).
    public func makeIOQueue(depth: Int) -> BlockIOQueue {
        BlockIOQueue(disk: self, depth: BlockIOQueue.clamp(depth), handler: nil)
    }

    /// A submission and completion queue whose completions are handed to `handler` as they
    /// arrive, in batches, on the thread that took them off the ring (the handler may queue
    /// and submit more; it must not block). ``BlockIOQueue/completions(atLeast:)`` then
    /// returns nothing: the handler has them.
    public func makeIOQueue(depth: Int, handler: @escaping @Sendable (BlockIOQueue, [BlockIOQueue.Completion]) -> Void) -> BlockIOQueue {
        BlockIOQueue(disk: self, depth: BlockIOQueue.clamp(depth), handler: handler)
    }
}
