import Foundation
#if canImport(Glibc)
    import Glibc
#endif
import PVHost
import PVSystem
import Testing
import XenABI
import XenStore

/// The toolstack with the real xenstored and hypervisor: guests reach xenstore through the
/// ring page in their own memory, with their own identity.
@Suite("pvhost toolstack: domains and devices as libxl lays them out", .serialized, .timeLimit(.minutes(5)))
struct ToolstackTests {
    final class Host: Sendable {
        let directory: String
        let daemon: XenStoreDaemon
        let hypervisor = Hypervisor()
        let toolstack: Toolstack

        init() throws {
            directory = NSTemporaryDirectory() + "pvkit-host-\(UUID().uuidString.prefix(8))"
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            daemon = try XenStoreDaemon(path: directory + "/socket")
            let daemon = self.daemon
            try daemon.start()
            let store = try XenStoreClient.connect(XenStoreLocation(environment: ["XENSTORED_PATH": directory + "/socket"]))
            toolstack = Toolstack(hypervisor: hypervisor, xenstored: daemon, store: store)
        }

        /// The guest's own xenstore client: its own mapping of its memory, its event channel.
        func client(for guest: Toolstack.Guest) throws -> XenStoreClient {
            let memory = try SharedMemoryRegion(mapping: dup(guest.domain.memory.fileDescriptor), byteCount: guest.domain.memory.byteCount)
            let page = memory.baseAddress + guest.domain.storeFrame * XenPage.size
            return XenStoreClient(
                transport: try XenStoreRingTransport(
                    page: page, incoming: guest.storeChannel.delivery,
                    outgoing: guest.storeChannel.peer, keepAlive: memory))
        }

        deinit {
            daemon.shutdown()
            try? FileManager.default.removeItem(atPath: directory)
        }
    }

    @Test("a domain's nodes and permissions as libxl writes them; the guest reads its own, writes where allowed, never another guest's")
    func domainLayout() async throws {
        let host = try Host()
        let introduced = try await host.toolstack.store.watch(.introduceDomain)
        let a = try await host.toolstack.createDomain(name: "alpha")
        let b = try await host.toolstack.createDomain(name: "beta")
        var events = introduced.dropFirst().makeAsyncIterator()  // past the registration event
        #expect(await events.next()?.path == "@introduceDomain")
        let store = host.toolstack.store
        let home = "/local/domain/\(a.domain.id.rawValue)"
        #expect(try await store.readString(XenStorePath(home + "/name")) == "alpha")
        #expect(try await store.readString(XenStorePath(home + "/domid")) == "\(a.domain.id.rawValue)")
        #expect(try await store.permissions(XenStorePath(home)).entries.map(\.description) == ["n0", "r\(a.domain.id.rawValue)"])
        #expect(try await store.permissions(XenStorePath(home + "/data")).entries.map(\.description) == ["n\(a.domain.id.rawValue)"])
        #expect(try await store.isIntroduced(a.domain.id))

        let guest = try host.client(for: a)
        #expect(try await guest.readString("name") == "alpha", "relative to its home")
        try await guest.write("data/hello", "world")
        try await guest.write("control/shutdown", "")
        await #expect(throws: XenStoreError.accessDenied(home + "/name")) { try await guest.write(XenStorePath(home + "/name"), "evil") }
        let other = "/local/domain/\(b.domain.id.rawValue)/name"
        await #expect(throws: XenStoreError.accessDenied(other)) { try await guest.read(XenStorePath(other)) }
        await #expect(throws: XenStoreError.accessDenied("/vm")) { _ = try await guest.directory("/vm") }
        #expect(try await store.readString(XenStorePath(home + "/data/hello")) == "world")
    }

