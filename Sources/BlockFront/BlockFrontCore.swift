import Foundation
import PVPlatform
import PVSystem
import XenABI
import XenBus
import XenStore

/// A device's state across connections: the rings of the current connection, the data pages,
/// requests waiting to be re-issued while the backend restarts, and the failure that closed
/// the device.
final class Core: Sendable {
    let platform: any PVPlatform
    let handle: UInt16
    let options: BlockFront.Options
    let gate = OrderingGate()
    private let state = Locked(State())

    private struct State {
        /// Rings made at publish, started at Connected.
        var staged: [BlockQueue] = []
        var transport: BlockNegotiation.Transport?
        var queues: [BlockQueue] = []
        var nextQueue = 0
        var pool: GrantPool?
        var info: BlockFront.Info?
        var failure: BlockFrontError?
        /// In flight when the backend went away; re-issued on the next connection.
        var suspended: [InFlight] = []
        var waiters: [CheckedContinuation<BlockFrontError?, Never>] = []
        /// Ring and buffer pages the backend did not let go (kept, retried at close).
        var heldPages: [SharedPage] = []
        var connections = 0
        var reissuedCount = 0
        var reconnectTimer: Task<Void, Never>?
        var onFailure: (@Sendable (BlockFrontError) -> Void)?
    }

    /// Told once when the device fails on its own (set before the handshake starts).
    var onFailure: (@Sendable (BlockFrontError) -> Void)? {
        get { state.withLock { $0.onFailure } }
        set { state.withLock { $0.onFailure = newValue } }
    }

    init(platform: any PVPlatform, handle: UInt16, options: BlockFront.Options) {
        self.platform = platform
        self.handle = handle
        self.options = options
    }

    var currentInfo: BlockFront.Info? { state.withLock { s in s.info } }
    var statistics: BlockFront.Statistics {
        state.withLock { s in
            BlockFront.Statistics(
                connections: s.connections, reissued: s.reissuedCount, notificationsSent: s.queues.reduce(0) { $0 + $1.channel.notificationsSent },
                spuriousWakeups: s.queues.reduce(0) { $0 + $1.spuriousWakeups },
                pagesHeldByBackend: (s.pool?.pagesHeldByBackend ?? 0) + s.heldPages.count)
        }
    }

    // MARK: Lifecycle (called by the XenBus driver)

    /// The rings to publish (made once per connection attempt: publish may be retried).
    func stage(offer: [String: String], backend: DomainID) throws(BlockFrontError) -> (BlockNegotiation.Transport, [BlockQueue]) {
        if let failure = state.withLock({ s in s.failure }) { throw failure }
        if let existing = state.withLock({ s in s.transport.map { ($0, s.staged) } }), !existing.1.isEmpty { return existing }
        let wanted = try BlockNegotiation.transport(offer: offer, options: options)
        var made: [BlockQueue] = []
        do throws(BlockFrontError) {
            for index in 0..<wanted.queues {
                let pages: SharedPages
                let channel: EventChannel
                do {
                    pages = try platform.grantPages(1 << wanted.ringPageOrder, to: backend, readOnly: false)
                } catch { throw .platform("granting ring \(index)'s pages", cause: error) }
                do { channel = try platform.allocateUnboundPort(remote: backend) } catch {
                    releasePages(pages)
                    throw .platform("allocating ring \(index)'s event channel", cause: error)
                }
                let loops = options.eventLoops.loops
                made.append(try BlockQueue(index: index, core: self, ringPages: pages, channel: channel, loop: loops[index % loops.count]))
            }
        } catch {
            for queue in made { _ = queue.halt { [self] in retire(queue) } }
            throw error
        }
        state.withLock { s in
            s.transport = wanted
            s.staged = made
        }
        return (wanted, made)
    }

