import CLinux
import DequeModule
import Glibc
import Synchronization

/// One thread that owns an `epoll` set and runs everything that waits on it: the descriptors
/// registered with it (ring event channels, sockets, TAP devices, a child's pidfd), work posted
/// to it from other threads, timers, and — as a Swift `TaskExecutor` — the jobs of tasks that
/// prefer it. A task awaiting a ring's completion therefore resumes on the thread that saw the
/// completion, with no hop through the global pool and no thread of its own.
///
/// A handler may ask to *poll* before the loop sleeps: the loop then calls the registration's
/// `look` (yielding the processor between looks) for at most its budget, and calls the handler
/// again when `look` finds work (``Readiness/polled``) or when the budget is spent
/// (``Readiness/pollExpired``: the handler asks for a notification, ring.h's final check, and
/// sleeps). Polling trades a core for the wake-up a notification costs.
///
/// Handlers, timers and posted work run on the loop's thread, one at a time: state they share
/// with nothing else needs no lock. They must not block.
///
/// ```swift
/// let loop = try EventLoop(name: "blkfront q0")
/// let registration = try loop.register(channel.descriptor, name: "q0 event channel") { events in
///     serveResponses()
///     return .wait
/// }
/// …
/// registration.cancel { releaseRingPages() }   // deregistered, then the teardown, on the loop
/// ```
public final class EventLoop: TaskExecutor, @unchecked Sendable {  // @unchecked: sources, timers, polling: loop thread only; the rest Mutex/atomic
    /// Shown in thread names and errors.
    public let name: String
    fileprivate let epoll: Int32
    private let wakeup: EventFD
    private let inbox = Locked(Inbox())
    /// Work waiting in `inbox` (read without the lock while polling).
    private let queued = Atomic<Int>(0)
    private let registry = Locked(Registry())
    private let finished = Atomic<Bool>(false)
    private let joined = Atomic<Bool>(false)
    /// Set once in `init`, read by `deinit` and the joiner.
    private var thread = pthread_t()
    private var threadStarted = false

    // Loop-confined.
    /// After handling something, how long the loop keeps looking (`epoll_wait` without
    /// sleeping) before it sleeps: a request-reply daemon then takes its client's next
    /// request without a wake-up. 0: never. Set on the loop's thread.
    public var idlePollNanoseconds: UInt64 = 0
    /// When a descriptor was last found ready (for ``idlePollNanoseconds``).
    private var lastActivity: UInt64 = 0
    private var timers: [Timer] = []
    private var polling: [Registration] = []
    fileprivate var again: [Registration] = []

    private struct Inbox {
        var work: Deque<Work> = []
        var sleeping = false
        var stopping = false
    }

    private enum Work {
        case job(UnownedJob)
        case closure(@Sendable () -> Void)
    }

    private struct Registry {
        var byID: [UInt64: Registration] = [:]
        var nextID: UInt64 = 1
    }

    /// What a handler was called for.
    public struct Readiness: OptionSet, Sendable, CustomStringConvertible {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        /// C: `EPOLLIN`.
        public static let readable = Readiness(rawValue: 0x001)
        /// C: `EPOLLOUT`.
        public static let writable = Readiness(rawValue: 0x004)
        /// C: `EPOLLERR`.
        public static let error = Readiness(rawValue: 0x008)
        /// C: `EPOLLHUP`.
        public static let hangUp = Readiness(rawValue: 0x010)
        /// C: `EPOLLRDHUP` (the peer shut its writing side).
        public static let peerClosed = Readiness(rawValue: 0x2000)
        /// Not from epoll: `look` found work while polling.
        public static let polled = Readiness(rawValue: 1 << 28)
        /// Not from epoll: the polling budget is spent; ask for a notification and sleep.
        public static let pollExpired = Readiness(rawValue: 1 << 29)
        /// Not from epoll: the handler asked to run again (``Next/again``).
        public static let again = Readiness(rawValue: 1 << 30)

