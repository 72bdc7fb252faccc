#if canImport(Glibc)
    import Glibc
#endif
import PVHost
import PVSystem
import Testing
import XenABI
import XenGrants
import Foundation

/// The hypervisor's grant tables and event channels, driven as a guest and a backend would:
/// the guest writes its own grant table through its own mapping of the frames.
@Suite("pvhost hypervisor: grant tables and event channels", .timeLimit(.minutes(5)))
struct HypervisorTests {
    /// A domain plus the guest's own view of its grant table (a second mapping of the memfd).
    struct Guest {
        let domain: Domain
        let table: SharedGrantTable
        let mapping: SharedMemoryRegion

        init(_ hypervisor: Hypervisor, name: String = "guest") throws {
            domain = try hypervisor.createDomain(name: name)
            mapping = try SharedMemoryRegion(mapping: dup(domain.grantFrames.fileDescriptor), byteCount: domain.grantFrames.byteCount)
            table = SharedGrantTable(base: mapping.baseAddress, frames: domain.limits.grantFrames)
        }
    }

    @Test("a granted page maps for its grantee, shows the guest's bytes, and revoke fails while mapped")
    func mapAndRevoke() throws {
        let hv = Hypervisor()
        let guest = try Guest(hv)
        guest.domain.page(10).storeBytes(of: 0xC0FFEE, as: UInt32.self)
        guest.table.grant(GrantRef(8), to: .dom0, frame: 10, readOnly: false)
        let mapping = try hv.mapGrant(GrantRef(8), of: guest.domain.id, by: .dom0, writable: true)
        #expect(mapping.page.load(as: UInt32.self) == 0xC0FFEE)
        #expect(guest.table.entry(GrantRef(8)).flags.contains([.reading, .writing]))
        #expect(!guest.table.revoke(GrantRef(8)), "revoke is refused while the backend has it mapped")
        mapping.page.storeBytes(of: 7, as: UInt32.self)
        #expect(guest.domain.page(10).load(as: UInt32.self) == 7, "the backend writes the guest's page itself")
        try hv.unmapGrant(mapping.handle, by: .dom0)
        #expect(!guest.table.isInUse(GrantRef(8)))
        #expect(guest.table.revoke(GrantRef(8)))
        #expect(guest.table.entry(GrantRef(8)).flags == [])
        #expect(throws: GrantStatus.generalError) { _ = try hv.mapGrant(GrantRef(8), of: guest.domain.id, by: .dom0, writable: false) }
    }

    @Test("Xen's refusals: wrong domid, write map of a read-only grant, ref out of range, frame outside memory, unknown domain")
    func refusals() throws {
        let hv = Hypervisor()
        let guest = try Guest(hv)
        let other = try Guest(hv, name: "other")
        guest.table.grant(GrantRef(8), to: other.domain.id, frame: 3, readOnly: false)
        #expect(throws: GrantStatus.generalError) { _ = try hv.mapGrant(GrantRef(8), of: guest.domain.id, by: .dom0, writable: false) }
        guest.table.grant(GrantRef(9), to: .dom0, frame: 3, readOnly: true)
        #expect(throws: GrantStatus.generalError) { _ = try hv.mapGrant(GrantRef(9), of: guest.domain.id, by: .dom0, writable: true) }
        let readOnly = try hv.mapGrant(GrantRef(9), of: guest.domain.id, by: .dom0, writable: false)
        #expect(guest.table.entry(GrantRef(9)).flags.contains(.reading) && !guest.table.entry(GrantRef(9)).flags.contains(.writing))
        try hv.unmapGrant(readOnly.handle, by: .dom0)
        #expect(throws: GrantStatus.badGntref) { _ = try hv.mapGrant(GrantRef(UInt32(guest.table.count)), of: guest.domain.id, by: .dom0, writable: false) }
        guest.table.grant(GrantRef(10), to: .dom0, frame: UInt32(guest.domain.pageCount + 5), readOnly: false)
        #expect(throws: GrantStatus.badPage) { _ = try hv.mapGrant(GrantRef(10), of: guest.domain.id, by: .dom0, writable: true) }
        #expect(!guest.table.isInUse(GrantRef(10)), "a refused map leaves no pin behind")
        #expect(throws: GrantStatus.badDomain) { _ = try hv.mapGrant(GrantRef(8), of: DomainID(999), by: .dom0, writable: false) }
        #expect(throws: GrantStatus.generalError) { _ = try hv.mapGrant(GrantRef(11), of: guest.domain.id, by: .dom0, writable: false) }
    }

