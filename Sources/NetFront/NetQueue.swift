import Foundation
import PVPlatform
import PVSystem
import XenABI
import XenRing

/// One queue of a network device: a tx ring and an rx ring (one page each), one event channel
/// or two (split), a page per tx id (frames are copied in at offset 0) and a page per rx
/// buffer, all granted to the backend once. The channels are registered on an event loop whose
/// handler reaps tx responses (freeing ids, waking senders), rebuilds received frames with
/// ``RxAssembler`` from response slots copied out of the ring once, copies their bytes out of
/// the buffers once, and posts the buffers again.
final class NetQueue: Sendable {
    let index: Int
    let features: NetNegotiation.Features
    let txRingPage: SharedPage
    let rxRingPage: SharedPage
    let txChannel: EventChannel
    /// The same object as `txChannel` unless the channels are split.
    let rxChannel: EventChannel
    let txPages: SharedPages
    let rxPages: SharedPages
    private unowned let device: NetDeviceState
    private let lock: Locked<State>
    /// The loop the channels are watched on (and receivers preferring it resume on).
    let loop: EventLoop
    /// Frames of the handler's batch (the loop's thread only).
    private let received: LoopBound<[NetFrame]>

    private struct State: ~Copyable {
        var tx: FrontRing<NetifTxRing>
        var rx: FrontRing<NetifRxRing>
        /// Free tx ids (each owns `txPages.pages[id]`), used last in first out.
        var txFree: [UInt16]
        var txBusy: [Bool]
        /// The rx buffer posted in each rx ring slot (indexed by ring index mod entries).
        var rxPosted: [UInt16]
        var assembler: RxAssembler
        var spaceWaiters: [CheckedContinuation<Void, Never>] = []
        var halted = false
        var registrations: [EventLoop.Registration] = []
        var counters = NetFront.Statistics()
        /// The buffers posted in the rx ring.
        let rxPages: SharedPages

        init(
            tx: consuming FrontRing<NetifTxRing>, rx: consuming FrontRing<NetifRxRing>, txPages: SharedPages, rxPages: SharedPages,
            features: NetNegotiation.Features
        ) {
            self.tx = tx
            self.rx = rx
            txFree = (0..<UInt16(txPages.pages.count)).reversed()
            txBusy = Array(repeating: false, count: txPages.pages.count)
            rxPosted = Array(repeating: 0, count: Int(self.rx.geometry.entryCount))
            assembler = RxAssembler(features: features)
            self.rxPages = rxPages
        }

        /// Tx responses: free each id once; a response for an id not in flight is counted and
        /// ignored (its page is not reused until its real response comes).
        mutating func reapTx() throws(RingError) -> Int {
            var count = 0
            while let response = try tx.nextResponse() {
                count += 1
                if response.status == Netif.statusNull { continue }  // the slot of an extra-info segment
                guard Int(response.id) < txBusy.count, txBusy[Int(response.id)] else {
                    counters.badTxResponses += 1
                    continue
                }
                txBusy[Int(response.id)] = false
                txFree.append(response.id)
                if response.status != Netif.statusOkay { counters.txErrors += 1 }
            }
            return count
        }

        /// Rx responses: each slot copied out once and checked against the buffer posted in it;
        /// frames copied out of the buffers, which are posted again.
        mutating func reapRx(into received: inout [NetFrame]) throws(RingError) -> Int {
            var count = 0
            let mask = Int(rx.geometry.entryCount) - 1
            while true {
                let at = Int(rx.responseConsumer) & mask
                guard let raw: UInt64 = try rx.nextResponse(decode: { slot throws(XenABIError) in slot.loadUnaligned(as: UInt64.self) }) else { break }
                count += 1
                let posted = rxPosted[at]
                // The common case, a frame in one slot, without the assembler's bookkeeping: the
                // same checks (the buffer posted in the slot, a length inside the page).
                if assembler.isBetweenFrames {
                    let raw = UInt64(littleEndian: raw)  // the slot's bytes are little-endian
                    let id = UInt16(truncatingIfNeeded: raw), offset = Int(UInt16(truncatingIfNeeded: raw >> 16))
                    let flags = NetRxFlags(rawValue: UInt16(truncatingIfNeeded: raw >> 32)), status = Int(Int16(truncatingIfNeeded: raw >> 48))
                    if id == posted, status > 0, offset + status <= XenPage.size, flags.isDisjoint(with: [.moreData, .extraInfo]) {
                        let source = UnsafeRawBufferPointer(start: rxPages.pages[Int(posted)].address + offset, count: status)
                        received.append(
                            NetFrame(
                                bytes: Array(source), checksumBlank: flags.contains(.checksumBlank),
                                checksumValidated: flags.contains(.dataValidated)))
                        counters.framesReceived += 1
                        counters.bytesReceived += status
                        post(posted)
                        continue
                    }
                }
                let event = withUnsafeBytes(of: raw) { assembler.consume(slot: $0, posted: posted) }
                switch event {
                case nil:
                    continue
                case let .frame(frame, buffers)?:
                    var bytes = [UInt8](repeating: 0, count: frame.length)
                    bytes.withUnsafeMutableBytes { out in
                        var at = 0
                        for fragment in frame.fragments {
                            (out.baseAddress! + at).copyMemory(from: rxPages.pages[Int(fragment.buffer)].address + fragment.offset, byteCount: fragment.length)
                            at += fragment.length
                        }
                    }
                    received.append(
                        NetFrame(
                            bytes: bytes, checksumBlank: frame.checksumBlank, checksumValidated: frame.checksumValidated,
                            gso: frame.gso.map { NetFrame.GSO(type: $0.type, size: $0.size) }))
                    counters.framesReceived += 1
                    counters.bytesReceived += bytes.count
                    for id in buffers { post(id) }
                case let .dropped(_, buffers)?:
                    for id in buffers { post(id) }
                }
            }
            return count
        }

