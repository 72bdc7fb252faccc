import Foundation
#if canImport(Glibc)
    import Glibc
#endif
import PVHost
import PVSystem
import Testing
import XenABI
import XenStore
import XenStoredCore

/// A guest talking to xenstored over its ring page: one memfd page mapped twice (the daemon's
/// mapping and the guest's), two eventfds as the event channel's directions.
@Suite("xenstored on a domain's ring page", .serialized, .timeLimit(.minutes(5)))
struct XenStoreRingTests {
    final class Setup: Sendable {
        let daemon: XenStoreDaemon
        let directory: String
        let daemonPage: SharedMemoryRegion
        let guestPage: SharedMemoryRegion
        let fromGuest: EventFD
        let toGuest: EventFD
        let ringID: Int
        let dom0: XenStoreClient

        init(domain: DomainID = DomainID(5), quotas: XenStoreQuotas = XenStoreQuotas()) async throws {
            directory = NSTemporaryDirectory() + "pvkit-ring-\(UUID().uuidString.prefix(8))"
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            daemon = try XenStoreDaemon(path: directory + "/socket")
            daemon.quotas = quotas
            let daemon = self.daemon
            try daemon.start()
            daemonPage = try SharedMemoryRegion(creating: "xenstore-ring", byteCount: 4096)
            // The guest's own mapping of the same page.
            guestPage = try SharedMemoryRegion(mapping: dup(daemonPage.fileDescriptor), byteCount: 4096)
            #expect(guestPage.baseAddress != daemonPage.baseAddress)
            fromGuest = try EventFD()
            toGuest = try EventFD()
            dom0 = try XenStoreClient.connect(XenStoreLocation(environment: ["XENSTORED_PATH": directory + "/socket"]))
            // The toolstack's part: the guest's home, owned by it.
            try await dom0.mkdir(XenStorePath.home(of: domain))
            try await dom0.setPermissions(XenStorePath.home(of: domain), XenStorePermissions([XenStorePermission(.none, domain)]))
            ringID = daemon.attachRing(domain: domain, page: daemonPage.baseAddress, fromGuest: fromGuest, toGuest: toGuest, keepAlive: daemonPage)
        }

        func guestTransport() throws -> XenStoreRingTransport {
            try XenStoreRingTransport(page: guestPage.baseAddress, incoming: toGuest, outgoing: fromGuest, keepAlive: guestPage)
        }

        func guest() throws -> XenStoreClient { XenStoreClient(transport: try guestTransport()) }

        deinit {
            daemon.shutdown()
            try? FileManager.default.removeItem(atPath: directory)
        }
    }

    @Test("a guest reads, writes, lists and watches with its own identity; relative paths are its home")
    func guestIdentity() async throws {
        let setup = try await Setup()
        let guest = try setup.guest()
        try await guest.write("data/x", "1")
        #expect(try await setup.dom0.readString("/local/domain/5/data/x") == "1")
        #expect(try await guest.directory("data") == ["x"])
        #expect(try await guest.permissions("data/x").owner == DomainID(5))
        await #expect(throws: XenStoreError.accessDenied("/tool/xenstored")) { try await guest.read("/tool/xenstored") }
        await #expect(throws: XenStoreError.accessDenied("/tool/mine")) { try await guest.write("/tool/mine", "x") }
        await #expect(throws: XenStoreError.accessDenied("INTRODUCE")) { try await guest.introduce(DomainID(9), gfn: 1, port: EventChannelPort(1)) }
        #expect(try await guest.domainPath(of: DomainID(5)) == "/local/domain/5")

        let watch = try await guest.watch("device")
        var events = watch.makeAsyncIterator()
        #expect(await events.next()?.path == "device", "relative watch, relative registration event")
        try await setup.dom0.write("/local/domain/5/device/vbd/51712/state", "1")
        #expect(await events.next()?.path == "device/vbd/51712/state", "events on a relative watch are relative")
    }

    @Test("values bigger than the 1 KiB ring and 300 requests in flight cross the ring intact")
    func volume() async throws {
        let setup = try await Setup()
        let guest = try setup.guest()
        let big = (0..<2000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        try await guest.write("data/big", big)
        #expect(try await guest.read("data/big") == big)
        #expect(try await setup.dom0.read("/local/domain/5/data/big") == big)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for i in 0..<300 { group.addTask { try await guest.write(XenStorePath("data/n\(i)"), "value-\(i)") } }
            try await group.waitForAll()
        }
        let values = try await withThrowingTaskGroup(of: Bool.self) { group in
            for i in 0..<300 { group.addTask { try await guest.readString(XenStorePath("data/n\(i)")) == "value-\(i)" } }
            return try await group.reduce(0) { $0 + ($1 ? 1 : 0) }
        }
        #expect(values == 300)
        try await guest.transaction { tx in
            try await tx.write("data/tx", "t")
        }
        #expect(try await setup.dom0.readString("/local/domain/5/data/tx") == "t")
    }

