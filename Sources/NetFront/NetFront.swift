import DequeModule
import Foundation
import PVPlatform
import PVSystem
import Synchronization
import XenABI
import XenBus
import XenStore

/// An Ethernet frame sent or received through a ``NetFront``, with its offload metadata.
public struct NetFrame: Sendable, Equatable {
    /// A large TCP segment (GSO): its kind and the payload bytes per segment (MSS).
    public struct GSO: Sendable, Equatable {
        public var type: NetifGSOType
        public var size: UInt16
        public init(type: NetifGSOType, size: UInt16) {
            self.type = type
            self.size = size
        }
    }

    /// The frame from its destination MAC address on (no preamble, no FCS).
    public var bytes: [UInt8]
    /// The L4 checksum is left blank: sending, for the other side to fill in; received, the
    /// sender left it blank (the data is known good, as `data_validated`).
    public var checksumBlank: Bool
    /// Received: the backend verified the checksum.
    public var checksumValidated: Bool
    public var gso: GSO?

    public init(bytes: [UInt8], checksumBlank: Bool = false, checksumValidated: Bool = false, gso: GSO? = nil) {
        self.bytes = bytes
        self.checksumBlank = checksumBlank
        self.checksumValidated = checksumValidated
        self.gso = gso
    }

    /// The destination address (nil for a frame shorter than a header).
    public var destination: MACAddress? { bytes.count >= 14 ? MACAddress(bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5]) : nil }
    public var source: MACAddress? { bytes.count >= 14 ? MACAddress(bytes[6], bytes[7], bytes[8], bytes[9], bytes[10], bytes[11]) : nil }
}

/// A network interface seen through Xen's PV network protocol: the frontend of
/// `device/vif/<id>`.
///
/// It negotiates as Linux's netfront does (rx-copy, scatter-gather, checksum offload, GSO,
/// several queues, split event channels, each when the backend offers it and ``NetFrontOptions``
/// allows), copies each frame into pages granted once per tx id, and receives into pages posted
/// once per rx buffer. Every rx response is copied out of the ring once and checked against the
/// buffer posted in its slot (``RxAssembler``): a bad frame is dropped and counted, never
/// delivered. Sending waits for ring space (back-pressure), never drops.
///
/// ```swift
/// let nic = try await NetFront.connect(platform: platform, store: store, id: 0)
/// try await nic.send([NetFrame(bytes: frame)])
/// for try await frame in nic.frames { print(frame.bytes.count) }
/// ```
public final class NetFront: Sendable {
    /// What the interface is, as negotiated on the current connection.
    public struct Info: Sendable, Equatable {
        public let mac: MACAddress
        public let mtu: Int
        public let features: NetNegotiation.Features
        /// The backend's `carrier` (absent: up).
        public let linkUp: Bool
    }

    /// Counters for tools and tests (summed over queues and connections).
    public struct Statistics: Sendable, Equatable {
        public var framesSent = 0, bytesSent = 0
        public var framesReceived = 0, bytesReceived = 0
        /// Received frames dropped because the backend broke a rule, by reason.
        public var dropped: [RxAssembler.Reason: Int] = [:]
        /// Frames the backend answered with an error or as dropped.
        public var txErrors = 0
        /// Tx responses for ids not in flight (counted, ignored).
        public var badTxResponses = 0
        /// Received frames dropped because the application did not take them in time.
        public var inboxOverflow = 0
        public var notificationsSent = 0
        /// Wake-ups of the queues' handlers, and those that found nothing to do.
        public var wakeups = 0, spuriousWakeups = 0
        /// Notifications the backend sent that reached the queues (several can arrive as one
        /// wake-up: an eventfd counts them; on Xen a pending bit counts one).
        public var notificationsReceived = 0
        /// Connections made (more than one after a backend restart).
        public var connections = 0
        /// Pages (rings and buffers) whose grant the backend has not let go.
        public var pagesHeldByBackend = 0

        mutating func add(_ other: Statistics) {
            framesSent += other.framesSent
            bytesSent += other.bytesSent
            framesReceived += other.framesReceived
            bytesReceived += other.bytesReceived
            dropped.merge(other.dropped, uniquingKeysWith: +)
            txErrors += other.txErrors
            badTxResponses += other.badTxResponses
            notificationsSent += other.notificationsSent
            wakeups += other.wakeups
            spuriousWakeups += other.spuriousWakeups
            let (sum, overflow) = notificationsReceived.addingReportingOverflow(other.notificationsReceived)
            notificationsReceived = overflow ? .max : sum
        }
    }

