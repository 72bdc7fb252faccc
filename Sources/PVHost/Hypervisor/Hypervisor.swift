import PVSystem
import Synchronization
import XenABI
import XenGrants

/// pvhost's hypervisor: domains with shared memory, grant tables (map/unmap/copy with Xen's
/// v1 flag protocol on the guest's own table), event channels (eventfd pairs). Domain 0 is
/// pvhost itself: its backends map grants and bind event channels through this object.
/// Thread-safe: one lock around the books; the data path (pages, rings, eventfds) never
/// takes it.
public final class Hypervisor: Sendable {
    private struct State {
        var domains: [DomainID: Domain] = [:]
        var grants = GrantBook()
        var events = EventChannelTable()
        var nextDomain: UInt16 = 1
        var copies = 0
        var maps = 0
    }
    private let state = Locked(State())
    private let destroyObservers = Locked<[@Sendable (DomainID) -> Void]>([])

    /// Calls `body` when a domain is being destroyed, before its grants are force-unmapped:
    /// backends disconnect its devices and unmap what they hold.
    public func onDomainDestroyed(_ body: @escaping @Sendable (DomainID) -> Void) {
        destroyObservers.withLock { $0.append(body) }
    }

    /// The event loops dom0's backends serve their rings on (and the xenstored and control
    /// server run on): pvhost's own, apart from the frontends' loops of a process that hosts
    /// both.
    public let eventLoops: EventLoopGroup

    /// pvhost's loops, one per processor, started on first use and never stopped.
    public static let sharedLoops: EventLoopGroup = {
        do { return try EventLoopGroup(name: "pvhost", count: max(1, EventLoopGroup.shared.loops.count)) } catch {
            fatalError("starting pvhost's event loops failed: \(error)")
        }
    }()

    public init(eventLoops: EventLoopGroup = Hypervisor.sharedLoops) {
        self.eventLoops = eventLoops
        state.withLock { $0.events.addDomain(.dom0, limit: 4096) }
    }

    // MARK: Domains

    /// Creates a domain with fresh memory and grant frames.
    public func createDomain(name: String, limits: Domain.Limits = Domain.Limits()) throws(SystemError) -> Domain {
        let id = state.withLock { s in
            defer { s.nextDomain += 1 }; return DomainID(s.nextDomain)
        }
        let domain = try Domain(id: id, name: name, limits: limits)
        state.withLock { s in
            s.domains[id] = domain
            s.events.addDomain(id, limit: limits.eventChannels)
        }
        return domain
    }

    public func domain(_ id: DomainID) -> Domain? { state.withLock { $0.domains[id] } }
    public var domains: [Domain] { state.withLock { $0.domains.values.sorted { $0.id < $1.id } } }

    /// What a destroyed domain left behind, reclaimed.
    public struct Reclaimed: Sendable, Equatable {
        /// Mappings the domain had of others' grants, undone.
        public var mappingsByIt = 0
        /// Mappings others had of its grants, undone (its memory goes when the last is gone).
        public var mappingsOfIt = 0
        public var ports = 0

        public init(mappingsByIt: Int = 0, mappingsOfIt: Int = 0, ports: Int = 0) {
            self.mappingsByIt = mappingsByIt
            self.mappingsOfIt = mappingsOfIt
            self.ports = ports
        }
    }

    /// Takes a domain down: every mapping it made and every mapping of its grants is undone
    /// (the granted pages stay valid for a backend until then, because mappings keep the
    /// domain's memory), every port closed (peers' ports become unbound).
    @discardableResult
    public func destroyDomain(_ id: DomainID) -> Reclaimed {
        for observer in destroyObservers.withLock({ $0 }) { observer(id) }
        return state.withLock { s in
            var reclaimed = Reclaimed()
            let dying = s.domains[id]
            for handle in s.grants.handles(mappedBy: id) {
                if let mapping = try? s.grants.unmap(handle, by: id, granter: s.domains[s.grants.mappings[handle]?.granter ?? id]) {
                    _ = mapping; reclaimed.mappingsByIt += 1
                }
            }
            for handle in s.grants.handles(grantedBy: id) {
                guard let mapper = s.grants.mappings[handle]?.mapper else { continue }
                if (try? s.grants.unmap(handle, by: mapper, granter: dying)) != nil { reclaimed.mappingsOfIt += 1 }
            }
            reclaimed.ports = s.events.count(id)
            s.events.removeDomain(id)
            s.domains[id] = nil
            return reclaimed
        }
    }

