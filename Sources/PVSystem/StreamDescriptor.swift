import CLinux
import Glibc

/// A byte stream read and written without blocking: a connected UNIX stream socket (a
/// xenstored client or daemon connection) or a character device (`/dev/xen/xenbus`). An
/// ``EventLoop`` says when to try again.
public final class StreamDescriptor: Sendable {
    /// The descriptor (non-blocking, close-on-exec). Owned: closed on deinit.
    public let fileDescriptor: Int32
    /// Sockets are written with `send(MSG_NOSIGNAL)` and shut down; devices written plainly.
    public let isSocket: Bool
    /// What it is connected to, for errors.
    public let name: String

    /// Takes over a descriptor (made non-blocking here).
    public init(adopting fileDescriptor: Int32, isSocket: Bool, name: String) {
        self.fileDescriptor = fileDescriptor
        self.isSocket = isSocket
        self.name = name
        let flags = fcntl(fileDescriptor, F_GETFL)
        if flags >= 0 && flags & O_NONBLOCK == 0 { _ = fcntl(fileDescriptor, F_SETFL, flags | O_NONBLOCK) }
    }

    deinit { close(fileDescriptor) }

    /// Connects to the UNIX stream socket at `path`. C: `socket` + `connect`.
    public static func connect(unixSocket path: String) throws(SystemError) -> StreamDescriptor {
        let fd = try retryingSyscall32("socket", context: path) {
            socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        }
        var address: sockaddr_un
        do { address = try UNIXSocketAddress.make(path) } catch {
            close(fd)
            throw error
        }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard connected == 0 else {
            let code = Glibc.errno
            close(fd)
            throw SystemError("connect", errno: code, context: path)
        }
        return StreamDescriptor(adopting: fd, isSocket: true, name: path)
    }

    /// Opens a character device for reading and writing (non-blocking).
    public static func open(device path: String) throws(SystemError) -> StreamDescriptor {
        StreamDescriptor(adopting: try openDevice(path, nonBlocking: true), isSocket: false, name: path)
    }

    /// Reads what is there: the count, 0 at end of stream (or a reset connection), nil when
    /// nothing is there yet.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(SystemError) -> Int? {
        while true {
            let n = Glibc.read(fileDescriptor, buffer.baseAddress, buffer.count)
            if n >= 0 { return n }
            switch Glibc.errno {
            case EINTR: continue
            case EAGAIN: return nil
            case ECONNRESET: return 0
            case let code: throw SystemError("read", errno: code, context: name)
            }
        }
    }

    /// Writes what fits now: the count, nil when nothing fits (wait until writable).
    ///
    /// - Throws: ``SystemError`` (`EPIPE`/`ECONNRESET` when the peer is gone).
    public func write(_ bytes: UnsafeRawBufferPointer) throws(SystemError) -> Int? {
        guard !bytes.isEmpty else { return 0 }
        while true {
            let n =
                isSocket
                ? send(fileDescriptor, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL))
                : Glibc.write(fileDescriptor, bytes.baseAddress, bytes.count)
            if n >= 0 { return n }
            switch Glibc.errno {
            case EINTR: continue
            case EAGAIN: return nil
            case let code: throw SystemError(isSocket ? "send" : "write", errno: code, context: name)
            }
        }
    }

    /// Writes what fits now of `first` then `second` in one call (C: `writev`): the count,
    /// nil when nothing fits.
    public func write(_ first: UnsafeRawBufferPointer, _ second: UnsafeRawBufferPointer) throws(SystemError) -> Int? {
        guard !second.isEmpty else { return try write(first) }
        var vectors = [
            iovec(iov_base: UnsafeMutableRawPointer(mutating: first.baseAddress), iov_len: first.count),
            iovec(iov_base: UnsafeMutableRawPointer(mutating: second.baseAddress), iov_len: second.count)
        ]
        while true {
            let n = vectors.withUnsafeMutableBufferPointer { v in
                var message = msghdr()
                message.msg_iov = v.baseAddress
                message.msg_iovlen = v.count
                return isSocket ? sendmsg(fileDescriptor, &message, Int32(MSG_NOSIGNAL)) : writev(fileDescriptor, v.baseAddress, Int32(v.count))
            }
            if n >= 0 { return n }
            switch Glibc.errno {
            case EINTR: continue
            case EAGAIN: return nil
            case let code: throw SystemError(isSocket ? "sendmsg" : "writev", errno: code, context: name)
            }
        }
    }

    /// Ends both directions of a socket: the peer sees the end, and an event loop watching
    /// this descriptor sees it hang up. Nothing for a device.
    public func shutdown() {
        if isSocket { _ = Glibc.shutdown(fileDescriptor, Int32(SHUT_RDWR)) }
    }
}