        public var description: String {
            let names: [(Readiness, String)] = [
                (.readable, "readable"), (.writable, "writable"), (.error, "error"), (.hangUp, "hang-up"),
                (.peerClosed, "peer closed"), (.polled, "polled"), (.pollExpired, "poll expired"), (.again, "again")
            ]
            return names.filter { contains($0.0) }.map(\.1).joined(separator: ", ")
        }
    }

    /// What a handler wants next.
    public enum Next: Sendable {
        /// Sleep until the descriptor is ready again.
        case wait
        /// Poll with the registration's budget before sleeping.
        case poll
        /// Call the handler again after the work already queued has run.
        case again
    }

    /// Starts the loop's thread.
    public init(name: String) throws(SystemError) {
        self.name = name
        epoll = try retryingSyscall32("epoll_create1", context: name) { epoll_create1(Int32(EPOLL_CLOEXEC)) }
        do {
            wakeup = try EventFD(nonBlocking: true)
        } catch {
            close(epoll)
            throw error
        }
        var event = epoll_event(events: EPOLLIN.rawValue, data: epoll_data_t(u64: 0))
        guard epoll_ctl(epoll, EPOLL_CTL_ADD, wakeup.fileDescriptor, &event) == 0 else {
            let code = Glibc.errno
            close(epoll)
            throw SystemError("epoll_ctl(ADD)", errno: code, context: "\(name) wake-up eventfd")
        }
        let box = Unmanaged.passRetained(self).toOpaque()
        var handle = pthread_t()
        let created = pthread_create(
            &handle, nil,
            { raw in
                let loop = Unmanaged<EventLoop>.fromOpaque(raw!).takeRetainedValue()
                loop.run()
                return nil
            }, box)
        guard created == 0 else {
            Unmanaged<EventLoop>.fromOpaque(box).release()
            throw SystemError("pthread_create", errno: created, context: name)
        }
        thread = handle
        threadStarted = true
    }

    deinit {
        // The thread held the loop while it ran: it has ended. Nobody joined it: detach it.
        if threadStarted && !joined.load(ordering: .acquiring) { pthread_detach(thread) }
        close(epoll)
    }

    // MARK: Which thread

    private static let currentKey: pthread_key_t = {
        var key = pthread_key_t()
        pthread_key_create(&key, nil)
        return key
    }()

    /// The loop running on the calling thread, if it is a loop's thread.
    public static var current: EventLoop? {
        pthread_getspecific(currentKey).map { Unmanaged<EventLoop>.fromOpaque($0).takeUnretainedValue() }
    }

    /// Whether the caller runs on this loop's thread.
    public var inLoop: Bool { pthread_getspecific(Self.currentKey) == Unmanaged.passUnretained(self).toOpaque() }

    // MARK: Work from anywhere

    /// Runs `body` on the loop's thread, after what is already queued. Never blocks.
    public func execute(_ body: @escaping @Sendable () -> Void) {
        post(.closure(body))
    }

    /// The `TaskExecutor` side: a job of a task that prefers this loop.
    public func enqueue(_ job: consuming ExecutorJob) {
        post(.job(UnownedJob(job)))
    }

    private func post(_ work: Work) {
        let wake: Bool = inbox.withLock { inbox in
            inbox.work.append(work)
            queued.add(1, ordering: .releasing)
            guard inbox.sleeping else { return false }
            inbox.sleeping = false
            return true
        }
        if wake { wakeUp() }
    }

    private func wakeUp() {
        do { try wakeup.notify() } catch {
            // An eventfd write fails only when its counter would overflow: then it is readable.
            precondition(error.errno == .wouldBlock, "\(name): waking the loop failed: \(error)")
        }
    }

