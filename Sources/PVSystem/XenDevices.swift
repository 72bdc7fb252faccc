import Glibc
import CLinux
import SystemPackage

/// The ioctl numbers and argument layouts of Linux's `xen/evtchn.h` and `xen/gntalloc.h`
/// (checked against the headers by the ABI tests).
public enum XenDeviceIOCTL {
    public static let allocGref: UInt = 0x0018_4705
    public static let deallocGref: UInt = 0x0010_4706
    public static let bindInterdomain: UInt = 0x0008_4501
    public static let bindUnboundPort: UInt = 0x0004_4502
    public static let unbind: UInt = 0x0004_4503
    /// `IOCTL_EVTCHN_NOTIFY` (`_IOC(_IOC_NONE, 'E', 4, sizeof(struct ioctl_evtchn_notify))`).
    public static let notify: UInt = 0x0004_4504
    /// `struct ioctl_gntalloc_alloc_gref`: domid u16, flags u16, count u32, index u64,
    /// then gref_ids[count] u32 (the header is the offset of gref_ids).
    public static let allocDomid = 0, allocFlags = 2, allocCount = 4, allocIndex = 8, allocHeader = 16
    /// `struct ioctl_gntalloc_dealloc_gref` (16 bytes): index u64, count u32.
    public static let deallocIndex = 0, deallocCount = 8, deallocSize = 16
    public static let flagWritable: UInt16 = 1
    /// The argument of each event-channel ioctl is this many bytes.
    public static let bindInterdomainSize = 8, bindUnboundSize = 4, notifySize = 4
}

/// Opens a device node. C: `open(path, O_RDWR | O_CLOEXEC [| O_NONBLOCK])`.
func openDevice(_ path: String, nonBlocking: Bool) throws(SystemError) -> Int32 {
    try retryingSyscall32("open", context: path) { open(path, O_RDWR | O_CLOEXEC | (nonBlocking ? O_NONBLOCK : 0)) }
}

/// One `/dev/xen/evtchn` descriptor with one port bound (a descriptor per port, so an event
/// loop watches each port's readiness on its own). Non-blocking: ``takePending()`` never waits.
public final class XenEventDevice: Sendable {
    /// The device's descriptor. Owned: closed on deinit.
    public let fileDescriptor: Int32
    public static let path = "/dev/xen/evtchn"

    /// Opens the device (a Xen domain with the xen-evtchn driver, as root).
    public init() throws(SystemError) {
        fileDescriptor = try openDevice(Self.path, nonBlocking: true)
    }

    deinit { close(fileDescriptor) }

    private func control(_ name: String, _ request: UInt, _ words: [UInt32]) throws(SystemError) -> Int32 {
        var arguments = words
        return try retryingSyscall32("ioctl(\(name))", context: Self.path) {
            arguments.withUnsafeMutableBytes { ioctl(fileDescriptor, request, $0.baseAddress!) }
        }
    }

    /// `IOCTL_EVTCHN_BIND_INTERDOMAIN`: binds `remoteDomain`'s unbound `remotePort`; returns
    /// the local port.
    public func bindInterdomain(remoteDomain: UInt16, remotePort: UInt32) throws(SystemError) -> UInt32 {
        UInt32(try control("IOCTL_EVTCHN_BIND_INTERDOMAIN", XenDeviceIOCTL.bindInterdomain, [UInt32(remoteDomain), remotePort]))
    }

    /// `IOCTL_EVTCHN_BIND_UNBOUND_PORT`: a new port `remoteDomain` may bind.
    public func bindUnboundPort(remoteDomain: UInt16) throws(SystemError) -> UInt32 {
        UInt32(try control("IOCTL_EVTCHN_BIND_UNBOUND_PORT", XenDeviceIOCTL.bindUnboundPort, [UInt32(remoteDomain)]))
    }

    /// `IOCTL_EVTCHN_UNBIND`.
    public func unbind(_ port: UInt32) throws(SystemError) {
        _ = try control("IOCTL_EVTCHN_UNBIND", XenDeviceIOCTL.unbind, [port])
    }

    /// `IOCTL_EVTCHN_NOTIFY`.
    public func notify(_ port: UInt32) throws(SystemError) {
        _ = try control("IOCTL_EVTCHN_NOTIFY", XenDeviceIOCTL.notify, [port])
    }

    /// Reads the ports that fired (the device masks each as it reports it) and writes them
    /// back, unmasking them. Returns how many were pending; 0 when none (never blocks).
    @discardableResult
    public func takePending() -> UInt64 {
        var ports = [UInt32](repeating: 0, count: 16)
        while true {
            let count = ports.withUnsafeMutableBytes { read(fileDescriptor, $0.baseAddress, $0.count) }
            if count < 0 && Glibc.errno == EINTR { continue }
            guard count > 0 else { return 0 }
            _ = ports.withUnsafeBytes { write(fileDescriptor, $0.baseAddress, count) }
            return UInt64(count / 4)
        }
    }

    /// Whether a port fired and waits to be taken.
    public var isReadable: Bool {
        var entry = pollfd(fd: fileDescriptor, events: Int16(POLLIN), revents: 0)
        while true {
            let ready = poll(&entry, 1, 0)
            if ready >= 0 { return ready == 1 }
            if Glibc.errno != EINTR { return false }
        }
    }
}

/// `/dev/xen/gntalloc`: pages of this process granted to another domain.
public final class GrantAllocDevice: Sendable {
    public let fileDescriptor: Int32
    public static let path = "/dev/xen/gntalloc"

    public init() throws(SystemError) {
        fileDescriptor = try openDevice(Self.path, nonBlocking: false)
    }

    deinit { close(fileDescriptor) }

