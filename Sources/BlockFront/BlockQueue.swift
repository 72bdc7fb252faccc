import Foundation
#if canImport(Glibc)
import Glibc
#endif
import PVPlatform
import PVSystem
import XenABI
import XenRing

/// A request on a ring, with everything needed to finish it, or to send it again on a new
/// ring after the backend restarted.
struct InFlight: @unchecked Sendable {
    /// Told when the request ends.
    let owner: any RequestOwner
    /// The owner's name for the request.
    let tag: Int
    /// As sent (its id is the ring's; rewritten when re-issued).
    var request: BlkifRequest
    /// What the response must name (for an indirect request, its `indirect_op`).
    let operation: BlkifOperation
    let sector: UInt64
    /// Data pages, then indirect pages.
    let pages: [SharedPage]
    /// Reads: where this request's bytes go in the caller's buffer.
    let destination: UnsafeMutableRawPointer?
    let byteCount: Int
    /// Budget units the request holds (given back when it ends).
    let budget: Int
    /// When it went on a ring (for the request timeout), `CLOCK_MONOTONIC` nanoseconds.
    var issued: UInt64
}

/// One ring of a device: its pages (one or several, granted), its event channel, the
/// requests in flight by id (the id is the slot's index, so lookups are array reads), and a
/// completion thread that copies each response out of the ring once and checks it before
/// anything else reads it.
final class BlockQueue: @unchecked Sendable {
    let index: Int
    let ringPages: SharedPages
    let channel: EventChannel
    /// Ring slots: a request holds one from submission to its response.
    let slots: AsyncSemaphore
    let entries: Int
    private unowned let core: Core
    private let lock = NSLock()
    private let ring: RingBox
    private var inFlight: [InFlight?]
    /// Free ids, first in first out: a stale duplicate response is then unlikely to name an
    /// id that is in flight again.
    private var freeIDs: FreeIDs
    private let stopSignal: EventFD
    /// Set by ``halt()``: nothing goes on this ring any more.
    private var halted = false
    /// Weak: a running Thread keeps itself alive, and its block holds this object; a strong
    /// reference here would keep both (and every descriptor this holds) after it ended.
    private weak var thread: Thread?
    /// Wake-ups that found no response (an event storm is counted, not obeyed).
    var spuriousWakeups: Int { lock.withLock { spurious } }
    private var spurious = 0

    /// The ring, touched only under `lock`.
    private final class RingBox: @unchecked Sendable {
        var ring: FrontRing<BlkifRing>
        init(_ ring: consuming FrontRing<BlkifRing>) { self.ring = ring }
    }

    init(index: Int, core: Core, ringPages: SharedPages, channel: EventChannel) throws(BlockFrontError) {
        self.index = index
        self.core = core
        self.ringPages = ringPages
        self.channel = channel
        let region = UnsafeMutableRawBufferPointer(start: ringPages.address, count: ringPages.pages.count * XenPage.size)
        do {
            ring = RingBox(try FrontRing(initializing: region, protocol: BlkifRing()))
            stopSignal = try EventFD()
        } catch {
            throw .platform("\(error)")
        }
        entries = Int(ring.ring.geometry.entryCount)
        slots = AsyncSemaphore(units: entries)
        inFlight = Array(repeating: nil, count: entries)
        freeIDs = FreeIDs(count: entries)
    }

    func start() {
        let thread = Thread { [self] in completions() }
        thread.name = "blkfront q\(index)"
        self.thread = thread
        thread.start()
    }

    /// Puts `entry` on the ring (the caller holds a slot) and notifies when the backend asked.
    func submit(_ entry: InFlight) throws(BlockFrontError) {
        var entries = CollectionOfOne(entry)
        try submit(&entries)
    }

    /// Puts `entries` on the ring (the caller holds a slot for each), publishes them together
    /// and notifies once when the backend asked. Throws, having put none on, when the ring was
    /// halted.
    func submit<Entries: MutableCollection>(_ entries: inout Entries) throws(BlockFrontError) where Entries.Element == InFlight {
        let now = Core.now()
        let notify: Bool? = lock.withLock {
            guard !halted else { return nil }
            for index in entries.indices {
                // A slot held per entry: an id is free for each.
                let id = freeIDs.take()!
                entries[index].request.id = UInt64(id)
                entries[index].issued = now
                inFlight[id] = entries[index]
                ring.ring.enqueueRequest(entries[index].request)
            }
            return ring.ring.pushRequestsAndCheckNotify()
        }
        guard let notify else { throw .closed("ring \(index) was halted (the backend went away)") }
        if notify { channel.notify() }
    }

