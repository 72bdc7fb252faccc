import CLinux
import Glibc
import SystemPackage

/// A TAP device's descriptor (`/dev/net/tun`, `TUNSETIFF`): Ethernet frames in and out of
/// Linux's network stack, non-blocking. With `virtioHeaders` each frame carries the 10-byte
/// `virtio_net_hdr` and the device offers partial checksums and TCP segments
/// (`IFF_VNET_HDR`, `TUNSETOFFLOAD`); PacketTap reads and writes packets on it.
public final class TapInterface: Sendable {
    /// The interface's name in this process's network namespace.
    public let name: String
    /// Whether frames carry a `virtio_net_hdr`.
    public let virtioHeaders: Bool
    /// The descriptor (owned: closed when this goes).
    public let fileDescriptor: FileDescriptor

    /// Opens (creating) TAP `name` in this process's network namespace. Needs CAP_NET_ADMIN.
    public init(name: String, virtioHeaders: Bool) throws(SystemError) {
        guard !name.isEmpty, name.utf8.count < 16 else {
            throw SystemError("TUNSETIFF", errno: .invalidArgument, context: "TAP name \"\(name)\" must be 1…15 bytes")
        }
        let fd = try retryingSyscall32("open(/dev/net/tun) + TUNSETIFF", context: "TAP \(name) (needs /dev/net/tun and CAP_NET_ADMIN: run as root)") {
            pvkit_tap_open(name, virtioHeaders ? 1 : 0)
        }
        let flags = fcntl(fd, F_GETFL)
        guard flags >= 0, fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0 else {
            let code = Glibc.errno
            close(fd)
            throw SystemError("fcntl(O_NONBLOCK)", errno: code, context: "TAP \(name)")
        }
        self.name = name
        self.virtioHeaders = virtioHeaders
        fileDescriptor = FileDescriptor(rawValue: fd)
    }

    deinit { try? fileDescriptor.close() }  // close(2) releases the descriptor even when it reports an error

    /// Sets the interface up, with a MAC address (6 bytes) when given.
    public func setUp(mac: [UInt8]? = nil) throws(SystemError) {
        if let mac, mac.count != 6 { throw SystemError("SIOCSIFHWADDR", errno: .invalidArgument, context: "TAP \(name): a MAC is 6 bytes, not \(mac.count)") }
        _ = try retryingSyscall32("SIOCSIFHWADDR/SIOCSIFFLAGS", context: "TAP \(name)") {
            mac.map { address in address.withUnsafeBufferPointer { pvkit_link_up(name, $0.baseAddress) } } ?? pvkit_link_up(name, nil)
        }
    }

    /// Reads one frame into `buffer`: its length, or nil when none is waiting.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(SystemError) -> Int? {
        do {
            return try retryingSyscall("read", context: "TAP \(name)") { Glibc.read(fileDescriptor.rawValue, buffer.baseAddress, buffer.count) }
        } catch  where error.errno == .wouldBlock {
            return nil
        }
    }

    /// Writes one frame from `header` (may be empty) and `body` with one `writev`, without
    /// joining them. Returns whether Linux took all of it (false when its queue is full).
    public func write(header: UnsafeRawBufferPointer, body: UnsafeRawBufferPointer) throws(SystemError) -> Bool {
        var vectors = [
            iovec(iov_base: UnsafeMutableRawPointer(mutating: header.baseAddress), iov_len: header.count),
            iovec(iov_base: UnsafeMutableRawPointer(mutating: body.baseAddress), iov_len: body.count)
        ]
        let written: Int
        do {
            written = try vectors.withUnsafeMutableBufferPointer { list throws(SystemError) in
                let first = header.isEmpty ? list.baseAddress! + 1 : list.baseAddress!
                let count: Int32 = header.isEmpty ? 1 : 2
                return try retryingSyscall("writev", context: "TAP \(name)") { Glibc.writev(fileDescriptor.rawValue, first, count) }
            }
        } catch  where error.errno == .wouldBlock {
            return false
        }
        return written == header.count + body.count
    }
}
