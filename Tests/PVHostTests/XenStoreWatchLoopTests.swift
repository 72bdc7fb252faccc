import PVSystem
import Synchronization
import Testing
import TestSupport
import XenABI
import XenStore

/// The scenario of a hang seen once in a full serial run ("a watch: the registration event,
/// then changes below; ending it unwatches"), repeated 1 000 times with both cores busy,
/// against both daemons: two fresh connections each round, a watch, its events, a cancel, the
/// same token registered again, a write to a watched node itself.
@Suite("XenStore watches looped under load", .serialized, .timeLimit(.minutes(5)))
struct XenStoreWatchLoopTests {
    @Test("1 000 rounds of watch, events, cancel and re-register, with two CPU hogs, complete with every event", arguments: StoreDaemon.allCases)
    func watchLoop(_ kind: StoreDaemon) async throws {
        let (socket, handle) = try await kind.start()
        defer { withExtendedLifetime(handle) {} }
        let hog = try CPUHog(threads: 2)
        defer { hog.stop() }
        for round in 0..<1000 {
            let store = try kind.client(socket)
            let writer = try kind.client(socket)
            defer { store.close(); writer.close() }
            let base = "/tool/loop/\(round)"
            try await store.mkdir(XenStorePath(base))
            let watch = try await store.watch(XenStorePath(base), token: "tok")
            var events = watch.makeAsyncIterator()
            let registered = await events.next()
            #expect(registered == XenStoreWatchEvent(path: base, token: "tok"), "round \(round): the registration event, got \(String(describing: registered))")
            try await writer.write(XenStorePath(base + "/x"), "1")
            let written = await events.next()
            #expect(written == XenStoreWatchEvent(path: base + "/x", token: "tok"), "round \(round): the write, got \(String(describing: written))")
            watch.cancel()
            // The daemon lets go of the token (the unwatch is sent from the cancel): it registers again.
            let again = try await eventually(within: .seconds(10)) {
                do {
                    let second = try await store.watch(XenStorePath(base), token: "tok")
                    second.cancel()
                    return true
                } catch XenStoreError.alreadyExists {
                    return false
                }
            }
            #expect(again, "round \(round): the token registered again after cancel")
            // A write to the watched node itself: its event and the registration event are the
            // same bytes, and C xenstored drops an event identical to one still queued, so the two
            // may arrive as one. Reading on each event sees the write either way (counting events,
            // as skipping "the registration event" did, lost it: this loop hung at round 27).
            try await writer.write(XenStorePath(base + "/q"), "")
            let quiet = try await store.watch(XenStorePath(base + "/q"))
            try await writer.write(XenStorePath(base + "/q"), "v")
            var seen = false
            var quietEvents = quiet.makeAsyncIterator()
            while !seen, let event = await quietEvents.next() {
                #expect(event.path == base + "/q")
                seen = try await store.readString(XenStorePath(base + "/q")) == "v"
            }
            #expect(seen, "round \(round): the write to the watched node")
            try await writer.remove(XenStorePath(base))
        }
    }
}

/// Threads that keep the processors busy (`sched_yield` between spins) until stopped.
final class CPUHog: Sendable {
    private final class Flag: Sendable { let running = Atomic<Bool>(true) }
    private let flag = Flag()
    private let threads: WorkerThreads

    init(threads count: Int) throws {
        let flag = self.flag
        threads = try WorkerThreads(name: "cpu hog", count: count) { _ in
            var x: UInt64 = 1
            while flag.running.load(ordering: .relaxed) {
                for _ in 0..<100_000 { x = x &* 6364136223846793005 &+ 1 }
                if x == 0 { print("") }  // keeps the loop from being optimised away
            }
        }
    }

    func stop() { flag.running.store(false, ordering: .relaxed) }
}
