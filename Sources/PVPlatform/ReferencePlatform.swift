import Foundation
import PVHostProtocol
import PVSystem
import Synchronization
import XenABI
import XenGrants
import XenStore

/// A guest of pvhost: attaching over the control socket makes this process a domain. Its
/// memory and grant table arrive as memfds and are mapped here (pvhost maps the same ones);
/// grants are written into the shared table with Xen's v1 protocol; event channels are
/// eventfds pvhost hands over; xenstore is the ring page in this domain's memory. The control
/// socket carries only the attach and event-channel "hypercalls".
public final class ReferencePlatform: PVPlatform, @unchecked Sendable {  // @unchecked: the socket under `controlLock`; the rest Locked or immutable
    public let domain: DomainID
    public let info: AttachedDomain
    public let memory: SharedMemoryRegion
    public let grantFrames: SharedMemoryRegion
    public let grants: SharedGrantTable
    private let control: SeqpacketSocket
    private let controlLock = NSLock()
    private let storeDelivery: EventFD
    private let storePeer: EventFD
    /// The xenstore connections handed out: ended when pvhost goes away.
    private let transports = Transports()
    /// Watches the control socket for pvhost hanging up.
    private let watchdog = HangUpWatch()
    private final class HangUpWatch: Sendable {
        let registration = Locked<EventLoop.Registration?>(nil)
    }
    /// The client on the xenstore ring while someone holds it.
    private let sharedStore = Locked(WeakClient())
    private struct WeakClient { weak var client: XenStoreClient? }

    /// Weak references to this domain's xenstore transports.
    private final class Transports: Sendable {
        struct WeakTransport { weak var transport: XenStoreRingTransport? }
        private let state = Locked<(list: [WeakTransport], hungUp: Bool)>(([], false))

        func add(_ transport: XenStoreRingTransport) {
            let dead = state.withLock { state -> Bool in
                state.list.removeAll { $0.transport == nil }
                state.list.append(WeakTransport(transport: transport))
                return state.hungUp
            }
            if dead { transport.shutdown() }
        }

        func hangUp() {
            let live = state.withLock { state -> [XenStoreRingTransport] in
                state.hungUp = true
                return state.list.compactMap(\.transport)
            }
            for transport in live { transport.shutdown() }
        }
    }

    private struct Allocation {
        var freeFrames: [Int]
        var freeRefs: [UInt32]
    }
    private let allocation: Locked<Allocation>

    /// Attaches to pvhost at `socket` as a new domain called `name`.
    public static func attach(socket: String, name: String, pages: Int? = nil) throws(PlatformError) -> ReferencePlatform {
        let control: SeqpacketSocket
        do { control = try SeqpacketSocket.connect(to: socket) } catch { throw .connection("\(error)") }
        let (reply, descriptors) = try exchange(control, .attach(name: name, pages: pages))
        guard case let .attached(info) = reply, descriptors.count == 4 else {
            closeReceivedDescriptors(descriptors)
            if case let .error(why) = reply { throw .refused(why) }
            throw .connection("unexpected reply to attach")
        }
        do {
            let memory = try SharedMemoryRegion(mapping: descriptors[0], byteCount: info.pages * XenPage.size)
            let grantFrames = try SharedMemoryRegion(mapping: descriptors[1], byteCount: info.grantFrames * XenPage.size)
            return ReferencePlatform(
                control: control, info: info, memory: memory, grantFrames: grantFrames,
                storeDelivery: EventFD(adopting: descriptors[2]), storePeer: EventFD(adopting: descriptors[3]))
        } catch {
            throw .connection("mapping the domain's memory: \(error)")
        }
    }

    private init(
        control: SeqpacketSocket, info: AttachedDomain, memory: SharedMemoryRegion, grantFrames: SharedMemoryRegion,
        storeDelivery: EventFD, storePeer: EventFD
    ) {
        self.control = control
        self.info = info
        domain = DomainID(info.domid)
        self.memory = memory
        self.grantFrames = grantFrames
        grants = SharedGrantTable(base: grantFrames.baseAddress, frames: info.grantFrames)
        self.storeDelivery = storeDelivery
        self.storePeer = storePeer
        let frames = (0..<info.pages).filter { $0 != info.storeFrame }
        let refs = (UInt32(GrantTable.reservedEntries)..<UInt32(grants.count))
        allocation = Locked(Allocation(freeFrames: frames.reversed(), freeRefs: refs.reversed()))
        // pvhost gone (its end of the control socket hung up): this domain is dead, so its
        // xenstore connections end instead of waiting forever. Watched on an event loop for
        // the hang-up alone (requests and replies are read by the caller of each hypercall).
        let transports = self.transports, watch = watchdog
        do {
            let registration = try EventLoopGroup.shared.next().register(
                control.fileDescriptor, events: .peerClosed,
                name: "pvhost control socket (hang-up)", owner: control
            ) { _ in
                transports.hangUp()
                watch.registration.withLock { $0 }?.cancel()  // once: the hang-up stays readable
                return .wait
            }
            watch.registration.withLock { $0 = registration }
        } catch {
            // Without the watch a dead pvhost is found by the xenstore ring going quiet, not at once.
            watchdogError = error
        }
    }

