import PVSystem
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
///
/// Two mechanisms underneath: a pair of eventfds (a guest of pvhost), or Linux's
/// `/dev/xen/evtchn` with this one port bound on its own descriptor (a real Xen domain). Either
/// way ``descriptor`` becomes readable when the peer notified, and ``acknowledge()`` consumes
/// that (and, on Xen, unmasks the port).
public final class EventChannel: @unchecked Sendable {
    public let port: EventChannelPort
    private enum Mechanism {
        /// Waited on: the peer's notifications; written: ours.
        case eventfds(delivery: EventFD, peer: EventFD)
        /// `/dev/xen/evtchn` with `port` bound.
        case xenDevice(Int32)
    }
    private let mechanism: Mechanism
    private let counters = Counters()
    private let closer: (@Sendable (EventChannelPort) -> Void)?

    /// A channel over two eventfds (pvhost hands them over).
    public init(port: EventChannelPort, delivery: EventFD, peer: EventFD, closer: (@Sendable (EventChannelPort) -> Void)? = nil) {
        self.port = port
        mechanism = .eventfds(delivery: delivery, peer: peer)
        self.closer = closer
    }

    /// A channel bound on its own `/dev/xen/evtchn` descriptor (owned; closed with the channel).
    public init(port: EventChannelPort, xenEventDevice fd: Int32, closer: (@Sendable (EventChannelPort) -> Void)? = nil) {
        self.port = port
        mechanism = .xenDevice(fd)
        self.closer = closer
    }

    deinit {
        if case let .xenDevice(fd) = mechanism { Glibc.close(fd) }
    }

    /// Readable (POLLIN) when the peer notified since the last ``acknowledge()``.
    public var descriptor: Int32 {
        switch mechanism {
        case let .eventfds(delivery, _): delivery.fileDescriptor
        case let .xenDevice(fd): fd
        }
    }

    /// `EVTCHNOP_send`.
    public func notify() {
        switch mechanism {
        case let .eventfds(_, peer): try? peer.notify()
        case let .xenDevice(fd):
            var request = UInt32(port.rawValue)
            _ = ioctl(fd, Self.ioctlNotify, &request)
        }
        counters.sent.wrappingIncrement(ordering: .relaxed)
    }

    /// Consumes what the peer sent (blocking until it did); on Xen, unmasks the port again.
    /// Returns how many notifications that was (1 on Xen: the pending bit).
    @discardableResult
    public func acknowledge() -> UInt64 {
        switch mechanism {
        case let .eventfds(delivery, _):
            return (try? delivery.wait()) ?? 0
        case let .xenDevice(fd):
            var ports = [UInt32](repeating: 0, count: 16)
            let count = ports.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            guard count > 0 else { return 0 }
            _ = ports.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, count) }  // unmask what was pending
            return UInt64(count / 4)
        }
    }

    /// Waits (off the cooperative pool) until the peer notified at least once since the last
    /// wait; returns how many notifications that was.
    @discardableResult
    public func wait() async -> UInt64 {
        let count: UInt64 = await withCheckedContinuation { continuation in
            Thread { [self] in continuation.resume(returning: acknowledge()) }.start()
        }
        counters.received.wrappingIncrement(ordering: .relaxed)
        return count
    }

    /// Whether a notification is waiting.
    public var isPending: Bool {
        var entry = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
        return poll(&entry, 1, 0) == 1
    }

    public var notificationsSent: Int { counters.sent.load(ordering: .relaxed) }
    public var wakeups: Int { counters.received.load(ordering: .relaxed) }

    /// `EVTCHNOP_close`.
    public func close() { closer?(port) }

    /// `IOCTL_EVTCHN_NOTIFY` (xen/evtchn.h: `_IOC(_IOC_NONE, 'E', 4, sizeof(struct ioctl_evtchn_notify))`).
    static let ioctlNotify: UInt = 0x0004_4504
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
