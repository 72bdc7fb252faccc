import PVSystem
import Synchronization
import XenABI

/// An async XenStore client over one connection (a UNIX socket, `/dev/xen/xenbus`, or a
/// domain's ring). Many requests may be in flight at once; each reply is matched to its
/// request by `req_id`. Watch events go to their ``XenStoreWatch`` by token.
///
/// ```swift
/// let store = try XenStoreClient.connect()
/// try await store.write("/local/domain/0/name", "Domain-0")
/// for try await event in try await store.watch("/local/domain/0/control") { … }
/// ```
///
/// The connection is watched on an event loop (no thread of its own): its handler takes the
/// bytes that arrived, frames them and resumes the waiting tasks. Requests are written
/// without blocking, in order; what does not fit waits in an output queue that the loop
/// flushes when the transport has room, so messages never interleave on the stream and no
/// caller ever blocks on a full socket or ring.
public final class XenStoreClient: XenStoreOperations, Sendable {
    /// The connection underneath.
    public let transport: any XenStoreTransport
    private let core: ClientCore
    /// Requests take turns when the transport wants one at a time.
    private let turn = RequestTurn()

    /// Starts a client on an open transport, watched on `loop`.
    public init(transport: any XenStoreTransport, loop: EventLoop = EventLoopGroup.shared.next()) {
        self.transport = transport
        core = ClientCore(transport: transport, loop: loop)
        core.start()
    }

    /// Connects the way libxenstore does (``XenStoreLocation``): `XENSTORED_PATH`,
    /// `XENSTORED_RUNDIR`, `/var/run/xenstored/socket`, then `/dev/xen/xenbus`.
    public static func connect(_ location: XenStoreLocation = .current, loop: EventLoop = EventLoopGroup.shared.next()) throws(XenStoreError) -> XenStoreClient
    {
        XenStoreClient(transport: try location.open(), loop: loop)
    }

    deinit {
        core.end(.connectionClosed("the client was released"))
    }

    /// Closes the connection; requests in flight fail with ``XenStoreError/connectionClosed(_:)``
    /// and watches end.
    public func close() {
        core.end(.connectionClosed("closed by the client"))
    }

    // MARK: Requests

    /// Sends one request and waits for its reply (``XenStoreOperations`` builds on this).
    public func call(_ request: XenStoreRequest, transaction: UInt32) async throws(XenStoreError) -> XenStoreReply {
        let serial = transport.oneRequestAtATime
        if serial { await turn.acquire() }
        defer { if serial { turn.release() } }
        let path = Self.subject(of: request)
        let result: Result<XenStoreReply, XenStoreError> = await withCheckedContinuation { continuation in
            let registered: Result<UInt32, XenStoreError> = core.state.withLock { state in
                if let closed = state.closed { return .failure(closed) }
                let id = state.nextRequestID
                state.nextRequestID = id &+ 1 == 0 ? 1 : id &+ 1
                state.pending[id] = ClientCore.Pending(type: request.type, path: path, continuation: continuation)
                return .success(id)
            }
            let id: UInt32
            switch registered {
            case let .failure(error): continuation.resume(returning: .failure(error)); return
            case let .success(value): id = value
            }
            do throws(XenStoreError) {
                let message: XsMessage
                do throws(XenStoreWireError) { message = try request.message(requestID: id, transactionID: transaction, limit: transport.payloadLimit) } catch {
                    throw .invalidRequest(error)
                }
                try send(message)
            } catch {
                if let pending = core.state.withLock({ $0.pending.removeValue(forKey: id) }) {
                    pending.continuation.resume(returning: .failure(error))
                }
            }
        }
        return try result.get()
    }

    private func send(_ message: XsMessage) throws(XenStoreError) {
        try core.send(message.bytes)
    }

    /// Starts a transaction and returns its id; prefer ``transaction(attempts:_:)``.
    public func startTransaction() async throws(XenStoreError) -> UInt32 {
        guard case let .transactionID(id) = try await call(.transactionStart, transaction: 0) else { throw .badReply("TRANSACTION_START without an id") }
        return id
    }

    /// Commits (or aborts) a transaction started with ``startTransaction()``.
    public func endTransaction(_ id: UInt32, commit: Bool) async throws(XenStoreError) {
        _ = try await call(.transactionEnd(commit: commit), transaction: id)
    }

