import PVSystem
import Synchronization
import Testing

/// The event loop every ring, transport and daemon runs on: descriptors, posted work, task
/// jobs, timers and polling, all on its one thread.
@Suite("Event loop", .timeLimit(.minutes(1)))
struct EventLoopTests {
    @Test("a registered eventfd's handler runs on the loop's thread when notified; notifications before it looked coalesce; no call after cancel")
    func descriptorHandler() async throws {
        let loop = try EventLoop(name: "test-fd")
        defer { loop.shutdown() }
        let channel = try EventFD(nonBlocking: true)
        // Two notifications before the registration: one wake-up that takes both.
        try channel.notify()
        try channel.notify()
        let calls = Atomic<Int>(0)
        let onLoop = Atomic<Bool>(true)
        let stream = AsyncStream<UInt64>.makeStream()
        let registration = try loop.register(channel.fileDescriptor, name: "test eventfd") { events in
            #expect(events.contains(.readable))
            if !loop.inLoop { onLoop.store(false, ordering: .relaxed) }
            calls.add(1, ordering: .relaxed)
            stream.continuation.yield(channel.consume())
            return .wait
        }
        var seen = stream.stream.makeAsyncIterator()
        #expect(await seen.next() == 2, "two notifications before the loop looked: one wake-up")
        try channel.notify()
        #expect(await seen.next() == 1)
        let allOnLoop = onLoop.load(ordering: .relaxed)
        #expect(allOnLoop)
        let torn = AsyncStream<Bool>.makeStream()
        registration.cancel { torn.continuation.yield(loop.inLoop) }
        var tornDown = torn.stream.makeAsyncIterator()
        #expect(await tornDown.next() == true, "the teardown runs on the loop")
        let before = calls.load(ordering: .relaxed)
        try channel.notify()
        await loop.submit {}  // rounds of the loop after the notification
        await loop.submit {}
        #expect(calls.load(ordering: .relaxed) == before, "no call after cancel")
        // The same descriptor can be registered again (the loop watched a duplicate).
        let again = try loop.register(channel.fileDescriptor, name: "test eventfd again") { _ in
            stream.continuation.yield(channel.consume())
            return .wait
        }
        #expect(await seen.next() == 1, "the notification sent after the cancel reaches the new registration")
        again.cancel()
    }