    let state: NetDeviceState
    private let closer: FrontendCloser<NetFrontError>

    /// Connects to `device/vif/<id>` of this domain (waits for the backend).
    public static func connect(
        platform: any PVPlatform, store: XenStoreClient, id: Int,
        options: NetFrontOptions = NetFrontOptions()
    ) async throws(NetFrontError) -> NetFront {
        guard (1...256).contains(options.txBuffers), (1...256).contains(options.rxBuffers) else {
            throw .platform("txBuffers and rxBuffers must be 1…256 (the ring's size)")
        }
        let state = NetDeviceState(platform: platform, options: options)
        let driver = NetDriver(state: state, store: store)
        let xenbus = XenbusFrontend(store: store, type: "vif", id: id, driver: driver, connectsDirectly: true, reconnects: options.reconnect)
        let lifecycle = Task {
            do { try await xenbus.run() } catch { state.fail(.closed("\(error)")) }
            state.fail(.closed("the device was closed"))
        }
        let closer = FrontendCloser<NetFrontError>(
            xenbus: xenbus, lifecycle: lifecycle,
            fail: { state.fail($0 ?? .closed("closed by the frontend")) },
            release: {
                state.disconnected()
                // The queues' teardowns (posted to their loops) first.
                await options.eventLoops.waitForPostedWork()
                state.retryHeld()
            })
        // Weak: the closer's closures hold the state (see BlockFront.connect).
        state.onFailure = { [weak closer] error in
            if case .backendMisbehaved = error { Task { await closer?.close(reason: error) } }
        }
        do {
            _ = try await state.waitForConnection()
        } catch {
            await closer.close(reason: error)
            throw error
        }
        return NetFront(state: state, closer: closer)
    }

    private init(state: NetDeviceState, closer: FrontendCloser<NetFrontError>) {
        self.state = state
        self.closer = closer
    }

    /// The interface as negotiated on the current connection.
    public var info: Info { state.currentInfo! }

    /// The loops of the current connection's queues, one per queue (see
    /// ``NetFrontOptions/eventLoops``).
    public var eventLoops: [EventLoop] { state.liveQueues.map(\.loop) }
    public var statistics: Statistics { state.statistics }

    /// Sends one frame (see ``send(_:)-([NetFrame])``).
    public func send(_ frame: NetFrame) async throws(NetFrontError) { try await send([frame]) }

    /// Sends frames in order, as many per ring update and notification as fit. Returns when
    /// all are on the rings (the backend has them), waiting for space when the rings are full.
    ///
    /// - Throws: ``NetFrontError/badFrame(_:)`` (before anything is sent) for a frame the
    ///   negotiated features cannot carry; ``NetFrontError/closed(_:)`` when the device closes.
    public func send(_ frames: [NetFrame]) async throws(NetFrontError) {
        guard !frames.isEmpty else { return }
        if let failure = state.currentFailure { throw failure }
        let (queues, features) = try await state.connection()
        var planned: [[(NetFrame, TxPlan)]] = Array(repeating: [], count: queues.count)
        for frame in frames {
            let offload = TxPlan.Offload(checksumBlank: frame.checksumBlank, gso: frame.gso.map { ($0.type, $0.size) })
            let plan = try TxPlan(frameBytes: frame.bytes.count, offload: offload, features: features)
            planned[queues.count == 1 ? 0 : Netif.flowHash(frame.bytes) % queues.count].append((frame, plan))
        }
        for (queue, work) in zip(queues, planned) where !work.isEmpty {
            var next = work.startIndex
            while next < work.endIndex {
                next += queue.trySend(work[next...])
                guard next < work.endIndex else { break }
                if let failure = state.currentFailure { throw failure }
                await queue.waitForSpace(slots: work[next].1.slots, ids: work[next].1.data.count)
                if queue.isHalted { throw state.currentFailure ?? .closed("the backend disconnected") }
            }
        }
    }

    /// Waits for received frames and returns up to `max` of them, oldest first.
    public func receive(max: Int = 64) async throws(NetFrontError) -> [NetFrame] {
        try await state.receive(max: max)
    }

    /// The received frames waiting now (up to `max`), without waiting.
    public func poll(max: Int = 64) -> [NetFrame] { state.take(max: max) }