    /// Why pvhost's hang-up is not watched (the event loop refused the descriptor), if so.
    public private(set) var watchdogError: SystemError?

    deinit { watchdog.registration.withLock { $0 }?.cancel() }

    private static func exchange(_ control: SeqpacketSocket, _ request: ControlRequest) throws(PlatformError) -> (ControlReply, [Int32]) {
        do {
            try control.send(ControlCoding.encode(request))
            guard let (bytes, descriptors) = try control.receive() else { throw PlatformError.connection("pvhost closed the control socket") }
            guard let reply = ControlCoding.decode(ControlReply.self, bytes) else {
                closeReceivedDescriptors(descriptors)
                throw PlatformError.connection("malformed reply")
            }
            return (reply, descriptors)
        } catch let error as PlatformError {
            throw error
        } catch {
            throw .connection("\(error)")
        }
    }

    private func call(_ request: ControlRequest) throws(PlatformError) -> (ControlReply, [Int32]) {
        controlLock.lock()
        defer { controlLock.unlock() }
        return try Self.exchange(control, request)
    }

    // MARK: PVPlatform

    public func grantPage(to peer: DomainID, readOnly: Bool) throws(PlatformError) -> SharedPage {
        let taken: (Int, UInt32)? = allocation.withLock { a in
            guard let frame = a.freeFrames.popLast() else { return nil }
            guard let ref = a.freeRefs.popLast() else { a.freeFrames.append(frame); return nil }
            return (frame, ref)
        }
        guard let (frame, ref) = taken else { throw .exhausted("pages or grant references") }
        let address = memory.baseAddress + frame * XenPage.size
        address.initializeMemory(as: UInt8.self, repeating: 0, count: XenPage.size)  // never leak old data
        grants.grant(GrantRef(ref), to: peer, frame: UInt32(frame), readOnly: readOnly)
        return SharedPage(ref: GrantRef(ref), frame: frame, address: address)
    }

    public func grantPages(_ count: Int, to peer: DomainID, readOnly: Bool) throws(PlatformError) -> SharedPages {
        precondition(count > 0, "at least one page")
        var pages: [SharedPage] = []
        do throws(PlatformError) {
            for _ in 0..<count { pages.append(try grantPage(to: peer, readOnly: readOnly)) }
            if count == 1 { return SharedPages(pages: pages, address: pages[0].address, view: nil) }
            let view: PageAlias
            do { view = try memory.alias(pages: pages.map(\.frame)) } catch { throw PlatformError.exhausted("address space for \(count) pages: \(error)") }
            return SharedPages(pages: pages, address: view.address, view: view)
        } catch {
            for page in pages { _ = revoke(page) }
            throw error
        }
    }

    public var availablePages: Int { allocation.withLock { min($0.freeFrames.count, $0.freeRefs.count) } }

    public func revoke(_ page: SharedPage) -> Bool {
        guard grants.revoke(page.ref) else { return false }
        allocation.withLock { a in
            a.freeFrames.append(page.frame)
            a.freeRefs.append(page.ref.rawValue)
        }
        return true
    }

    private func channel(_ reply: ControlReply, _ descriptors: [Int32]) throws(PlatformError) -> EventChannel {
        guard case let .port(port) = reply, descriptors.count == 2 else {
            closeReceivedDescriptors(descriptors)
            if case let .error(why) = reply { throw .refused(why) }
            throw .connection("unexpected reply")
        }
        return EventChannel(port: EventChannelPort(port), delivery: EventFD(adopting: descriptors[0]), peer: EventFD(adopting: descriptors[1])) {
            [weak self] port in
            _ = try? self?.call(.closePort(port.rawValue))
        }
    }

    public func allocateUnboundPort(remote: DomainID) throws(PlatformError) -> EventChannel {
        let (reply, descriptors) = try call(.allocUnbound(remote: remote.rawValue))
        return try channel(reply, descriptors)
    }

    public func bindInterdomain(remote: DomainID, port: EventChannelPort) throws(PlatformError) -> EventChannel {
        let (reply, descriptors) = try call(.bindInterdomain(remote: remote.rawValue, port: port.rawValue))
        return try channel(reply, descriptors)
    }

    /// The domain has one xenstore ring, so callers share one client while any of them holds
    /// it (two clients on one ring would take each other's replies); closing it closes it for
    /// all. A new one is made once every holder let go.
    public func xenstore() throws(PlatformError) -> XenStoreClient {
        try sharedStore.withLock { (shared) throws(PlatformError) -> XenStoreClient in
            if let client = shared.client { return client }
            let page = memory.baseAddress + info.storeFrame * XenPage.size
            let transport = XenStoreRingTransport(
                page: page, incoming: storeDelivery, outgoing: storePeer,
                name: "domain \(domain.rawValue)'s xenstore ring", keepAlive: memory)
            transports.add(transport)
            let client = XenStoreClient(transport: transport)
            shared.client = client
            return client
        }
    }

    // MARK: Backend hypercalls (a guest that serves other guests)

