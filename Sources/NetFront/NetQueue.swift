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
final class NetQueue: @unchecked Sendable {  // @unchecked: rings, ids, assembler and counters are under `lock`; `received` is the loop thread's
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
    private let lock = NSLock()
    private let rings: Rings
    /// Free tx ids (each owns `txPages.pages[id]`), used last in first out.
    private var txFree: [UInt16]
    private var txBusy: [Bool]
    /// The rx buffer posted in each rx ring slot (indexed by ring index mod entries).
    private var rxPosted: [UInt16]
    private var assembler: RxAssembler
    private var spaceWaiters: [CheckedContinuation<Void, Never>] = []
    private var halted = false
    /// The loop the channels are watched on (and receivers preferring it resume on).
    let loop: EventLoop
    private var registrations: [EventLoop.Registration] = []
    /// Frames of the handler's batch (the loop's thread only).
    private var received: [NetFrame] = []

    /// Counters, under `lock`.
    private(set) var counters = NetFront.Statistics()

    private final class Rings: @unchecked Sendable {  // @unchecked: used only under the queue's lock
        var tx: FrontRing<NetifTxRing>
        var rx: FrontRing<NetifRxRing>
        init(tx: consuming FrontRing<NetifTxRing>, rx: consuming FrontRing<NetifRxRing>) {
            self.tx = tx
            self.rx = rx
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
        do {
            rings = Rings(
                tx: try FrontRing(initializing: UnsafeMutableRawBufferPointer(start: txRingPage.address, count: XenPage.size), protocol: NetifTxRing()),
                rx: try FrontRing(initializing: UnsafeMutableRawBufferPointer(start: rxRingPage.address, count: XenPage.size), protocol: NetifRxRing()))
        } catch {
            throw .platform("queue \(index): \(error)")
        }
        txFree = (0..<UInt16(txPages.pages.count)).reversed()
        txBusy = Array(repeating: false, count: txPages.pages.count)
        rxPosted = Array(repeating: 0, count: Int(rings.rx.geometry.entryCount))
        assembler = RxAssembler(features: features)
        for id in 0..<UInt16(rxPages.pages.count) { post(id) }
        rings.rx.pushRequests()
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
        let stopped = lock.withLock { () -> Bool in
            registrations = made
            return halted
        }
        if stopped { for registration in made { registration.cancel() } }
    }

    /// Stops serving the rings and wakes senders (they then see the device closed). From the
    /// moment this returns nothing more is taken from the rings; `teardown` runs on the loop
    /// once the channels are out of its epoll set. Never blocks; safe to call again.
    func halt(then teardown: (@Sendable () -> Void)? = nil) {
        let (waiting, registrations) = lock.withLock { () -> ([CheckedContinuation<Void, Never>], [EventLoop.Registration]) in
            halted = true
            defer { spaceWaiters.removeAll() }
            return (spaceWaiters, self.registrations)
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
    var isHalted: Bool { lock.withLock { halted } }

    var statistics: NetFront.Statistics {
        lock.withLock {
            var s = counters
            s.dropped = assembler.counts
            return s
        }
    }

    // MARK: Sending

    /// Puts as many of `frames` (with their plans) on the tx ring as fit now, in order; returns
    /// how many. Notifies the backend once when it asked.
    func trySend(_ frames: ArraySlice<(NetFrame, TxPlan)>) -> Int {
        var placed = 0
        let notify: Bool = lock.withLock {
            guard !halted else { return false }
            for (frame, plan) in frames {
                guard txFree.count >= plan.dataSlots, rings.tx.freeRequests >= UInt32(plan.slots) else { break }
                frame.bytes.withUnsafeBytes { bytes in
                    func put(_ slot: TxPlan.DataSlot) {
                        let id = txFree.removeLast()
                        txBusy[Int(id)] = true
                        let page = txPages.pages[Int(id)]
                        page.address.copyMemory(from: bytes.baseAddress! + slot.frameOffset, byteCount: slot.length)
                        rings.tx.enqueueRequest(.request(NetifTxRequest(gref: page.ref, offset: 0, flags: slot.flags, id: id, size: slot.sizeField)))
                    }
                    put(plan.first)
                    if let extra = plan.extra { rings.tx.enqueueRequest(.extraInfo(extra)) }
                    for slot in plan.rest { put(slot) }
                }
                counters.framesSent += 1
                counters.bytesSent += frame.bytes.count
                placed += 1
            }
            guard placed > 0 else { return false }
            return rings.tx.pushRequestsAndCheckNotify()
        }
        if notify {
            txChannel.notify()
            lock.withLock { counters.notificationsSent += 1 }
        }
        return placed
    }

    /// Waits until a frame of `slots` ring slots and `ids` pages could go on the ring (or the
    /// queue halts).
    func waitForSpace(slots: Int, ids: Int) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let now: Bool = lock.withLock {
                if halted || (txFree.count >= ids && rings.tx.freeRequests >= UInt32(slots)) { return true }
                spaceWaiters.append(continuation)
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
        let stopped: Bool = lock.withLock {
            guard !halted else { return true }
            counters.wakeups += 1
            // Saturating: the count is the backend's to choose (an eventfd holds up to 2^64 − 2).
            let (sum, overflow) = counters.notificationsReceived.addingReportingOverflow(Int(clamping: notifications))
            counters.notificationsReceived = overflow ? .max : sum
            var work = 0
            do {
                repeat {
                    work += try reapTx()
                    work += try reapRx(into: &received)
                } while try rings.tx.finalCheckForResponses() || rings.rx.finalCheckForResponses()
            } catch {
                broken = "\(error)"
            }
            if work == 0 { counters.spuriousWakeups += 1 }
            if rings.rx.requestProducer != rings.rx.publishedRequests {
                notifyRx = rings.rx.pushRequestsAndCheckNotify() && features.rxNotify
                if notifyRx { counters.notificationsSent += 1 }
            }
            if !spaceWaiters.isEmpty {
                woke = spaceWaiters
                spaceWaiters.removeAll()
            }
            return false
        }
        if stopped { return }
        if notifyRx { rxChannel.notify() }
        for waiter in woke { waiter.resume() }
        if !received.isEmpty {
            device.deliver(received)
            received.removeAll(keepingCapacity: true)
        }
        if let broken { device.fail(.backendMisbehaved("queue \(index): \(broken)")) }
    }

    /// Tx responses: free each id once; a response for an id not in flight is counted and
    /// ignored (its page is not reused until its real response comes).
    private func reapTx() throws(RingError) -> Int {
        var count = 0
        while let response = try rings.tx.nextResponse() {
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
    private func reapRx(into received: inout [NetFrame]) throws(RingError) -> Int {
        var count = 0
        let mask = Int(rings.rx.geometry.entryCount) - 1
        while true {
            let at = Int(rings.rx.responseConsumer) & mask
            guard let raw: UInt64 = try rings.rx.nextResponse(decode: { slot throws(XenABIError) in slot.loadUnaligned(as: UInt64.self) }) else { break }
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

    /// Posts rx buffer `id` in the next request slot (under `lock`, or before the thread runs).
    private func post(_ id: UInt16) {
        let at = Int(rings.rx.requestProducer) & (rxPosted.count - 1)
        rxPosted[at] = id
        rings.rx.enqueueRequest(NetifRxRequest(id: id, gref: rxPages.pages[Int(id)].ref))
    }
}