        /// Posts rx buffer `id` in the next request slot .
        mutating func post(_ id: UInt16) {
            let at = Int(rx.requestProducer) & (rxPosted.count - 1)
            rxPosted[at] = id
            rx.enqueueRequest(NetifRxRequest(id: id, gref: rxPages.pages[Int(id)].ref))
        }
    }
    /// Sets up the rings and posts every rx buffer (before the backend connects, as netfront).
    init(
        index: Int, features: NetNegotiation.Features, device: NetDeviceState, txRingPage: SharedPage, rxRingPage: SharedPage,
        txChannel: EventChannel, rxChannel: EventChannel, txPages: SharedPages, rxPages: SharedPages, loop: EventLoop
    ) throws(NetFrontError) {
        self.index = index
        self.features = features
        self.device = device
        self.txRingPage = txRingPage
        self.rxRingPage = rxRingPage
        self.txChannel = txChannel
        self.rxChannel = rxChannel
        self.txPages = txPages
        self.rxPages = rxPages
        self.loop = loop
        var state: State
        do throws(RingError) {
            state = State(
                tx: try FrontRing(initializing: UnsafeMutableRawBufferPointer(start: txRingPage.address, count: XenPage.size), protocol: NetifTxRing()),
                rx: try FrontRing(initializing: UnsafeMutableRawBufferPointer(start: rxRingPage.address, count: XenPage.size), protocol: NetifRxRing()),
                txPages: txPages, rxPages: rxPages, features: features)
        } catch {
            throw .platform("queue \(index): \(error)")
        }
        for id in 0..<UInt16(rxPages.pages.count) { state.post(id) }
        state.rx.pushRequests()
        lock = Locked(state)
        received = LoopBound([], on: loop)
    }

    /// Watches the channels (one, or one per direction) on the queue's loop.
    func start() throws(NetFrontError) {
        var made: [EventLoop.Registration] = []
        do {
            for channel in txChannel === rxChannel ? [rxChannel] : [rxChannel, txChannel] {
                made.append(
                    try loop.register(
                        channel.descriptor, name: "netfront queue \(index) port \(channel.port.rawValue)",
                        owner: channel.descriptorOwner
                    ) { [self] events in
                        serve(notifications: events.contains(.readable) ? channel.acknowledge() : 0)
                        return .wait
                    })
            }
        } catch {
            for registration in made { registration.cancel() }
            throw .platform("watching queue \(index)'s event channels", cause: .system(error))
        }
        let stopped = lock.withLock { (s: inout State) -> Bool in
            s.registrations = made
            return s.halted
        }
        if stopped { for registration in made { registration.cancel() } }
    }

    /// Stops serving the rings and wakes senders (they then see the device closed). From the
    /// moment this returns nothing more is taken from the rings; `teardown` runs on the loop
    /// once the channels are out of its epoll set. Never blocks; safe to call again.
    func halt(then teardown: (@Sendable () -> Void)? = nil) {
        let (waiting, registrations) = lock.withLock { (s: inout State) -> ([CheckedContinuation<Void, Never>], [EventLoop.Registration]) in
            s.halted = true
            defer { s.spaceWaiters.removeAll() }
            return (s.spaceWaiters, s.registrations)
        }
        for waiter in waiting { waiter.resume() }
        guard let teardown else {
            for registration in registrations { registration.cancel() }
            return
        }
        guard !registrations.isEmpty else { return teardown() }
        // The teardown after the last channel is out of the set (both are on one loop, in order).
        for (n, registration) in registrations.enumerated() { registration.cancel(then: n == registrations.count - 1 ? teardown : nil) }
    }

