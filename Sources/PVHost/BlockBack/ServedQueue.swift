import Atomics
import DequeModule
import Foundation
import PVSystem
import XenABI
import XenRing

/// One ring of a connected disk: the ring pages mapped (side by side when there are several),
/// the bound event channel watched on one of pvhost's event loops, and the handler that takes
/// requests off the ring (each slot copied out once and checked by the ring), has them done —
/// inline, or by the ring's I/O threads (``BlockIOPool``) — and answers them, publishing every
/// ``publishEvery`` responses. Flush, barrier and discard wait for the reads and writes handed
/// to the I/O threads before them, and everything after them waits in order.
///
/// The I/O itself is ``BlockRequests``; persistent grants are ``PersistentGrants``; the hostile
/// modes of the conformance suite are ``HostileBlockBack``, a layer the handler asks.
final class ServedQueue: Sendable {
    private unowned let backend: BlockBackend
    private let hypervisor: Hypervisor
    private let requests: BlockRequests
    private let hostile: HostileBlockBack?
    private let pollNanoseconds: UInt64
    let index: Int
    private let grants: PersistentGrants?
    private let ringMappings: [GrantMapping]
    private let ringView: PageAlias?
    /// The ring's pages, side by side (the frontend's, kept mapped by `ringMappings`).
    private let ringStart: MemoryAddress
    private var ringAddress: UnsafeMutableRawPointer { ringStart.pointer }
    private let ringBytes: Int
    private let port: EventChannelPort
    private let end: EventChannelPortEnd
    private let loop: EventLoop
    private let name: String
    private let servedCount = ManagedAtomic<Int>(0)
    /// Notifications to the frontend that failed (its port gone under us).
    private let failedNotifications = ManagedAtomic<Int>(0)
    /// The ring and what starts and stops it (requests taken by the handler, responses put
    /// by whichever thread finished the I/O).
    private let ringLock: Locked<RingState>
    /// The handler's (the loop's thread only).
    private let scratch: LoopBound<Scratch>
    /// Mappings handed to the hostile mode that keeps them: not unmapped by ``release()``.
    private let abandoned = ManagedAtomic<Bool>(false)

    private struct RingState: ~Copyable {
        var ring: BackRing<BlkifRing>
        var registration: EventLoop.Registration?
        var stopped = false
        var pool: BlockIOPool?
    }

    private struct Scratch {
        /// Requests taken off the ring and not yet served: what waits behind a flush, barrier
        /// or discard while the I/O threads finish the reads and writes before it.
        var backlog = Deque<BlkifRequest>()
        var responses: [BlkifResponse] = []
        var vectors = IOVectors()
    }

    var served: Int { servedCount.load(ordering: .relaxed) }
    /// Responses served inline are published in groups of this many (a notification at most
    /// per group), so a long batch does not hold back the ones already done.
    static let publishEvery = 8

    /// Maps the ring pages (writable, contiguous) and binds the frontend's port.
    init(backend: BlockBackend, index: Int, refs: [GrantRef], remotePort: EventChannelPort, persistent: Bool) throws {
        self.backend = backend
        let settings = backend.settings
        hypervisor = backend.hypervisor
        let frontend = backend.device.frontend
        self.index = index
        name = "blkback \(frontend.rawValue)/\(backend.device.devid) q\(index)"
        hostile = settings.hostile.map(HostileBlockBack.init(mode:))
        pollNanoseconds = UInt64(settings.pollMicroseconds) * 1000
        let grants = persistent ? PersistentGrants(hypervisor: hypervisor, frontend: frontend, limit: settings.maxPersistentGrants) : nil
        self.grants = grants
        requests = BlockRequests(
            settings: settings, hypervisor: hypervisor, frontend: frontend, file: backend.file, sectors: backend.sectors,
            mapped: backend.mapping, grants: grants)
        loop = hypervisor.eventLoops.next()
        var mappings: [GrantMapping] = []
        do {
            for ref in refs { mappings.append(try hypervisor.mapGrant(ref, of: frontend, by: .dom0, writable: true)) }
            if mappings.count > 1 {
                let view = try mappings[0].owner.memory.alias(pages: mappings.map { Int($0.frame) })
                ringView = view
                ringStart = MemoryAddress(view.address)
            } else {
                ringView = nil
                ringStart = MemoryAddress(mappings[0].page)
            }
            (port, end) = try hypervisor.bindInterdomain(.dom0, remote: frontend, remotePort: remotePort)
        } catch {
            for mapping in mappings { try? hypervisor.unmapGrant(mapping.handle, by: .dom0) }
            throw error
        }
        ringMappings = mappings
        ringBytes = refs.count * XenPage.size
        // Attached where the shared `rsp_prod` stands (nothing is answered before `start`).
        let ring: BackRing<BlkifRing>
        do {
            ring = try BackRing(resuming: UnsafeMutableRawBufferPointer(start: ringStart.pointer, count: ringBytes), protocol: BlkifRing())
        } catch {
            for mapping in mappings { try? hypervisor.unmapGrant(mapping.handle, by: .dom0) }
            try? hypervisor.closePort(.dom0, port)
            throw error
        }
        ringLock = Locked(RingState(ring: ring))
        scratch = LoopBound(Scratch(), on: loop)
    }