    /// Runs `body` in a transaction and commits it; when the commit conflicts (EAGAIN) the
    /// whole body runs again, up to `attempts` times. If `body` throws, the transaction is
    /// aborted and the error rethrown.
    public func transaction<T: Sendable>(attempts: Int = 16, _ body: (XenStoreTransaction) async throws -> T) async throws -> T {
        precondition(attempts > 0, "a transaction needs at least one attempt")
        for _ in 0..<attempts {
            let transaction = XenStoreTransaction(client: self, id: try await startTransaction())
            let value: T
            do {
                value = try await body(transaction)
            } catch {
                try? await endTransaction(transaction.id, commit: false)
                throw error
            }
            do {
                try await endTransaction(transaction.id, commit: true)
                return value
            } catch .transactionConflict {
                continue
            }
        }
        throw XenStoreError.transactionConflict(attempts: attempts)
    }

    // MARK: Domains and watches

    /// The home path of a domain (`/local/domain/<id>`).
    public func domainPath(of domain: DomainID) async throws(XenStoreError) -> String {
        guard case let .domainPath(path) = try await call(.getDomainPath(domain), transaction: 0) else { throw .badReply("GET_DOMAIN_PATH") }
        return path
    }

    /// Tells the daemon about a domain's ring (toolstack only); fires `@introduceDomain`.
    public func introduce(_ domain: DomainID, gfn: UInt64, port: EventChannelPort) async throws(XenStoreError) {
        _ = try await call(.introduce(domain, gfn: gfn, port: port), transaction: 0)
    }

    /// Forgets a domain (toolstack only); fires `@releaseDomain`.
    public func release(_ domain: DomainID) async throws(XenStoreError) {
        _ = try await call(.release(domain), transaction: 0)
    }

    /// Whether the daemon knows the domain.
    public func isIntroduced(_ domain: DomainID) async throws(XenStoreError) -> Bool {
        guard case let .introduced(yes) = try await call(.isDomainIntroduced(domain), transaction: 0) else { throw .badReply("IS_DOMAIN_INTRODUCED") }
        return yes
    }

    /// Drops every watch and transaction of this connection on the daemon's side (and ends
    /// this client's watch streams).
    public func resetWatches() async throws(XenStoreError) {
        _ = try await call(.resetWatches, transaction: 0)
        let streams = core.state.withLock { state in
            defer { state.watches.removeAll() }
            return Array(state.watches.values)
        }
        for stream in streams { stream.continuation.finish() }
    }

    /// A daemon-specific CONTROL command (privileged).
    public func control(_ words: [String]) async throws(XenStoreError) -> String {
        guard case let .text(text) = try await call(.control(words), transaction: 0) else { throw .badReply("CONTROL") }
        return text
    }

    /// Registers a watch (`xs_watch`) and returns its events. The first event is the one the
    /// daemon fires on registration (its path is `path`); it may also stand for a change made
    /// to `path` before it was sent (see ``XenStoreWatch``), so read the state on each event.
    /// The watch is removed from the daemon when iteration ends or the task is cancelled.
    public func watch(_ path: XenStorePath, token: String? = nil) async throws(XenStoreError) -> XenStoreWatch {
        // Bounded (XSA-349): a daemon or backend flooding events cannot grow the queue without
        // end. Past the limit the oldest events give way and are counted.
        let (stream, continuation) = AsyncStream<XenStoreWatchEvent>.makeStream(bufferingPolicy: .bufferingNewest(XenStoreWatch.queueLimit))
        let drops = XenStoreWatchDrops()
        let chosen: Result<String, XenStoreError> = core.state.withLock { state in
            if let closed = state.closed { return .failure(closed) }
            let token = token ?? "pvkit-\(state.nextToken)"
            state.nextToken += 1
            guard state.watches[token] == nil else { return .failure(.alreadyExists("watch token \(token)")) }
            state.watches[token] = WatchQueue(continuation: continuation, drops: drops)
            return .success(token)
        }
        let token = try chosen.get()
        do {
            _ = try await call(.watch(path, token: token), transaction: 0)
        } catch {
            core.state.withLock { _ = $0.watches.removeValue(forKey: token) }
            continuation.finish()
            throw error
        }
        continuation.onTermination = { [weak self] _ in
            guard let self else { return }
            let removed = self.core.state.withLock { $0.watches.removeValue(forKey: token) != nil }
            guard removed else { return }
            Task { _ = try? await self.call(.unwatch(path, token: token), transaction: 0) }
        }
        return XenStoreWatch(path: path, token: token, stream: stream, continuation: continuation, drops: drops)
    }
}