    @Test("a device: frontend and backend directories, keys and permissions as libxl's; removal walks online=0, Closing, Closed")
    func deviceLayout() async throws {
        let host = try Host()
        let guest = try await host.toolstack.createDomain(name: "g")
        let device = Toolstack.Device(type: "vbd", frontend: guest.domain.id, devid: 51712)
        try await host.toolstack.addDevice(
            device, frontendKeys: ["virtual-device": "51712", "device-type": "disk"],
            backendKeys: ["params": "/tmp/disk.img", "mode": "w"])
        let store = host.toolstack.store
        let id = guest.domain.id.rawValue
        #expect(device.frontendPath == "/local/domain/\(id)/device/vbd/51712")
        #expect(device.backendPath == "/local/domain/0/backend/vbd/\(id)/51712")
        #expect(Set(try await store.directory(XenStorePath(device.frontendPath))) == ["backend", "backend-id", "state", "virtual-device", "device-type"])
        #expect(try await store.readString(XenStorePath(device.frontendPath + "/backend")) == device.backendPath)
        #expect(try await store.readString(XenStorePath(device.backendPath + "/frontend-id")) == "\(id)")
        #expect(try await store.readString(XenStorePath(device.backendPath + "/online")) == "1")
        #expect(try await store.permissions(XenStorePath(device.frontendPath)).entries.map(\.description) == ["n\(id)", "r0"])
        #expect(try await store.permissions(XenStorePath(device.backendPath)).entries.map(\.description) == ["n0", "r\(id)"])
        // The guest may write its own state and read the backend's, not write the backend's.
        let frontend = try host.client(for: guest)
        try await frontend.write(XenStorePath(device.frontendPath + "/state"), "3")
        #expect(try await frontend.readString(XenStorePath(device.backendPath + "/state")) == "1")
        await #expect(throws: XenStoreError.accessDenied(device.backendPath + "/state")) {
            try await frontend.write(XenStorePath(device.backendPath + "/state"), "4")
        }
        // A vif gets libxl's empty hotplug-status; the "script" reports it connected.
        let vif = Toolstack.Device(type: "vif", frontend: guest.domain.id, devid: 0)
        try await host.toolstack.addDevice(vif, frontendKeys: ["mac": "00:16:3e:00:00:01"])
        #expect(try await store.readString(XenStorePath(vif.backendPath + "/hotplug-status")) == "")
        try await host.toolstack.reportHotplug(vif)
        #expect(try await store.readString(XenStorePath(vif.backendPath + "/hotplug-status")) == "connected")
        // A backend that closes when told: removal sees state 6 and deletes both directories.
        let backendState = try await store.watch(XenStorePath(device.backendPath + "/state"))
        let closer = Task {
            for await _ in backendState where (try? await store.readString(XenStorePath(device.backendPath + "/state"))) == "5" {
                try? await store.write(XenStorePath(device.backendPath + "/state"), "6")
                return
            }
        }
        #expect(try await host.toolstack.removeDevice(device))
        _ = await closer.value
        #expect(try await !store.exists(XenStorePath(device.frontendPath)))
        #expect(try await !store.exists(XenStorePath(device.backendPath)))
    }

    @Test("destroying a domain removes its nodes and watches, fires @releaseDomain, and reclaims its grants and ports")
    func destroy() async throws {
        let host = try Host()
        let guest = try await host.toolstack.createDomain(name: "doomed")
        let client = try host.client(for: guest)
        try await client.write("data/x", "1")
        let released = try await host.toolstack.store.watch(.releaseDomain)
        let reclaimed = await host.toolstack.destroyDomain(guest.domain.id)
        #expect(reclaimed.ports == 1, "the xenstore channel")
        var events = released.dropFirst().makeAsyncIterator()  // past the registration event
        #expect(await events.next()?.path == "@releaseDomain")
        let home = XenStorePath.home(of: guest.domain.id)
        #expect(try await !host.toolstack.store.exists(home))
        #expect(try await !host.toolstack.store.isIntroduced(guest.domain.id))
        #expect(host.hypervisor.domain(guest.domain.id) == nil)
        #expect(host.hypervisor.status.domains.isEmpty)
    }
}
