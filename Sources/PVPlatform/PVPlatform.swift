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
public struct SharedPage: Sendable, Equatable {
    /// The grant the peer maps.
    public let ref: GrantRef
    /// Its frame in this domain's memory.
    public let frame: Int
    /// The page, 4 KiB; its user owns the bytes, the peer reads or writes them while granted.
    public var address: UnsafeMutableRawPointer { location.pointer }
    private let location: MemoryAddress

    public init(ref: GrantRef, frame: Int, address: UnsafeMutableRawPointer) {
        self.ref = ref
        self.frame = frame
        location = MemoryAddress(address)
    }

    public static func == (a: SharedPage, b: SharedPage) -> Bool { a.ref == b.ref && a.frame == b.frame }
}

/// Granted pages mapped contiguously here (see ``PVPlatform/grantPages(_:to:readOnly:)``).
public struct SharedPages: Sendable {
    /// Each page and its grant, in order.
    public let pages: [SharedPage]
    /// All of them, side by side (`pages.count` × 4 KiB).
    public var address: UnsafeMutableRawPointer { location.pointer }
    private let location: MemoryAddress
    /// Keeps the contiguous view mapped.
    let view: PageAlias?

    public init(pages: [SharedPage], address: UnsafeMutableRawPointer, view: PageAlias?) {
        self.pages = pages
        location = MemoryAddress(address)
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
    /// A system call failed (mapping a granted page, a device ioctl).
    case system(SystemError)

    public var description: String {
        switch self {
        case let .exhausted(what): "out of \(what)"
        case let .refused(why): "pvhost refused: \(why)"
        case let .connection(why): "pvhost control connection: \(why)"
        case let .system(error): "\(error)"
        }
    }
}

/// One end of an event channel: notify the peer, wait for it. Notifications before a wait
/// coalesce into one wake-up (the pending bit). Counts what it sent and received, and the
/// notifications that could not be sent.
///
/// Two mechanisms underneath: a pair of eventfds (a guest of pvhost), or Linux's
/// `/dev/xen/evtchn` with this one port bound on its own descriptor (a real Xen domain). Either
/// way ``descriptor`` becomes readable when the peer notified; an ``EventLoop`` watches it and
/// ``acknowledge()`` consumes that without blocking (and, on Xen, unmasks the port).
public final class EventChannel: Sendable {
    public let port: EventChannelPort
    private let mechanism: EventChannelMechanism
    private let counters = Counters()
    private let closer: (@Sendable (EventChannelPort) -> Void)?

    /// A channel over two eventfds (pvhost hands them over).
    public init(port: EventChannelPort, delivery: EventFD, peer: EventFD, closer: (@Sendable (EventChannelPort) -> Void)? = nil) {
        self.port = port
        mechanism = .eventfds(delivery: delivery, peer: peer)
        self.closer = closer
    }

    /// A channel bound on its own `/dev/xen/evtchn` descriptor (owned; closed with the channel).
    public init(port: EventChannelPort, xenEventDevice device: XenEventDevice, closer: (@Sendable (EventChannelPort) -> Void)? = nil) {
        self.port = port
        mechanism = .xenDevice(device)
        self.closer = closer
    }

    /// Readable (POLLIN) when the peer notified since the last ``acknowledge()``.
    public var descriptor: Int32 {
        switch mechanism {
        case let .eventfds(delivery, _): delivery.fileDescriptor
        case let .xenDevice(device): device.fileDescriptor
        }
    }

    /// What keeps ``descriptor`` open (for an ``EventLoop`` registration).
    public var descriptorOwner: any Sendable & AnyObject {
        switch mechanism {
        case let .eventfds(delivery, _): delivery
        case let .xenDevice(device): device
        }
    }

    /// `EVTCHNOP_send`. A failure (the descriptor gone under a closing device) is counted in
    /// ``failedNotifications``, with the last error in ``lastNotifyError``.
    public func notify() {
        do throws(SystemError) {
            switch mechanism {
            case let .eventfds(_, peer): try peer.notify()
            case let .xenDevice(device): try device.notify(port.rawValue)
            }
            counters.sent.wrappingIncrement(ordering: .relaxed)
        } catch {
            counters.failed.wrappingIncrement(ordering: .relaxed)
            counters.lastError.withLock { $0 = error }
        }
    }

    /// Consumes what the peer sent, without blocking; on Xen, unmasks the port again.
    /// Returns how many notifications that was (0: none was pending; 1 on Xen: the pending bit).
    @discardableResult
    public func acknowledge() -> UInt64 {
        switch mechanism {
        case let .eventfds(delivery, _): delivery.consume()
        case let .xenDevice(device): device.takePending()
        }
    }

    /// Waits until the peer notified at least once since the last acknowledgement, on an event
    /// loop of `group` (no thread of its own); returns how many notifications that was.
    ///
    /// - Throws: `CancellationError` when the task is cancelled, or the ``SystemError`` of a
    ///   descriptor the loop could not watch.
    @discardableResult
    public func wait(on group: EventLoopGroup = .shared) async throws -> UInt64 {
        while true {
            let count = acknowledge()
            if count > 0 {
                counters.received.wrappingIncrement(ordering: .relaxed)
                return count
            }
            try await group.preferringCurrent().readable(descriptor, name: "event channel port \(port.rawValue)")
        }
    }

    /// Whether a notification is waiting.
    public var isPending: Bool {
        switch mechanism {
        case let .eventfds(delivery, _): delivery.isPending
        case let .xenDevice(device): device.isReadable
        }
    }

    public var notificationsSent: Int { counters.sent.load(ordering: .relaxed) }
    public var wakeups: Int { counters.received.load(ordering: .relaxed) }
    /// Notifications that failed (each a ``SystemError`` kept in ``lastNotifyError``).
    public var failedNotifications: Int { counters.failed.load(ordering: .relaxed) }
    public var lastNotifyError: SystemError? { counters.lastError.withLock { $0 } }

    /// Counts a wake-up seen by whoever watches ``descriptor`` (an event loop's handler).
    public func countWakeup() { counters.received.wrappingIncrement(ordering: .relaxed) }

    /// `EVTCHNOP_close`.
    public func close() { closer?(port) }
}

private enum EventChannelMechanism: Sendable {
    /// Waited on: the peer's notifications; written: ours.
    case eventfds(delivery: EventFD, peer: EventFD)
    /// `/dev/xen/evtchn` with `port` bound.
    case xenDevice(XenEventDevice)
}

import Atomics
import Synchronization

final class Counters: Sendable {
    let sent = ManagedAtomic<Int>(0)
    let received = ManagedAtomic<Int>(0)
    let failed = ManagedAtomic<Int>(0)
    let lastError = Locked<SystemError?>(nil)
}
