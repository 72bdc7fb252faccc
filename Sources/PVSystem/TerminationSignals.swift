import Glibc
import CLinux

/// SIGINT and SIGTERM for a long-running tool (a daemon, a bridge), delivered to ordinary code.
///
/// Catch them first, before the tool announces itself (creates its socket, prints its banner):
/// from the moment ``catchSignals()`` returns each one is noted, never ignored and never lost,
/// however soon it comes. A supervisor that starts the tool, sees it ready and stops it at
/// once is answered. (The usual `signal(SIGTERM, SIG_IGN)` followed by a dispatch source drops a
/// signal that arrives between the two: a test saw `pvhost xenstored` outlive its SIGTERM so.)
///
/// ```swift
/// let signals = try TerminationSignals.catchSignals()
/// let server = try Server(path: socket)
/// try server.start()
/// _ = try await signals.next()
/// await server.stop()
/// ```
public final class TerminationSignals: Sendable {
    /// The signals caught.
    public static let numbers: [Int32] = [SIGINT, SIGTERM]

    private let readEnd: Int32

    private init(readEnd: Int32) { self.readEnd = readEnd }

    /// Catches SIGINT and SIGTERM for the rest of the process's life (one handler per process:
    /// call it once). Throws the errno of a failed `pipe2` or `sigaction`.
    public static func catchSignals() throws(Failure) -> TerminationSignals {
        var ends: [Int32] = [-1, -1]
        guard pipe2(&ends, O_CLOEXEC | O_NONBLOCK) == 0 else { throw Failure(step: "pipe2", errno: errno) }
        // Both ends non-blocking: the handler must never block (a full pipe just means a stop
        // is already pending), and the reader waits on an event loop.
        for number in numbers where pvkit_signal_catch(number, ends[1]) != 0 {
            throw Failure(step: "sigaction(\(number))", errno: errno)
        }
        return TerminationSignals(readEnd: ends[0])
    }

    /// Waits for the next signal and returns its number (blocks the calling thread: a tool's
    /// main thread, never Swift's cooperative pool).
    public func next() -> Int32 {
        var byte: UInt8 = 0
        while true {
            let count = read(readEnd, &byte, 1)
            if count == 1 { return Int32(byte) }
            if count < 0 && errno == EINTR { continue }
            if count < 0 && errno == EAGAIN {
                var entry = pollfd(fd: readEnd, events: Int16(POLLIN), revents: 0)
                _ = poll(&entry, 1, -1)
                continue
            }
            // The read end is never closed while this object lives; a failure here is a bug.
            preconditionFailure("reading the signal pipe failed: errno \(errno)")
        }
    }

    /// Waits for the next signal without a thread (the pipe watched on an event loop) and
    /// returns its number.
    ///
    /// - Throws: `CancellationError` when the task is cancelled.
    public func next(on loop: EventLoop = EventLoopGroup.shared.next()) async throws -> Int32 {
        var byte: UInt8 = 0
        while true {
            let count = read(readEnd, &byte, 1)
            if count == 1 { return Int32(byte) }
            if count < 0 && Glibc.errno == EINTR { continue }
            try await loop.readable(readEnd, name: "SIGINT/SIGTERM pipe")
        }
    }

    /// Setting up the handler failed.
    public struct Failure: Error, CustomStringConvertible, Sendable {
        /// The call that failed.
        public let step: String
        /// Its errno.
        public let errno: Int32
        public var description: String { "catching SIGINT/SIGTERM: \(step) failed: \(String(cString: strerror(errno)))" }
    }
}

/// A write to a closed socket or pipe fails with `EPIPE` instead of killing the process
/// (C: `signal(SIGPIPE, SIG_IGN)`): for daemons whose clients may vanish.
public func ignoreBrokenPipes() {
    signal(SIGPIPE, SIG_IGN)
}