    // MARK: Grants

    /// Maps `ref` of `granter`'s table for `mapper` (a backend), with Xen's checks: the ref in
    /// the table, `GTF_permit_access` to exactly `mapper`, not read-only for a writable map,
    /// the frame inside the granter's memory. C: `GNTTABOP_map_grant_ref`.
    public func mapGrant(_ ref: GrantRef, of granter: DomainID, by mapper: DomainID, writable: Bool) throws(GrantStatus) -> GrantMapping {
        try state.withLock { s throws(GrantStatus) in
            guard let domain = s.domains[granter] else { throw .badDomain }
            let mapping = try s.grants.map(ref, of: domain, by: mapper, writable: writable)
            s.maps += 1
            return mapping
        }
    }

    /// The pages of `granter` that `mapper` has mapped now (what a backend can see of a guest).
    public func mappedPages(of granter: DomainID, by mapper: DomainID) -> [UnsafeMutableRawPointer] {
        state.withLock { s in s.grants.mappings.values.filter { $0.granter == granter && $0.mapper == mapper }.map(\.page) }
    }

    /// Undoes a mapping; `.badHandle` for a handle `mapper` does not hold. C: `GNTTABOP_unmap_grant_ref`.
    public func unmapGrant(_ handle: UInt32, by mapper: DomainID) throws(GrantStatus) {
        try state.withLock { s throws(GrantStatus) in
            let granter = s.grants.mappings[handle].flatMap { s.domains[$0.granter] }
            _ = try s.grants.unmap(handle, by: mapper, granter: granter)
        }
    }

    /// Copies between a granted page and local memory without leaving a mapping behind
    /// (`GNTTABOP_copy`): `.badCopyArg` when offset + length leaves the page.
    public func copyGrant(
        _ ref: GrantRef, of granter: DomainID, by mapper: DomainID, offset: Int,
        into buffer: UnsafeMutableRawBufferPointer
    ) throws(GrantStatus) {
        guard offset >= 0, offset + buffer.count <= XenPage.size else { throw .badCopyArg }
        let mapping = try mapGrant(ref, of: granter, by: mapper, writable: false)
        buffer.baseAddress?.copyMemory(from: mapping.page + offset, byteCount: buffer.count)
        try unmapGrant(mapping.handle, by: mapper)
        state.withLock { $0.copies += 1 }
    }

    /// Copies local bytes into a granted page (the grant must be writable).
    public func copyGrant(_ bytes: UnsafeRawBufferPointer, to ref: GrantRef, of granter: DomainID, by mapper: DomainID, offset: Int) throws(GrantStatus) {
        guard offset >= 0, offset + bytes.count <= XenPage.size else { throw .badCopyArg }
        let mapping = try mapGrant(ref, of: granter, by: mapper, writable: true)
        if let source = bytes.baseAddress { (mapping.page + offset).copyMemory(from: source, byteCount: bytes.count) }
        try unmapGrant(mapping.handle, by: mapper)
        state.withLock { $0.copies += 1 }
    }

    /// One copy of a batch (`gnttab_copy_t`): `length` bytes between `local` memory and
    /// `offset` of the granted page `ref`; `status` is filled in per copy.
    public struct GrantCopy {
        public var ref: GrantRef
        public var offset: Int
        public var length: Int
        public var local: UnsafeMutableRawPointer
        /// Into the granted page (it must be writable), or out of it.
        public var toGrant: Bool
        public var status: GrantStatus = .okay

        public init(ref: GrantRef, offset: Int, length: Int, local: UnsafeMutableRawPointer, toGrant: Bool) {
            self.ref = ref
            self.offset = offset
            self.length = length
            self.local = local
            self.toGrant = toGrant
        }
    }