    /// Runs `body` on the loop's thread and returns its result (at once when called there).
    public func submit<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
        if inLoop { return body() }
        return await withCheckedContinuation { continuation in
            execute { continuation.resume(returning: body()) }
        }
    }

    // MARK: Descriptors

    /// Watches `fd` (level-triggered) and calls `handler` on the loop's thread while it is
    /// ready. The descriptor stays the caller's: the loop watches a duplicate of it, which it
    /// closes once the registration is out of the epoll set, so the same descriptor can be
    /// registered again while an earlier registration is still leaving, and closing the
    /// original never leaves epoll watching a reused number. `owner` is held until then too;
    /// the handler is let go after it (a handler may hold what holds the registration).
    ///
    /// - Parameters:
    ///   - events: what to wait for (``Readiness/readable`` by default).
    ///   - name: the descriptor's role, for errors (`"blkfront q0 event channel"`).
    ///   - owner: kept alive while registered.
    /// - Throws: ``SystemError`` naming `epoll_ctl` and `name`.
    public func register(
        _ fd: Int32, events: Readiness = .readable, name: String, owner: (any Sendable & AnyObject)? = nil,
        handler: @escaping @Sendable (Readiness) -> Next
    ) throws(SystemError) -> Registration {
        let watched = try retryingSyscall32("dup", context: "\(self.name): \(name), fd \(fd)") { fcntl(fd, F_DUPFD_CLOEXEC, 0) }
        let registration = Registration(loop: self, fd: watched, name: name, owner: owner, handler: handler)
        let id = registry.withLock { registry in
            defer { registry.nextID &+= 1 }
            registry.byID[registry.nextID] = registration
            return registry.nextID
        }
        registration.id = id
        var event = epoll_event(events: events.rawValue & 0xFFFF, data: epoll_data_t(u64: id))
        guard epoll_ctl(epoll, EPOLL_CTL_ADD, watched, &event) == 0 else {
            let code = Glibc.errno
            _ = registry.withLock { $0.byID.removeValue(forKey: id) }
            close(watched)
            throw SystemError("epoll_ctl(ADD)", errno: code, context: "\(self.name): \(name), fd \(fd)")
        }
        return registration
    }

    /// Waits until `fd` is readable (or hung up), without a thread of its own: the task is
    /// resumed from this loop. Cancelling the task ends the wait with `CancellationError`.
    ///
    /// - Parameter timeout: how long at most (nil: no limit).
    /// - Returns: true when readable, false when `timeout` passed first.
    /// - Throws: `CancellationError`, or ``SystemError`` when `fd` cannot be watched.
    @discardableResult
    public func readable(_ fd: Int32, name: String, timeout: Duration? = nil) async throws -> Bool {
        try await ready(fd, events: .readable, name: name, timeout: timeout)
    }

    /// Waits until `fd` is writable (or in error, or hung up), as ``readable(_:name:timeout:)``.
    @discardableResult
    public func writable(_ fd: Int32, name: String, timeout: Duration? = nil) async throws -> Bool {
        try await ready(fd, events: .writable, name: name, timeout: timeout)
    }

    private func ready(_ fd: Int32, events: Readiness, name: String, timeout: Duration?) async throws -> Bool {
        let wait = OneShotWait()
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Bool, any Error>) in
                guard wait.arm(continuation) else { return }
                do {
                    let registration = try register(fd, events: events, name: name) { _ in
                        wait.finish(.success(true))
                        return .wait
                    }
                    wait.attach(registration)
                    if let timeout { wait.attach(schedule(after: timeout) { wait.finish(.success(false)) }) }
                } catch {
                    wait.finish(.failure(error))
                }
            }
        } onCancel: {
            wait.finish(.failure(CancellationError()))
        }
    }

    /// One waiter of ``readable(_:name:timeout:)``: resumed once, by readiness, its timeout,
    /// an error or cancellation.
    private final class OneShotWait: Sendable {
        private struct State {
            var continuation: CheckedContinuation<Bool, any Error>?
            var registration: Registration?
            var timer: Timer?
            var ended: Result<Bool, any Error>?
        }
        private let state = Locked(State())

        /// False (and resumed) when the wait ended before it began (cancelled already).
        func arm(_ continuation: CheckedContinuation<Bool, any Error>) -> Bool {
            let ended: Result<Bool, any Error>? = state.withLock { s in
                if s.ended == nil { s.continuation = continuation }
                return s.ended
            }
            guard let ended else { return true }
            continuation.resume(with: ended)
            return false
        }

        func attach(_ registration: Registration) {
            let ended = state.withLock { s -> Bool in
                s.registration = registration
                return s.ended != nil
            }
            if ended { registration.cancel() }
        }

        func attach(_ timer: Timer) {
            let ended = state.withLock { s -> Bool in
                s.timer = timer
                return s.ended != nil
            }
            if ended { timer.cancel() }
        }

        func finish(_ result: Result<Bool, any Error>) {
            let (continuation, registration, timer): (CheckedContinuation<Bool, any Error>?, Registration?, Timer?) = state.withLock { s in
                guard s.ended == nil else { return (nil, nil, nil) }
                s.ended = result
                defer { s.continuation = nil }
                return (s.continuation, s.registration, s.timer)
            }
            registration?.cancel()
            timer?.cancel()
            continuation?.resume(with: result)
        }
    }

    fileprivate func deregister(_ registration: Registration) {
        _ = registry.withLock { $0.byID.removeValue(forKey: registration.id) }
        var event = epoll_event()
        _ = epoll_ctl(epoll, EPOLL_CTL_DEL, registration.fd, &event)
        close(registration.fd)
        polling.removeAll { $0 === registration }
        again.removeAll { $0 === registration }
        registration.release()
    }

    // MARK: Timers

    /// Runs `body` on the loop's thread once `deadline` (``MonotonicClock`` nanoseconds) has
    /// passed, unless cancelled first.
    @discardableResult
    public func schedule(at deadline: UInt64, _ body: @escaping @Sendable () -> Void) -> Timer {
        let timer = Timer(deadline: deadline, body: body)
        execute { [self] in
            let index = timers.firstIndex { $0.deadline > deadline } ?? timers.endIndex
            timers.insert(timer, at: index)
        }
        return timer
    }

    /// Runs `body` after `delay`.
    @discardableResult
    public func schedule(after delay: Duration, _ body: @escaping @Sendable () -> Void) -> Timer {
        schedule(at: MonotonicClock.now() &+ MonotonicClock.nanoseconds(delay), body)
    }

    /// A timer of ``schedule(at:_:)``.
    public final class Timer: Sendable {
        let deadline: UInt64
        let body: @Sendable () -> Void
        let cancelled = Atomic<Bool>(false)
        init(deadline: UInt64, body: @escaping @Sendable () -> Void) {
            self.deadline = deadline
            self.body = body
        }
        /// It will not run (unless it is running already).
        public func cancel() { cancelled.store(true, ordering: .relaxed) }
    }

    // MARK: Stopping

    /// Ends the loop once the work queued before this call has run; registrations still
    /// present are dropped (their handlers are not called again). Never blocks.
    public func shutdown() {
        let wake: Bool = inbox.withLock { inbox in
            inbox.stopping = true
            queued.add(1, ordering: .releasing)
            defer { inbox.sleeping = false }
            return inbox.sleeping
        }
        if wake { wakeUp() }
    }

    /// Ends the loop and waits for its thread to finish. Not on the loop itself, and not on
    /// Swift's cooperative pool (it blocks): from a task, use ``shutdownGracefully()``.
    public func shutdownAndJoin() {
        precondition(!inLoop, "\(name): a loop cannot wait for itself")
        shutdown()
        if threadStarted, !joined.exchange(true, ordering: .acquiringAndReleasing) { pthread_join(thread, nil) }
    }

    /// Ends the loop; returns once its thread has run its last work.
    public func shutdownGracefully() async {
        guard !finished.load(ordering: .acquiring) else { return }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            execute { continuation.resume() }
            shutdown()
        }
    }

    /// Whether the loop's thread has ended.
    public var isFinished: Bool { finished.load(ordering: .acquiring) }

    // MARK: The loop

    private func run() {
        pthread_setspecific(Self.currentKey, Unmanaged.passUnretained(self).toOpaque())
        // Thread names hold 15 bytes.
        var threadName = name.utf8.prefix(15).map { CChar(bitPattern: $0) } + [0]
        _ = pthread_setname_np(pthread_self(), &threadName)
        defer {
            finished.store(true, ordering: .releasing)
            let left = registry.withLock { registry in
                defer { registry.byID.removeAll() }; return Array(registry.byID.values)
            }
            for registration in left {
                registration.state.withLock { $0.cancelled = true }
                var event = epoll_event()
                _ = epoll_ctl(epoll, EPOLL_CTL_DEL, registration.fd, &event)
                close(registration.fd)
                registration.release()
            }
            polling.removeAll()
            again.removeAll()
            timers.removeAll()
        }
        var events = [epoll_event](repeating: epoll_event(), count: 64)
        var batch: Deque<Work> = []
        var spins = 0
        while true {
            // 1. Work posted from anywhere (task jobs, closures), in order.
            if queued.load(ordering: .acquiring) > 0 {
                let stopping: Bool = inbox.withLock { inbox in
                    swap(&batch, &inbox.work)
                    queued.store(0, ordering: .relaxed)
                    return inbox.stopping
                }
                while let work = batch.popFirst() {
                    switch work {
                    case let .job(job): job.runSynchronously(on: asUnownedTaskExecutor())
                    case let .closure(body): body()
                    }
                }
                if stopping { return }
            }
            // 2. Timers due.
            if let first = timers.first, first.deadline <= MonotonicClock.now() {
                let now = MonotonicClock.now()
                let due = timers.prefix { $0.deadline <= now }
                timers.removeFirst(due.count)
                for timer in due where !timer.cancelled.load(ordering: .relaxed) { timer.body() }
                continue
            }
            // 3. Handlers that asked to run again.
            if !again.isEmpty {
                let ready = again
                again.removeAll(keepingCapacity: true)
                for registration in ready { call(registration, .again) }
                continue
            }
            // 4. Polling: look, and give the descriptors a chance every few rounds.
            if !polling.isEmpty {
                let now = MonotonicClock.now()
                for registration in polling {
                    switch registration.look?() {
                    case true?:
                        registration.pollDeadline = now &+ registration.pollBudget
                        call(registration, .polled)
                    case false? where now < registration.pollDeadline:
                        break
                    default:
                        // Spent, or nothing can come (`look` answered nil).
                        call(registration, .pollExpired)
                    }
                }
                spins &+= 1
                if spins & 15 == 0 { dispatch(&events, timeout: 0) } else { sched_yield() }
                continue
            }
            // 5. Idle polling: look again without sleeping, for a while after the last activity.
            if idlePollNanoseconds > 0, MonotonicClock.now() &- lastActivity < idlePollNanoseconds {
                dispatch(&events, timeout: 0)
                if queued.load(ordering: .acquiring) == 0 && again.isEmpty { sched_yield() }
                continue
            }
            // 6. Sleep until a descriptor, a post or the next timer.
            let sleep: Bool = inbox.withLock { inbox in
                guard inbox.work.isEmpty, !inbox.stopping else { return false }
                inbox.sleeping = true
                return true
            }
            guard sleep else { continue }
            var timeout: Int32 = -1
            if let first = timers.first {
                let now = MonotonicClock.now()
                timeout = first.deadline <= now ? 0 : Int32(clamping: (first.deadline - now + 999_999) / 1_000_000)
            }
            dispatch(&events, timeout: timeout)
            inbox.withLock { $0.sleeping = false }
        }
    }

    /// One `epoll_wait`, and the handlers of what it found.
    private func dispatch(_ events: inout [epoll_event], timeout: Int32) {
        let count = events.withUnsafeMutableBufferPointer { epoll_wait(epoll, $0.baseAddress, Int32($0.count), timeout) }
        guard count > 0 else {
            // EINTR: look again. Anything else is a bug in how the set is used.
            precondition(count == 0 || Glibc.errno == EINTR, "\(name): epoll_wait failed: errno \(Glibc.errno)")
            return
        }
        if idlePollNanoseconds > 0 { lastActivity = MonotonicClock.now() }
        var ready: [(Registration, Readiness)] = []
        ready.reserveCapacity(Int(count))
        registry.withLock { registry in
            for event in events[0..<Int(count)] {
                let id = event.data.u64
                if id == 0 { continue }
                if let registration = registry.byID[id] { ready.append((registration, Readiness(rawValue: event.events))) }
            }
        }
        if events[0..<Int(count)].contains(where: { $0.data.u64 == 0 }) { wakeup.consume() }
        for (registration, readiness) in ready { call(registration, readiness) }
    }

    private func call(_ registration: Registration, _ readiness: Readiness) {
        guard !registration.isCancelled else { return }
        guard let handler = registration.handler else { return }
        let next = handler(readiness)
        let isPolling = polling.contains { $0 === registration }
        switch next {
        case .wait:
            if isPolling { polling.removeAll { $0 === registration } }
        case .poll where readiness.contains(.pollExpired):
            // Polling is over: the handler had its chance to ask for a notification.
            if isPolling { polling.removeAll { $0 === registration } }
        case .poll:
            // Without a budget (or a look) the budget is spent at once: the next round calls
            // the handler with `.pollExpired`.
            if !isPolling {
                registration.pollDeadline = registration.look == nil ? 0 : MonotonicClock.now() &+ registration.pollBudget
                polling.append(registration)
            }
        case .again:
            if isPolling { polling.removeAll { $0 === registration } }
            again.append(registration)
        }
    }

    /// A descriptor watched by a loop (see ``EventLoop/register(_:events:name:handler:)``).
    public final class Registration: @unchecked Sendable {  // @unchecked: poll fields on the loop's thread only; `state` is a Mutex
        /// The loop it is registered with (held: a registration keeps its loop alive).
        public let loop: EventLoop
        /// The descriptor epoll watches (a duplicate of the one registered, closed with the
        /// registration).
        public let fd: Int32
        public let name: String
        fileprivate var id: UInt64 = 0
        /// Let go with the owner once deregistered (it may hold what holds this).
        fileprivate var handler: (@Sendable (Readiness) -> Next)?
        fileprivate let state = Locked((cancelled: false, ()))
        fileprivate var pollBudget: UInt64 = 0
        fileprivate var pollDeadline: UInt64 = 0
        fileprivate var look: (() -> Bool?)?

        /// What keeps the original descriptor open; released once it is out of the epoll set.
        fileprivate var owner: (any Sendable & AnyObject)?

        /// Out of the epoll set: what it held goes (on the loop's thread).
        fileprivate func release() {
            owner = nil
            handler = nil
            look = nil
        }

        init(loop: EventLoop, fd: Int32, name: String, owner: (any Sendable & AnyObject)?, handler: @escaping @Sendable (Readiness) -> Next) {
            self.loop = loop
            self.fd = fd
            self.name = name
            self.owner = owner
            self.handler = handler
        }

        /// Has the loop call the handler soon (with ``Readiness/again``), as if the descriptor
        /// were ready: for work that arrived another way (an I/O thread finished). Any thread.
        public func wake() {
            loop.execute { [self] in
                guard !isCancelled, !loop.again.contains(where: { $0 === self }) else { return }
                loop.again.append(self)
            }
        }

        /// Changes what the loop waits for (`EPOLL_CTL_MOD`), e.g. adds ``Readiness/writable``
        /// while output is queued. Any thread.
        public func modify(_ events: Readiness) throws(SystemError) {
            guard !isCancelled else { return }
            var event = epoll_event(events: events.rawValue & 0xFFFF, data: epoll_data_t(u64: id))
            guard epoll_ctl(loop.epoll, EPOLL_CTL_MOD, fd, &event) == 0 else {
                throw SystemError("epoll_ctl(MOD)", errno: Glibc.errno, context: "\(loop.name): \(name), fd \(fd)")
            }
        }

        fileprivate var isCancelled: Bool { state.withLock { $0.cancelled } }

        /// Lets the handler answer ``Next/poll``: `look` says whether there is work (without
        /// taking it: true), none yet (false), or none can come (nil: polling ends at once),
        /// for at most `nanoseconds` (capped at 10 ms) after the last work found. Call on the
        /// loop's thread (in a handler or a posted closure).
        public func setPolling(nanoseconds: UInt64, look: @escaping () -> Bool?) {
            pollBudget = min(nanoseconds, 10_000_000)
            self.look = nanoseconds > 0 ? look : nil
        }

        /// Stops watching: the handler is not called after this returns on the loop's thread
        /// (and not after `teardown` starts, from any other). `teardown` then runs on the loop's
        /// thread: close the descriptor, release what the handler used. Safe to call twice.
        public func cancel(then teardown: (@Sendable () -> Void)? = nil) {
            let first = state.withLock { s -> Bool in
                defer { s.cancelled = true }
                return !s.cancelled
            }
            if loop.inLoop {
                if first { loop.deregister(self) }
                teardown?()
            } else {
                loop.execute { [self] in
                    if first { loop.deregister(self) }
                    teardown?()
                }
                if loop.isFinished, first {
                    // The loop is gone: nothing will run its handler again.
                    teardown?()
                }
            }
        }
    }
}

