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
final class ServedQueue: @unchecked Sendable {  // @unchecked: ring, stopped, registration under `ringLock`; backlog, scratch: loop thread
    private unowned let backend: BlockBackend
    private let hypervisor: Hypervisor
    private let requests: BlockRequests
    private let hostile: HostileBlockBack?
    private let pollNanoseconds: UInt64
    let index: Int
    private let grants: PersistentGrants?
    private let ringMappings: [GrantMapping]
    private let ringView: PageAlias?
    private let ringAddress: UnsafeMutableRawPointer
    private let ringBytes: Int
    private let port: EventChannelPort
    private let end: EventChannelPortEnd
    private let loop: EventLoop
    private let name: String
    private let servedCount = ManagedAtomic<Int>(0)
    /// Notifications to the frontend that failed (its port gone under us).
    private let failedNotifications = ManagedAtomic<Int>(0)
    /// The ring, under `ringLock` (requests taken by the handler, responses put by whichever
    /// thread finished the I/O).
    private let ringLock = NSLock()
    private var box: RingBox?
    private var registration: EventLoop.Registration?
    private var stopped = false
    private var pool: BlockIOPool?
    private final class RingBox: @unchecked Sendable {  // @unchecked: used only under the queue's `ringLock`
        var ring: BackRing<BlkifRing>
        init(_ ring: consuming BackRing<BlkifRing>) { self.ring = ring }
    }
    // The handler's (the loop's thread only).
    /// Requests taken off the ring and not yet served: what waits behind a flush, barrier or
    /// discard while the I/O threads finish the reads and writes before it.
    private var backlog = Deque<BlkifRequest>()
    private var responses: [BlkifResponse] = []
    private var vectors = IOVectors()
    /// Mappings handed to the hostile mode that keeps them: not unmapped by ``release()``.
    private var abandoned = false

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
                ringAddress = view.address
            } else {
                ringView = nil
                ringAddress = mappings[0].page
            }
            (port, end) = try hypervisor.bindInterdomain(.dom0, remote: frontend, remotePort: remotePort)
        } catch {
            for mapping in mappings { try? hypervisor.unmapGrant(mapping.handle, by: .dom0) }
            throw error
        }
        ringMappings = mappings
        ringBytes = refs.count * XenPage.size
    }

    /// Attaches to the ring where the shared `rsp_prod` stands, starts the I/O threads (if
    /// any) and watches the channel.
    func start() throws {
        let region = UnsafeMutableRawBufferPointer(start: ringAddress, count: ringBytes)
        let box = RingBox(try BackRing(resuming: region, protocol: BlkifRing()))
        let settings = backend.settings
        let threads = hostile == nil ? settings.ioThreads ?? (settings.direct ? 8 : 0) : 0
        let pool: BlockIOPool? =
            threads > 0
            ? try BlockIOPool(
                name: "\(name) io", count: threads, requests: requests,
                answer: { [unowned self] response in answer(CollectionOfOne(response)) },
                idle: { [unowned self] in ringLock.withLock { self.registration }?.wake() })
            : nil
        let registration = try loop.register(end.delivery.fileDescriptor, name: name, owner: end.delivery) { [unowned self] events in
            serve(events)
        }
        ringLock.withLock {
            self.box = box
            self.pool = pool
            self.registration = registration
        }
        if pollNanoseconds > 0 {
            loop.execute { [self] in
                registration.setPolling(nanoseconds: pollNanoseconds) { [self] in
                    ringLock.withLock { ((try? box.ring.availableRequests()) ?? 1) > 0 }
                }
            }
        }
        // A notification may have come before the registration: look at the ring once.
        registration.wake()
    }

    /// Stops serving: returns once nothing of this queue runs any more (the channel out of the
    /// loop, the I/O threads ended). The mappings stay until ``release()``.
    func stop() async {
        let (registration, pool) = ringLock.withLock { () -> (EventLoop.Registration?, BlockIOPool?) in
            stopped = true
            return (self.registration, self.pool)
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
        abandoned = true
        return ringMappings + (grants?.removeAll() ?? [])
    }

    /// After ``stop()``: unmaps persistent grants and the ring, closes the port.
    func release() {
        let cached = grants?.removeAll() ?? []
        if !abandoned {
            for mapping in cached { try? hypervisor.unmapGrant(mapping.handle, by: .dom0) }
            for mapping in ringMappings { try? hypervisor.unmapGrant(mapping.handle, by: .dom0) }
        }
        try? hypervisor.closePort(.dom0, port)
    }

    // MARK: The handler

    /// A notification (or polling found requests): take them off the ring and serve them.
    private func serve(_ events: EventLoop.Readiness) -> EventLoop.Next {
        if events.contains(.readable) { end.delivery.consume() }
        let taken: Result<Int, RingError>? = ringLock.withLock { () -> Result<Int, RingError>? in
            guard !stopped, let box else { return nil }
            var count = 0
            do throws(RingError) {
                while let request = try box.ring.nextRequest() {
                    backlog.append(request)
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
        guard let box = ringLock.withLock({ stopped ? nil : self.box }) else { return .wait }
        let pool = ringLock.withLock { self.pool }
        responses.removeAll(keepingCapacity: true)
        while let request = backlog.first {
            if let hostile {
                if hostile.vanishes {
                    backend.vanish()
                    stopServing()
                    return .wait
                }
                if !hostile.answers {
                    backlog.removeFirst()
                    continue
                }
            }
            if let pool {
                if request.movesData {
                    backlog.removeFirst()
                    pool.submit(request)
                    continue
                }
                // Ordered after what the I/O threads hold: served when they are idle.
                if pool.isBusy { break }
            }
            backlog.removeFirst()
            let response = requests.perform(request, vectors: &vectors)
            responses.append(hostile?.rewrite(response) ?? response)
            // Published a few at a time: the frontend reuses slots while the rest are served.
            if responses.count == Self.publishEvery {
                answer(responses)
                responses.removeAll(keepingCapacity: true)
            }
        }
        answer(responses)
        responses.removeAll(keepingCapacity: true)
        if !backlog.isEmpty { return .wait }  // resumed when the I/O threads are idle
        if pollNanoseconds > 0, !events.contains(.pollExpired) { return .poll }
        let more = ringLock.withLock { (try? box.ring.finalCheckForRequests()) == true }
        return more ? .again : .wait
    }

    private func stopServing() {
        let registration = ringLock.withLock { () -> EventLoop.Registration? in
            stopped = true
            return self.registration
        }
        registration?.cancel()
    }

    /// Puts responses on the ring, publishes them, and notifies when the frontend asked.
    private func answer(_ responses: some Collection<BlkifResponse>) {
        guard !responses.isEmpty else { return }
        let pushed: (notify: Bool, geometry: RingGeometry, published: RingIndex, now: RingIndex)? = ringLock.withLock {
            guard let box else { return nil }
            let published = box.ring.publishedResponses
            for response in responses { box.ring.enqueueResponse(response) }
            let notify = box.ring.pushResponsesAndCheckNotify()
            return (notify, box.ring.geometry, published, box.ring.publishedResponses)
        }
        guard let pushed else { return }
        if pushed.notify { notifyFrontend() }
        hostile?.afterPush(ring: ringAddress, geometry: pushed.geometry, published: pushed.published, now: pushed.now) { notifyFrontend() }
    }

    private func notifyFrontend() {
        do { try hypervisor.notify(.dom0, port) } catch { failedNotifications.wrappingIncrement(ordering: .relaxed) }
    }
}