/// A listening UNIX stream socket (mode 0600, replacing a stale file), accepting without
/// blocking.
public final class StreamListener: Sendable {
    public let fileDescriptor: Int32
    /// The socket file (empty for a TCP listener).
    public let path: String
    /// The TCP port listened on (0 for a UNIX socket): the one asked for, or the one the
    /// kernel chose for port 0.
    public let port: UInt16

    /// C: `socket`, `bind` (umask 077), `listen`, `rename` (see
    /// ``UNIXSocketAddress/bindAndListen(_:at:backlog:)``).
    public init(unixSocket path: String, backlog: Int32 = 512) throws(SystemError) {
        let fd = try retryingSyscall32("socket", context: path) {
            socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        }
        do { try UNIXSocketAddress.bindAndListen(fd, at: path, backlog: backlog) } catch {
            close(fd)
            throw error
        }
        fileDescriptor = fd
        self.path = path
        port = 0
    }

    /// A TCP listener on an IPv4 address (`127.0.0.1` keeps it on this machine), with
    /// `SO_REUSEADDR`. C: `socket`, `setsockopt`, `bind`, `listen`, `getsockname`.
    public init(tcpHost host: String, port: UInt16, backlog: Int32 = 512) throws(SystemError) {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        guard inet_pton(AF_INET, host, &address.sin_addr) == 1 else { throw SystemError("inet_pton", errno: EINVAL, context: "\(host) (an IPv4 address)") }
        let name = "\(host):\(port)"
        let fd = try retryingSyscall32("socket", context: name) {
            socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        }
        var one: Int32 = 1
        _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(fd, backlog) == 0 else {
            let code = Glibc.errno
            close(fd)
            throw SystemError(bound == 0 ? "listen" : "bind", errno: code, context: name)
        }
        var actual = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &actual) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
        fileDescriptor = fd
        path = ""
        self.port = UInt16(bigEndian: actual.sin_port)
    }

    /// The next waiting connection, or nil when none waits. Connections that died before
    /// being accepted are skipped.
    public func accept() throws(SystemError) -> StreamDescriptor? {
        while true {
            let fd = accept4(fileDescriptor, nil, nil, Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue))
            if fd >= 0 { return StreamDescriptor(adopting: fd, isSocket: true, name: path.isEmpty ? "TCP port \(port) client" : "\(path) client") }
            switch Glibc.errno {
            case EINTR, ECONNABORTED, EPROTO: continue
            case EAGAIN: return nil
            case let code: throw SystemError("accept4", errno: code, context: path)
            }
        }
    }

    /// Stops listening and removes the socket file.
    deinit {
        close(fileDescriptor)
        if !path.isEmpty { unlink(path) }
    }
}

/// `sockaddr_un` for a path.
public enum UNIXSocketAddress {
    /// Binds `fd` (umask 077) and listens, so that `path` appears only once it accepts
    /// connections: bound and listening at a temporary name beside it, then renamed over
    /// `path` (replacing a stale file). A client that connects as soon as the file exists is
    /// never refused. (Paths too long for the temporary name are bound in place.)
    public static func bindAndListen(_ fd: Int32, at path: String, backlog: Int32) throws(SystemError) {
        let temporary = path + ".\(getpid()).new"
        let staged = Array(temporary.utf8).count < MemoryLayout.size(ofValue: sockaddr_un().sun_path)
        let bindPath = staged ? temporary : path
        var address = try make(bindPath)
        _ = unlink(bindPath)  // a stale file (from a process that died): nothing to do when absent
        let previous = umask(0o077)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        umask(previous)
        guard bound == 0 else { throw SystemError("bind", errno: Glibc.errno, context: bindPath) }
        guard listen(fd, backlog) == 0 else {
            let code = Glibc.errno
            _ = unlink(bindPath)
            throw SystemError("listen", errno: code, context: bindPath)
        }
        guard staged else { return }
        guard rename(temporary, path) == 0 else {
            let code = Glibc.errno
            _ = unlink(temporary)
            throw SystemError("rename", errno: code, context: "\(temporary) to \(path)")
        }
    }

    /// `ENAMETOOLONG` when `path` does not fit `sun_path` (107 bytes and the NUL).
    public static func make(_ path: String) throws(SystemError) -> sockaddr_un {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { throw SystemError("bind", errno: ENAMETOOLONG, context: path) }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in for (i, b) in bytes.enumerated() { raw[i] = b } }
        return address
    }
}

/// Closes descriptors this process received (`SCM_RIGHTS`) and does not keep. `close(2)`
/// releases a descriptor even when it reports an error, so there is nothing to retry.
public func closeReceivedDescriptors(_ descriptors: [Int32]) {
    for descriptor in descriptors { _ = Glibc.close(descriptor) }
}
