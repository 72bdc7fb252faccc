#if canImport(Glibc)
import Glibc
#endif
import CLinux
import PVSystem
import Synchronization
import XenABI
import XenStore

/// Serves the xenstored engine on a UNIX socket (mode 0600) and on domains' ring pages, from
/// one thread with `epoll`: every socket client is dom0 (privileged), as with C xenstored;
/// every ring speaks for its domain. Replies produced while handling one batch of events are
/// sent together at the end of it.
///
/// Bad input never harms others: a malformed or oversized message ends only its connection
/// (a ring is marked with XENSTORE_ERROR_PROTO or _RINGIDX); a reader that lets more than
/// `outputLimit` bytes pile up is dropped (identical queued watch events coalesce first); a
/// ring with `outstanding` replies unread is not read further until the guest catches up.
public final class XenStoreDaemon: @unchecked Sendable {
    public let path: String
    public let outputLimit: Int
    private let listener: Int32
    private let epoll: Int32
    private let wake: EventFD
    private var engine = XenStoreEngine()
    private var buffer = [UInt8](repeating: 0, count: 1 << 16)

    private struct SocketClient {
        var decoder = XsFrameDecoder()
        var output: XenStoreOutputQueue
        var wantsOut = false
    }

    private final class RingClient {
        let domain: DomainID
        let ring: XenStoreRing
        let fromGuest: EventFD
        let toGuest: EventFD
        let keepAlive: AnyObject?
        var decoder = XsFrameDecoder()
        var output: XenStoreOutputQueue
        var broken = false

        init(domain: DomainID, ring: XenStoreRing, fromGuest: EventFD, toGuest: EventFD, keepAlive: AnyObject?, outputLimit: Int) {
            self.domain = domain
            self.ring = ring
            self.fromGuest = fromGuest
            self.toGuest = toGuest
            self.keepAlive = keepAlive
            output = XenStoreOutputQueue(limit: outputLimit)
        }
    }

    private var sockets: [Int32: SocketClient] = [:]
    private var rings: [Int: RingClient] = [:]
    /// Which connection an eventfd's readiness belongs to.
    private var ringByEventFD: [Int32: Int] = [:]
    private var dirty: Set<Int> = []
    private var stopping = false

    private enum Command: Sendable {
        case attach(id: Int, domain: DomainID, page: UInt, fromGuest: EventFD, toGuest: EventFD, keepAlive: SendableBox, introduce: (gfn: UInt64, port: EventChannelPort)?)
        case release(DomainID)
        case detach(id: Int)
        case stop
    }
    private let commands = Mutex<[Command]>([])
    private let nextRingID = Mutex(1 << 24)

    /// Binds and listens (replacing a stale socket file).
    public init(path: String, outputLimit: Int = 1 << 20) throws(XenStoreServerError) {
        self.path = path
        self.outputLimit = outputLimit
        unlink(path)
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { throw .system("socket", errno) }
        var address: sockaddr_un
        do { address = try SeqpacketSocket.address(path) } catch {
            close(fd)
            throw .system("bind (path too long)", ENAMETOOLONG)
        }
        let previous = umask(0o077)  // the socket file is created 0600
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        umask(previous)
        guard bound == 0 else { let e = errno; close(fd); throw .system("bind \(path)", e) }
        guard listen(fd, 512) == 0 else { let e = errno; close(fd); throw .system("listen", e) }
        listener = fd
        epoll = epoll_create1(Int32(EPOLL_CLOEXEC))
        guard epoll >= 0 else { let e = errno; close(fd); throw .system("epoll_create1", e) }
        do { wake = try EventFD() } catch { close(fd); close(epoll); throw .system("eventfd", error.code) }
        watch(listener)
        watch(wake.fileDescriptor)
    }

    deinit {
        for fd in sockets.keys { close(fd) }
        close(listener)
        close(epoll)
        unlink(path)
    }

    /// The quotas the engine enforces (set before ``run()``).
    public var quotas: XenStoreQuotas {
        get { engine.quotas }
        set { engine.quotas = newValue }
    }

    // MARK: Control from other threads