/// Loops sharing a role's work: each component takes one with ``next()`` (round robin).
/// Equal when identical.
public final class EventLoopGroup: Sendable, Equatable {
    public static func == (a: EventLoopGroup, b: EventLoopGroup) -> Bool { a === b }

    /// The loops, started.
    public let loops: [EventLoop]
    private let counter = Atomic<Int>(0)

    /// Starts `count` loops named `name-0`, `name-1`, ….
    public init(name: String, count: Int) throws(SystemError) {
        precondition(count > 0, "a group needs at least one loop")
        var loops: [EventLoop] = []
        for index in 0..<count { loops.append(try EventLoop(name: "\(name)-\(index)")) }
        self.loops = loops
    }

    /// The next loop, round robin.
    public func next() -> EventLoop {
        loops[counter.add(1, ordering: .relaxed).oldValue % loops.count]
    }

    /// The loop of the calling thread when it is one of this group's, else ``next()``.
    public func preferringCurrent() -> EventLoop {
        if let current = EventLoop.current, loops.contains(where: { $0 === current }) { return current }
        return next()
    }

    /// The process's loops for frontends and clients, one per processor, started on first use
    /// and never stopped (as a process-wide thread pool).
    public static let shared: EventLoopGroup = {
        do {
            return try EventLoopGroup(name: "pvkit", count: max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))))
        } catch {
            fatalError("starting the shared event loops failed: \(error)")
        }
    }()

    /// Returns once every loop has run the work posted to it before this call (teardowns of
    /// cancelled registrations among them): the loops run posted work in order.
    public func waitForPostedWork() async {
        for loop in loops where !loop.isFinished { await loop.submit {} }
    }

    /// Ends every loop and waits for them.
    public func shutdownGracefully() async {
        for loop in loops { await loop.shutdownGracefully() }
    }
}