/// A watch's event queue and the count of events it had no room for.
struct WatchQueue {
    let continuation: AsyncStream<XenStoreWatchEvent>.Continuation
    let drops: XenStoreWatchDrops
}

/// What the client and its event-loop handler share: requests in flight, watch streams,
/// output not yet written, and whether the connection has failed.
private final class ClientCore: Sendable {
    struct Pending: Sendable {
        let type: XsMessageType
        let path: String?
        let continuation: CheckedContinuation<Result<XenStoreReply, XenStoreError>, Never>
    }

    struct State: Sendable {
        var nextRequestID: UInt32 = 1
        var nextToken = 1
        var pending: [UInt32: Pending] = [:]
        var watches: [String: WatchQueue] = [:]
        var closed: XenStoreError?
        /// Bytes accepted and not yet written (in order).
        var output: [UInt8] = []
        var registration: EventLoop.Registration?
        /// The registration also waits for room (``XenStoreTransport/waitToWrite``).
        var waitingToWrite = false
    }

    let state = Locked(State())
    let transport: any XenStoreTransport
    let loop: EventLoop
    /// The handler's decoder and read buffer (the loop's thread only).
    private let reader: LoopBound<Reader>

    private struct Reader {
        var decoder = XsFrameDecoder()
        var buffer = [UInt8](repeating: 0, count: 65536)

        /// The first `count` bytes of `buffer` (just read) to the decoder.
        mutating func feed(_ count: Int) { decoder.feed(buffer[..<count]) }
    }

    init(transport: any XenStoreTransport, loop: EventLoop) {
        self.transport = transport
        self.loop = loop
        reader = LoopBound(Reader(), on: loop)
    }

    func start() {
        do {
            let registration = try loop.register(
                transport.descriptor, name: "xenstore connection to \(transport.name)",
                owner: transport.descriptorOwner
            ) { [self] events in
                serve(events)
            }
            let closed = state.withLock { state -> Bool in
                state.registration = registration
                return state.closed != nil
            }
            if closed { registration.cancel() }
        } catch {
            fail(.system(error))
        }
    }

    // MARK: Output

    /// Writes `bytes` after what is queued, as much as fits now; the rest goes when the
    /// transport has room.
    func send(_ bytes: [UInt8]) throws(XenStoreError) {
        let outcome: Result<EventLoop.Registration?, XenStoreError> = state.withLock { state in
            if let closed = state.closed { return .failure(closed) }
            var start = 0
            if state.output.isEmpty {
                let written: Result<Int, XenStoreError> = bytes.withUnsafeBytes { raw in
                    do throws(XenStoreError) { return .success(try transport.write(raw)) } catch { return .failure(error) }
                }
                switch written {
                case let .success(count): start = count
                case let .failure(error): return .failure(error)
                }
                if start == bytes.count { return .success(nil) }
            }
            state.output += bytes[start...]
            guard !state.waitingToWrite, !transport.waitToWrite.isEmpty else { return .success(nil) }
            state.waitingToWrite = true
            return .success(state.registration)
        }
        switch outcome {
        case let .failure(error): throw error
        case let .success(registration):
            do { try registration?.modify(transport.waitToWrite.union(.readable)) } catch { fail(.system(error)) }
        }
    }

    /// Writes queued output (on the loop's thread, when the transport may have room).
    private func flush() {
        let outcome: Result<EventLoop.Registration?, XenStoreError> = state.withLock { state in
            guard !state.output.isEmpty || state.waitingToWrite else { return .success(nil) }
            while !state.output.isEmpty {
                let attempt: Result<Int, XenStoreError> = state.output.withUnsafeBytes { raw in
                    do throws(XenStoreError) { return .success(try transport.write(raw)) } catch { return .failure(error) }
                }
                let written: Int
                switch attempt {
                case let .success(count): written = count
                case let .failure(error): return .failure(error)
                }
                guard written > 0 else { return .success(nil) }
                state.output.removeFirst(written)
            }
            guard state.waitingToWrite else { return .success(nil) }
            state.waitingToWrite = false
            return .success(state.registration)
        }
        switch outcome {
        case let .failure(error): fail(error)
        case let .success(registration):
            do { try registration?.modify(.readable) } catch { fail(.system(error)) }
        }
    }