    /// The backend is Connected: start the rings, re-issue what was suspended, admit callers.
    func connected(backend keys: [String: String], trusted: String?, backendID: DomainID) throws(BlockFrontError) {
        guard let transport = state.withLock({ s in s.transport }) else { throw .closed("connected before publishing") }
        let info = try BlockNegotiation.disk(backend: keys, transport: transport, trusted: trusted, options: options)
        // The pool is made at the first connection and kept across reconnects (suspended
        // requests hold its pages). Never more than three quarters of what the domain can
        // still grant, and room for at least two of the largest requests.
        state.withLock { s in
            guard s.pool == nil else { return }
            let budget = max(min(options.pages, platform.availablePages * 3 / 4), 2 * (Blkif.maxSegmentsPerRequest + 1))
            s.pool = GrantPool(platform: platform, backend: backendID, persistent: info.persistentGrants, zeroOnReuse: !info.trusted, pages: budget)
        }
        let (started, again, ready): ([BlockQueue], [InFlight], [CheckedContinuation<BlockFrontError?, Never>]) = state.withLock { s in
            s.reconnectTimer?.cancel()
            s.reconnectTimer = nil
            s.info = info
            s.queues = s.staged
            s.staged = []
            s.connections += 1
            s.reissuedCount += s.suspended.count
            defer { s.suspended = []; s.waiters = [] }
            return (s.queues, s.suspended, s.waiters)
        }
        do throws(BlockFrontError) {
            for queue in started { try queue.start() }
        } catch {
            fail(error)
            throw error
        }
        for waiter in ready { waiter.resume(returning: nil) }
        reissue(again, on: started, info: info)
    }

    /// Requests that were on the rings of the previous connection go out again, in order,
    /// each on a ring of the new one (they hold their slots' budget and pages already).
    private func reissue(_ entries: [InFlight], on queues: [BlockQueue], info: BlockFront.Info) {
        guard !entries.isEmpty else { return }
        Task {
            for (n, entry) in entries.enumerated() {
                let queue = queues[n % queues.count]
                if case let .indirect(r) = entry.request, Int(r.segmentCount) > info.indirectSegments {
                    finish(entry, error: .closed("the backend came back without the indirect segments this request used"))
                    continue
                }
                do throws(BlockFrontError) {
                    try await queue.slots.acquire(1)
                    try queue.submit(entry)
                } catch {
                    finish(entry, error: error)
                }
            }
        }
    }

    /// The backend went away (Closing/Closed). With reconnect on, requests in flight wait for
    /// the next connection (bounded by the reconnect timeout); otherwise they fail.
    func disconnected() {
        guard options.reconnect, options.reconnectTimeout > .zero, state.withLock({ s in s.failure == nil }) else {
            fail(.closed("the backend closed the device"))
            return
        }
        let old = state.withLock { s in
            defer { s.queues = []; s.staged = []; s.transport = nil }; return s.queues + s.staged
        }
        var waiting: [InFlight] = []
        for queue in old {
            waiting += queue.halt { [self] in retire(queue) }
            queue.slots.fail(.closed("the backend restarted"))
        }
        let timeout = options.reconnectTimeout
        state.withLock { s in
            s.suspended += waiting.sorted { $0.issued < $1.issued }
            s.reconnectTimer = Task { [weak self] in
                try? await Task.sleep(for: timeout)
                guard !Task.isCancelled, let self else { return }
                self.fail(.closed("the backend did not come back within \(timeout)"))
            }
        }
    }

    /// Waits until the device is connected (the first time, or again after a backend restart).
    func waitForConnection() async throws(BlockFrontError) -> BlockFront.Info {
        // Fast path (every request): connected, no suspension.
        if let info = state.withLock({ s in s.failure == nil && !s.queues.isEmpty ? s.info : nil }) { return info }
        while true {
            let error: BlockFrontError? = await withCheckedContinuation { continuation in
                let immediate: BlockFrontError?? = state.withLock { s in
                    if let failure = s.failure { return .some(failure) }
                    if s.info != nil && !s.queues.isEmpty { return .some(nil) }
                    s.waiters.append(continuation)
                    return nil
                }
                if let immediate { continuation.resume(returning: immediate) }
            }
            if let error { throw error }
            if let info = state.withLock({ s in s.queues.isEmpty ? nil : s.info }) { return info }
        }
    }