    @Test("work posted from many threads runs in order per poster, on the loop")
    func postedWork() async throws {
        let loop = try EventLoop(name: "test-post")
        defer { loop.shutdown() }
        let log = Shared<[Int: [Int]]>([:])
        await withTaskGroup(of: Void.self) { group in
            for poster in 0..<4 {
                group.addTask {
                    for n in 0..<500 { loop.execute { log.withLock { $0[poster, default: []].append(n) } } }
                }
            }
        }
        await loop.submit {}
        let entries = log.value
        for poster in 0..<4 { #expect(entries[poster] == Array(0..<500)) }
        #expect(await loop.submit { loop.inLoop })
    }

    @Test("a task preferring the loop runs on it, and a continuation resumed by a handler resumes there without a hop")
    func taskExecutor() async throws {
        let loop = try EventLoop(name: "test-tasks")
        defer { loop.shutdown() }
        let channel = try EventFD(nonBlocking: true)
        let waiting = Shared<CheckedContinuation<Void, Never>?>(nil)
        let registration = try loop.register(channel.fileDescriptor, name: "test eventfd") { _ in
            channel.consume()
            waiting.withLock { $0.take() }?.resume()
            return .wait
        }
        defer { registration.cancel() }
        let results = await Task(executorPreference: loop) { () -> [Bool] in
            var onLoop: [Bool] = [loop.inLoop]
            for _ in 0..<100 {
                await withCheckedContinuation { continuation in
                    waiting.withLock { $0 = continuation }
                    try? channel.notify()
                }
                onLoop.append(EventLoop.current === loop)
            }
            return onLoop
        }.value
        #expect(results.count == 101 && results.allSatisfy { $0 })
    }

    @Test("polling: the handler hears .polled when look finds work, .pollExpired when the budget is spent")
    func polling() async throws {
        let loop = try EventLoop(name: "test-poll")
        defer { loop.shutdown() }
        let channel = try EventFD(nonBlocking: true)
        let work = Atomic<Int>(0)
        let heard = Shared<[String]>([])
        let done = AsyncStream<Void>.makeStream()
        let registration = try loop.register(channel.fileDescriptor, name: "test eventfd") { events in
            channel.consume()
            if events.contains(.pollExpired) {
                heard.withLock { $0.append("expired") }
                done.continuation.yield()
                return .wait
            }
            if events.contains(.polled) { heard.withLock { $0.append("polled") } }
            if events.contains(.readable) { heard.withLock { $0.append("readable") } }
            _ = work.exchange(0, ordering: .relaxed)
            return .poll
        }
        defer { registration.cancel() }
        // Work is there at the first look (as a backend's response would be, without a
        // notification), then none: polling finds it, then the budget runs out.
        let looks = Atomic<Int>(0)
        await loop.submit {
            registration.setPolling(nanoseconds: 2_000_000) {
                if looks.add(1, ordering: .relaxed).newValue == 1 { work.store(1, ordering: .relaxed) }
                return work.load(ordering: .relaxed) > 0
            }
        }
        try channel.notify()
        var ends = done.stream.makeAsyncIterator()
        await ends.next()
        let log = heard.withLock { $0 }
        #expect(log.first == "readable")
        #expect(log.contains("polled"))
        #expect(log.last == "expired")
    }

    @Test("timers fire in deadline order; a cancelled one does not")
    func timers() async throws {
        let loop = try EventLoop(name: "test-timer")
        defer { loop.shutdown() }
        let fired = Shared<[Int]>([])
        let done = AsyncStream<Void>.makeStream()
        loop.schedule(after: .milliseconds(30)) {
            fired.withLock { $0.append(3) }; done.continuation.yield()
        }
        loop.schedule(after: .milliseconds(10)) { fired.withLock { $0.append(1) } }
        let cancelled = loop.schedule(after: .milliseconds(20)) { fired.withLock { $0.append(2) } }
        cancelled.cancel()
        var ends = done.stream.makeAsyncIterator()
        await ends.next()
        #expect(fired.withLock { $0 } == [1, 3])
    }

    @Test("readable(): a task waits for a descriptor without a thread; cancelling it ends the wait")
    func awaitReadable() async throws {
        let loop = try EventLoop(name: "test-wait")
        defer { loop.shutdown() }
        let channel = try EventFD(nonBlocking: true)
        let waiter = Task { try await loop.readable(channel.fileDescriptor, name: "test eventfd") }
        try await Task.sleep(for: .milliseconds(5))
        try channel.notify()
        try await waiter.value
        channel.consume()
        let cancelled = Task { try await loop.readable(channel.fileDescriptor, name: "test eventfd") }
        try await Task.sleep(for: .milliseconds(5))
        cancelled.cancel()
        await #expect(throws: CancellationError.self) { try await cancelled.value }
    }

    @Test("shutdown runs what was queued first, then the thread ends")
    func shutdown() async throws {
        let loop = try EventLoop(name: "test-stop")
        let ran = Atomic<Int>(0)
        for _ in 0..<10 { loop.execute { ran.add(1, ordering: .relaxed) } }
        await loop.shutdownGracefully()
        #expect(ran.load(ordering: .relaxed) == 10)
        for _ in 0..<100 where !loop.isFinished { try await Task.sleep(for: .milliseconds(1)) }
        #expect(loop.isFinished)
    }

    @Test("registering a descriptor that is not open names the call and the role")
    func badDescriptor() async throws {
        let loop = try EventLoop(name: "test-bad")
        defer { loop.shutdown() }
        #expect {
            _ = try loop.register(-1, name: "nothing") { _ in .wait }
        } throws: { error in
            guard let error = error as? SystemError else { return false }
            return error.call == "dup" && error.errno == .badFileDescriptor && error.context.contains("nothing")
        }
    }
}

/// A value shared by closures on several threads.
final class Shared<Value: Sendable>: Sendable {
    private let storage: Locked<Value>
    init(_ value: Value) { storage = Locked(value) }
    func withLock<T>(_ body: (inout Value) -> T) -> T { storage.withLock { body(&$0) } }
    var value: Value { storage.withLock { $0 } }
}