    /// Received frames as they come; ends when the device closes.
    public var frames: Frames { Frames(state: state) }

    /// Received frames as an `AsyncSequence` (taken in batches underneath).
    public struct Frames: AsyncSequence, Sendable {
        public typealias Element = NetFrame
        let state: NetDeviceState

        public struct AsyncIterator: AsyncIteratorProtocol {
            let state: NetDeviceState
            var batch: [NetFrame] = []
            var next = 0

            public mutating func next() async throws(NetFrontError) -> NetFrame? {
                if next == batch.count {
                    do {
                        batch = try await state.receive(max: 64)
                    } catch {
                        if case .closed = error { return nil }
                        throw error
                    }
                    next = 0
                }
                defer { next += 1 }
                return batch[next]
            }
        }

        public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(state: state) }
    }

    /// Closes the interface: Closing, waits (up to 5 s) for the backend to let go, revokes the
    /// pages (those it still maps are kept, see ``Statistics/pagesHeldByBackend``), Closed.
    public func close() async { await closer.close(reason: nil) }
}

/// A device's connection, inbox and failure, shared by its queues, its driver and the API.
final class NetDeviceState: Sendable {
    let platform: any PVPlatform
    let options: NetFrontOptions
    private let lock = Locked(State())

    private struct State {
        var queues: [NetQueue] = []
        var staged: [NetQueue] = []
        var features: NetNegotiation.Features?
        var info: NetFront.Info?
        var connected = false
        var connectionWaiters: [CheckedContinuation<Void, Never>] = []
        var failure: NetFrontError?
        /// Received frames not yet taken.
        var inbox = Deque<NetFrame>()
        /// Tasks waiting for frames, by a number each (so a cancelled one can be found).
        var receivers: [UInt64: CheckedContinuation<Void, Never>] = [:]
        var nextReceiver: UInt64 = 0
        var finished = NetFront.Statistics()
        var overflow = 0
        var connections = 0
        var held: [SharedPage] = []
        var onFailure: (@Sendable (NetFrontError) -> Void)?
    }

    /// Why the device failed, if it did.
    var currentFailure: NetFrontError? { lock.withLock { $0.failure } }
    /// Told once when the device fails (set before the handshake starts).
    var onFailure: (@Sendable (NetFrontError) -> Void)? {
        get { lock.withLock { $0.onFailure } }
        set { lock.withLock { $0.onFailure = newValue } }
    }

    init(platform: any PVPlatform, options: NetFrontOptions) {
        self.platform = platform
        self.options = options
    }

    var currentInfo: NetFront.Info? { lock.withLock { s in s.info } }

    /// The queues of the current connection (for tests that play a hostile frontend).
    var liveQueues: [NetQueue] { lock.withLock { s in s.queues } }

    var statistics: NetFront.Statistics {
        var (statistics, live) = lock.withLock { s in
            var statistics = s.finished
            statistics.inboxOverflow = s.overflow
            statistics.connections = s.connections
            statistics.pagesHeldByBackend = s.held.count
            return (statistics, s.queues)
        }
        for queue in live { statistics.add(queue.statistics) }
        return statistics
    }

    // MARK: Connection

    /// Makes the queues for a connection about to be published (replacing any staged by an
    /// earlier try of the same transaction).
    func stage(features: NetNegotiation.Features, mac: MACAddress, mtu: Int, backend: DomainID) throws(NetFrontError) -> [NetQueue] {
        // A failed device stays failed: no new connection while it is being closed.
        if let failure = currentFailure { throw failure }
        let previous = lock.withLock { s in
            defer { s.staged = [] }; return s.staged
        }
        for queue in previous { release(queue) }
        var made: [NetQueue] = []
        do {
            for index in 0..<features.queues {
                let txRing = try platform.grantPage(to: backend, readOnly: false)
                let rxRing = try platform.grantPage(to: backend, readOnly: false)
                let txChannel = try platform.allocateUnboundPort(remote: backend)
                let rxChannel = features.splitEventChannels ? try platform.allocateUnboundPort(remote: backend) : txChannel
                let txPages = try platform.grantPages(options.txBuffers, to: backend, readOnly: true)
                let rxPages = try platform.grantPages(options.rxBuffers, to: backend, readOnly: false)
                made.append(
                    try NetQueue(
                        index: index, features: features, device: self, txRingPage: txRing, rxRingPage: rxRing,
                        txChannel: txChannel, rxChannel: rxChannel, txPages: txPages, rxPages: rxPages,
                        loop: options.eventLoops.loops[index % options.eventLoops.loops.count]))
            }
        } catch let error as PlatformError {
            for queue in made { release(queue) }
            throw .platform("setting up queue \(made.count) (each queue takes \(2 + options.txBuffers + options.rxBuffers) pages and grants)", cause: error)
        } catch {
            for queue in made { release(queue) }
            throw error as? NetFrontError ?? .platform("\(error)")
        }
        lock.withLock { s in
            s.staged = made
            s.features = features
            s.info = NetFront.Info(mac: mac, mtu: mtu, features: features, linkUp: true)
        }
        do throws(NetFrontError) {
            for queue in made { try queue.start() }
        } catch {
            for queue in made { release(queue) }
            lock.withLock { s in s.staged = [] }
            throw error
        }
        return made
    }