    // MARK: Input

    /// The loop's handler: output that was waiting for room, then everything that arrived.
    private func serve(_ events: EventLoop.Readiness) -> EventLoop.Next {
        flush()
        for _ in 0..<16 {
            let received: Result<Int?, XenStoreError> = reader.value.buffer.withUnsafeMutableBytes { raw in
                do throws(XenStoreError) { return .success(try transport.read(into: raw)) } catch { return .failure(error) }
            }
            let count: Int
            switch received {
            case let .failure(error):
                end(error)
                return .wait
            case .success(nil):
                // Reading a ring makes room in it: what waited may go now.
                flush()
                if events.contains(.hangUp) { end(.connectionClosed("\(transport.name): the daemon ended the connection")) }
                return .wait
            case let .success(value?):
                count = value
            }
            guard count > 0 else {
                end(.connectionClosed("\(transport.name): the daemon ended the connection"))
                return .wait
            }
            reader.value.feed(count)
            do {
                while let message = try reader.value.decoder.next() { try dispatch(message) }
            } catch let error as XenStoreError {
                end(error)
                return .wait
            } catch {
                end(.badReply("\(error)"))
                return .wait
            }
        }
        flush()
        // More may be waiting: the registration is level-triggered, so the loop calls again.
        return .wait
    }

    func dispatch(_ message: XsMessage) throws(XenStoreError) {
        if message.header.messageType == .watchEvent {
            guard case let .watchEvent(path, token)? = try? XenStoreReply.decode(message, answering: nil) else {
                throw .badReply("malformed WATCH_EVENT")
            }
            // An event for a watch already removed is harmless (it may have been queued).
            let queue = state.withLock { $0.watches[token] }
            if case .dropped = queue?.continuation.yield(XenStoreWatchEvent(path: path, token: token)) {
                queue?.drops.count.withLock { $0 &+= 1 }
            }
            return
        }
        guard let pending = state.withLock({ $0.pending.removeValue(forKey: message.header.requestID) }) else {
            throw .badReply("a reply with req_id \(message.header.requestID), which no request in flight has")
        }
        let result: Result<XenStoreReply, XenStoreError>
        do {
            switch try XenStoreReply.decode(message, answering: pending.type) {
            case let .error(name): result = .failure(.from(name, request: pending.type, path: pending.path))
            case let reply: result = .success(reply)
            }
        } catch {
            result = .failure(.badReply("\(pending.type): \(error)"))
        }
        pending.continuation.resume(returning: result)
    }

    /// Fails everything in flight and ends every watch; later calls fail with `error`.
    func fail(_ error: XenStoreError) {
        let (pending, watches) = state.withLock { state in
            if state.closed == nil { state.closed = error }
            defer { state.pending.removeAll(); state.watches.removeAll() }
            return (Array(state.pending.values), Array(state.watches.values))
        }
        for request in pending { request.continuation.resume(returning: .failure(error)) }
        for watch in watches { watch.continuation.finish() }
    }

    /// Fails everything, stops watching the connection and ends it.
    func end(_ error: XenStoreError) {
        fail(error)
        let registration = state.withLock { state in
            defer { state.registration = nil }; return state.registration
        }
        registration?.cancel()
        transport.shutdown()
    }
}

extension XenStoreClient {
    fileprivate static func subject(of request: XenStoreRequest) -> String? {
        switch request {
        case let .read(p), let .directory(p), let .getPerms(p), let .mkdir(p), let .rm(p), let .write(p, _),
            let .setPerms(p, _), let .watch(p, _), let .unwatch(p, _), let .directoryPart(p, _):
            return p.rawValue
        default:
            return nil
        }
    }
}

/// A first-come, first-served async lock: the request whose turn it is, then the next.
private final class RequestTurn: Sendable {
    private let state = Locked<(busy: Bool, waiting: [CheckedContinuation<Void, Never>])>((false, []))

    func acquire() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let now: Bool = state.withLock { state in
                if !state.busy { state.busy = true; return true }
                state.waiting.append(continuation)
                return false
            }
            if now { continuation.resume() }
        }
    }

    /// Hands the turn to the next waiter, if any.
    func release() {
        let next: CheckedContinuation<Void, Never>? = state.withLock { state in
            guard !state.waiting.isEmpty else { state.busy = false; return nil }
            return state.waiting.removeFirst()
        }
        next?.resume()
    }
}