    /// A batch of copies with one domain's grants (`GNTTABOP_copy` with several entries), under
    /// one acquisition of the books: each entry is checked as a map would be (permit-access to
    /// `mapper`, writable for a copy into it, the frame inside the granter's memory, the range
    /// inside the page), pinned for the copy and unpinned after; a failed copy sets its
    /// `status` and the others go on. The hot path of netback.
    public func copyGrants(_ copies: UnsafeMutableBufferPointer<GrantCopy>, of granter: DomainID, by mapper: DomainID) {
        state.withLock { s in
            guard let domain = s.domains[granter] else {
                for i in copies.indices { copies[i].status = .badDomain }
                return
            }
            for i in copies.indices {
                copies[i].status = s.grants.copy(copies[i], of: domain, by: mapper)
            }
            s.copies += copies.count
        }
    }

    // MARK: Event channels

    /// `EVTCHNOP_alloc_unbound` for `domain`, to be bound by `remote`.
    public func allocUnbound(_ domain: DomainID, remote: DomainID) throws(EventChannelError) -> (port: EventChannelPort, end: EventChannelPortEnd) {
        try state.withLock { s throws(EventChannelError) in try s.events.allocUnbound(domain, remote: remote) }
    }

    /// `EVTCHNOP_bind_interdomain` for `domain` to `remote`'s unbound port.
    public func bindInterdomain(_ domain: DomainID, remote: DomainID, remotePort: EventChannelPort) throws(EventChannelError) -> (
        port: EventChannelPort, end: EventChannelPortEnd
    ) {
        try state.withLock { s throws(EventChannelError) in try s.events.bindInterdomain(domain, remote: remote, remotePort: remotePort) }
    }

    /// `EVTCHNOP_close`.
    public func closePort(_ domain: DomainID, _ port: EventChannelPort) throws(EventChannelError) {
        try state.withLock { s throws(EventChannelError) in try s.events.close(domain, port) }
    }

    /// `EVTCHNOP_send` from `domain`'s `port` to its peer; counted.
    public func notify(_ domain: DomainID, _ port: EventChannelPort) throws(EventChannelError) {
        let end = try state.withLock { s throws(EventChannelError) in
            let end = try s.events.port(domain, port)
            guard case .interdomain = end.state else { throw EventChannelError.invalidPort(domain, port) }
            s.events.countSend(domain, port)
            return end
        }
        do { try end.peer.notify() } catch { throw .system("\(error)") }
    }

    /// Masks or unmasks a port; unmasking answers whether an event is pending (the receiver
    /// must then look at its rings again).
    @discardableResult
    public func setMasked(_ domain: DomainID, _ port: EventChannelPort, _ masked: Bool) throws(EventChannelError) -> Bool {
        let end = try state.withLock { s throws(EventChannelError) in
            try s.events.setMasked(domain, port, masked)
            return try s.events.port(domain, port)
        }
        return !masked && end.delivery.isPending
    }

    /// A port of a domain, as it is now.
    public func port(_ domain: DomainID, _ port: EventChannelPort) throws(EventChannelError) -> EventChannelPortEnd {
        try state.withLock { s throws(EventChannelError) in try s.events.port(domain, port) }
    }

    // MARK: Status

    /// Counters for `pvhost status` and benchmarks.
    public struct Status: Sendable {
        public var domains: [(id: DomainID, name: String, pages: Int, ports: Int)]
        public var grantsMapped: Int
        public var mapsTotal: Int
        public var copiesTotal: Int
        public var notificationsSent: Int
    }

    public var status: Status {
        state.withLock { s in
            Status(
                domains: s.domains.values.sorted { $0.id < $1.id }.map { ($0.id, $0.name, $0.pageCount, s.events.count($0.id)) },
                grantsMapped: s.grants.count, mapsTotal: s.maps, copiesTotal: s.copies,
                notificationsSent: s.events.ports.values.flatMap(\.values).reduce(0) { $0 + $1.sent })
        }
    }
}
