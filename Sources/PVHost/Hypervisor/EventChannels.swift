import PVSystem
import XenABI

/// One interdomain event channel: a notification path each way, each an eventfd. The end in
/// domain A waits on `toA` and notifies `toB`; the other end the reverse. Several notifications
/// before the receiver looks coalesce, like Xen's pending bit.
public final class EventChannelPair: Sendable {
    public let toA: EventFD
    public let toB: EventFD
    init() throws(SystemError) {
        toA = try EventFD()
        toB = try EventFD()
    }
}

/// What one domain's port is.
public enum EventChannelPortState: Sendable {
    /// Allocated for `remote` to bind (`EVTCHNOP_alloc_unbound`).
    case unbound(remote: DomainID)
    /// Connected to `remote`'s `remotePort`.
    case interdomain(remote: DomainID, remotePort: EventChannelPort)
}

/// One port of a domain: its state, its channel and which side of it this port is.
public struct EventChannelPortEnd: Sendable {
    public var state: EventChannelPortState
    public let channel: EventChannelPair
    /// Side A of the channel (the allocating side) or B (the binding side).
    public let isSideA: Bool
    public var masked = false
    /// Notifications sent from this port (counted by the hypervisor for in-process users).
    public var sent = 0

    /// Waited on by the port's owner.
    public var delivery: EventFD { isSideA ? channel.toA : channel.toB }
    /// Written to notify the other end.
    public var peer: EventFD { isSideA ? channel.toB : channel.toA }
}

/// Why an event-channel operation failed (Xen answers these with -EINVAL, -ENOSPC, …).
public enum EventChannelError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The port is not allocated in that domain (or belongs to another). Xen: -EINVAL.
    case invalidPort(DomainID, EventChannelPort)
    /// The remote port is not unbound for this domain. Xen: -EINVAL.
    case notBindable(DomainID, EventChannelPort)
    /// The domain has no free port left (`max_event_channels`). Xen: -ENOSPC.
    case noFreePort(DomainID)
    /// No such domain. Xen: -ESRCH.
    case noDomain(DomainID)
    case system(String)

    public var description: String {
        switch self {
        case let .invalidPort(d, p): "domain \(d.rawValue) has no port \(p.rawValue)"
        case let .notBindable(d, p): "port \(p.rawValue) of domain \(d.rawValue) is not unbound for this domain"
        case let .noFreePort(d): "domain \(d.rawValue) has used all its event channels"
        case let .noDomain(d): "no domain \(d.rawValue)"
        case let .system(what): what
        }
    }
}

/// Every domain's ports, sans locking (the ``Hypervisor`` holds the lock).
struct EventChannelTable {
    private(set) var ports: [DomainID: [UInt32: EventChannelPortEnd]] = [:]
    private var limits: [DomainID: Int] = [:]

    mutating func addDomain(_ domain: DomainID, limit: Int) {
        ports[domain] = [:]
        limits[domain] = limit
    }

    /// Ports in use by a domain.
    func count(_ domain: DomainID) -> Int { ports[domain]?.count ?? 0 }

    func port(_ domain: DomainID, _ port: EventChannelPort) throws(EventChannelError) -> EventChannelPortEnd {
        guard let table = ports[domain] else { throw .noDomain(domain) }
        guard let end = table[port.rawValue] else { throw .invalidPort(domain, port) }
        return end
    }

    private func freePort(_ domain: DomainID) throws(EventChannelError) -> UInt32 {
        guard let table = ports[domain], let limit = limits[domain] else { throw .noDomain(domain) }
        // Port 0 is never valid in Xen.
        for candidate in 1...UInt32(max(limit, 1)) where table[candidate] == nil { return candidate }
        throw .noFreePort(domain)
    }

    /// `EVTCHNOP_alloc_unbound`: a new port of `domain` that `remote` may bind.
    mutating func allocUnbound(_ domain: DomainID, remote: DomainID) throws(EventChannelError) -> (EventChannelPort, EventChannelPortEnd) {
        guard ports[remote] != nil else { throw .noDomain(remote) }
        let number = try freePort(domain)
        let channel: EventChannelPair
        do { channel = try EventChannelPair() } catch { throw .system("\(error)") }
        let end = EventChannelPortEnd(state: .unbound(remote: remote), channel: channel, isSideA: true)
        ports[domain]![number] = end
        return (EventChannelPort(number), end)
    }

    /// `EVTCHNOP_bind_interdomain`: connects a new port of `domain` to `remote`'s unbound
    /// `remotePort`, which must have been allocated for `domain`.
    mutating func bindInterdomain(_ domain: DomainID, remote: DomainID, remotePort: EventChannelPort) throws(EventChannelError) -> (
        EventChannelPort, EventChannelPortEnd
    ) {
        guard ports[domain] != nil else { throw .noDomain(domain) }
        let target = try port(remote, remotePort)
        guard case let .unbound(allowed) = target.state, allowed == domain else { throw .notBindable(remote, remotePort) }
        let number = try freePort(domain)
        let end = EventChannelPortEnd(state: .interdomain(remote: remote, remotePort: remotePort), channel: target.channel, isSideA: !target.isSideA)
        ports[domain]![number] = end
        ports[remote]![remotePort.rawValue]!.state = .interdomain(remote: domain, remotePort: EventChannelPort(number))
        return (EventChannelPort(number), end)
    }

    /// `EVTCHNOP_close`: the port goes; a connected peer's port becomes unbound (for this
    /// domain to bind again), as in Xen.
    mutating func close(_ domain: DomainID, _ port: EventChannelPort) throws(EventChannelError) {
        let end = try self.port(domain, port)
        ports[domain]![port.rawValue] = nil
        if case let .interdomain(remote, remotePort) = end.state, ports[remote]?[remotePort.rawValue] != nil {
            ports[remote]![remotePort.rawValue]!.state = .unbound(remote: domain)
        }
    }

    /// Closes every port of a dying domain and forgets it.
    mutating func removeDomain(_ domain: DomainID) {
        for number in ports[domain]?.keys.sorted() ?? [] { try? close(domain, EventChannelPort(number)) }
        ports[domain] = nil
        limits[domain] = nil
    }

    mutating func setMasked(_ domain: DomainID, _ port: EventChannelPort, _ masked: Bool) throws(EventChannelError) {
        _ = try self.port(domain, port)
        ports[domain]![port.rawValue]!.masked = masked
    }

    mutating func countSend(_ domain: DomainID, _ port: EventChannelPort) { ports[domain]?[port.rawValue]?.sent += 1 }
}