    /// Another domain's granted page, mapped here. Unmap it with ``unmapGrant(_:)``.
    public struct MappedGrant: Sendable {
        public let handle: UInt32
        public let frame: UInt32
        /// The page (4 KiB), shared with the granting domain; its mapper owns the bytes.
        public var address: UnsafeMutableRawPointer { location.pointer }
        private let location: MemoryAddress

        init(handle: UInt32, frame: UInt32, address: UnsafeMutableRawPointer) {
            self.handle = handle
            self.frame = frame
            location = MemoryAddress(address)
        }
    }

    /// Why a grant operation was refused: Xen's status.
    public struct GrantRefused: Error, Equatable, CustomStringConvertible {
        public let status: GrantStatus
        public init(status: GrantStatus) { self.status = status }
        public var description: String { "grant operation refused: \(status) (GNTST \(status.rawValue))" }
    }

    /// `GNTTABOP_map_grant_ref`: maps `granter`'s `ref` (pvhost checks the grant names this
    /// domain, is writable if asked, and pins it).
    public func mapGrant(from granter: DomainID, ref: GrantRef, writable: Bool) throws -> MappedGrant {
        let (reply, descriptors) = try call(.mapGrant(granter: granter.rawValue, ref: ref.rawValue, writable: writable))
        defer { closeReceivedDescriptors(descriptors) }
        switch reply {
        case let .mapped(handle, frame) where descriptors.count == 1:
            do {
                let address = try Memory.map(
                    descriptors[0], offset: UInt64(frame) * UInt64(XenPage.size), byteCount: XenPage.size, writable: writable,
                    context: "grant \(ref.rawValue) of domain \(granter.rawValue)")
                return MappedGrant(handle: handle, frame: frame, address: address)
            } catch {
                _ = try? call(.unmapGrant(handle: handle))  // the mapping failed: its pin goes too (the error thrown is the map's)
                throw PlatformError.system(error)
            }
        case let .grantStatus(value, _):
            throw GrantRefused(status: GrantStatus(rawValue: value) ?? .generalError)
        case let .error(why):
            throw PlatformError.refused(why)
        default:
            throw PlatformError.connection("unexpected reply to map")
        }
    }

    /// `GNTTABOP_unmap_grant_ref`: unmaps the page here, then lets pvhost unpin it.
    public func unmapGrant(_ mapping: MappedGrant) throws {
        Memory.unmap(mapping.address, byteCount: XenPage.size)
        let (reply, descriptors) = try call(.unmapGrant(handle: mapping.handle))
        closeReceivedDescriptors(descriptors)
        if case let .grantStatus(value, _) = reply { throw GrantRefused(status: GrantStatus(rawValue: value) ?? .generalError) }
    }

    /// `GNTTABOP_copy`: pvhost copies between `granter`'s grant and this domain's `frame`.
    public func copyGrant(from granter: DomainID, ref: GrantRef, offset: Int, toFrame frame: Int, frameOffset: Int, length: Int, toGrant: Bool = false) throws {
        let (reply, descriptors) = try call(
            .copyGrant(
                granter: granter.rawValue, ref: ref.rawValue, offset: offset, localFrame: frame,
                localOffset: frameOffset, length: length, toGrant: toGrant))
        closeReceivedDescriptors(descriptors)
        switch reply {
        case .ok: return
        case let .grantStatus(value, _): throw GrantRefused(status: GrantStatus(rawValue: value) ?? .generalError)
        case let .error(why): throw PlatformError.refused(why)
        default: throw PlatformError.connection("unexpected reply to copy")
        }
    }

    /// A page of this domain's own memory (for copies), not granted to anyone.
    public func ownPage(_ frame: Int) -> UnsafeMutableRawPointer { memory.baseAddress + frame * XenPage.size }

    /// This domain's start info, asked again.
    public func domainInfo() throws(PlatformError) -> AttachedDomain {
        let (reply, descriptors) = try call(.domainInfo)
        closeReceivedDescriptors(descriptors)
        guard case let .attached(info) = reply else { throw .connection("unexpected reply to domain info") }
        return info
    }

    /// pvhost's state (any connection may ask).
    /// A tool's one request to pvhost (no domain attached): `.ok`, or the refusal as an error.
    public static func request(socket: String, _ request: ControlRequest) throws(PlatformError) {
        let control: SeqpacketSocket
        do { control = try SeqpacketSocket.connect(to: socket) } catch { throw .connection("\(error)") }
        let (reply, descriptors) = try exchange(control, request)
        closeReceivedDescriptors(descriptors)
        if case let .error(why) = reply { throw .refused(why) }
        guard case .ok = reply else { throw .connection("unexpected reply to \(request)") }
    }

    public static func status(socket: String) throws(PlatformError) -> HostStatus {
        let control: SeqpacketSocket
        do { control = try SeqpacketSocket.connect(to: socket) } catch { throw .connection("\(error)") }
        let (reply, descriptors) = try exchange(control, .status)
        closeReceivedDescriptors(descriptors)
        guard case let .status(status) = reply else { throw .connection("unexpected reply to status") }
        return status
    }
}
