import Foundation
#if canImport(Glibc)
    import Glibc
#endif
import PVSystem
import Testing
import XenABI
import XenStore

/// The two daemons every client test runs against: ours (`pvhost xenstored`) and Xen's C
/// xenstored (run without a hypervisor through Tests/Interop/xenstored-preload.c).
enum StoreDaemon: String, CaseIterable, CustomTestStringConvertible, Sendable {
    case pvkit, xenC
    var testDescription: String { self == .pvkit ? "pvhost xenstored" : "Xen's C xenstored" }

    /// Starts one; the returned object keeps it running.
    func start() async throws -> (socket: String, handle: AnyObject) {
        switch self {
        case .pvkit: let d = try await XenStoreInteropTests.Daemon(); return (d.socket, d)
        case .xenC: let d = try await XenStoreInteropTests.CDaemon(); return (d.socket, d)
        }
    }

    func client(_ socket: String) throws -> XenStoreClient {
        try XenStoreClient.connect(XenStoreLocation(environment: ["XENSTORED_PATH": socket]))
    }
}

@Suite("XenStore client against both daemons", .serialized, .timeLimit(.minutes(5)))
struct XenStoreClientTests {
    @Test("read, write, mkdir, directory, permissions, remove, domain path; typed errors", arguments: StoreDaemon.allCases)
    func nodes(_ kind: StoreDaemon) async throws {
        let (socket, handle) = try await kind.start()
        defer { withExtendedLifetime(handle) {} }
        let store = try kind.client(socket)
        try await store.write("/tool/pvkit/a", "one")
        try await store.write("/tool/pvkit/bytes", [0, 1, 2, 255])
        try await store.mkdir("/tool/pvkit/dir")
        #expect(try await store.readString("/tool/pvkit/a") == "one")
        #expect(try await store.read("/tool/pvkit/bytes") == [0, 1, 2, 255])
        #expect(try await store.read("/tool/pvkit/dir") == [])
        #expect(Set(try await store.directory("/tool/pvkit")) == ["a", "bytes", "dir"])
        #expect(try await store.exists("/tool/pvkit/a"))
        #expect(try await !store.exists("/tool/pvkit/none"))
        await #expect(throws: XenStoreError.noEntry("/tool/pvkit/none")) { try await store.read("/tool/pvkit/none") }
        await #expect(throws: XenStoreError.noEntry("/tool/nothing/below")) { try await store.remove("/tool/nothing/below") }

        let perms = try XenStorePermissions([XenStorePermission("n0"), XenStorePermission("r5")])
        try await store.setPermissions("/tool/pvkit/a", perms)
        #expect(try await store.permissions("/tool/pvkit/a") == perms)
        #expect(try await store.domainPath(of: DomainID(7)) == "/local/domain/7")

        // Relative paths resolve against dom0's home.
        try await store.write("pvkit-relative", "r")
        #expect(try await store.readString("/local/domain/0/pvkit-relative") == "r")

        try await store.remove("/tool/pvkit")
        #expect(try await !store.exists("/tool/pvkit/a"))
        let bad = "/bad path"
        #expect(throws: XenStoreWireError.self) { _ = try XenStorePath(bad) }
    }

