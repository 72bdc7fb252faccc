#if canImport(Glibc)
import Glibc
#endif
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
/// signals.onSignal { _ in server.stop() }
/// server.run()
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
        guard pipe2(&ends, O_CLOEXEC) == 0 else { throw Failure(step: "pipe2", errno: errno) }
        // The handler must never block: a full pipe just means a stop is already pending.
        _ = fcntl(ends[1], F_SETFL, fcntl(ends[1], F_GETFL) | O_NONBLOCK)
        for number in numbers where pvkit_signal_catch(number, ends[1]) != 0 {
            throw Failure(step: "sigaction(\(number))", errno: errno)
        }
        return TerminationSignals(readEnd: ends[0])
    }

    /// Waits for the next signal and returns its number (blocks the calling thread).
    public func next() -> Int32 {
        var byte: UInt8 = 0
        while true {
            let count = read(readEnd, &byte, 1)
            if count == 1 { return Int32(byte) }
            if count < 0 && errno == EINTR { continue }
            // The read end is never closed while this object lives; a failure here is a bug.
            preconditionFailure("reading the signal pipe failed: errno \(errno)")
        }
    }

    /// Calls `handler` with each signal's number, on a thread of its own (never Swift's
    /// cooperative pool), for the rest of the process's life.
    public func onSignal(_ handler: @escaping @Sendable (Int32) -> Void) {
        let box = Unmanaged.passRetained(Handler(signals: self, body: handler)).toOpaque()
        var thread = pthread_t()
        let result = pthread_create(&thread, nil, { raw in
            let handler = Unmanaged<Handler>.fromOpaque(raw!).takeRetainedValue()
            while true { handler.body(handler.signals.next()) }
        }, box)
        precondition(result == 0, "pthread_create failed: \(result)")
        pthread_detach(thread)
    }

    /// Setting up the handler failed.
    public struct Failure: Error, CustomStringConvertible, Sendable {
        /// The call that failed.
        public let step: String
        /// Its errno.
        public let errno: Int32
        public var description: String { "catching SIGINT/SIGTERM: \(step) failed: \(String(cString: strerror(errno)))" }
    }

    private final class Handler: Sendable {
        let signals: TerminationSignals
        let body: @Sendable (Int32) -> Void
        init(signals: TerminationSignals, body: @escaping @Sendable (Int32) -> Void) { self.signals = signals; self.body = body }
    }
}
