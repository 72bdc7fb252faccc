import BlockFront
import NBDProtocol
import PVSystem
import XenABI

/// One client: the handshake, then its requests — read in order, served concurrently (up to
/// ``NBDServer/Configuration/requestsPerConnection``), each replied to once it completed.
/// Everything of a connection runs in tasks preferring its loop.
final class NBDConnection: Sendable {
    private let server: NBDServer
    private let socket: StreamDescriptor
    private let loop: EventLoop
    /// One reply at a time on the socket.
    private let sending = AsyncGate(units: 1)
    /// Requests in flight.
    private let inFlight: AsyncGate
    private let structured = Locked(false)
    private let buffers = RequestBuffers()

    init(server: NBDServer, socket: StreamDescriptor, loop: EventLoop) {
        self.server = server
        self.socket = socket
        self.loop = loop
        inFlight = AsyncGate(units: max(1, server.configuration.requestsPerConnection))
    }

    private var peer: String { socket.name }

    /// Serves the connection to its end (the client's DISC or close, a protocol error, or
    /// cancellation); requests in flight finish first.
    func serve() async {
        var session = NBDServerSession(exports: [server.export])
        var input = InputBuffer()
        await withDiscardingTaskGroup { group in
            do {
                try await send(session.greeting)
                loop: while true {
                    let step = try input.unread { bytes throws(NBDProtocolError) in try session.step(bytes) }
                    switch step {
                    case let .needMore(count):
                        guard try await input.fill(from: socket, loop: loop, atLeast: count) else { break loop }
                    case let .reply(bytes, consumed):
                        input.consume(consumed)
                        if !bytes.isEmpty { try await send(bytes) }
                    case let .transmission(bytes, consumed):
                        input.consume(consumed)
                        structured.withLock { $0 = session.structuredReplies }
                        try await send(bytes)
                    case let .close(bytes, consumed):
                        input.consume(consumed)
                        try? await send(bytes)
                        break loop
                    case let .request(request, consumed):
                        input.consume(consumed)
                        guard await inFlight.acquire() else { break loop }
                        let buffer = request.command == .read || request.command == .write ? buffers.take(Int(request.length)) : nil
                        if request.command == .write, let buffer {
                            guard try await input.take(into: buffer.bytes(Int(request.length)), from: socket, loop: loop) else {
                                inFlight.release()
                                break loop
                            }
                        }
                        group.addTask {
                            await self.perform(request, buffer: buffer)
                            if let buffer { self.buffers.give(buffer) }
                            self.inFlight.release()
                        }
                    case let .refuse(cookie, command, error, payload, consumed):
                        input.consume(consumed)
                        if payload > 0 { guard try await input.skip(payload, from: socket, loop: loop) else { break loop } }
                        server.count(request: true)
                        try await send(
                            NBDReplies.failure(
                                cookie: cookie, command: command, error: error, message: "command \(command): \(error)", structured: session.structuredReplies))
                    case let .disconnect(consumed):
                        input.consume(consumed)
                        break loop
                    }
                }
            } catch let error as NBDProtocolError {
                server.countProtocolError(error, peer)
            } catch is CancellationError {
            } catch {
                server.log.debug("NBD client \(peer): \(error)")
            }
        }
        socket.shutdown()
    }

    // MARK: Requests

    /// Serves `request`; `buffer` holds a WRITE's data, or receives a READ's.
    private func perform(_ request: NBDRequest, buffer: RequestBuffer?) async {
        let disk = server.disk
        let sector = request.offset / UInt64(Blkif.sectorSize)
        let count = Int(request.length)
        let isStructured = structured.withLock { $0 }
        do throws(BlockFrontError) {
            switch request.command {
            case .read:
                guard count > 0 else {
                    try? await send(isStructured ? NBDReplies.done(cookie: request.cookie) : NBDReplies.simple(cookie: request.cookie))
                    server.count(request: false)
                    return
                }
                guard let buffer else { return }
                let data = buffer.bytes(count)
                try await disk.read(at: sector, into: data)
                let header =
                    isStructured
                    ? NBDReplies.data(cookie: request.cookie, offset: request.offset, count: count) : NBDReplies.simple(cookie: request.cookie)
                server.count(request: false)
                try? await send(header, UnsafeRawBufferPointer(data))
                return
            case .write:
                guard let buffer else { return }
                try await disk.write(at: sector, from: UnsafeRawBufferPointer(buffer.bytes(count)))
            case .writeZeroes:
                var done = 0
                while done < count {
                    let piece = min(count - done, NBDConnection.zeroes.count)
                    let zeros = piece == NBDConnection.zeroes.count ? NBDConnection.zeroes : Array(NBDConnection.zeroes[..<piece])
                    try await disk.write(sector: sector + UInt64(done / Blkif.sectorSize), zeros)
                    done += piece
                }
            case .trim:
                if count > 0 { try await disk.discard(sector: sector, count: count) }
            case .flush:
                try await disk.flush()
            case .disconnect, .cache, .blockStatus:
                return  // refused by the session
            }
            if request.flags.contains(.fua), request.command != .flush { try await disk.flush() }
            server.count(request: false)
            try? await send(NBDReplies.simple(cookie: request.cookie))
        } catch {
            server.count(request: true)
            let errno: NBD.Errno
            switch error {
            case .readOnly: errno = .permission
            case .notSupported: errno = .invalid
            default: errno = .io
            }
            server.log.warning("NBD \(request.command) at \(request.offset) (\(count) bytes) for \(peer): \(error)")
            try? await send(
                NBDReplies.failure(cookie: request.cookie, command: request.command.rawValue, error: errno, message: "\(error)", structured: isStructured))
        }
    }

