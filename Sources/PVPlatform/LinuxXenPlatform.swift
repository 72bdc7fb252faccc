import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Synchronization
import XenABI
import XenStore

/// The platform of a process in a real Linux Xen domain (a guest or dom0): pages granted
/// through `/dev/xen/gntalloc` (allocated zeroed, mapped, deallocated — the kernel keeps a page
/// until the peer unmapped it, Xen's try semantics done for us), event channels through
/// `/dev/xen/evtchn` (one descriptor per port), XenStore through `/dev/xen/xenbus`, and the
/// domain id read from XenStore. The same frontends run on it unchanged.
public final class LinuxXenPlatform: PVPlatform, @unchecked Sendable {
    public let domain: DomainID
    private let gntalloc: Int32
    private let store: XenStoreClient
    /// Pages granted and not yet released.
    private let granted = Mutex(0)
    /// gntalloc's default limit per process (its `limit` module parameter).
    public static let defaultGrantLimit = 1024

    /// ioctl numbers and layouts of Linux's `xen/gntalloc.h` and `xen/evtchn.h` (checked against
    /// the headers by the ABI tests).
    enum IOCTL {
        static let allocGref: UInt = 0x0018_4705
        static let deallocGref: UInt = 0x0010_4706
        static let bindInterdomain: UInt = 0x0008_4501
        static let bindUnboundPort: UInt = 0x0004_4502
        static let unbind: UInt = 0x0004_4503
        static let notify: UInt = EventChannel.ioctlNotify
        /// `struct ioctl_gntalloc_alloc_gref`: domid u16, flags u16, count u32, index u64,
        /// then gref_ids[count] u32 (the header is the offset of gref_ids).
        static let allocDomid = 0, allocFlags = 2, allocCount = 4, allocIndex = 8, allocHeader = 16
        /// `struct ioctl_gntalloc_dealloc_gref` (16 bytes): index u64, count u32.
        static let deallocIndex = 0, deallocCount = 8, deallocSize = 16
        static let flagWritable: UInt16 = 1
        /// The argument of each event-channel ioctl is this many 32-bit words.
        static let bindInterdomainSize = 8, bindUnboundSize = 4, notifySize = 4
    }

    /// Opens the devices (root, in a Xen domain with the xen-gntalloc and xen-evtchn drivers)
    /// and reads this domain's id.
    public static func open() async throws(PlatformError) -> LinuxXenPlatform {
        let gntalloc = Glibc.open("/dev/xen/gntalloc", O_RDWR | O_CLOEXEC)
        guard gntalloc >= 0 else {
            throw .connection("/dev/xen/gntalloc: \(String(cString: strerror(errno))) (a Xen domain with the xen-gntalloc driver, as root)")
        }
        let store: XenStoreClient
        do { store = try XenStoreClient.connect(XenStoreLocation(environment: ["XENSTORED_PATH": "/dev/xen/xenbus"])) } catch {
            close(gntalloc)
            throw .connection("/dev/xen/xenbus: \(error)")
        }
        let text: String
        do { text = try await store.readString("domid") } catch {
            close(gntalloc)
            throw .connection("reading domid: \(error)")
        }
        guard let id = UInt16(text) else {
            close(gntalloc)
            throw .connection("domid = \"\(text)\"")
        }
        return LinuxXenPlatform(domain: DomainID(id), gntalloc: gntalloc, store: store)
    }

    private init(domain: DomainID, gntalloc: Int32, store: XenStoreClient) {
        self.domain = domain
        self.gntalloc = gntalloc
        self.store = store
    }

    deinit { close(gntalloc) }

    // MARK: Grants

    public func grantPage(to peer: DomainID, readOnly: Bool) throws(PlatformError) -> SharedPage {
        try grantPages(1, to: peer, readOnly: readOnly).pages[0]
    }

