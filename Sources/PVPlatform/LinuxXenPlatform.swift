import PVSystem
import Synchronization
import XenABI
import XenStore

/// The platform of a process in a real Linux Xen domain (a guest or dom0): pages granted
/// through `/dev/xen/gntalloc` (allocated zeroed, mapped, deallocated — the kernel keeps a page
/// until the peer unmapped it, Xen's try semantics done for us), event channels through
/// `/dev/xen/evtchn` (one descriptor per port), XenStore through `/dev/xen/xenbus`, and the
/// domain id read from XenStore. The same frontends run on it unchanged.
public final class LinuxXenPlatform: PVPlatform, Sendable {
    public let domain: DomainID
    private let gntalloc: GrantAllocDevice
    private let store: XenStoreClient
    /// Pages granted and not yet released.
    private let granted = Locked(0)
    /// gntalloc's default limit per process (its `limit` module parameter).
    public static let defaultGrantLimit = 1024

    /// Opens the devices (root, in a Xen domain with the xen-gntalloc and xen-evtchn drivers)
    /// and reads this domain's id.
    public static func open() async throws(PlatformError) -> LinuxXenPlatform {
        let gntalloc: GrantAllocDevice
        do { gntalloc = try GrantAllocDevice() } catch {
            throw .connection("\(error) (a Xen domain with the xen-gntalloc driver, as root)")
        }
        let store: XenStoreClient
        do { store = try XenStoreClient.connect(XenStoreLocation(environment: ["XENSTORED_PATH": "/dev/xen/xenbus"])) } catch {
            throw .connection("/dev/xen/xenbus: \(error)")
        }
        let text: String
        do { text = try await store.readString("domid") } catch {
            throw .connection("reading domid: \(error)")
        }
        guard let id = UInt16(text) else { throw .connection("domid = \"\(text)\"") }
        return LinuxXenPlatform(domain: DomainID(id), gntalloc: gntalloc, store: store)
    }

    private init(domain: DomainID, gntalloc: GrantAllocDevice, store: XenStoreClient) {
        self.domain = domain
        self.gntalloc = gntalloc
        self.store = store
    }

    // MARK: Grants

    public func grantPage(to peer: DomainID, readOnly: Bool) throws(PlatformError) -> SharedPage {
        try grantPages(1, to: peer, readOnly: readOnly).pages[0]
    }

    public func grantPages(_ count: Int, to peer: DomainID, readOnly: Bool) throws(PlatformError) -> SharedPages {
        guard count > 0 else { throw .exhausted("pages (asked for \(count))") }
        let index: UInt64, refs: [UInt32]
        do { (index, refs) = try gntalloc.allocate(count: count, to: peer.rawValue, writable: !readOnly) } catch {
            throw error.errno == .noSpace || error.errno == .noMemory ? .exhausted("grant pages (\(error))") : .refused("\(error)")
        }
        let address: UnsafeMutableRawPointer
        do { address = try gntalloc.map(index: index, count: count) } catch {
            try? gntalloc.deallocate(index: index, count: count)
            throw .refused("mapping granted pages: \(error)")
        }
        granted.withLock { $0 += count }
        // A page's "frame" is its gntalloc index in pages: what releases it alone later.
        let pages = refs.enumerated().map { n, ref in
            SharedPage(ref: GrantRef(ref), frame: Int(index / UInt64(XenPage.size)) + n, address: address + n * XenPage.size)
        }
        return SharedPages(pages: pages, address: address, view: nil)
    }

    /// What is left under gntalloc's default limit.
    public var availablePages: Int { Self.defaultGrantLimit - granted.withLock { $0 } }

    /// Ends this process's hold on the page (deallocated and unmapped alone, even from a
    /// multi-page allocation): the kernel revokes the grant and frees the page once the peer
    /// has unmapped it — until then it stays allocated in the kernel and is never reused, Xen's
    /// try semantics done for us — so from here the answer is always yes (a refused
    /// deallocation leaves the page allocated, which is also safe).
    public func revoke(_ page: SharedPage) -> Bool {
        do { try gntalloc.deallocate(index: UInt64(page.frame) * UInt64(XenPage.size), count: 1) } catch {
            deallocationFailures.withLock { $0 = ($0.count + 1, error) }
        }
        Memory.unmap(page.address, byteCount: XenPage.size)
        granted.withLock { $0 -= 1 }
        return true
    }

    /// Deallocations gntalloc refused (the page then stays allocated), and the last error.
    public let deallocationFailures = Locked<(count: Int, last: SystemError?)>((0, nil))

    // MARK: Event channels

    private func channel(_ bind: (XenEventDevice) throws(SystemError) -> UInt32) throws(PlatformError) -> EventChannel {
        let device: XenEventDevice
        do { device = try XenEventDevice() } catch { throw .connection("\(error)") }
        let port: UInt32
        do { port = try bind(device) } catch { throw .refused("event channel: \(error)") }
        return EventChannel(port: EventChannelPort(port), xenEventDevice: device) { port in
            // Closing the descriptor unbinds too; an explicit unbind that fails changes nothing.
            try? device.unbind(port.rawValue)
        }
    }

    public func allocateUnboundPort(remote: DomainID) throws(PlatformError) -> EventChannel {
        try channel { (device) throws(SystemError) in try device.bindUnboundPort(remoteDomain: remote.rawValue) }
    }

    /// Binds `remote`'s port. Xen leaves one event pending on a newly bound port; it is
    /// consumed (and the port unmasked) here, so the first wake-up is a real one.
    public func bindInterdomain(remote: DomainID, port: EventChannelPort) throws(PlatformError) -> EventChannel {
        let channel = try channel { (device) throws(SystemError) in try device.bindInterdomain(remoteDomain: remote.rawValue, remotePort: port.rawValue) }
        channel.acknowledge()
        return channel
    }

    public func xenstore() throws(PlatformError) -> XenStoreClient { store }
}