    /// Closes the device: everything in flight and waiting fails with `error`; rings and
    /// pages are revoked (kept while the backend maps them).
    func fail(_ error: BlockFrontError) {
        var first = false
        let (old, waiting, ready, pool) = state.withLock {
            (s: inout State) -> ([BlockQueue], [InFlight], [CheckedContinuation<BlockFrontError?, Never>], GrantPool?) in
            if s.failure == nil { s.failure = error; first = true }
            s.reconnectTimer?.cancel()
            defer { s.queues = []; s.staged = []; s.suspended = []; s.waiters = []; s.transport = nil }
            return (s.queues + s.staged, s.suspended, s.waiters, s.pool)
        }
        let error = state.withLock { s in s.failure } ?? error
        pool?.budget.fail(error)
        gate.release()
        var entries = waiting
        for queue in old {
            queue.slots.fail(error)
            entries += queue.halt { [self] in retire(queue) }
        }
        for entry in entries { finish(entry, error: error) }
        for waiter in ready { waiter.resume(returning: error) }
        if first { onFailure?(error) }
    }

    /// The backend wrote Connected again: re-read the size (a capacity change).
    func resized(backend keys: [String: String], trusted: String?) throws(BlockFrontError) {
        guard let transport = state.withLock({ s in s.transport }) else { return }
        let new = try BlockNegotiation.disk(backend: keys, transport: transport, trusted: trusted, options: options)
        state.withLock { s in s.info?.sectors = new.sectors }
    }

    /// After close: revokes every page, retrying the ones the backend held. Returns how many
    /// it still holds.
    @discardableResult
    func drain() -> Int {
        let held = state.withLock { s in
            defer { s.heldPages = [] }; return s.heldPages
        }
        var still: [SharedPage] = []
        for page in held where !platform.revoke(page) { still.append(page) }
        let pool = state.withLock { s in
            s.heldPages += still; return s.pool
        }
        return (pool?.drain() ?? 0) + still.count
    }

    private func retire(_ queue: BlockQueue) {
        queue.channel.close()
        releasePages(queue.ringPages)
    }

    /// Pages for a caller's ``BlockBuffer``: granted to the backend once, read and written in
    /// place by every request that uses them.
    func grantBuffer(pages count: Int) async throws(BlockFrontError) -> SharedPages {
        _ = try await waitForConnection()
        guard let backend = state.withLock({ s in s.pool?.backend }) else { throw .closed("not connected") }
        do { return try platform.grantPages(count, to: backend, readOnly: false) } catch { throw .platform("granting a buffer's \(count) pages", cause: error) }
    }

    /// Whether data may go through caller-granted pages (a backend not trusted gets bounce
    /// pages, zeroed, instead).
    var trustsBackend: Bool { state.withLock { s in s.info?.trusted ?? false } }

    /// Ring or buffer pages no longer used: revoked, or kept (retried by ``drain()``) while the
    /// backend still maps them.
    func releasePages(_ pages: SharedPages) {
        var kept: [SharedPage] = []
        for page in pages.pages where !platform.revoke(page) { kept.append(page) }
        if !kept.isEmpty { state.withLock { s in s.heldPages += kept } }
    }

    // MARK: I/O

    /// A ring of the current connection (round robin), waiting while the backend restarts.
    private func pickQueue() async throws(BlockFrontError) -> BlockQueue {
        while true {
            if let picked = nextRing() { return picked }
            _ = try await waitForConnection()
        }
    }

    /// A ring of the current connection; nil while there is none. A caller on a ring's loop
    /// (a task preferring it, or a handler) gets a ring of that loop, so its completion
    /// resumes it without a hop; others get the next ring, round robin.
    func nextRing() -> BlockQueue? {
        let here = EventLoop.current
        return state.withLock { s in
            guard !s.queues.isEmpty else { return nil }
            s.nextQueue &+= 1
            if let here {
                for offset in 0..<s.queues.count {
                    let queue = s.queues[(s.nextQueue &+ offset) % s.queues.count]
                    if queue.loop === here { return queue }
                }
            }
            return s.queues[s.nextQueue % s.queues.count]
        }
    }

    /// The rings of the current connection (empty while there is none).
    var currentRings: [BlockQueue] { state.withLock { s in s.queues } }