    @Test("many requests in flight on one connection, each reply matched by req_id", arguments: StoreDaemon.allCases)
    func inFlight(_ kind: StoreDaemon) async throws {
        let (socket, handle) = try await kind.start()
        defer { withExtendedLifetime(handle) {} }
        let store = try kind.client(socket)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for i in 0..<300 {
                group.addTask { try await store.write(XenStorePath("/tool/many/n\(i)"), "value-\(i)") }
            }
            try await group.waitForAll()
        }
        let values = try await withThrowingTaskGroup(of: (Int, String).self) { group in
            for i in 0..<300 { group.addTask { (i, try await store.readString(XenStorePath("/tool/many/n\(i)"))) } }
            var values: [Int: String] = [:]
            for try await (i, value) in group { values[i] = value }
            return values
        }
        #expect(values.count == 300)
        #expect(values.allSatisfy { $0.value == "value-\($0.key)" })
    }

    @Test("a watch: the registration event, then changes below; ending it unwatches", arguments: StoreDaemon.allCases)
    func watches(_ kind: StoreDaemon) async throws {
        let (socket, handle) = try await kind.start()
        defer { withExtendedLifetime(handle) {} }
        let store = try kind.client(socket)
        let writer = try kind.client(socket)
        try await store.mkdir("/tool/w")
        let watch = try await store.watch("/tool/w", token: "tok")
        var events = watch.makeAsyncIterator()
        #expect(await events.next() == XenStoreWatchEvent(path: "/tool/w", token: "tok"))
        try await writer.write("/tool/w/x", "1")
        #expect(await events.next() == XenStoreWatchEvent(path: "/tool/w/x", token: "tok"))
        try await writer.remove("/tool/w")
        #expect(await events.next() == XenStoreWatchEvent(path: "/tool/w", token: "tok"))

        // Registering the same (path, token) again is EEXIST while it exists.
        await #expect(throws: XenStoreError.alreadyExists("watch token tok")) { _ = try await store.watch("/tool/w", token: "tok") }
        watch.cancel()
        // After cancel the daemon no longer has it: the same token registers again.
        var registered = false
        for _ in 0..<100 where !registered {
            do {
                let again = try await store.watch("/tool/w", token: "tok")
                registered = true
                again.cancel()
            } catch .alreadyExists {
                try await Task.sleep(for: .milliseconds(10))
            }
        }
        #expect(registered)

        // A write to the watched node itself: its event and the registration event are the same
        // bytes, and C xenstored sends one of two identical queued events; reading on each event
        // sees the write either way.
        try await writer.write("/tool/q", "")
        let quiet = try await store.watch("/tool/q")
        try await writer.write("/tool/q", "v")
        var seen = false
        var quietEvents = quiet.makeAsyncIterator()
        while !seen, let event = await quietEvents.next() {
            #expect(event.path == "/tool/q")
            seen = try await store.readString("/tool/q") == "v"
        }
        #expect(seen)
    }

    @Test("a transaction that conflicts is run again; one that throws is aborted", arguments: StoreDaemon.allCases)
    func transactions(_ kind: StoreDaemon) async throws {
        let (socket, handle) = try await kind.start()
        defer { withExtendedLifetime(handle) {} }
        let store = try kind.client(socket)
        let other = try kind.client(socket)
        try await store.write("/tool/counter", "0")
        let attempts = Counter()
        try await store.transaction { tx in
            let value = Int(try await tx.readString("/tool/counter"))!
            if attempts.increment() == 1 { try await other.write("/tool/counter", "100") }
            try await tx.write("/tool/counter", String(value + 1))
        }
        #expect(attempts.value == 2, "the first attempt conflicts with the other writer")
        #expect(try await store.readString("/tool/counter") == "101")

        struct Stop: Error {}
        await #expect(throws: Stop.self) {
            try await store.transaction { tx in
                try await tx.write("/tool/counter", "never")
                throw Stop()
            }
        }
        #expect(try await store.readString("/tool/counter") == "101")

        // A transaction's writes are invisible to others until it commits.
        let id = try await store.startTransaction()
        let tx = XenStoreTransaction(client: store, id: id)
        try await tx.write("/tool/pending", "p")
        #expect(try await !other.exists("/tool/pending"))
        try await store.endTransaction(id, commit: true)
        #expect(try await other.readString("/tool/pending") == "p")
        await #expect(throws: XenStoreError.noEntry("TRANSACTION_END")) { try await store.endTransaction(id, commit: true) }
    }

    @Test("a directory too long for one reply is read with DIRECTORY_PART", arguments: StoreDaemon.allCases)
    func longDirectory(_ kind: StoreDaemon) async throws {
        let (socket, handle) = try await kind.start()
        defer { withExtendedLifetime(handle) {} }
        let store = try kind.client(socket)
        let names = (0..<400).map { "child-with-a-longish-name-\($0)" }
        try await store.transaction { tx in
            for name in names { try await tx.write(XenStorePath("/tool/long/" + name), "") }
        }
        await #expect(throws: XenStoreError.tooBig("/tool/long")) { _ = try await store.call(.directory("/tool/long"), transaction: 0) }
        #expect(Set(try await store.directory("/tool/long")) == Set(names))
    }

    @Test("introduce, is-introduced, release fire the special watches", arguments: StoreDaemon.allCases)
    func domains(_ kind: StoreDaemon) async throws {
        let (socket, handle) = try await kind.start()
        defer { withExtendedLifetime(handle) {} }
        let store = try kind.client(socket)
        // Special events are never merged: past each registration event comes the domain's.
        let introduced = try await store.watch(.introduceDomain)
        let released = try await store.watch(.releaseDomain)
        #expect(try await !store.isIntroduced(DomainID(5)))
        try await store.introduce(DomainID(5), gfn: 0x1234, port: EventChannelPort(3))
        #expect(try await store.isIntroduced(DomainID(5)))
        var i = introduced.dropFirst().makeAsyncIterator()
        #expect(await i.next()?.path == "@introduceDomain")
        try await store.release(DomainID(5))
        var r = released.dropFirst().makeAsyncIterator()
        #expect(await r.next()?.path == "@releaseDomain")
        #expect(try await !store.isIntroduced(DomainID(5)))
    }

    @Test("reset-watches ends every watch of the connection", arguments: StoreDaemon.allCases)
    func resetWatches(_ kind: StoreDaemon) async throws {
        let (socket, handle) = try await kind.start()
        defer { withExtendedLifetime(handle) {} }
        let store = try kind.client(socket)
        let watch = try await store.watch("/tool/r")
        try await store.resetWatches()
        var events: [XenStoreWatchEvent] = []
        for await event in watch { events.append(event) }
        #expect(events.count <= 1 && events.allSatisfy { $0.path == "/tool/r" }, "at most the registration event, then the end: \(events)")
        _ = try await store.watch("/tool/r", token: watch.token)  // the daemon forgot it too
    }
}

/// A counter a transaction body can bump (bodies are not isolated to one task).
final class Counter: Sendable {
    private let count = Locked(0)
    func increment() -> Int {
        count.withLock {
            $0 += 1; return $0
        }
    }
    var value: Int { count.withLock { $0 } }
}