    /// The backend is Connected: the staged queues go live.
    func connected(linkUp: Bool) {
        let waiters = lock.withLock { (s: inout State) -> [CheckedContinuation<Void, Never>] in
            guard s.failure == nil else { return [] }
            if !s.staged.isEmpty {
                s.queues = s.staged
                s.staged = []
                s.connections += 1
            }
            if let old = s.info { s.info = NetFront.Info(mac: old.mac, mtu: old.mtu, features: old.features, linkUp: linkUp) }
            s.connected = !s.queues.isEmpty
            defer { s.connectionWaiters.removeAll() }
            return s.connectionWaiters
        }
        for waiter in waiters { waiter.resume() }
    }

    /// The backend went away: queues stop, pages are revoked (kept while mapped).
    func disconnected() {
        let old = lock.withLock { (s: inout State) -> [NetQueue] in
            s.connected = false
            defer { s.queues = []; s.staged = [] }
            return s.queues + s.staged
        }
        for queue in old {
            queue.halt()
            let statistics = queue.statistics
            lock.withLock { s in s.finished.add(statistics) }
            release(queue)
        }
    }

    /// Halts the queue; once its channels are out of its loop, revokes its pages (keeping
    /// those the backend still maps) and closes the channels.
    private func release(_ queue: NetQueue) {
        queue.halt { [self] in
            let pages = [queue.txRingPage, queue.rxRingPage] + queue.txPages.pages + queue.rxPages.pages
            let kept = pages.filter { !platform.revoke($0) }
            queue.txChannel.close()
            if queue.rxChannel !== queue.txChannel { queue.rxChannel.close() }
            lock.withLock { s in s.held += kept }
        }
    }

    /// Retries the revokes of pages the backend held (at close).
    func retryHeld() {
        let pages = lock.withLock { s in
            defer { s.held = [] }; return s.held
        }
        let kept = pages.filter { !platform.revoke($0) }
        lock.withLock { s in s.held += kept }
    }