    /// The pages of the current connection (nil before the first).
    var currentPool: GrantPool? { state.withLock { s in s.pool } }

    /// What a request needs to know of the device, read together: the negotiated disk, the
    /// page pool, the error that closed it.
    var snapshot: (info: BlockFront.Info?, pool: GrantPool?, failure: BlockFrontError?) { state.withLock { s in (s.info, s.pool, s.failure) } }

    /// The error that closed the device, if it is closed.
    var currentFailure: BlockFrontError? { state.withLock { s in s.failure } }

    /// Runs one operation: the data cut into requests, each holding pages of the budget and a
    /// ring slot while in flight; ends when all have ended (the first error wins).
    ///
    /// - Parameters:
    ///   - buffer: reads: where the bytes go; writes: where they come from.
    ///   - granted: the pages of `buffer` when they are a ``BlockBuffer``'s (already granted:
    ///     the backend moves the bytes in place, nothing is copied here).
    func run(
        _ operation: BlkifOperation, sector: UInt64, count: Int, buffer: UnsafeMutableRawPointer?,
        granted: ArraySlice<SharedPage>? = nil, discard: (sectors: UInt64, secure: Bool)? = nil
    ) async throws(BlockFrontError) {
        let info = try await waitForConnection()
        guard let pool = state.withLock({ s in s.pool }) else { throw .closed("not connected") }
        let barrier = operation == .writeBarrier
        if barrier { await gate.exclusive() } else { await gate.enter() }
        defer { if barrier { gate.endExclusive() } else { gate.leave() } }
        let transfer = Transfer()
        if count == 0 {
            // Flush and discard: no data pages.
            do {
                try await submit(
                    operation, chunk: RequestPlan.Chunk(offset: 0, length: 0, sector: sector), buffer: nil, granted: nil,
                    discard: discard, owner: transfer)
            } catch {
                transfer.fail(error)
            }
        } else {
            // A barrier goes without indirect pages (the backend orders it on its ring).
            // Requests no larger than half the page budget, so two are always in flight.
            let fits = (pool.limit - Blkif.maxIndirectPagesPerRequest) / 2
            let wanted = min(info.indirectSegments, fits, granted == nil ? BlockFront.copiedRequestSegments : Int.max)
            let most = barrier || wanted <= Blkif.maxSegmentsPerRequest ? Blkif.maxSegmentsPerRequest : wanted
            for chunk in RequestPlan(sector: sector, byteCount: count, maxSegments: most).chunks {
                if Task.isCancelled { transfer.fail(.cancelled); break }
                do { try await submit(operation, chunk: chunk, buffer: buffer, granted: granted, discard: nil, owner: transfer) } catch {
                    transfer.fail(error)
                    break
                }
            }
        }
        try await transfer.finish()
    }

    /// Sends one request, waiting for its budget and a ring slot (back-pressure).
    func submit(
        _ operation: BlkifOperation, chunk: RequestPlan.Chunk, buffer: UnsafeMutableRawPointer?,
        granted: ArraySlice<SharedPage>?, discard: (sectors: UInt64, secure: Bool)?,
        owner: any RequestOwner, tag: Int = 0
    ) async throws(BlockFrontError) {
        guard let pool = state.withLock({ s in s.pool }) else { throw state.withLock { s in s.failure } ?? .closed("not connected") }
        // With a granted buffer the request holds only its indirect pages.
        let budget = granted == nil ? chunk.budget : chunk.indirectPages
        try await pool.budget.acquire(budget)
        var queue: BlockQueue
        while true {
            do {
                queue = try await pickQueue()
                try await queue.slots.acquire(1)
                break
            } catch {
                // A ring closed under us by a backend restart: take one of the next connection.
                if case .cancelled = error {} else if state.withLock({ s in s.failure == nil && options.reconnect }) { continue }
                pool.budget.release(budget)
                throw error
            }
        }
        let entry: InFlight
        do {
            entry = try prepare(
                operation, chunk: chunk, buffer: buffer, granted: granted, discard: discard, pool: pool, budget: budget,
                owner: owner, tag: tag)
        } catch {
            queue.slots.release(1)
            pool.budget.release(budget)
            throw error
        }
        owner.started(tag: tag)
        do { try queue.submit(entry) } catch {
            // The ring was halted between taking the slot and now.
            park(entry, error: error)
        }
    }

