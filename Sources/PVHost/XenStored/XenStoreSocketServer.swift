#if canImport(Glibc)
import Glibc
#endif
import XenABI
import XenStore

/// Serves the xenstored engine on a UNIX socket (mode 0600): one thread, `poll(2)` over the
/// listener and every client, a frame decoder per client, bounded output buffers. Every socket
/// client is dom0 (privileged), as with C xenstored. A malformed or oversized message, or a
/// reader that lets more than `outputLimit` bytes pile up, ends only that connection.
public final class XenStoreSocketServer: @unchecked Sendable {
    public let path: String
    public let outputLimit: Int
    private let listener: Int32
    private var engine = XenStoreEngine()
    private struct Client {
        var decoder = XsFrameDecoder()
        var output: XenStoreOutputQueue
    }
    private var clients: [Int32: Client] = [:]
    private var stopping = false

    /// Binds and listens (replacing a stale socket file).
    public init(path: String, outputLimit: Int = 1 << 20) throws(XenStoreServerError) {
        self.path = path
        self.outputLimit = outputLimit
        unlink(path)
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { throw .system("socket", errno) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            close(fd)
            throw .system("bind (path too long)", ENAMETOOLONG)
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
        }
        let previous = umask(0o077)  // the socket file is created 0600
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        umask(previous)
        guard bound == 0 else { let e = errno; close(fd); throw .system("bind \(path)", e) }
        guard listen(fd, 512) == 0 else { let e = errno; close(fd); throw .system("listen", e) }
        listener = fd
    }

    deinit {
        for fd in clients.keys { close(fd) }
        close(listener)
        unlink(path)
    }

    /// Runs until ``stop()``; `poll` wakes at least every 200 ms to notice it.
    public func run() {
        while !stopping {
            var fds = [pollfd(fd: listener, events: Int16(POLLIN), revents: 0)]
            for (fd, client) in clients {
                let wantsOut = !client.output.isEmpty
                fds.append(pollfd(fd: fd, events: Int16(POLLIN) | (wantsOut ? Int16(POLLOUT) : 0), revents: 0))
            }
            let ready = poll(&fds, nfds_t(fds.count), 200)
            if ready <= 0 { continue }
            for entry in fds where entry.revents != 0 {
                if entry.fd == listener { acceptClients() } else { service(entry.fd, entry.revents) }
            }
        }
    }

    /// Asks ``run()`` to return.
    public func stop() { stopping = true }

    private func acceptClients() {
        while true {
            let fd = accept(listener, nil, nil)
            guard fd >= 0 else { return }
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            clients[fd] = Client(output: XenStoreOutputQueue(limit: outputLimit))
            engine.connect(Int(fd), caller: .dom0)
        }
    }

    private func drop(_ fd: Int32) {
        engine.disconnect(Int(fd))
        clients[fd] = nil
        close(fd)
    }

    private func service(_ fd: Int32, _ events: Int16) {
        if events & Int16(POLLIN) != 0 || events & Int16(POLLHUP) != 0 {
            var buffer = [UInt8](repeating: 0, count: 65536)
            let n = read(fd, &buffer, buffer.count)
            if n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR) { drop(fd); return }
            if n > 0 {
                clients[fd]!.decoder.feed(buffer[..<n])
                // Replies may drop this very connection (a reader that never reads): stop then.
                while clients[fd] != nil {
                    let message: XsMessage?
                    do { message = try clients[fd]!.decoder.next() } catch { drop(fd); return }
                    guard let message else { break }
                    for output in engine.handle(message, from: Int(fd)) { enqueue(output) }
                    for ended in engine.takeEnded() where clients[Int32(ended)] != nil { drop(Int32(ended)) }
                }
            }
        }
        if clients[fd] != nil { flush(fd) }
    }

    private func enqueue(_ output: XenStoreEngine.Output) {
        let fd = Int32(output.connection)
        guard clients[fd] != nil else { return }
        guard clients[fd]!.output.append(output.message) else { drop(fd); return }
        flush(fd)
    }

    private func flush(_ fd: Int32) {
        guard clients[fd] != nil, !clients[fd]!.output.isEmpty else { return }
        let n = clients[fd]!.output.withUnsent { raw in send(fd, raw.baseAddress!, raw.count, Int32(MSG_NOSIGNAL)) }
        if n < 0 && errno != EAGAIN && errno != EINTR { drop(fd); return }
        if n > 0 { clients[fd]!.output.consumed(n) }
    }
}

public enum XenStoreServerError: Error, CustomStringConvertible {
    case system(String, Int32)
    public var description: String {
        switch self {
        case let .system(call, code): "\(call): \(String(cString: strerror(code)))"
        }
    }
}
