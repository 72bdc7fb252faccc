#if canImport(Glibc)
import Glibc
#endif
import CLinux
import PVSystem
import XenABI

/// A byte stream to a xenstore daemon. The client frames and matches messages; a transport
/// only moves bytes: the daemon's UNIX socket, Linux's `/dev/xen/xenbus`, or a domain's
/// xenstore ring page (``XenStoreRingTransport``).
public protocol XenStoreTransport: AnyObject, Sendable {
    /// What this is connected to, for messages.
    var name: String { get }
    /// The largest request payload it carries (4096; 4080 through `/dev/xen/xenbus`).
    var payloadLimit: Int { get }
    /// Writes every byte, blocking while the peer is not reading. Called by one thread at a time.
    func send(_ bytes: UnsafeRawBufferPointer) throws(XenStoreError)
    /// Blocks until bytes arrive; 0 when the stream ended or ``shutdown()`` was called.
    func receive(into buffer: UnsafeMutableRawBufferPointer) throws(XenStoreError) -> Int
    /// Ends the stream: a blocked ``receive(into:)`` returns 0, later sends fail.
    func shutdown()
    /// Whether the client must wait for each reply before sending the next request.
    var oneRequestAtATime: Bool { get }
}

extension XenStoreTransport {
    /// Daemons' sockets and rings take requests pipelined.
    public var oneRequestAtATime: Bool { false }
}

/// Where libxenstore looks for the daemon, in order (Xen 4.17 `xs.c`, and pyxs agrees):
/// the socket `$XENSTORED_PATH`, else `$XENSTORED_RUNDIR/socket`, else
/// `/var/run/xenstored/socket`; if that cannot be opened, the device `$XENSTORED_PATH`, else
/// `/dev/xen/xenbus`, else `/proc/xen/xenbus`.
public struct XenStoreLocation: Sendable, Equatable {
    /// The daemon's socket.
    public var socket: String
    /// Devices tried when the socket cannot be opened.
    public var devices: [String]

    public init(socket: String, devices: [String]) {
        self.socket = socket
        self.devices = devices
    }

    public init(environment: [String: String]) {
        if let path = environment["XENSTORED_PATH"], !path.isEmpty {
            socket = path
            devices = [path]
        } else {
            socket = (environment["XENSTORED_RUNDIR"].flatMap { $0.isEmpty ? nil : $0 } ?? "/var/run/xenstored") + "/socket"
            devices = ["/dev/xen/xenbus", "/proc/xen/xenbus"]
        }
    }

    /// This process's environment.
    public static var current: XenStoreLocation {
        var environment: [String: String] = [:]
        for key in ["XENSTORED_PATH", "XENSTORED_RUNDIR"] {
            if let value = getenv(key) { environment[key] = String(cString: value) }
        }
        return XenStoreLocation(environment: environment)
    }

    /// Opens the first place that works.
    public func open() throws(XenStoreError) -> any XenStoreTransport {
        var tried: [String] = []
        do {
            return try FileDescriptorTransport(socket: socket)
        } catch {
            tried.append("\(socket) (\(error.reason))")
        }
        for device in devices {
            do {
                return try FileDescriptorTransport(device: device)
            } catch {
                tried.append("\(device) (\(error.reason))")
            }
        }
        throw .unreachable(tried)
    }
}

/// A socket or character device carrying framed messages both ways. A blocked receive waits
/// in `poll` on the descriptor and an eventfd that ``shutdown()`` signals.
final class FileDescriptorTransport: XenStoreTransport, @unchecked Sendable {
    let name: String
    let payloadLimit: Int
    /// True for Linux's xenbus device, as libxenstore does it (one request, then its reply):
    /// its write() of a WATCH waits for the daemon's answer while holding the file's buffer
    /// lock, and the kernel's xenbus thread, delivering another reply of the same file
    /// meanwhile, blocks on that lock — the watch's answer never comes and every xenstore
    /// user in the domain hangs (seen with Linux 6.1 in a Xen 4.17 dom0).
    let oneRequestAtATime: Bool
    private let fd: Int32
    private let wake: Int32

    /// Connects to a daemon's UNIX socket.
    convenience init(socket path: String) throws(TransportOpenError) {
        let fd = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw TransportOpenError(errno: errno) }
        var address: sockaddr_un
        do { address = try SeqpacketSocket.address(path) } catch {
            Glibc.close(fd)
            throw TransportOpenError(errno: ENAMETOOLONG)
        }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard connected == 0 else { let e = errno; Glibc.close(fd); throw TransportOpenError(errno: e) }
        try self.init(fd: fd, name: path, payloadLimit: XsWire.payloadMax, oneRequestAtATime: false)
    }

    /// Opens Linux's xenbus device (header + payload at most 4096 bytes per message).
    convenience init(device path: String) throws(TransportOpenError) {
        let fd = Glibc.open(path, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { throw TransportOpenError(errno: errno) }
        try self.init(fd: fd, name: path, payloadLimit: XsWire.xenbusDevicePayloadMax, oneRequestAtATime: true)
    }

    private init(fd: Int32, name: String, payloadLimit: Int, oneRequestAtATime: Bool) throws(TransportOpenError) {
        let wake = eventfd(0, Int32(EFD_CLOEXEC))
        guard wake >= 0 else { let e = errno; Glibc.close(fd); throw TransportOpenError(errno: e) }
        self.fd = fd
        self.wake = wake
        self.name = name
        self.payloadLimit = payloadLimit
        self.oneRequestAtATime = oneRequestAtATime
    }

    deinit {
        Glibc.close(fd)
        Glibc.close(wake)
    }

    func send(_ bytes: UnsafeRawBufferPointer) throws(XenStoreError) {
        var offset = 0
        while offset < bytes.count {
            let n = Glibc.send(fd, bytes.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL))
            if n < 0 && errno == ENOTSOCK {
                // A character device: plain write.
                let w = Glibc.write(fd, bytes.baseAddress! + offset, bytes.count - offset)
                if w < 0 { if errno == EINTR { continue }; throw .system("write \(name)", errno: errno) }
                offset += w
                continue
            }
            if n < 0 {
                if errno == EINTR { continue }
                if errno == EPIPE || errno == ECONNRESET { throw .connectionClosed("\(name): the daemon closed the connection") }
                throw .system("send \(name)", errno: errno)
            }
            offset += n
        }
    }

    func receive(into buffer: UnsafeMutableRawBufferPointer) throws(XenStoreError) -> Int {
        while true {
            var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0), pollfd(fd: wake, events: Int16(POLLIN), revents: 0)]
            let ready = poll(&fds, 2, -1)
            if ready < 0 {
                if errno == EINTR { continue }
                throw .system("poll \(name)", errno: errno)
            }
            if fds[1].revents != 0 { return 0 }
            let n = Glibc.read(fd, buffer.baseAddress, buffer.count)
            if n < 0 {
                if errno == EINTR || errno == EAGAIN { continue }
                if errno == ECONNRESET { return 0 }
                throw .system("read \(name)", errno: errno)
            }
            return n
        }
    }

    func shutdown() {
        var one: UInt64 = 1
        _ = Glibc.write(wake, &one, 8)
    }
}

struct TransportOpenError: Error {
    let errno: Int32
    var reason: String { String(cString: strerror(errno)) }
}