    /// Stops the completion thread; returns what was in flight (to fail or re-issue).
    func halt() -> [InFlight] {
        try? stopSignal.notify()
        if let thread, thread !== Thread.current { while !thread.isFinished { usleep(100) } }
        return lock.withLock {
            halted = true
            defer {
                for id in inFlight.indices { inFlight[id] = nil }
                freeIDs = FreeIDs(count: entries)
            }
            return inFlight.compactMap { $0 }
        }
    }

    /// The oldest request's issue time, if any is in flight.
    private var oldest: UInt64? { lock.withLock { inFlight.lazy.compactMap { $0?.issued }.min() } }

    /// A thread-specific value naming the ring whose completion thread is running (its
    /// address, compared, never followed): a ``BlockIOQueue`` handler submitting from there
    /// sends to that ring first.
    private static let homeKey: pthread_key_t = {
        var key = pthread_key_t()
        pthread_key_create(&key, nil)
        return key
    }()

    /// The ring whose completion thread calls this, if any.
    static var home: UnsafeRawPointer? { UnsafeRawPointer(pthread_getspecific(homeKey)) }

    private func completions() {
        pthread_setspecific(Self.homeKey, Unmanaged.passUnretained(self).toOpaque())
        var fds = [pollfd(fd: channel.descriptor, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: stopSignal.fileDescriptor, events: Int16(POLLIN), revents: 0)]
        let timeout = core.options.requestTimeout.map { Core.nanoseconds($0) }
        let polling = core.options.pollMicroseconds > 0 ? UInt64(min(core.options.pollMicroseconds, 10_000)) * 1000 : nil
        var done: [(InFlight, BlkifStatus)] = []
        var woken: [any RequestOwner] = []
        // Responses may be waiting without a notification (found by polling or the final check).
        var waiting = false
        while true {
            if !waiting {
                fds[0].revents = 0
                fds[1].revents = 0
                _ = poll(&fds, 2, timeout == nil ? -1 : 100)
                if fds[1].revents != 0 { return }
                if let timeout, let oldest, Core.now() - oldest > timeout {
                    core.fail(.timedOut(seconds: Double(timeout) / 1e9))
                    return
                }
                guard fds[0].revents != 0 else { continue }
                channel.acknowledge()
            }
            done.removeAll(keepingCapacity: true)
            var broken: String?
            lock.withLock {
                do {
                    while let response = try ring.ring.nextResponse() {
                        guard response.id < UInt64(entries), let entry = inFlight[Int(response.id)] else {
                            broken = "a response for id \(response.id), which is not in flight on ring \(index)"
                            return
                        }
                        guard response.operationCode == entry.operation.rawValue, response.status.isDefined else {
                            broken = "response \(response.id): operation \(response.operationCode) for \(entry.operation), status \(response.status.rawValue)"
                            return
                        }
                        inFlight[Int(response.id)] = nil
                        freeIDs.give(Int(response.id))
                        done.append((entry, response.status))
                    }
                } catch {
                    broken = "\(error)"
                }
                if done.isEmpty && broken == nil && !waiting { spurious += 1 }
            }
            if !done.isEmpty { slots.release(done.count) }
            woken.removeAll(keepingCapacity: true)
            for (entry, status) in done {
                core.finish(entry, status: status)
                if entry.owner.collectsBatches, !woken.contains(where: { $0 === entry.owner }) { woken.append(entry.owner) }
            }
            // Owners that collect completions hear of the whole batch at once.
            for owner in woken { owner.wake() }
            if let broken {
                core.fail(.backendMisbehaved(broken))
                return
            }
            // More without sleeping: found by polling (no notification asked for), or by the
            // final check that asks for one.
            if let polling, RingPolling.wait(nanoseconds: polling, look: {
                // Nothing in flight: nothing can come.
                lock.withLock { freeIDs.isFull ? nil : ((try? ring.ring.unconsumedResponses()) ?? 1) > 0 }
            }) {
                waiting = true
                continue
            }
            do {
                waiting = try lock.withLock { () throws(RingError) -> Bool in try ring.ring.finalCheckForResponses() }
            } catch {
                core.fail(.backendMisbehaved("\(error)"))
                return
            }
        }
    }
}

/// The free ids of a ring as a FIFO over a fixed array (each id is free at most once).
struct FreeIDs {
    private var ids: [Int]
    private var head = 0
    private var count: Int

    init(count: Int) {
        ids = Array(0..<count)
        self.count = count
    }

    mutating func take() -> Int? {
        guard count > 0 else { return nil }
        defer { head = (head + 1) % ids.count; count -= 1 }
        return ids[head]
    }

    /// Every id free: nothing in flight.
    var isFull: Bool { count == ids.count }

    mutating func give(_ id: Int) {
        ids[(head + count) % ids.count] = id
        count += 1
    }
}
