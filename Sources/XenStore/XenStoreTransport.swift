import PVSystem
import XenABI

/// A byte stream to a xenstore daemon. The client frames and matches messages; a transport
/// only moves bytes, never blocking: the daemon's UNIX socket, Linux's `/dev/xen/xenbus`, or a
/// domain's xenstore ring page (``XenStoreRingTransport``). The client watches ``descriptor``
/// on an event loop and tries again when it is ready.
public protocol XenStoreTransport: AnyObject, Sendable {
    /// What this is connected to, for messages.
    var name: String { get }
    /// The largest request payload it carries (4096; 4080 through `/dev/xen/xenbus`).
    var payloadLimit: Int { get }
    /// Whether the client must wait for each reply before sending the next request.
    var oneRequestAtATime: Bool { get }
    /// Readable when bytes may have arrived (and, for a ring, when room may have been made).
    var descriptor: Int32 { get }
    /// What keeps ``descriptor`` open (held by the event loop while it watches it).
    var descriptorOwner: any Sendable & AnyObject { get }
    /// What to wait for when ``write(_:)`` took nothing: `.writable` for a socket, nothing
    /// more for a ring (the daemon's notification makes ``descriptor`` readable).
    var waitToWrite: EventLoop.Readiness { get }
    /// Writes what fits now; 0 when nothing does (wait for ``waitToWrite``).
    func write(_ bytes: UnsafeRawBufferPointer) throws(XenStoreError) -> Int
    /// Reads what has arrived: the count, 0 when the stream ended, nil when nothing is there.
    func read(into buffer: UnsafeMutableRawBufferPointer) throws(XenStoreError) -> Int?
    /// Ends the stream (the peer sees it; the client's reads then end).
    func shutdown()
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
            if let value = ProcessEnvironment.value(key) { environment[key] = value }
        }
        return XenStoreLocation(environment: environment)
    }

    /// Opens the first place that works.
    public func open() throws(XenStoreError) -> any XenStoreTransport {
        var tried: [String] = []
        do {
            return FileDescriptorTransport(try StreamDescriptor.connect(unixSocket: socket), payloadLimit: XsWire.payloadMax, oneRequestAtATime: false)
        } catch {
            tried.append("\(socket) (\(error.errno))")
        }
        for device in devices {
            do {
                return FileDescriptorTransport(
                    try StreamDescriptor.open(device: device), payloadLimit: XsWire.xenbusDevicePayloadMax,
                    oneRequestAtATime: true)
            } catch {
                tried.append("\(device) (\(error.errno))")
            }
        }
        throw .unreachable(tried)
    }
}

/// A socket or character device carrying framed messages both ways (non-blocking).
final class FileDescriptorTransport: XenStoreTransport {
    let name: String
    let payloadLimit: Int
    /// True for Linux's xenbus device, as libxenstore does it (one request, then its reply):
    /// its write() of a WATCH waits for the daemon's answer while holding the file's buffer
    /// lock, and the kernel's xenbus thread, delivering another reply of the same file
    /// meanwhile, blocks on that lock — the watch's answer never comes and every xenstore
    /// user in the domain hangs (seen with Linux 6.1 in a Xen 4.17 dom0).
    let oneRequestAtATime: Bool
    private let stream: StreamDescriptor

    init(_ stream: StreamDescriptor, payloadLimit: Int, oneRequestAtATime: Bool) {
        self.stream = stream
        name = stream.name
        self.payloadLimit = payloadLimit
        self.oneRequestAtATime = oneRequestAtATime
    }

    var descriptor: Int32 { stream.fileDescriptor }
    var descriptorOwner: any Sendable & AnyObject { stream }
    var waitToWrite: EventLoop.Readiness { .writable }

    func write(_ bytes: UnsafeRawBufferPointer) throws(XenStoreError) -> Int {
        do { return try stream.write(bytes) ?? 0 } catch {
            if error.errno == .brokenPipe || error.errno == .connectionReset { throw .connectionClosed("\(name): the daemon closed the connection") }
            throw .system(error)
        }
    }

    func read(into buffer: UnsafeMutableRawBufferPointer) throws(XenStoreError) -> Int? {
        do { return try stream.read(into: buffer) } catch { throw .system(error) }
    }

    func shutdown() { stream.shutdown() }
}
