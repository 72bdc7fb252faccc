import PVSystem
import ServiceLifecycle
import Synchronization
import XenABI
import XenStore
import XenStoredCore

/// Serves the xenstored engine on a UNIX socket (mode 0600) and on domains' ring pages, on an
/// event loop of its own: every socket client is dom0 (privileged), as with C xenstored;
/// every ring speaks for its domain. Replies produced while handling one round of the loop are
/// sent together at the end of it.
///
/// Bad input never harms others: a malformed or oversized message ends only its connection
/// (a ring is marked with XENSTORE_ERROR_PROTO or _RINGIDX); a reader that lets more than
/// `outputLimit` bytes pile up is dropped (identical queued watch events coalesce first); a
/// ring with `outstanding` replies unread is not read further until the guest catches up.
///
/// ``start()`` serves and returns; ``stop()`` ends every connection. As a service
/// (``run()``), it serves until graceful shutdown.
public final class XenStoreDaemon: @unchecked Sendable {  // @unchecked: the engine and the connection tables are touched only on `loop`'s thread
    public let path: String
    public let outputLimit: Int
    /// The daemon's own loop (its handlers, and its polling budget, are its alone).
    public let loop: EventLoop
    private let listener: StreamListener
    private var engine = XenStoreEngine()
    private var buffer = [UInt8](repeating: 0, count: 1 << 16)

    private final class SocketClient {
        let stream: StreamDescriptor
        var registration: EventLoop.Registration?
        var decoder = XsFrameDecoder()
        var output: XenStoreOutputQueue
        var wantsOut = false

        init(stream: StreamDescriptor, outputLimit: Int) {
            self.stream = stream
            output = XenStoreOutputQueue(limit: outputLimit)
        }
    }

    private final class RingClient {
        let domain: DomainID
        let ring: XenStoreRing
        let fromGuest: EventFD
        let toGuest: EventFD
        let keepAlive: (any Sendable & AnyObject)?
        var registration: EventLoop.Registration?
        var decoder = XsFrameDecoder()
        var output: XenStoreOutputQueue
        var broken = false

        init(domain: DomainID, ring: XenStoreRing, fromGuest: EventFD, toGuest: EventFD, keepAlive: (any Sendable & AnyObject)?, outputLimit: Int) {
            self.domain = domain
            self.ring = ring
            self.fromGuest = fromGuest
            self.toGuest = toGuest
            self.keepAlive = keepAlive
            output = XenStoreOutputQueue(limit: outputLimit)
        }
    }

    /// Socket connections by id (ids below 2^24), rings by id (from 2^24).
    private var sockets: [Int: SocketClient] = [:]
    private var rings: [Int: RingClient] = [:]
    private var nextSocketID = 1
    private var dirty: Set<Int> = []
    private var flushPosted = false
    private var listening: EventLoop.Registration?
    private let nextRingID = Locked(1 << 24)
    private let state = Locked((started: false, stopped: false, waiters: [CheckedContinuation<Void, Never>]()))
    /// Notifications to guests that failed (a guest's eventfd gone), counted.
    private let failedNotifications = Atomic<Int>(0)

    /// Binds and listens (replacing a stale socket file).
    public init(path: String, outputLimit: Int = 1 << 20) throws(XenStoreServerError) {
        self.path = path
        self.outputLimit = outputLimit
        do {
            listener = try StreamListener(unixSocket: path)
            loop = try EventLoop(name: "xenstored")
        } catch {
            throw .system(error)
        }
    }

    deinit { loop.shutdown() }

    /// The quotas the engine enforces (set before ``start()``).
    public var quotas: XenStoreQuotas {
        get { engine.quotas }
        set { engine.quotas = newValue }
    }

    /// After serving something, how long (µs) the loop keeps looking for the next request
    /// before sleeping in `epoll_wait`: a client's next request usually follows its reply within
    /// a few microseconds, and catching it without a sleep and wake-up halves a round trip. Idle
    /// daemons spin never; busy ones at most this long per round. 0 turns it off. Set before
    /// ``start()``.
    public var pollMicroseconds = 0