    /// `IOCTL_GNTALLOC_ALLOC_GREF`: `count` zeroed pages granted to `domain`; returns their
    /// offset for ``map(index:count:)`` and their grant references.
    public func allocate(count: Int, to domain: UInt16, writable: Bool) throws(SystemError) -> (index: UInt64, refs: [UInt32]) {
        var request = [UInt8](repeating: 0, count: XenDeviceIOCTL.allocHeader + 4 * count)
        request.withUnsafeMutableBytes { r in
            r.storeBytes(of: domain, toByteOffset: XenDeviceIOCTL.allocDomid, as: UInt16.self)
            r.storeBytes(of: writable ? XenDeviceIOCTL.flagWritable : 0, toByteOffset: XenDeviceIOCTL.allocFlags, as: UInt16.self)
            r.storeBytes(of: UInt32(count), toByteOffset: XenDeviceIOCTL.allocCount, as: UInt32.self)
        }
        _ = try retryingSyscall32("ioctl(IOCTL_GNTALLOC_ALLOC_GREF)", context: "\(count) pages for domain \(domain)") {
            request.withUnsafeMutableBytes { ioctl(fileDescriptor, XenDeviceIOCTL.allocGref, $0.baseAddress!) }
        }
        return request.withUnsafeBytes { raw in
            (
                raw.load(fromByteOffset: XenDeviceIOCTL.allocIndex, as: UInt64.self),
                (0..<count).map { raw.load(fromByteOffset: XenDeviceIOCTL.allocHeader + 4 * $0, as: UInt32.self) }
            )
        }
    }

    /// `IOCTL_GNTALLOC_DEALLOC_GREF`: the pages at `index` go back (the kernel keeps each until
    /// the peer unmapped it).
    public func deallocate(index: UInt64, count: Int) throws(SystemError) {
        var request = [UInt8](repeating: 0, count: XenDeviceIOCTL.deallocSize)
        request.withUnsafeMutableBytes { r in
            r.storeBytes(of: index, toByteOffset: XenDeviceIOCTL.deallocIndex, as: UInt64.self)
            r.storeBytes(of: UInt32(count), toByteOffset: XenDeviceIOCTL.deallocCount, as: UInt32.self)
        }
        _ = try retryingSyscall32("ioctl(IOCTL_GNTALLOC_DEALLOC_GREF)", context: "index \(index)") {
            request.withUnsafeMutableBytes { ioctl(fileDescriptor, XenDeviceIOCTL.deallocGref, $0.baseAddress!) }
        }
    }

    /// Maps `count` allocated pages at `index`, shared and writable.
    public func map(index: UInt64, count: Int) throws(SystemError) -> UnsafeMutableRawPointer {
        try Memory.map(fileDescriptor, offset: index, byteCount: count * 4096, writable: true, context: "\(Self.path) index \(index)")
    }
}

/// Mappings (C: `mmap`, `munmap`).
public enum Memory {
    /// Maps `byteCount` bytes of `fd` at `offset`, shared.
    public static func map(_ fd: Int32, offset: UInt64, byteCount: Int, writable: Bool, context: String) throws(SystemError) -> UnsafeMutableRawPointer {
        let protection = PROT_READ | (writable ? PROT_WRITE : 0)
        let address = mmap(nil, byteCount, protection, MAP_SHARED, fd, off_t(truncatingIfNeeded: offset))
        guard let address, address != MAP_FAILED else { throw SystemError("mmap", errno: Glibc.errno, context: context) }
        return address
    }

    /// Maps the first `byteCount` bytes of a file privately and read-only (no copy; a file
    /// cut short by someone else while mapped would fault on the missing pages).
    public static func mapPrivately(_ fd: Int32, byteCount: Int, context: String) throws(SystemError) -> UnsafeMutableRawPointer {
        let address = mmap(nil, byteCount, PROT_READ, MAP_PRIVATE, fd, 0)
        guard let address, address != MAP_FAILED else { throw SystemError("mmap", errno: Glibc.errno, context: context) }
        return address
    }

    /// Asks for transparent huge pages over the whole 2 MiB pages inside `byteCount` bytes at
    /// `address` (C: `madvise(MADV_HUGEPAGE)`). Advice only: ignored where THP is off.
    public static func adviseHugePages(_ address: UnsafeMutableRawPointer, byteCount: Int) {
        let huge = 2 << 20
        let start = (Int(bitPattern: address) + huge - 1) & ~(huge - 1)
        let end = (Int(bitPattern: address) + byteCount) & ~(huge - 1)
        if end > start { _ = madvise(UnsafeMutableRawPointer(bitPattern: start), end - start, MADV_HUGEPAGE) }
    }

    /// A file in memory of `byteCount` bytes that hold nothing yet (C: `memfd_create` and
    /// `ftruncate`): pages cost memory only once written, so a disk-sized file is free.
    public static func sparseFile(name: String, byteCount: UInt64) throws(SystemError) -> FileDescriptor {
        let fd = Int32(try retryingSyscall("memfd_create", context: name) { Int(memfd_create(name, UInt32(MFD_CLOEXEC))) })
        do throws(SystemError) {
            _ = try retryingSyscall32("ftruncate", context: "\(name) to \(byteCount) bytes") { ftruncate(fd, off_t(clamping: byteCount)) }
        } catch {
            close(fd)
            throw error
        }
        return FileDescriptor(rawValue: fd)
    }

    /// Removes a mapping made by ``map(_:offset:byteCount:writable:context:)``.
    public static func unmap(_ address: UnsafeMutableRawPointer, byteCount: Int) {
        // Fails only for an address that is not a mapping: a bug, not input.
        let result = munmap(address, byteCount)
        precondition(result == 0, "munmap of \(byteCount) bytes at \(address) failed: errno \(Glibc.errno)")
    }
}