    public func grantPages(_ count: Int, to peer: DomainID, readOnly: Bool) throws(PlatformError) -> SharedPages {
        guard count > 0 else { throw .exhausted("pages (asked for \(count))") }
        var request = [UInt8](repeating: 0, count: IOCTL.allocHeader + 4 * count)
        request.withUnsafeMutableBytes { r in
            r.storeBytes(of: peer.rawValue, toByteOffset: IOCTL.allocDomid, as: UInt16.self)
            r.storeBytes(of: readOnly ? 0 : IOCTL.flagWritable, toByteOffset: IOCTL.allocFlags, as: UInt16.self)
            r.storeBytes(of: UInt32(count), toByteOffset: IOCTL.allocCount, as: UInt32.self)
        }
        let result = request.withUnsafeMutableBytes { ioctl(gntalloc, IOCTL.allocGref, $0.baseAddress!) }
        guard result == 0 else {
            let e = errno
            throw e == ENOSPC || e == ENOMEM ? .exhausted("grant pages (gntalloc: \(String(cString: strerror(e))))") : .refused("gntalloc alloc: \(String(cString: strerror(e)))")
        }
        let index = request.withUnsafeBytes { $0.load(fromByteOffset: IOCTL.allocIndex, as: UInt64.self) }
        let refs = (0..<count).map { n in request.withUnsafeBytes { GrantRef($0.load(fromByteOffset: IOCTL.allocHeader + 4 * n, as: UInt32.self)) } }
        let address = mmap(nil, count * XenPage.size, PROT_READ | PROT_WRITE, MAP_SHARED, gntalloc, off_t(index))
        guard let address, address != MAP_FAILED else {
            let e = errno
            deallocate(index: index, count: count)
            throw .refused("mapping granted pages: \(String(cString: strerror(e)))")
        }
        granted.withLock { $0 += count }
        // A page's "frame" is its gntalloc index in pages: what releases it alone later.
        let pages = refs.enumerated().map { n, ref in
            SharedPage(ref: ref, frame: Int(index / UInt64(XenPage.size)) + n, address: address + n * XenPage.size)
        }
        return SharedPages(pages: pages, address: address, view: nil)
    }

    private func deallocate(index: UInt64, count: Int) {
        var request = [UInt8](repeating: 0, count: IOCTL.deallocSize)
        request.withUnsafeMutableBytes { r in
            r.storeBytes(of: index, toByteOffset: IOCTL.deallocIndex, as: UInt64.self)
            r.storeBytes(of: UInt32(count), toByteOffset: IOCTL.deallocCount, as: UInt32.self)
        }
        _ = request.withUnsafeMutableBytes { ioctl(gntalloc, IOCTL.deallocGref, $0.baseAddress!) }
    }

    /// What is left under gntalloc's default limit.
    public var availablePages: Int { Self.defaultGrantLimit - granted.withLock { $0 } }

    /// Ends this process's hold on the page (deallocated and unmapped alone, even from a
    /// multi-page allocation): the kernel revokes the grant and frees the page once the peer
    /// has unmapped it — until then it stays allocated in the kernel and is never reused, Xen's
    /// try semantics done for us — so from here the answer is always yes.
    public func revoke(_ page: SharedPage) -> Bool {
        deallocate(index: UInt64(page.frame) * UInt64(XenPage.size), count: 1)
        munmap(page.address, XenPage.size)
        granted.withLock { $0 -= 1 }
        return true
    }

    // MARK: Event channels

    private func channel(_ request: UInt, _ arguments: [UInt32]) throws(PlatformError) -> EventChannel {
        let fd = Glibc.open("/dev/xen/evtchn", O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { throw .connection("/dev/xen/evtchn: \(String(cString: strerror(errno)))") }
        var words = arguments
        let port = words.withUnsafeMutableBytes { ioctl(fd, request, $0.baseAddress!) }
        guard port >= 0 else {
            let e = errno
            close(fd)
            throw .refused("event channel: \(String(cString: strerror(e)))")
        }
        let channel = EventChannel(port: EventChannelPort(UInt32(port)), xenEventDevice: fd) { port in
            var unbind = port.rawValue
            _ = ioctl(fd, IOCTL.unbind, &unbind)
        }
        return channel
    }

    public func allocateUnboundPort(remote: DomainID) throws(PlatformError) -> EventChannel {
        try channel(IOCTL.bindUnboundPort, [UInt32(remote.rawValue)])
    }

    /// Binds `remote`'s port. Xen leaves one event pending on a newly bound port; it is
    /// consumed (and the port unmasked) here, so the first wake-up is a real one.
    public func bindInterdomain(remote: DomainID, port: EventChannelPort) throws(PlatformError) -> EventChannel {
        let channel = try channel(IOCTL.bindInterdomain, [UInt32(remote.rawValue), port.rawValue])
        if channel.isPending { channel.acknowledge() }
        return channel
    }

    public func xenstore() throws(PlatformError) -> XenStoreClient { store }
}