    /// Builds one request (the caller holds its ring slot and `budget` units of `pool`): takes
    /// its pool pages (data pages unless `granted`, then indirect pages), copies a write's
    /// bytes into them, encodes the indirect pages. On failure the pages are back in the pool
    /// (the slot and budget are the caller's to give back).
    func prepare(
        _ operation: BlkifOperation, chunk: RequestPlan.Chunk, buffer: UnsafeMutableRawPointer?,
        granted: ArraySlice<SharedPage>?, discard: (sectors: UInt64, secure: Bool)?, pool: GrantPool, budget: Int,
        owner: any RequestOwner, tag: Int
    ) throws(BlockFrontError) -> InFlight {
        let taken = try pool.take(budget, readOnly: operation == .write || operation == .writeBarrier)
        // Data pages: the granted buffer's (in place) or pool pages; indirect pages after them.
        let first = chunk.offset / XenPage.size
        let data: ArraySlice<SharedPage> =
            granted.map { $0[$0.startIndex + first..<$0.startIndex + first + chunk.pages] }
            ?? taken[0..<min(chunk.pages, taken.count)]
        if let buffer, granted == nil, operation != .read {
            for (index, page) in data.enumerated() {
                let start = index * XenPage.size
                page.address.copyMemory(from: buffer + chunk.offset + start, byteCount: min(XenPage.size, chunk.length - start))
            }
        }
        let request: BlkifRequest
        if let discard {
            request = .discard(BlkifDiscardRequest(secure: discard.secure, handle: handle, id: 0, sector: chunk.sector, sectorCount: discard.sectors))
        } else if chunk.indirectPages > 0 {
            let indirect = taken[(granted == nil ? chunk.pages : 0)...]
            for (n, page) in indirect.enumerated() {
                let first = n * Blkif.segmentsPerIndirectPage
                let segments = (first..<min(chunk.pages, first + Blkif.segmentsPerIndirectPage)).lazy.map {
                    chunk.segment($0, gref: data[data.startIndex + $0].ref)
                }
                BlkifSegment.encodeIndirectPage(segments, into: UnsafeMutableRawBufferPointer(start: page.address, count: XenPage.size))
            }
            request = .indirect(
                BlkifIndirectRequest(
                    operation: operation, segmentCount: UInt16(chunk.pages), handle: handle, id: 0,
                    sector: chunk.sector, indirectGrants: indirect.map(\.ref)))
        } else {
            var segments = BlkifSegmentList()
            for index in 0..<chunk.pages { segments.append(chunk.segment(index, gref: data[data.startIndex + index].ref)) }
            request = .io(BlkifIORequest(operation: operation, handle: handle, id: 0, sector: chunk.sector, segments: segments))
        }
        return InFlight(
            owner: owner, tag: tag, request: request, operation: operation, sector: chunk.sector, pages: taken,
            destination: operation == .read && granted == nil ? buffer.map { MemoryAddress($0 + chunk.offset) } : nil,
            byteCount: chunk.length, budget: budget, issued: 0)
    }

    /// A request that could not go on its ring: waits for the next connection, or fails.
    func park(_ entry: InFlight, error: BlockFrontError) {
        let parked: Bool = state.withLock { s in
            guard s.failure == nil, options.reconnect, s.queues.isEmpty else { return false }
            s.suspended.append(entry)
            return true
        }
        if !parked { finish(entry, error: state.withLock { s in s.failure } ?? error) }
    }

    /// A response arrived (checked by the ring): data out, pages back, owner told (the ring
    /// gives its slots back, and wakes owners that collect batches, per batch).
    func finish(_ entry: InFlight, status: BlkifStatus) {
        var error: BlockFrontError?
        switch status {
        case .okay:
            if let destination = entry.destination {
                for (index, page) in entry.pages.prefix((entry.byteCount + XenPage.size - 1) / XenPage.size).enumerated() {
                    let start = index * XenPage.size
                    (destination.pointer + start).copyMemory(from: page.address, byteCount: min(XenPage.size, entry.byteCount - start))
                }
            }
        case .notSupported: error = .notSupported("\(entry.operation)")
        default: error = .ioError(sector: entry.sector)
        }
        end(entry, error: error)
    }

