import CLinux
import Glibc

/// A connected UNIX `SOCK_SEQPACKET` socket: whole messages, each with optional file
/// descriptors attached (`SCM_RIGHTS`). pvhost's control channel: small "hypercall" messages
/// and the memfds/eventfds they hand over; never ring data.
public final class SeqpacketSocket: Sendable {
    public let fileDescriptor: Int32
    /// The largest message read.
    public static let maximumMessage = 65536
    private static let maximumDescriptors = 16

    public init(adopting fileDescriptor: Int32) { self.fileDescriptor = fileDescriptor }

    /// Connects to a listening socket at `path`.
    public static func connect(to path: String) throws(SystemError) -> SeqpacketSocket {
        // The address first: a path too long must not leave a socket behind.
        var address = try UNIXSocketAddress.make(path)
        let fd = socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemError("socket", errno: errno, context: path) }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard result == 0 else { let e = errno; close(fd); throw SystemError("connect", errno: e, context: path) }
        return SeqpacketSocket(adopting: fd)
    }

    /// Accepts a connection waiting on `listener` (nil when none waits; non-blocking).
    public static func accept(from listener: Int32) throws(SystemError) -> SeqpacketSocket? {
        while true {
            let fd = accept4(listener, nil, nil, Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue))
            if fd >= 0 { return SeqpacketSocket(adopting: fd) }
            switch Glibc.errno {
            case EINTR, ECONNABORTED, EPROTO: continue
            case EAGAIN: return nil
            case let code: throw SystemError("accept4", errno: code, context: "seqpacket listener")
            }
        }
    }

    /// Closes a socket made by ``listen(at:)`` and removes its file.
    public static func stopListening(_ listener: Int32, at path: String) {
        _ = close(listener)  // close(2) releases the descriptor even when it reports an error
        _ = unlink(path)  // already gone: nothing to remove
    }

    /// A listening socket at `path` (mode 0600, replacing a stale file; the file appears once
    /// it accepts, see ``UNIXSocketAddress/bindAndListen(_:at:backlog:)``), non-blocking.
    public static func listen(at path: String) throws(SystemError) -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { throw SystemError("socket", errno: errno, context: path) }
        do { try UNIXSocketAddress.bindAndListen(fd, at: path, backlog: 64) } catch {
            close(fd)
            throw error
        }
        return fd
    }

    deinit { close(fileDescriptor) }

    // x86_64 cmsg layout (the CMSG_* macros are not imported): a 16-byte header
    // (len u64, level i32, type i32), then the descriptors; lengths aligned to 8.
    private static let headerSize = 16
    private static func align(_ n: Int) -> Int { (n + 7) & ~7 }

    /// Sends one message with `descriptors` attached (duplicated into the receiver).
    public func send(_ bytes: [UInt8], descriptors: [Int32] = []) throws(SystemError) {
        precondition(descriptors.count <= Self.maximumDescriptors, "too many descriptors in one message")
        var payload = bytes
        if payload.isEmpty { payload = [0] }  // a zero-length seqpacket carries no ancillary data reliably
        let controlLength = descriptors.isEmpty ? 0 : Self.align(Self.headerSize + 4 * descriptors.count)
        var control = [UInt8](repeating: 0, count: max(controlLength, 1))
        if !descriptors.isEmpty {
            control.withUnsafeMutableBytes { raw in
                raw.storeBytes(of: UInt64(Self.headerSize + 4 * descriptors.count), toByteOffset: 0, as: UInt64.self)
                raw.storeBytes(of: Int32(SOL_SOCKET), toByteOffset: 8, as: Int32.self)
                raw.storeBytes(of: Int32(SCM_RIGHTS), toByteOffset: 12, as: Int32.self)
                for (i, fd) in descriptors.enumerated() { raw.storeBytes(of: fd, toByteOffset: Self.headerSize + 4 * i, as: Int32.self) }
            }
        }
        let sent: Int = payload.withUnsafeMutableBytes { data in
            control.withUnsafeMutableBytes { controlBytes in
                var vector = iovec(iov_base: data.baseAddress, iov_len: data.count)
                return withUnsafeMutablePointer(to: &vector) { vectorPointer in
                    var message = msghdr()
                    message.msg_iov = vectorPointer
                    message.msg_iovlen = 1
                    if controlLength > 0 {
                        message.msg_control = controlBytes.baseAddress
                        message.msg_controllen = controlLength
                    }
                    return Glibc.sendmsg(fileDescriptor, &message, Int32(MSG_NOSIGNAL))
                }
            }
        }
        guard sent == payload.count else { throw SystemError("sendmsg", errno: sent < 0 ? errno : EIO) }
    }

    /// What a non-blocking receive found.
    public enum Received: Sendable {
        case message(bytes: [UInt8], descriptors: [Int32])
        /// Nothing waits now.
        case nothing
        /// The peer closed its end.
        case ended
    }

    /// Receives one message if one waits, without blocking (for an event loop's handler).
    public func tryReceive() throws(SystemError) -> Received {
        do {
            guard let (bytes, descriptors) = try receive(flags: Int32(MSG_DONTWAIT)) else { return .ended }
            return .message(bytes: bytes, descriptors: descriptors)
        } catch  where error.errno == .wouldBlock {
            return .nothing
        }
    }

    /// Receives one message and the descriptors attached to it (owned by the caller; marked
    /// close-on-exec). Returns nil at end of stream.
    public func receive() throws(SystemError) -> (bytes: [UInt8], descriptors: [Int32])? {
        try receive(flags: 0)
    }

    /// Closes descriptors a message brought that nobody wants.
    public static func discard(_ descriptors: [Int32]) {
        for fd in descriptors { close(fd) }
    }

    /// Ends both directions: the peer sees the end; a loop watching this socket sees it hang up.
    public func shutdown() { _ = Glibc.shutdown(fileDescriptor, Int32(SHUT_RDWR)) }

    private func receive(flags: Int32) throws(SystemError) -> (bytes: [UInt8], descriptors: [Int32])? {
        var data = [UInt8](repeating: 0, count: Self.maximumMessage)
        var control = [UInt8](repeating: 0, count: Self.align(Self.headerSize + 4 * Self.maximumDescriptors))
        var received = 0, controlLength = 0
        while true {
            (received, controlLength) = data.withUnsafeMutableBytes { dataBytes in
                control.withUnsafeMutableBytes { controlBytes in
                    var vector = iovec(iov_base: dataBytes.baseAddress, iov_len: dataBytes.count)
                    return withUnsafeMutablePointer(to: &vector) { vectorPointer in
                        var message = msghdr()
                        message.msg_iov = vectorPointer
                        message.msg_iovlen = 1
                        message.msg_control = controlBytes.baseAddress
                        message.msg_controllen = controlBytes.count
                        let n = Glibc.recvmsg(fileDescriptor, &message, Int32(MSG_CMSG_CLOEXEC) | flags)
                        return (n, Int(message.msg_controllen))
                    }
                }
            }
            if received < 0 && errno == EINTR { continue }
            break
        }
        if received == 0 { return nil }
        guard received > 0 else {
            if errno == ECONNRESET { return nil }
            throw SystemError("recvmsg", errno: errno)
        }
        var descriptors: [Int32] = []
        var offset = 0
        control.withUnsafeBytes { raw in
            while offset + Self.headerSize <= controlLength {
                let length = Int(raw.load(fromByteOffset: offset, as: UInt64.self))
                let level = raw.load(fromByteOffset: offset + 8, as: Int32.self)
                let type = raw.load(fromByteOffset: offset + 12, as: Int32.self)
                guard length >= Self.headerSize, offset + length <= controlLength else { break }
                if level == SOL_SOCKET && type == Int32(SCM_RIGHTS) {
                    for i in 0..<((length - Self.headerSize) / 4) {
                        descriptors.append(raw.load(fromByteOffset: offset + Self.headerSize + 4 * i, as: Int32.self))
                    }
                }
                offset += Self.align(length)
            }
        }
        return (Array(data[..<received]), descriptors)
    }
}