    func waitForConnection() async throws(NetFrontError) {
        while true {
            let ready: Bool? = lock.withLock { s in s.failure != nil ? nil : s.connected }
            guard let ready else { throw lock.withLock { s in s.failure! } }
            if ready { return }
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let now = lock.withLock { (s: inout State) -> Bool in
                    if s.failure != nil || s.connected { return true }
                    s.connectionWaiters.append(continuation)
                    return false
                }
                if now { continuation.resume() }
            }
        }
    }

    /// The live queues and features, waiting through a reconnect.
    func connection() async throws(NetFrontError) -> ([NetQueue], NetNegotiation.Features) {
        while true {
            let current: ([NetQueue], NetNegotiation.Features)? = lock.withLock { s in s.connected ? (s.queues, s.features!) : nil }
            if let current { return current }
            try await waitForConnection()
        }
    }

    /// Ends the device: waiting senders, receivers and connectors see `error`.
    func fail(_ error: NetFrontError) {
        let (first, waiters) = lock.withLock { (s: inout State) -> (Bool, [CheckedContinuation<Void, Never>]) in
            guard s.failure == nil else { return (false, []) }
            s.failure = error
            defer { s.connectionWaiters.removeAll(); s.receivers.removeAll() }
            return (true, s.connectionWaiters + s.receivers.values)
        }
        guard first else { return }
        for waiter in waiters { waiter.resume() }
        for queue in lock.withLock({ s in s.queues }) { queue.halt() }
        lock.withLock { $0.onFailure }?(error)
    }

    // MARK: Inbox

    /// Frames from a queue's thread (dropped and counted beyond the inbox limit).
    func deliver(_ frames: [NetFrame]) {
        let waiting = lock.withLock { (s: inout State) -> [CheckedContinuation<Void, Never>] in
            let room = max(0, options.inboxLimit - s.inbox.count)
            s.inbox.append(contentsOf: frames.prefix(room))
            s.overflow += max(0, frames.count - room)
            defer { s.receivers.removeAll() }
            return Array(s.receivers.values)
        }
        for receiver in waiting { receiver.resume() }
    }

    func take(max: Int) -> [NetFrame] {
        lock.withLock { s in
            let taken = Array(s.inbox.prefix(Swift.max(max, 1)))
            s.inbox.removeFirst(taken.count)
            return taken
        }
    }

    /// Waits for frames; a cancelled task stops waiting (``NetFrontError/cancelled``).
    func receive(max: Int) async throws(NetFrontError) -> [NetFrame] {
        while true {
            let frames = take(max: max)
            if !frames.isEmpty { return frames }
            if let failure = lock.withLock({ s in s.failure }) { throw failure }
            if Task.isCancelled { throw .cancelled }
            let id = lock.withLock { s in
                defer { s.nextReceiver &+= 1 }; return s.nextReceiver
            }
            await withTaskCancellationHandler {
                await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                    let now = lock.withLock { (s: inout State) -> Bool in
                        if s.failure != nil || !s.inbox.isEmpty || Task.isCancelled { return true }
                        s.receivers[id] = continuation
                        return false
                    }
                    if now { continuation.resume() }
                }
            } onCancel: {
                lock.withLock { s in s.receivers.removeValue(forKey: id) }?.resume()
            }
        }
    }
}

/// NetFront's part in the XenBus handshake (netfront connects without Initialised).
struct NetDriver: XenbusFrontendDriver {
    let state: NetDeviceState
    let store: XenStoreClient

    private func read(_ directory: String, _ keys: [String], in transaction: XenStoreTransaction? = nil) async -> [String: String] {
        var values: [String: String] = [:]
        for key in keys {
            guard let path = try? XenStorePath(directory + "/" + key) else { continue }
            let value: String?
            if let transaction { value = try? await transaction.readString(path) } else { value = try? await store.readString(path) }
            if let value { values[key] = value }
        }
        return values
    }

    func publish(_ transaction: XenStoreTransaction, frontend: String, backend: String, backendID: DomainID) async throws {
        let offer = await read(backend, NetNegotiation.offerKeys, in: transaction)
        let own = await read(frontend, ["mac", "mtu"], in: transaction)
        let queues: [NetQueue]
        do {
            let features = try NetNegotiation.features(offer: offer, options: state.options)
            let mac = try NetNegotiation.mac(own["mac"])
            let mtu = try NetNegotiation.mtu(own["mtu"], features: features)
            queues = try state.stage(features: features, mac: mac, mtu: mtu, backend: backendID)
            let keys = NetNegotiation.frontendKeys(
                features: features,
                queues: queues.map {
                    NetNegotiation.QueueKeys(
                        txRing: $0.txRingPage.ref, rxRing: $0.rxRingPage.ref,
                        ports: $0.rxChannel === $0.txChannel ? [$0.txChannel.port] : [$0.txChannel.port, $0.rxChannel.port])
                })
            try await clearTransport(
                transaction, frontend: frontend,
                keys: [
                    "tx-ring-ref", "rx-ring-ref", "event-channel", "event-channel-tx", "event-channel-rx",
                    "multi-queue-num-queues", "request-rx-copy", "feature-rx-notify", "feature-sg",
                    "feature-gso-tcpv4", "feature-gso-tcpv6", "feature-no-csum-offload",
                    "feature-ipv6-csum-offload", "ctrl-ring-ref", "event-channel-ctrl"
                ])
            for (key, value) in keys { try await transaction.write(XenStorePath(frontend + "/" + key), value) }
        } catch let error as NetFrontError {
            state.fail(error)
            throw error
        }
    }

    func connect(frontend: String, backend: String) async throws { await refresh(frontend: frontend, backend: backend) }

    func refresh(frontend: String, backend: String) async {
        let carrier = await read(backend, ["carrier"])["carrier"]
        state.connected(linkUp: carrier != "0")
    }

    func disconnect() async { state.disconnected() }
}