    /// Serves a domain on its xenstore ring page, as that domain. The page is initialised
    /// (zeroed, features advertised) before the daemon reads it. Thread-safe.
    /// - Returns: the connection's id, for ``detachRing(_:)``.
    /// With `introduce` (the ring's frame and the guest's port), the domain counts as
    /// introduced and `@introduceDomain` fires, as after a toolstack's INTRODUCE.
    public func attachRing(domain: DomainID, page: UnsafeMutableRawPointer, fromGuest: EventFD, toGuest: EventFD, keepAlive: AnyObject? = nil,
                           introduce: (gfn: UInt64, port: EventChannelPort)? = nil) -> Int {
        XenStoreRing(page: page, side: .daemon).initialize()
        let id = nextRingID.withLock { id in defer { id += 1 }; return id }
        post(.attach(id: id, domain: domain, page: UInt(bitPattern: page), fromGuest: fromGuest, toGuest: toGuest, keepAlive: SendableBox(keepAlive), introduce: introduce))
        return id
    }

    /// A domain is gone: its ring stops being served, its watches and nodes go, and
    /// `@releaseDomain` fires (as RELEASE from the toolstack). Thread-safe.
    public func releaseDomain(_ domain: DomainID) { post(.release(domain)) }

    /// Stops serving a ring (its watches and transactions go). Thread-safe.
    public func detachRing(_ id: Int) { post(.detach(id: id)) }

    /// Asks ``run()`` to return. Thread-safe.
    public func stop() { post(.stop) }

    private func post(_ command: Command) {
        commands.withLock { $0.append(command) }
        try? wake.notify()
    }

    // MARK: The loop

    /// After serving something, how long (µs) to keep looking for the next request before
    /// sleeping in `epoll_wait`: a client's next request usually follows its reply within a few
    /// microseconds, and catching it without a sleep and wake-up halves a round trip. Idle
    /// daemons spin never; busy ones at most this long per round. 0 turns it off.
    public var pollMicroseconds = 0

    private static func now() -> Int {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        return t.tv_sec * 1_000_000 + t.tv_nsec / 1000
    }

    /// Serves until ``stop()``; then ends every connection (clients see the socket close) and
    /// lets go of every ring.
    public func run() {
        defer {
            for fd in Array(sockets.keys) { dropSocket(fd) }
            for id in Array(rings.keys) { dropRing(id) }
        }
        var events = [epoll_event](repeating: epoll_event(), count: 256)
        var spinUntil = 0
        while !stopping {
            var ready = Int32(0)
            if spinUntil > 0 {
                repeat { ready = epoll_wait(epoll, &events, Int32(events.count), 0) } while ready == 0 && Self.now() < spinUntil
                spinUntil = 0
            }
            if ready == 0 { ready = epoll_wait(epoll, &events, Int32(events.count), -1) }
            if ready < 0 { if errno == EINTR { continue }; return }
            if pollMicroseconds > 0 { spinUntil = Self.now() + pollMicroseconds }
            for i in 0..<Int(ready) {
                let fd = events[i].data.fd
                let flags = events[i].events
                if fd == listener {
                    acceptClients()
                } else if fd == wake.fileDescriptor {
                    _ = try? wake.wait()
                    runCommands()
                } else if let id = ringByEventFD[fd] {
                    if let client = rings[id] { _ = try? client.fromGuest.wait() }  // readable: does not block
                    serviceRing(id)
                } else if sockets[fd] != nil {
                    if flags & (EPOLLIN.rawValue | EPOLLHUP.rawValue | EPOLLERR.rawValue) != 0 { readSocket(fd) }
                    if flags & EPOLLOUT.rawValue != 0 { dirty.insert(Int(fd)) }
                }
            }
            flushDirty()
        }
    }

