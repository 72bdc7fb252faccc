import SharedMemory
import XenABI
import XenStore

/// What a frontend needs from "the hypervisor", and nothing more: its domain id, pages of its
/// own memory it can share, grants on them (revoked with Xen's try semantics), event channels,
/// and its xenstore connection. ``ReferencePlatform`` is a guest of pvhost; a Linux Xen guest
/// implementation (`/dev/xen/gntalloc`, `/dev/xen/evtchn`, `/dev/xen/xenbus`) fits the same
/// shape: pages come with their grant there, hence ``SharedPage``.
public protocol PVPlatform: Sendable {
    /// This domain.
    var domain: DomainID { get }
    /// A zeroed page of this domain's memory, granted to `peer`.
    func grantPage(to peer: DomainID, readOnly: Bool) throws(PlatformError) -> SharedPage
    /// `count` zeroed pages granted to `peer`, also mapped side by side here (a multi-page
    /// ring: `ring-ref0…`). Revoke them page by page.
    func grantPages(_ count: Int, to peer: DomainID, readOnly: Bool) throws(PlatformError) -> SharedPages
    /// Pages this domain could still grant now (memory and grant references both free).
    var availablePages: Int { get }
    /// Ends the peer's access and frees the page; false while the peer still has it mapped
    /// (the page then stays allocated; try again later).
    func revoke(_ page: SharedPage) -> Bool
    /// A new port that `remote` may bind (`alloc_unbound`).
    func allocateUnboundPort(remote: DomainID) throws(PlatformError) -> EventChannel
    /// Binds to `remote`'s unbound `port` (`bind_interdomain`).
    func bindInterdomain(remote: DomainID, port: EventChannelPort) throws(PlatformError) -> EventChannel
    /// A client on this domain's xenstore connection.
    func xenstore() throws(PlatformError) -> XenStoreClient
}

/// A page of this domain's memory shared with a peer through a grant.
public struct SharedPage: @unchecked Sendable, Equatable {
    /// The grant the peer maps.
    public let ref: GrantRef
    /// Its frame in this domain's memory.
    public let frame: Int
    /// The page, 4 KiB.
    public let address: UnsafeMutableRawPointer

    public static func == (a: SharedPage, b: SharedPage) -> Bool { a.ref == b.ref && a.frame == b.frame }
}

/// Granted pages mapped contiguously here (see ``PVPlatform/grantPages(_:to:readOnly:)``).
public struct SharedPages: @unchecked Sendable {
    /// Each page and its grant, in order.
    public let pages: [SharedPage]
    /// All of them, side by side (`pages.count` × 4 KiB).
    public let address: UnsafeMutableRawPointer
    /// Keeps the contiguous view mapped.
    let view: AnyObject?

    public init(pages: [SharedPage], address: UnsafeMutableRawPointer, view: AnyObject?) {
        self.pages = pages
        self.address = address
        self.view = view
    }
}

/// Why the platform could not do something.
public enum PlatformError: Error, Equatable, Sendable, CustomStringConvertible {
    /// No free grant reference or page left.
    case exhausted(String)
    /// pvhost refused (its message says why).
    case refused(String)
    /// The control connection failed.
    case connection(String)

    public var description: String {
        switch self {
        case let .exhausted(what): "out of \(what)"
        case let .refused(why): "pvhost refused: \(why)"
        case let .connection(why): "pvhost control connection: \(why)"
        }
    }
}

/// One end of an event channel: notify the peer, wait for it. Notifications before a wait
/// coalesce into one wake-up (the pending bit). Counts what it sent and received.
public final class EventChannel: @unchecked Sendable {
    public let port: EventChannelPort
    /// Waited on: the peer's notifications.
    public let delivery: EventFD
    /// Written: our notifications.
    public let peer: EventFD
    private let counters = Counters()
    private let closer: (@Sendable (EventChannelPort) -> Void)?

    public init(port: EventChannelPort, delivery: EventFD, peer: EventFD, closer: (@Sendable (EventChannelPort) -> Void)? = nil) {
        self.port = port
        self.delivery = delivery
        self.peer = peer
        self.closer = closer
    }

    /// `EVTCHNOP_send`.
    public func notify() {
        try? peer.notify()
        counters.sent.wrappingIncrement(ordering: .relaxed)
    }

    /// Waits (off the cooperative pool) until the peer notified at least once since the last
    /// wait; returns how many notifications that was.
    @discardableResult
    public func wait() async -> UInt64 {
        let delivery = self.delivery
        let count: UInt64 = await withCheckedContinuation { continuation in
            Thread { continuation.resume(returning: (try? delivery.wait()) ?? 0) }.start()
        }
        counters.received.wrappingIncrement(ordering: .relaxed)
        return count
    }

    /// Whether a notification is waiting.
    public var isPending: Bool { delivery.isPendingNotification }

    public var notificationsSent: Int { counters.sent.load(ordering: .relaxed) }
    public var wakeups: Int { counters.received.load(ordering: .relaxed) }

    /// `EVTCHNOP_close`.
    public func close() { closer?(port) }
}

import Atomics
import Foundation

final class Counters: Sendable {
    let sent = ManagedAtomic<Int>(0)
    let received = ManagedAtomic<Int>(0)
}

#if canImport(Glibc)
import Glibc
#endif

extension EventFD {
    /// Whether the count is non-zero now, without consuming it.
    var isPendingNotification: Bool {
        var entry = pollfd(fd: fileDescriptor, events: Int16(POLLIN), revents: 0)
        return poll(&entry, 1, 0) == 1
    }
}
