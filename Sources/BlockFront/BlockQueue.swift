import Foundation
import PVPlatform
import PVSystem
import XenABI
import XenRing

/// A request on a ring, with everything needed to finish it, or to send it again on a new
/// ring after the backend restarted.
struct InFlight: Sendable {
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
    /// Reads: where this request's bytes go in the caller's buffer (the caller's until the
    /// request ends).
    let destination: MemoryAddress?
    let byteCount: Int
    /// Budget units the request holds (given back when it ends).
    let budget: Int
    /// When it went on a ring (for the request timeout), `CLOCK_MONOTONIC` nanoseconds.
    var issued: UInt64
}

/// One ring of a device: its pages (one or several, granted), its event channel, the
/// requests in flight by id (the id is the slot's index, so lookups are array reads), and its
/// registration on an event loop, whose handler copies each response out of the ring once and
/// checks it before anything else reads it. Tasks that prefer that loop submit and resume on
/// its thread.
final class BlockQueue: Sendable {
    let index: Int
    let ringPages: SharedPages
    let channel: EventChannel
    /// The loop this ring's notifications (and the tasks preferring it) run on.
    let loop: EventLoop
    /// Ring slots: a request holds one from submission to its response.
    let slots: AsyncSemaphore
    let entries: Int
    private unowned let core: Core
    private let state: Locked<State>
    /// The handler's scratch (the loop's thread only).
    private let scratch: LoopBound<Scratch>

    private struct State: ~Copyable {
        var ring: FrontRing<BlkifRing>
        var inFlight: [InFlight?]
        /// Free ids, first in first out: a stale duplicate response is then unlikely to name an
        /// id that is in flight again.
        var freeIDs: FreeIDs
        /// Set by ``halt(then:)``: nothing goes on this ring any more.
        var halted = false
        var registration: EventLoop.Registration?
        var timer: EventLoop.Timer?
        /// Wake-ups that found no response (an event storm is counted, not obeyed).
        var spurious = 0
    }

    private struct Scratch {
        var done: [(InFlight, BlkifStatus)] = []
        var woken: [any RequestOwner] = []
    }

    /// Wake-ups that found no response (an event storm is counted, not obeyed).
    var spuriousWakeups: Int { state.withLock { $0.spurious } }

    init(index: Int, core: Core, ringPages: SharedPages, channel: EventChannel, loop: EventLoop) throws(BlockFrontError) {
        self.index = index
        self.core = core
        self.ringPages = ringPages
        self.channel = channel
        self.loop = loop
        let region = UnsafeMutableRawBufferPointer(start: ringPages.address, count: ringPages.pages.count * XenPage.size)
        let ring: FrontRing<BlkifRing>
        do {
            ring = try FrontRing(initializing: region, protocol: BlkifRing())
        } catch {
            throw .platform("ring \(index): \(error)")
        }
        let entries = Int(ring.geometry.entryCount)
        self.entries = entries
        slots = AsyncSemaphore(units: entries)
        state = Locked(State(ring: ring, inFlight: Array(repeating: nil, count: entries), freeIDs: FreeIDs(count: entries)))
        scratch = LoopBound(Scratch(), on: loop)
    }

    /// Watches the ring's event channel on its loop (and, with a request timeout, checks the
    /// oldest request every 100 ms).
    func start() throws(BlockFrontError) {
        let made: EventLoop.Registration
        do {
            made = try loop.register(channel.descriptor, name: "blkfront ring \(index) event channel", owner: channel.descriptorOwner) { [self] events in
                serve(events)
            }
        } catch {
            throw .platform("watching ring \(index)'s event channel", cause: .system(error))
        }
        let polling = core.options.pollMicroseconds > 0 ? UInt64(min(core.options.pollMicroseconds, 10_000)) * 1000 : 0
        loop.execute { [self] in
            made.setPolling(nanoseconds: polling) { [self] in
                // Nothing in flight: nothing can come.
                state.withLock { s in s.freeIDs.isFull ? nil : ((try? s.ring.unconsumedResponses()) ?? 1) > 0 }
            }
        }
        let stopped = state.withLock { (s: inout State) -> Bool in
            s.registration = made
            return s.halted
        }
        if stopped { made.cancel() }
        if let timeout = core.options.requestTimeout { checkTimeout(every: .milliseconds(100), limit: MonotonicClock.nanoseconds(timeout)) }
    }