    /// Starts the I/O threads (if any) and watches the channel.
    func start() throws {
        let settings = backend.settings
        let threads = hostile == nil ? settings.ioThreads ?? (settings.direct ? 8 : 0) : 0
        let pool: BlockIOPool? =
            threads > 0
            ? try BlockIOPool(
                name: "\(name) io", count: threads, requests: requests,
                answer: { [unowned self] response in answer(CollectionOfOne(response)) },
                idle: { [unowned self] in ringLock.withLock { $0.registration }?.wake() })
            : nil
        let registration = try loop.register(end.delivery.fileDescriptor, name: name, owner: end.delivery) { [unowned self] events in
            serve(events)
        }
        ringLock.withLock {
            $0.pool = pool
            $0.registration = registration
        }
        if pollNanoseconds > 0 {
            loop.execute { [self] in
                registration.setPolling(nanoseconds: pollNanoseconds) { [self] in
                    ringLock.withLock { ((try? $0.ring.availableRequests()) ?? 1) > 0 }
                }
            }
        }
        // A notification may have come before the registration: look at the ring once.
        registration.wake()
    }

    /// Stops serving: returns once nothing of this queue runs any more (the channel out of the
    /// loop, the I/O threads ended). The mappings stay until ``release()``.
    func stop() async {
        let (registration, pool) = ringLock.withLock { s in
            s.stopped = true
            return (s.registration, s.pool)
        }
        if let registration {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                registration.cancel { continuation.resume() }
            }
        }
        await pool?.stop()
    }

    /// For hostile mode `keepGrantsAfterClose`: the mappings ``release()`` will leave in place.
    func abandonMappings() -> [GrantMapping] {
        abandoned.store(true, ordering: .relaxed)
        return ringMappings + (grants?.removeAll() ?? [])
    }

    /// After ``stop()``: unmaps persistent grants and the ring, closes the port.
    func release() {
        let cached = grants?.removeAll() ?? []
        if !abandoned.load(ordering: .relaxed) {
            for mapping in cached { try? hypervisor.unmapGrant(mapping.handle, by: .dom0) }
            for mapping in ringMappings { try? hypervisor.unmapGrant(mapping.handle, by: .dom0) }
        }
        try? hypervisor.closePort(.dom0, port)
    }

    // MARK: The handler

    /// A notification (or polling found requests): take them off the ring and serve them.
    private func serve(_ events: EventLoop.Readiness) -> EventLoop.Next {
        if events.contains(.readable) { end.delivery.consume() }
        let taken: Result<Int, RingError>? = ringLock.withLock { (s: inout RingState) -> Result<Int, RingError>? in
            guard !s.stopped else { return nil }
            var count = 0
            do throws(RingError) {
                while let request = try s.ring.nextRequest() {
                    scratch.value.backlog.append(request)
                    count += 1
                }
            } catch {
                return .failure(error)
            }
            return .success(count)
        }
        switch taken {
        case nil:
            return .wait
        case let .failure(error)?:
            // A frontend that broke the ring's rules: stop serving it.
            backend.logger.error("vbd \(backend.device.devid) of domain \(backend.device.frontend.rawValue): \(error); closing")
            stopServing()
            return .wait
        case let .success(count)?:
            if count > 0 { servedCount.wrappingIncrement(by: count, ordering: .relaxed) }
        }
        return serveBacklog(events)
    }

    /// Serves what was taken, in order, then polls or makes ring.h's final check.
    private func serveBacklog(_ events: EventLoop.Readiness) -> EventLoop.Next {
        guard let pool = ringLock.withLock({ $0.stopped ? nil : .some($0.pool) }) else { return .wait }
        scratch.value.responses.removeAll(keepingCapacity: true)
        while let request = scratch.value.backlog.first {
            if let hostile {
                if hostile.vanishes {
                    backend.vanish()
                    stopServing()
                    return .wait
                }
                if !hostile.answers {
                    scratch.value.backlog.removeFirst()
                    continue
                }
            }
            if let pool {
                if request.movesData {
                    scratch.value.backlog.removeFirst()
                    pool.submit(request)
                    continue
                }
                // Ordered after what the I/O threads hold: served when they are idle.
                if pool.isBusy { break }
            }
            scratch.value.backlog.removeFirst()
            let response = requests.perform(request, vectors: &scratch.value.vectors)
            scratch.value.responses.append(hostile?.rewrite(response) ?? response)
            // Published a few at a time: the frontend reuses slots while the rest are served.
            if scratch.value.responses.count == Self.publishEvery {
                answer(scratch.value.responses)
                scratch.value.responses.removeAll(keepingCapacity: true)
            }
        }
        answer(scratch.value.responses)
        scratch.value.responses.removeAll(keepingCapacity: true)
        if !scratch.value.backlog.isEmpty { return .wait }  // resumed when the I/O threads are idle
        if pollNanoseconds > 0, !events.contains(.pollExpired) { return .poll }
        let more = ringLock.withLock { (try? $0.ring.finalCheckForRequests()) == true }
        return more ? .again : .wait
    }

    private func stopServing() {
        let registration = ringLock.withLock { s in
            s.stopped = true
            return s.registration
        }
        registration?.cancel()
    }

    /// Puts responses on the ring, publishes them, and notifies when the frontend asked.
    private func answer(_ responses: some Collection<BlkifResponse>) {
        guard !responses.isEmpty else { return }
        let pushed: (notify: Bool, geometry: RingGeometry, published: RingIndex, now: RingIndex)? = ringLock.withLock { s in
            let published = s.ring.publishedResponses
            for response in responses { s.ring.enqueueResponse(response) }
            let notify = s.ring.pushResponsesAndCheckNotify()
            return (notify, s.ring.geometry, published, s.ring.publishedResponses)
        }
        guard let pushed else { return }
        if pushed.notify { notifyFrontend() }
        hostile?.afterPush(ring: ringAddress, geometry: pushed.geometry, published: pushed.published, now: pushed.now) { notifyFrontend() }
    }

    private func notifyFrontend() {
        do { try hypervisor.notify(.dom0, port) } catch { failedNotifications.wrappingIncrement(ordering: .relaxed) }
    }
}