    /// A zeroed megabyte, written for WRITE_ZEROES.
    static let zeroes = [UInt8](repeating: 0, count: 1 << 20)

    // MARK: Output

    /// Sends `header` then `data` (memory the caller holds until this returns), whole, one
    /// reply at a time.
    private func send(_ header: [UInt8], _ data: UnsafeRawBufferPointer = UnsafeRawBufferPointer(start: nil, count: 0)) async throws {
        guard await sending.acquire() else { throw CancellationError() }
        defer { sending.release() }
        var sent = 0
        let total = header.count + data.count
        while sent < total {
            let n: Int? = try header.withUnsafeBytes { h in
                if sent < h.count { return try socket.write(UnsafeRawBufferPointer(rebasing: h[sent...]), data) }
                return try socket.write(UnsafeRawBufferPointer(rebasing: data[(sent - h.count)...]))
            }
            if let n {
                guard n > 0 else { throw SystemError("send", errno: 32, context: peer) }
                sent += n
            } else {
                try await loop.writable(socket.fileDescriptor, name: "NBD client \(peer)")
            }
        }
    }
}

/// Bytes received and not yet consumed.
struct InputBuffer {
    private var bytes = [UInt8](repeating: 0, count: 256 << 10)
    private var start = 0
    private var end = 0

    mutating func unread<T>(_ body: (UnsafeRawBufferPointer) throws(NBDProtocolError) -> T) throws(NBDProtocolError) -> T {
        let (start, end) = (self.start, self.end)
        let result = bytes.withUnsafeBytes { raw in
            Result { () throws(NBDProtocolError) -> T in try body(UnsafeRawBufferPointer(rebasing: raw[start..<end])) }
        }
        return try result.get()
    }

    mutating func consume(_ count: Int) {
        start += count
        if start == end { start = 0; end = 0 }
    }

    /// Reads until at least `atLeast` more bytes are here; false at the end of the stream.
    mutating func fill(from socket: StreamDescriptor, loop: EventLoop, atLeast: Int) async throws -> Bool {
        let wanted = end - start + max(atLeast, 1)
        if start > 0, bytes.count - start < wanted {
            bytes.withUnsafeMutableBytes { raw in raw.baseAddress!.copyMemory(from: raw.baseAddress! + start, byteCount: end - start) }
            end -= start
            start = 0
        }
        if bytes.count < wanted { bytes += [UInt8](repeating: 0, count: wanted - bytes.count) }
        let target = end + max(atLeast, 1)
        while end < target {
            let free = bytes.count - end
            let got: Int? = try bytes.withUnsafeMutableBytes { raw in try socket.read(into: UnsafeMutableRawBufferPointer(rebasing: raw[end..<(end + free)])) }
            switch got {
            case nil: try await loop.readable(socket.fileDescriptor, name: "NBD client \(socket.name)")
            case 0?: return false
            case let n?: end += n
            }
        }
        return true
    }

    /// Fills `target` (a WRITE's data) from what is buffered, then from `socket`; false at
    /// the end of the stream.
    mutating func take(into target: UnsafeMutableRawBufferPointer, from socket: StreamDescriptor, loop: EventLoop) async throws -> Bool {
        var done = 0
        while done < target.count {
            if start == end {
                // The rest of large data straight into the target, past the buffer.
                if target.count - done >= 16 << 10 {
                    switch try socket.read(into: UnsafeMutableRawBufferPointer(rebasing: target[done...])) {
                    case nil: try await loop.readable(socket.fileDescriptor, name: "NBD client \(socket.name)")
                    case 0?: return false
                    case let n?: done += n
                    }
                    continue
                }
                guard try await fill(from: socket, loop: loop, atLeast: 1) else { return false }
            }
            let piece = min(target.count - done, end - start)
            let from = start
            bytes.withUnsafeBytes { raw in (target.baseAddress! + done).copyMemory(from: raw.baseAddress! + from, byteCount: piece) }
            done += piece
            consume(piece)
        }
        return true
    }

    /// Drops the next `count` bytes (a refused WRITE's data); false at the end of the stream.
    mutating func skip(_ count: Int, from socket: StreamDescriptor, loop: EventLoop) async throws -> Bool {
        var left = count
        while left > 0 {
            if start == end { guard try await fill(from: socket, loop: loop, atLeast: 1) else { return false } }
            let piece = min(left, end - start)
            consume(piece)
            left -= piece
        }
        return true
    }
}