    @Test("mapping twice pins twice: the flags clear only when the last mapping goes; a foreign handle is refused")
    func doubleMap() throws {
        let hv = Hypervisor()
        let guest = try Guest(hv)
        let backend = try Guest(hv, name: "driver-domain")
        guest.table.grant(GrantRef(8), to: .dom0, frame: 1, readOnly: false)
        let a = try hv.mapGrant(GrantRef(8), of: guest.domain.id, by: .dom0, writable: true)
        let b = try hv.mapGrant(GrantRef(8), of: guest.domain.id, by: .dom0, writable: false)
        #expect(throws: GrantStatus.badHandle) { try hv.unmapGrant(a.handle, by: backend.domain.id) }
        #expect(throws: GrantStatus.badHandle) { try hv.unmapGrant(9999, by: .dom0) }
        try hv.unmapGrant(a.handle, by: .dom0)
        let flags = guest.table.entry(GrantRef(8)).flags
        #expect(flags.contains(.reading) && !flags.contains(.writing), "the read mapping remains")
        #expect(!guest.table.revoke(GrantRef(8)))
        try hv.unmapGrant(b.handle, by: .dom0)
        #expect(guest.table.revoke(GrantRef(8)))
        #expect(throws: GrantStatus.badHandle) { try hv.unmapGrant(b.handle, by: .dom0) }
    }

