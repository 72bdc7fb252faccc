import Foundation
#if canImport(Glibc)
    import Glibc
#endif
import PVHost
import PVPlatform
import PVHostProtocol
import Testing
import XenABI
import XenStore

/// A guest on ReferencePlatform (memfds and eventfds received over the control socket) with
/// pvhost in the same process acting as the backend: grants, revokes, event channels.
@Suite("PVPlatform.Reference against pvhost", .serialized, .timeLimit(.minutes(5)))
struct ReferencePlatformTests {
    final class Host: Sendable {
        let tools: ToolstackTests.Host
        let server: ControlServer
        var control: String { tools.directory + "/control" }

        init() throws {
            tools = try ToolstackTests.Host()
            server = try ControlServer(path: tools.directory + "/control", toolstack: tools.toolstack)
            let server = self.server
            try server.start()
        }

        deinit {
            server.stop()
        }
    }

    @Test("a granted page: the backend maps it and writes, the guest sees it; revoke is refused until unmapped; pages come zeroed")
    func grants() async throws {
        let host = try Host()
        let guest = try ReferencePlatform.attach(socket: host.control, name: "g")
        let hv = host.tools.hypervisor
        let page = try guest.grantPage(to: .dom0, readOnly: false)
        #expect(page.ref.rawValue >= 8, "refs 0–7 are reserved")
        page.address.storeBytes(of: 0xAB, as: UInt8.self)
        let mapping = try hv.mapGrant(page.ref, of: guest.domain, by: .dom0, writable: true)
        #expect(mapping.page.load(as: UInt8.self) == 0xAB)
        mapping.page.storeBytes(of: 0xCD, toByteOffset: 1, as: UInt8.self)
        #expect(page.address.load(fromByteOffset: 1, as: UInt8.self) == 0xCD, "one page, two mappings, two processes' worth")
        #expect(!guest.revoke(page), "mapped: revoke refused, page kept")
        try hv.unmapGrant(mapping.handle, by: .dom0)
        #expect(guest.revoke(page))
        #expect(throws: GrantStatus.generalError) { _ = try hv.mapGrant(page.ref, of: guest.domain, by: .dom0, writable: false) }
        // Read-only grants refuse a writable map; a reused page comes zeroed.
        let readOnly = try guest.grantPage(to: .dom0, readOnly: true)
        #expect(readOnly.address.load(fromByteOffset: 1, as: UInt8.self) == 0)
        #expect(throws: GrantStatus.generalError) { _ = try hv.mapGrant(readOnly.ref, of: guest.domain, by: .dom0, writable: true) }
        // A grant to another domain is not dom0's to map.
        let elsewhere = try guest.grantPage(to: DomainID(42), readOnly: false)
        #expect(throws: GrantStatus.generalError) { _ = try hv.mapGrant(elsewhere.ref, of: guest.domain, by: .dom0, writable: false) }
    }

    @Test("event channels across the control socket: alloc-unbound, the backend binds, notifications both ways, close")
    func events() async throws {
        let host = try Host()
        let guest = try ReferencePlatform.attach(socket: host.control, name: "g")
        let hv = host.tools.hypervisor
        let channel = try guest.allocateUnboundPort(remote: .dom0)
        let (backendPort, backendEnd) = try hv.bindInterdomain(.dom0, remote: guest.domain, remotePort: channel.port)
        try hv.notify(.dom0, backendPort)
        #expect(try await channel.wait() == 1)
        channel.notify()
        #expect(backendEnd.delivery.isPending)
        #expect(channel.notificationsSent == 1 && channel.wakeups == 1)
        channel.close()
        guard case .unbound = try hv.port(.dom0, backendPort).state else { Issue.record("the backend's port should be unbound"); return }
        // Binding to a port nobody offered is refused, with pvhost's reason.
        #expect(throws: PlatformError.self) { _ = try guest.bindInterdomain(remote: .dom0, port: EventChannelPort(999)) }
        // The guest's xenstore works next to it.
        let store = try guest.xenstore()
        #expect(try await store.readString("name") == "g")
    }