    /// Stopped: nothing more goes on its rings.
    var isHalted: Bool { lock.withLock { s in s.halted } }

    var statistics: NetFront.Statistics {
        lock.withLock { s in
            var counters = s.counters
            counters.dropped = s.assembler.counts
            return counters
        }
    }

    // MARK: Sending

    /// Puts as many of `frames` (with their plans) on the tx ring as fit now, in order; returns
    /// how many. Notifies the backend once when it asked.
    func trySend(_ frames: ArraySlice<(NetFrame, TxPlan)>) -> Int {
        var placed = 0
        let notify: Bool = lock.withLock { s in
            guard !s.halted else { return false }
            for (frame, plan) in frames {
                guard s.txFree.count >= plan.dataSlots, s.tx.freeRequests >= UInt32(plan.slots) else { break }
                frame.bytes.withUnsafeBytes { bytes in
                    func put(_ slot: TxPlan.DataSlot) {
                        let id = s.txFree.removeLast()
                        s.txBusy[Int(id)] = true
                        let page = txPages.pages[Int(id)]
                        page.address.copyMemory(from: bytes.baseAddress! + slot.frameOffset, byteCount: slot.length)
                        s.tx.enqueueRequest(.request(NetifTxRequest(gref: page.ref, offset: 0, flags: slot.flags, id: id, size: slot.sizeField)))
                    }
                    put(plan.first)
                    if let extra = plan.extra { s.tx.enqueueRequest(.extraInfo(extra)) }
                    for slot in plan.rest { put(slot) }
                }
                s.counters.framesSent += 1
                s.counters.bytesSent += frame.bytes.count
                placed += 1
            }
            guard placed > 0 else { return false }
            return s.tx.pushRequestsAndCheckNotify()
        }
        if notify {
            txChannel.notify()
            lock.withLock { s in s.counters.notificationsSent += 1 }
        }
        return placed
    }

    /// Waits until a frame of `slots` ring slots and `ids` pages could go on the ring (or the
    /// queue halts).
    func waitForSpace(slots: Int, ids: Int) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let now: Bool = lock.withLock { s in
                if s.halted || (s.txFree.count >= ids && s.tx.freeRequests >= UInt32(slots)) { return true }
                s.spaceWaiters.append(continuation)
                return false
            }
            if now { continuation.resume() }
        }
    }

    // MARK: The handler

    /// A notification (on either channel): tx responses reaped, rx frames assembled and
    /// delivered, buffers posted again, waiting senders woken.
    private func serve(notifications: UInt64) {
        var woke: [CheckedContinuation<Void, Never>] = []
        var notifyRx = false
        var broken: String?
        let stopped: Bool = lock.withLock { s in
            guard !s.halted else { return true }
            s.counters.wakeups += 1
            // Saturating: the count is the backend's to choose (an eventfd holds up to 2^64 − 2).
            let (sum, overflow) = s.counters.notificationsReceived.addingReportingOverflow(Int(clamping: notifications))
            s.counters.notificationsReceived = overflow ? .max : sum
            var work = 0
            do {
                repeat {
                    work += try s.reapTx()
                    work += try s.reapRx(into: &received.value)
                } while try s.tx.finalCheckForResponses() || s.rx.finalCheckForResponses()
            } catch {
                broken = "\(error)"
            }
            if work == 0 { s.counters.spuriousWakeups += 1 }
            if s.rx.requestProducer != s.rx.publishedRequests {
                notifyRx = s.rx.pushRequestsAndCheckNotify() && features.rxNotify
                if notifyRx { s.counters.notificationsSent += 1 }
            }
            if !s.spaceWaiters.isEmpty {
                woke = s.spaceWaiters
                s.spaceWaiters.removeAll()
            }
            return false
        }
        if stopped { return }
        if notifyRx { rxChannel.notify() }
        for waiter in woke { waiter.resume() }
        if !received.value.isEmpty {
            device.deliver(received.value)
            received.value.removeAll(keepingCapacity: true)
        }
        if let broken { device.fail(.backendMisbehaved("queue \(index): \(broken)")) }
    }

}