    private func watch(_ fd: Int32, out: Bool = false) {
        var event = epoll_event()
        event.events = EPOLLIN.rawValue | (out ? EPOLLOUT.rawValue : 0)
        event.data.fd = fd
        _ = epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &event)
    }

    private func modify(_ fd: Int32, out: Bool) {
        var event = epoll_event()
        event.events = EPOLLIN.rawValue | (out ? EPOLLOUT.rawValue : 0)
        event.data.fd = fd
        _ = epoll_ctl(epoll, EPOLL_CTL_MOD, fd, &event)
    }

    private func runCommands() {
        let pending = commands.withLock { list in defer { list.removeAll() }; return list }
        for command in pending {
            switch command {
            case let .attach(id, domain, page, fromGuest, toGuest, keepAlive, introduce):
                let ring = XenStoreRing(page: UnsafeMutableRawPointer(bitPattern: page)!, side: .daemon)
                rings[id] = RingClient(domain: domain, ring: ring, fromGuest: fromGuest, toGuest: toGuest, keepAlive: keepAlive.value, outputLimit: outputLimit)
                ringByEventFD[fromGuest.fileDescriptor] = id
                watch(fromGuest.fileDescriptor)
                engine.connect(id, caller: XenStoreCaller(domain: domain, privileged: domain == .dom0))
                if let introduce { for output in engine.introduceDomain(domain, gfn: introduce.gfn, port: introduce.port) { enqueue(output) } }
                serviceRing(id)  // requests written before the attach
            case let .release(domain):
                for output in engine.releaseDomain(domain) { enqueue(output) }
                for ended in engine.takeEnded() { drop(ended) }
            case let .detach(id):
                dropRing(id)
            case .stop:
                stopping = true
            }
        }
    }

    private func acceptClients() {
        while true {
            let fd = accept(listener, nil, nil)
            guard fd >= 0 else { return }
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            sockets[fd] = SocketClient(output: XenStoreOutputQueue(limit: outputLimit))
            engine.connect(Int(fd), caller: .dom0)
            watch(fd)
        }
    }

    private func dropSocket(_ fd: Int32) {
        engine.disconnect(Int(fd))
        sockets[fd] = nil
        dirty.remove(Int(fd))
        _ = epoll_ctl(epoll, EPOLL_CTL_DEL, fd, nil)
        close(fd)
    }

    private func dropRing(_ id: Int) {
        guard let client = rings.removeValue(forKey: id) else { return }
        engine.disconnect(id)
        dirty.remove(id)
        ringByEventFD[client.fromGuest.fileDescriptor] = nil
        _ = epoll_ctl(epoll, EPOLL_CTL_DEL, client.fromGuest.fileDescriptor, nil)
    }

    private func drop(_ id: Int) {
        if rings[id] != nil { dropRing(id) } else if sockets[Int32(id)] != nil { dropSocket(Int32(id)) }
    }

    private func readSocket(_ fd: Int32) {
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR) { dropSocket(fd); return }
        guard n > 0 else { return }
        sockets[fd]!.decoder.feed(buffer[..<n])
        // Replies may drop this very connection (a reader that never reads): stop then.
        while sockets[fd] != nil {
            let message: XsMessage?
            do { message = try sockets[fd]!.decoder.next() } catch { dropSocket(fd); return }
            guard let message else { break }
            handle(message, from: Int(fd))
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
        } else if sockets[Int32(id)] != nil {
            guard sockets[Int32(id)]!.output.append(output.message) else { dropSocket(Int32(id)); return }
        } else {
            return
        }
        dirty.insert(id)
    }

    private func flushDirty() {
        let ids = dirty
        dirty.removeAll(keepingCapacity: true)
        for id in ids {
            if let ring = rings[id] { flushRing(ring, id) } else { flushSocket(Int32(id)) }
        }
    }

    private func flushSocket(_ fd: Int32) {
        guard sockets[fd] != nil else { return }
        if !sockets[fd]!.output.isEmpty {
            let n = sockets[fd]!.output.withUnsent { raw in send(fd, raw.baseAddress!, raw.count, Int32(MSG_NOSIGNAL)) }
            if n < 0 && errno != EAGAIN && errno != EINTR { dropSocket(fd); return }
            if n > 0 { sockets[fd]!.output.consumed(n) }
        }
        let wantsOut = !sockets[fd]!.output.isEmpty
        if wantsOut != sockets[fd]!.wantsOut {
            sockets[fd]!.wantsOut = wantsOut
            modify(fd, out: wantsOut)
        }
    }

    // MARK: Rings

    /// A ring broke the rules: mark its page and stop serving it.
    private func fail(_ client: RingClient, _ id: Int, error: UInt32) {
        client.ring.error = error
        client.broken = true
        try? client.toGuest.notify()
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
            try? client.toGuest.notify()
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
        if consumed { try? client.toGuest.notify() }
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
            try? client.toGuest.notify()
        }
        // Whatever is left goes when the guest has read and notified us.
    }
}

/// Carries a non-Sendable owner across the command queue (only kept alive, never used).
struct SendableBox: @unchecked Sendable {
    let value: AnyObject?
    init(_ value: AnyObject?) { self.value = value }
}

public enum XenStoreServerError: Error, CustomStringConvertible {
    case system(String, Int32)
    public var description: String {
        switch self {
        case let .system(call, code): "\(call): \(String(cString: strerror(code)))"
        }
    }
}