    @Test("a guest backend maps another guest's grant over the control socket; copy, refusals, and its death releasing the pin")
    func guestBackend() async throws {
        let host = try Host()
        let frontend = try ReferencePlatform.attach(socket: host.control, name: "front")
        var backend: ReferencePlatform? = try ReferencePlatform.attach(socket: host.control, name: "driver-domain")
        let backendID = backend!.domain
        let page = try frontend.grantPage(to: backendID, readOnly: false)
        page.address.storeBytes(of: UInt32(0x600D), as: UInt32.self)
        let mapping = try backend!.mapGrant(from: frontend.domain, ref: page.ref, writable: true)
        #expect(mapping.address.load(as: UInt32.self) == 0x600D)
        mapping.address.storeBytes(of: UInt32(0xBEEF), toByteOffset: 8, as: UInt32.self)
        #expect(page.address.load(fromByteOffset: 8, as: UInt32.self) == 0xBEEF, "the same page in two processes' worth of mappings")
        #expect(!frontend.revoke(page))
        // Grant copy into the backend's own page: pvhost copies, the socket carries no data.
        try backend!.copyGrant(from: frontend.domain, ref: page.ref, offset: 8, toFrame: 3, frameOffset: 100, length: 4)
        #expect(backend!.ownPage(3).load(fromByteOffset: 100, as: UInt32.self) == 0xBEEF)
        #expect(throws: ReferencePlatform.GrantRefused(status: .badCopyArg)) {
            try backend!.copyGrant(from: frontend.domain, ref: page.ref, offset: 4000, toFrame: 3, frameOffset: 0, length: 200)
        }
        // A grant for someone else is refused with Xen's status.
        let other = try frontend.grantPage(to: .dom0, readOnly: false)
        #expect(throws: ReferencePlatform.GrantRefused(status: .generalError)) {
            _ = try backend!.mapGrant(from: frontend.domain, ref: other.ref, writable: false)
        }
        #expect(throws: ReferencePlatform.GrantRefused(status: .badGntref)) {
            _ = try backend!.mapGrant(from: frontend.domain, ref: GrantRef(1 << 20), writable: false)
        }
        #expect(try backend!.domainInfo().domid == backendID.rawValue)
        // The backend dies holding the mapping: pvhost undoes it, and the frontend can revoke.
        backend = nil
        var revoked = false
        for _ in 0..<200 where !revoked {
            revoked = frontend.revoke(page)
            if !revoked { try await Task.sleep(for: .milliseconds(10)) }
        }
        #expect(revoked, "the dead backend's pin was released")
        #expect(host.tools.hypervisor.domain(backendID) == nil)
    }

    @Test(
        "stopping pvhost ends what it serves: the control server detaches and destroys every guest; xenstored's clients see their connection close (an error, never a hang)"
    )
    func stopEndsConnections() async throws {
        let host = try Host()
        let guest = try ReferencePlatform.attach(socket: host.control, name: "g")
        let store = try XenStoreClient.connect(XenStoreLocation(environment: ["XENSTORED_PATH": host.tools.directory + "/socket"]))
        #expect(try await store.exists(XenStorePath("/local/domain/\(guest.domain.rawValue)")))
        host.server.stop()
        var destroyed = false
        for _ in 0..<500 where !destroyed {
            destroyed = host.tools.hypervisor.domains.isEmpty
            if !destroyed { try await Task.sleep(for: .milliseconds(10)) }
        }
        #expect(destroyed, "the guest is detached and destroyed as if its process had ended")
        await host.tools.daemon.stop()
        // Bounded: a daemon that kept the socket open would leave the request unanswered; the
        // client is closed after 5 s, which ends the wait with a different reason.
        let timer = Task {
            try await Task.sleep(for: .seconds(5)); store.close()
        }
        var failure: XenStoreError?
        for _ in 0..<500 where failure == nil {
            do { _ = try await store.exists("/tool") } catch { failure = error }
            if failure == nil { try? await Task.sleep(for: .milliseconds(10)) }
        }
        timer.cancel()
        // Told by the daemon: EOF on read ("ended") or EPIPE on send ("closed"), never the 5 s close.
        guard case let .connectionClosed(why)? = failure, why.contains("the daemon") else {
            Issue.record("the client was not told by the daemon: \(String(describing: failure))")
            return
        }
    }

    @Test("status lists domains and devices with both ends' states")
    func status() async throws {
        let host = try Host()
        let guest = try ReferencePlatform.attach(socket: host.control, name: "g")
        let device = Toolstack.Device(type: "vif", frontend: guest.domain, devid: 0)
        try await host.tools.toolstack.addDevice(device)
        try await host.tools.toolstack.store.write(XenStorePath(device.backendPath + "/state"), "2")
        let status = try ReferencePlatform.status(socket: host.control)
        #expect(status.domains.map(\.name) == ["g"])
        #expect(status.devices == [HostStatus.DeviceEntry(type: "vif", frontend: guest.domain.rawValue, devid: "0", backendState: "2", frontendState: "1")])
    }
}