    @Test("grant copy in both directions, bounded to the page, leaves no mapping")
    func copy() throws {
        let hv = Hypervisor()
        let guest = try Guest(hv)
        guest.table.grant(GrantRef(8), to: .dom0, frame: 2, readOnly: false)
        var out = [UInt8](repeating: 0, count: 16)
        try [UInt8](1...16).withUnsafeBytes { try hv.copyGrant($0, to: GrantRef(8), of: guest.domain.id, by: .dom0, offset: 100) }
        try out.withUnsafeMutableBytes { try hv.copyGrant(GrantRef(8), of: guest.domain.id, by: .dom0, offset: 100, into: $0) }
        #expect(out == [UInt8](1...16))
        #expect(throws: GrantStatus.badCopyArg) {
            try out.withUnsafeMutableBytes { try hv.copyGrant(GrantRef(8), of: guest.domain.id, by: .dom0, offset: 4090, into: $0) }
        }
        #expect(!guest.table.isInUse(GrantRef(8)))
        #expect(hv.status.grantsMapped == 0 && hv.status.copiesTotal == 2)
    }

    @Test("event channels: alloc-unbound, bind by the named domain only, notify both ways, close, limits")
    func eventChannels() throws {
        let hv = Hypervisor()
        var limits = Domain.Limits()
        limits.eventChannels = 3
        let guest = try hv.createDomain(name: "g", limits: limits)
        let stranger = try hv.createDomain(name: "s")
        let (port, end) = try hv.allocUnbound(guest.id, remote: .dom0)
        #expect(throws: EventChannelError.notBindable(guest.id, port)) { _ = try hv.bindInterdomain(stranger.id, remote: guest.id, remotePort: port) }
        #expect(throws: EventChannelError.invalidPort(guest.id, port)) { try hv.notify(guest.id, port) }  // not connected yet
        let (backendPort, backendEnd) = try hv.bindInterdomain(.dom0, remote: guest.id, remotePort: port)
        try hv.notify(.dom0, backendPort)
        try hv.notify(.dom0, backendPort)
        #expect(end.delivery.isPending)
        #expect(try end.delivery.wait() == 2, "two sends before the wait coalesce into one wake-up")
        try end.peer.notify()  // the guest notifies by writing its eventfd, as a guest process does
        #expect(backendEnd.delivery.isPending)
        #expect(try hv.setMasked(.dom0, backendPort, false), "unmask tells a pending event")
        try hv.closePort(guest.id, port)
        guard case .unbound(let remote) = try hv.port(.dom0, backendPort).state else { Issue.record("the peer's port should be unbound"); return }
        #expect(remote == guest.id)
        #expect(throws: EventChannelError.invalidPort(guest.id, port)) { try hv.closePort(guest.id, port) }
        #expect(throws: EventChannelError.invalidPort(stranger.id, backendPort)) { try hv.closePort(stranger.id, backendPort) }
        for _ in 0..<3 { _ = try hv.allocUnbound(guest.id, remote: .dom0) }
        #expect(throws: EventChannelError.noFreePort(guest.id)) { _ = try hv.allocUnbound(guest.id, remote: .dom0) }
        #expect(throws: EventChannelError.noDomain(DomainID(77))) { _ = try hv.allocUnbound(DomainID(77), remote: .dom0) }
        #expect(hv.status.notificationsSent == 2)
    }

    @Test("destroying a domain undoes its mappings and the mappings of its grants, and closes its ports")
    func destroy() throws {
        let hv = Hypervisor()
        let guest = try Guest(hv)
        guest.table.grant(GrantRef(8), to: .dom0, frame: 4, readOnly: false)
        let mapping = try hv.mapGrant(GrantRef(8), of: guest.domain.id, by: .dom0, writable: true)
        let (port, _) = try hv.allocUnbound(guest.domain.id, remote: .dom0)
        let (backendPort, _) = try hv.bindInterdomain(.dom0, remote: guest.domain.id, remotePort: port)
        let reclaimed = hv.destroyDomain(guest.domain.id)
        #expect(reclaimed == Hypervisor.Reclaimed(mappingsByIt: 0, mappingsOfIt: 1, ports: 1))
        #expect(hv.status.grantsMapped == 0 && hv.domain(guest.domain.id) == nil)
        #expect(throws: GrantStatus.badHandle) { try hv.unmapGrant(mapping.handle, by: .dom0) }
        // The backend's stale mapping value still points at memory that is mapped.
        mapping.page.storeBytes(of: 1, as: UInt8.self)
        guard case .unbound = try hv.port(.dom0, backendPort).state else { Issue.record("the backend's port should be unbound"); return }
    }
}

@Suite("pvhost configuration", .timeLimit(.minutes(5)))
struct PVHostConfigTests {
    @Test("a valid file: names and limits")
    func valid() throws {
        let config = try PVHostConfig.parse(Data(#"{"domains": [{"name": "alpha", "pages": 512, "grantFrames": 8}, {"name": "beta"}]}"#.utf8))
        #expect(config.domain(named: "alpha")?.limits.pages == 512)
        #expect(config.domain(named: "alpha")?.limits.grantFrames == 8)
        #expect(config.domain(named: "beta")?.limits == Domain.Limits())
        #expect(config.domain(named: "gamma") == nil)
    }

    @Test(
        "refusals name the entry and the rule",
        arguments: [
            (#"{"domains": [{"name": "a b"}]}"#, "letters, digits"),
            (#"{"domains": [{"name": "a"}, {"name": "a"}]}"#, "appears twice"),
            (#"{"domains": [{"name": "a", "pages": 1}]}"#, "pages 1"),
            (#"{"domains": [{"name": "a", "grantFrames": 0}]}"#, "grantFrames 0"),
            (#"{"domains": [{"name": "a", "eventChannels": 99999}]}"#, "eventChannels 99999"),
            (#"{"domain": []}"#, "not a pvhost configuration"),
            ("not json", "not a pvhost configuration")
        ])
    func invalid(text: String, reason: String) {
        #expect {
            _ = try PVHostConfig.parse(Data(text.utf8), source: "test.json")
        } throws: { error in
            let message = (error as? PVHostConfig.Invalid)?.description ?? ""
            return message.hasPrefix("test.json") && message.contains(reason)
        }
    }
}