    /// Ends a request without a ring slot to give back (failed, or after its ring halted); its
    /// owner is woken at once.
    private func finish(_ entry: InFlight, error: BlockFrontError?) {
        end(entry, error: error)
        entry.owner.wake()
    }

    /// Pages and budget back, owner told.
    private func end(_ entry: InFlight, error: BlockFrontError?) {
        if !entry.pages.isEmpty || entry.budget > 0 {
            let pool = state.withLock { s in s.pool }
            pool?.give(entry.pages)
            pool?.budget.release(entry.budget)
        }
        entry.owner.complete(error, tag: entry.tag)
    }
}

/// BlockFront's part in the XenBus handshake.
struct Driver: XenbusFrontendDriver {
    let core: Core
    let store: XenStoreClient

    private func read(_ directory: String, _ keys: [String], in transaction: XenStoreTransaction? = nil) async throws -> [String: String] {
        var values: [String: String] = [:]
        for key in keys {
            let path = try XenStorePath(directory + "/" + key)
            let value: String?
            if let transaction { value = try? await transaction.readString(path) } else { value = try? await store.readString(path) }
            if let value { values[key] = value }
        }
        return values
    }

    func publish(_ transaction: XenStoreTransaction, frontend: String, backend: String, backendID: DomainID) async throws {
        let offer = try await read(backend, BlockNegotiation.offerKeys, in: transaction)
        let (transport, queues) = try failing { () throws(BlockFrontError) in try core.stage(offer: offer, backend: backendID) }
        func write(_ key: String, _ value: String) async throws { try await transaction.write(XenStorePath(frontend + "/" + key), value) }
        try await clearTransport(
            transaction, frontend: frontend,
            keys: ["ring-page-order", "multi-queue-num-queues", "event-channel", "protocol", "feature-persistent"])
        if transport.ringPageOrder > 0 { try await write("ring-page-order", "\(transport.ringPageOrder)") }
        if transport.queues > 1 { try await write("multi-queue-num-queues", "\(transport.queues)") }
        for queue in queues {
            let prefix = transport.queues > 1 ? "queue-\(queue.index)/" : ""
            if transport.ringPageOrder == 0 {
                try await write(prefix + "ring-ref", "\(queue.ringPages.pages[0].ref.rawValue)")
            } else {
                for (n, page) in queue.ringPages.pages.enumerated() { try await write(prefix + "ring-ref\(n)", "\(page.ref.rawValue)") }
            }
            try await write(prefix + "event-channel", "\(queue.channel.port.rawValue)")
        }
        try await write("protocol", BlkifABI.x86_64.rawValue)
        try await write("feature-persistent", core.options.persistentGrants ? "1" : "0")
    }

    func connect(frontend: String, backend: String) async throws {
        let keys = try await read(backend, BlockNegotiation.diskKeys)
        let trusted = try await read(frontend, ["trusted"])["trusted"]
        let backendID = try await read(frontend, ["backend-id"])["backend-id"].flatMap { UInt16($0) }.map { DomainID($0) } ?? .dom0
        try failing { () throws(BlockFrontError) in try core.connected(backend: keys, trusted: trusted, backendID: backendID) }
    }

    /// A BlockFrontError closes the device with that error before XenBus reports it (as a
    /// driver failure, untyped).
    private func failing<T>(_ body: () throws(BlockFrontError) -> T) throws(BlockFrontError) -> T {
        do { return try body() } catch {
            core.fail(error)
            throw error
        }
    }

    func refresh(frontend: String, backend: String) async throws {
        try core.resized(backend: try await read(backend, BlockNegotiation.diskKeys), trusted: try await read(frontend, ["trusted"])["trusted"])
    }

    func disconnect() async { core.disconnected() }
}