    // MARK: Starting and stopping

    /// Starts serving on the daemon's loop (accepting connections, rings attached later).
    public func start() throws(XenStoreServerError) {
        let first = state.withLock { s -> Bool in
            defer { s.started = true }; return !s.started
        }
        guard first else { return }
        let budget = UInt64(max(0, pollMicroseconds)) * 1000
        do {
            let registration = try loop.register(listener.fileDescriptor, name: "xenstored socket \(path)", owner: listener) { [self] _ in
                acceptClients()
                return .wait
            }
            loop.execute { [self] in
                listening = registration
                loop.idlePollNanoseconds = budget
            }
        } catch {
            throw .system(error)
        }
    }

    /// Ends every connection (clients see the socket close), lets go of every ring, stops
    /// listening; returns when done.
    public func stop() async {
        await loop.submit { [self] in stopServing() }
    }

    /// The same, without waiting (from a deinit, a signal handler's thread).
    public func shutdown() {
        loop.execute { [self] in stopServing() }
    }

    /// Serves (as ``start()``) until graceful shutdown, cancellation or ``stop()``: the daemon
    /// as a long-running service.
    public func run() async throws {
        try start()
        await withTaskCancellationOrGracefulShutdownHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let ended = state.withLock { s -> Bool in
                    if s.stopped { return true }
                    s.waiters.append(continuation)
                    return false
                }
                if ended { continuation.resume() }
            }
        } onCancelOrGracefulShutdown: {
            self.loop.execute { [self] in stopServing() }
        }
    }

    private func stopServing() {
        let waiters = state.withLock { s -> [CheckedContinuation<Void, Never>] in
            s.stopped = true
            defer { s.waiters.removeAll() }
            return s.waiters
        }
        listening?.cancel()
        listening = nil
        for id in Array(sockets.keys) { dropSocket(id) }
        for id in Array(rings.keys) { dropRing(id) }
        for waiter in waiters { waiter.resume() }
    }

    // MARK: Control from other threads

    /// Serves a domain on its xenstore ring page, as that domain. The page is initialised
    /// (zeroed, features advertised) before the daemon reads it. `keepAlive` owns the page's
    /// mapping: the daemon holds it for as long as it may read the page (a test that let its
    /// mapping go while the daemon's loop still served the ring read unmapped memory).
    /// Thread-safe.
    /// - Returns: the connection's id, for ``detachRing(_:)``.
    /// With `introduce` (the ring's frame and the guest's port), the domain counts as
    /// introduced and `@introduceDomain` fires, as after a toolstack's INTRODUCE.
    public func attachRing(
        domain: DomainID, page: UnsafeMutableRawPointer, fromGuest: EventFD, toGuest: EventFD, keepAlive: any Sendable & AnyObject,
        introduce: (gfn: UInt64, port: EventChannelPort)? = nil
    ) -> Int {
        XenStoreRing(page: page, side: .daemon).initialize()
        let id = nextRingID.withLock { id in
            defer { id += 1 }; return id
        }
        let address = MemoryAddress(page)
        loop.execute { [self] in
            guard !state.withLock({ $0.stopped }) else { return }
            let ring = XenStoreRing(page: address.pointer, side: .daemon)
            let client = RingClient(domain: domain, ring: ring, fromGuest: fromGuest, toGuest: toGuest, keepAlive: keepAlive, outputLimit: outputLimit)
            rings[id] = client
            do {
                client.registration = try loop.register(fromGuest.fileDescriptor, name: "xenstore ring of domain \(domain.rawValue)", owner: fromGuest) {
                    [self] _ in
                    fromGuest.consume()
                    serviceRing(id)
                    flushSoon()
                    return .wait
                }
            } catch {
                rings[id] = nil
                return
            }
            engine.connect(id, caller: XenStoreCaller(domain: domain, privileged: domain == .dom0))
            if let introduce { for output in engine.introduceDomain(domain, gfn: introduce.gfn, port: introduce.port) { enqueue(output) } }
            serviceRing(id)  // requests written before the attach
            flushSoon()
        }
        return id
    }

    /// A domain is gone: its ring stops being served, its watches and nodes go, and
    /// `@releaseDomain` fires (as RELEASE from the toolstack). Thread-safe.
    public func releaseDomain(_ domain: DomainID) {
        loop.execute { [self] in
            for output in engine.releaseDomain(domain) { enqueue(output) }
            for ended in engine.takeEnded() { drop(ended) }
            flushSoon()
        }
    }

    /// Stops serving a ring (its watches and transactions go). Thread-safe.
    public func detachRing(_ id: Int) { loop.execute { [self] in dropRing(id) } }

    // MARK: Sockets

    private func acceptClients() {
        while true {
            let accepted: StreamDescriptor?
            do { accepted = try listener.accept() } catch { return }  // EMFILE and the like: the next readiness tries again
            guard let stream = accepted else { return }
            let id = nextSocketID
            nextSocketID = nextSocketID % (1 << 24 - 1) + 1
            let client = SocketClient(stream: stream, outputLimit: outputLimit)
            do {
                client.registration = try loop.register(stream.fileDescriptor, name: "xenstored client \(id)", owner: stream) { [self] events in
                    if !events.isDisjoint(with: [.readable, .hangUp, .error]) { readSocket(id) }
                    if events.contains(.writable) { dirty.insert(id) }
                    flushSoon()
                    return .wait
                }
            } catch {
                continue
            }
            sockets[id] = client
            engine.connect(id, caller: .dom0)
        }
    }

    private func dropSocket(_ id: Int) {
        guard let client = sockets.removeValue(forKey: id) else { return }
        engine.disconnect(id)
        dirty.remove(id)
        client.registration?.cancel()
        client.stream.shutdown()
    }

    private func dropRing(_ id: Int) {
        guard let client = rings.removeValue(forKey: id) else { return }
        engine.disconnect(id)
        dirty.remove(id)
        client.registration?.cancel()
    }

    private func drop(_ id: Int) {
        if rings[id] != nil { dropRing(id) } else { dropSocket(id) }
    }

    private func readSocket(_ id: Int) {
        guard let client = sockets[id] else { return }
        let received: Int?
        do { received = try buffer.withUnsafeMutableBytes { try client.stream.read(into: $0) } } catch {
            dropSocket(id)
            return
        }
        guard let n = received else { return }
        guard n > 0 else { dropSocket(id); return }
        client.decoder.feed(buffer[..<n])
        // Replies may drop this very connection (a reader that never reads): stop then.
        while sockets[id] != nil {
            let message: XsMessage?
            do { message = try client.decoder.next() } catch { dropSocket(id); return }
            guard let message else { break }
            handle(message, from: id)
        }
    }

    private func handle(_ message: XsMessage, from id: Int) {
        for output in engine.handle(message, from: id) { enqueue(output) }
        for ended in engine.takeEnded() { drop(ended) }
    }

    private func enqueue(_ output: XenStoreEngine.Output) {
        let id = output.connection
        if let ring = rings[id] {
            guard ring.output.append(output.message) else { fail(ring, id, error: XsWire.errorCommunication); return }
        } else if let client = sockets[id] {
            guard client.output.append(output.message) else { dropSocket(id); return }
        } else {
            return
        }
        dirty.insert(id)
    }

    /// Replies go out once this round of the loop is over (all its handlers ran): several
    /// replies to one client leave in one write.
    private func flushSoon() {
        guard !dirty.isEmpty, !flushPosted else { return }
        flushPosted = true
        loop.execute { [self] in
            flushPosted = false
            flushDirty()
        }
    }

    private func flushDirty() {
        let ids = dirty
        dirty.removeAll(keepingCapacity: true)
        for id in ids {
            if let ring = rings[id] { flushRing(ring, id) } else { flushSocket(id) }
        }
    }

    private func flushSocket(_ id: Int) {
        guard let client = sockets[id] else { return }
        if !client.output.isEmpty {
            let written: Int?
            do { written = try client.output.withUnsent { raw in try client.stream.write(raw) } } catch {
                dropSocket(id)
                return
            }
            if let written, written > 0 { client.output.consumed(written) }
        }
        let wantsOut = !client.output.isEmpty
        if wantsOut != client.wantsOut {
            client.wantsOut = wantsOut
            do { try client.registration?.modify(wantsOut ? [.readable, .writable] : .readable) } catch { dropSocket(id) }
        }
    }

    private func notifyGuest(_ client: RingClient) {
        do { try client.toGuest.notify() } catch { failedNotifications.add(1, ordering: .relaxed) }
    }

    // MARK: Rings

    /// A ring broke the rules: mark its page and stop serving it.
    private func fail(_ client: RingClient, _ id: Int, error: UInt32) {
        client.ring.error = error
        client.broken = true
        notifyGuest(client)
        engine.disconnect(id)
        engine.connect(id, caller: XenStoreCaller(domain: client.domain, privileged: client.domain == .dom0))
        dirty.remove(id)
    }

    private func serviceRing(_ id: Int) {
        guard let client = rings[id] else { return }
        if client.ring.connection == XsWire.reconnecting {
            // The guest asked for a fresh connection: forget its watches and transactions,
            // drop what is in flight, and say done.
            engine.disconnect(id)
            engine.connect(id, caller: XenStoreCaller(domain: client.domain, privileged: client.domain == .dom0))
            client.decoder = XsFrameDecoder()
            client.output = XenStoreOutputQueue(limit: outputLimit)
            client.broken = false
            client.ring.resetForReconnect()
            notifyGuest(client)
            return
        }
        guard !client.broken else { return }
        flushRing(client, id)
        // Requests are handled while fewer than `outstanding` replies wait for the guest to
        // read them; past that, bytes stay in the ring (at most one ring's worth is held here).
        let outstanding = client.domain == .dom0 ? Int.max : engine.quotas.quota(for: client.domain).outstanding
        var consumed = false
        while rings[id] != nil, !client.broken {
            while rings[id] != nil, !client.broken, client.output.queuedMessages < outstanding {
                let message: XsMessage?
                do { message = try client.decoder.next() } catch { fail(client, id, error: XsWire.errorProtocol); return }
                guard let message else { break }
                handle(message, from: id)
            }
            guard rings[id] != nil, !client.broken, client.output.queuedMessages < outstanding else { break }
            let n: Int
            do { n = try buffer.withUnsafeMutableBytes { try client.ring.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[..<XsWire.ringSize])) } } catch {
                fail(client, id, error: XsWire.errorRingIndex)
                return
            }
            guard n > 0 else { break }
            consumed = true
            client.decoder.feed(buffer[..<n])
        }
        if consumed { notifyGuest(client) }
    }

    private func flushRing(_ client: RingClient, _ id: Int) {
        guard !client.broken, !client.output.isEmpty else { return }
        let written: Int
        do { written = try client.output.withUnsent { raw in try client.ring.write(raw) } } catch {
            fail(client, id, error: XsWire.errorRingIndex)
            return
        }
        if written > 0 {
            client.output.consumed(written)
            notifyGuest(client)
        }
        // Whatever is left goes when the guest has read and notified us.
    }
}

/// Why the daemon could not start.
public enum XenStoreServerError: Error, CustomStringConvertible {
    /// A system call failed (binding the socket, starting the loop).
    case system(SystemError)
    public var description: String {
        switch self {
        case let .system(error): "\(error)"
        }
    }
}