    private func checkTimeout(every period: Duration, limit: UInt64) {
        let next = loop.schedule(after: period) { [weak self] in
            guard let self else { return }
            if let oldest = self.oldest, MonotonicClock.now() &- oldest > limit {
                self.core.fail(.timedOut(seconds: Double(limit) / 1e9))
                return
            }
            if !self.state.withLock({ s in s.halted }) { self.checkTimeout(every: period, limit: limit) }
        }
        state.withLock { s in s.timer = next }
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
        let now = MonotonicClock.now()
        let notify: Bool? = state.withLock { s in
            guard !s.halted else { return nil }
            for index in entries.indices {
                // A slot held per entry: an id is free for each.
                let id = s.freeIDs.take()!
                entries[index].request.id = UInt64(id)
                entries[index].issued = now
                s.inFlight[id] = entries[index]
                s.ring.enqueueRequest(entries[index].request)
            }
            return s.ring.pushRequestsAndCheckNotify()
        }
        guard let notify else { throw .closed("ring \(index) was halted (the backend went away)") }
        if notify { channel.notify() }
    }

    /// Stops serving the ring and returns what was in flight (to fail or re-issue). From the
    /// moment this returns no response is taken from the ring; `teardown` (revoke the ring,
    /// close the channel) runs on the loop once the channel is out of its epoll set. Never
    /// blocks.
    func halt(then teardown: @escaping @Sendable () -> Void) -> [InFlight] {
        let (waiting, registration, timer) = state.withLock { (s: inout State) -> ([InFlight], EventLoop.Registration?, EventLoop.Timer?) in
            s.halted = true
            defer {
                for id in s.inFlight.indices { s.inFlight[id] = nil }
                s.freeIDs = FreeIDs(count: self.entries)
            }
            return (s.inFlight.compactMap { $0 }, s.registration, s.timer)
        }
        timer?.cancel()
        if let registration { registration.cancel(then: teardown) } else { teardown() }
        return waiting
    }

    /// The oldest request's issue time, if any is in flight.
    private var oldest: UInt64? { state.withLock { s in s.inFlight.lazy.compactMap { $0?.issued }.min() } }

    /// A thread-specific value naming the ring whose handler is running (its address,
    /// compared, never followed): a ``BlockIOQueue`` handler submitting from there sends to
    /// that ring first.
    private static let homeKey: pthread_key_t = {
        var key = pthread_key_t()
        pthread_key_create(&key, nil)
        return key
    }()

    /// The ring whose handler calls this, if any.
    static var home: UnsafeRawPointer? { UnsafeRawPointer(pthread_getspecific(homeKey)) }

    /// The handler: responses out of the ring, checked, their owners told; then polling or
    /// ring.h's final check before the loop sleeps again.
    private func serve(_ events: EventLoop.Readiness) -> EventLoop.Next {
        pthread_setspecific(Self.homeKey, Unmanaged.passUnretained(self).toOpaque())
        defer { pthread_setspecific(Self.homeKey, nil) }
        let notified = events.contains(.readable)
        if notified, channel.acknowledge() > 0 { channel.countWakeup() }
        scratch.value.done.removeAll(keepingCapacity: true)
        var broken: String?
        let stopped: Bool = state.withLock { s in
            guard !s.halted else { return true }
            do {
                while let response = try s.ring.nextResponse() {
                    guard response.id < UInt64(entries), let entry = s.inFlight[Int(response.id)] else {
                        broken = "a response for id \(response.id), which is not in flight on ring \(index)"
                        return false
                    }
                    guard response.operationCode == entry.operation.rawValue, response.status.isDefined else {
                        broken = "response \(response.id): operation \(response.operationCode) for \(entry.operation), status \(response.status.rawValue)"
                        return false
                    }
                    s.inFlight[Int(response.id)] = nil
                    s.freeIDs.give(Int(response.id))
                    scratch.value.done.append((entry, response.status))
                }
            } catch {
                broken = "\(error)"
            }
            if scratch.value.done.isEmpty && broken == nil && notified { s.spurious += 1 }
            return false
        }
        if stopped { return .wait }
        if !scratch.value.done.isEmpty { slots.release(scratch.value.done.count) }
        scratch.value.woken.removeAll(keepingCapacity: true)
        for (entry, status) in scratch.value.done {
            core.finish(entry, status: status)
            if entry.owner.collectsBatches, !scratch.value.woken.contains(where: { $0 === entry.owner }) { scratch.value.woken.append(entry.owner) }
        }
        scratch.value.done.removeAll(keepingCapacity: true)
        // Owners that collect completions hear of the whole batch at once.
        for owner in scratch.value.woken { owner.wake() }
        scratch.value.woken.removeAll(keepingCapacity: true)
        if let broken {
            core.fail(.backendMisbehaved(broken))
            return .wait
        }
        // Keep looking while requests are in flight (the loop's budget), unless it is spent.
        if core.options.pollMicroseconds > 0, !events.contains(.pollExpired), state.withLock({ s in !s.freeIDs.isFull }) { return .poll }
        do {
            let more = try state.withLock { (s: inout State) throws(RingError) -> Bool in s.halted ? false : try s.ring.finalCheckForResponses() }
            return more ? .again : .wait
        } catch {
            core.fail(.backendMisbehaved("\(error)"))
            return .wait
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