    @Test("reconnect: the daemon drops the guest's watches and everything in flight")
    func reconnect() async throws {
        let setup = try await Setup()
        let transport = try setup.guestTransport()
        let guest = XenStoreClient(transport: transport)
        let first = try await guest.watch("data", token: "w")
        await #expect(throws: XenStoreError.alreadyExists("data")) { _ = try await guest.call(.watch("data", token: "w"), transaction: 0) }
        withExtendedLifetime(first) {}
        guest.close()
        try await transport.reconnect()
        let again = try setup.guest()
        _ = try await again.watch("data", token: "w")  // the daemon forgot the first one
        try await again.write("data/after", "ok")
        #expect(try await setup.dom0.readString("/local/domain/5/data/after") == "ok")
    }

    @Test("a guest whose indexes lie gets XENSTORE_ERROR_RINGIDX; an oversized message XENSTORE_ERROR_PROTO; others are served")
    func hostileGuest() async throws {
        for (fault, expected) in [("indexes", XsWire.errorRingIndex), ("oversized", XsWire.errorProtocol)] {
            let setup = try await Setup()
            let ring = XenStoreRing(page: setup.guestPage.baseAddress, side: .guest)
            let base = setup.guestPage.baseAddress
            if fault == "indexes" {
                base.storeBytes(of: UInt32(5000), toByteOffset: XenstoreDomainInterface.requestProducer, as: UInt32.self)
            } else {
                let header = XsHeader(type: .read, requestID: 1, length: 5000).bytes
                _ = try header.withUnsafeBytes { try ring.write($0) }
            }
            try setup.fromGuest.notify()
            var seen: UInt32 = 0
            for _ in 0..<200 where seen == 0 { usleep(5000); seen = ring.error }
            #expect(seen == expected, "\(fault)")
            // The daemon lives on for everyone else.
            try await setup.dom0.write("/tool/alive", "yes")
            #expect(try await setup.dom0.readString("/tool/alive") == "yes")
            // The guest's client sees a closed connection, not a hang.
            let guest = try setup.guest()
            await #expect(throws: XenStoreError.self) { try await guest.read("data") }
        }
    }

    @Test("a guest that never reads replies is not read further past its outstanding quota, and catches up later")
    func outstanding() async throws {
        var quotas = XenStoreQuotas()
        quotas.defaults.outstanding = 4
        let setup = try await Setup(quotas: quotas)
        try await setup.dom0.write("/local/domain/5/v", String(repeating: "x", count: 300))
        let ring = XenStoreRing(page: setup.guestPage.baseAddress, side: .guest)
        let request = try XenStoreRequest.read("v").message(requestID: 7).bytes  // 18 bytes each
        var batch: [UInt8] = []
        for _ in 0..<200 { batch += request }
        var offset = 0
        // Fill the request ring as far as it goes; the daemon reads only until 4 replies wait.
        for _ in 0..<50 where offset < batch.count {
            offset += try batch[offset...].withUnsafeBytes { try ring.write($0) }
            try setup.fromGuest.notify()
            usleep(10_000)
        }
        let base = setup.guestPage.baseAddress
        let consumed = base.load(fromByteOffset: XenstoreDomainInterface.requestConsumer, as: UInt32.self)
        let produced = base.load(fromByteOffset: XenstoreDomainInterface.requestProducer, as: UInt32.self)
        #expect(consumed < produced, "the daemon stopped reading this guest")
        #expect(offset < batch.count, "and the guest could not write everything")
        // Now the guest reads: every reply arrives.
        var decoder = XsFrameDecoder()
        var replies = 0
        var buffer = [UInt8](repeating: 0, count: 1024)
        for _ in 0..<5000 where replies < 200 {
            let n = try buffer.withUnsafeMutableBytes { try ring.read(into: $0) }
            if n > 0 { decoder.feed(buffer[..<n]); try setup.fromGuest.notify() }
            while let message = try decoder.next() {
                #expect(message.payload.count == 300)
                replies += 1
            }
            if offset < batch.count {
                offset += try batch[offset...].withUnsafeBytes { try ring.write($0) }
                try setup.fromGuest.notify()
            }
            usleep(1000)
        }
        #expect(replies == 200)
    }
}
