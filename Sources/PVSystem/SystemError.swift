import Glibc
import SystemPackage

/// A failed Linux call: which call, on what, and the errno it left (as swift-system's
/// `Errno`, so callers can match `.wouldBlock`, `.connectionReset`, …).
public struct SystemError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The C function that failed (`epoll_ctl`, `mmap`, `ioctl(IOCTL_EVTCHN_NOTIFY)`).
    public let call: String
    /// The error it reported.
    public let errno: Errno
    /// What it was working on: a path, a descriptor's role, a port.
    public let context: String

    public init(_ call: String, errno: Errno, context: String = "") {
        self.call = call
        self.errno = errno
        self.context = context
    }

    /// The same, from a raw errno value.
    public init(_ call: String, errno code: Int32, context: String = "") {
        self.init(call, errno: Errno(rawValue: code), context: context)
    }

    /// The raw errno value (C: `errno`).
    public var code: Int32 { errno.rawValue }

    public var description: String {
        context.isEmpty ? "\(call): \(errno)" : "\(call) (\(context)): \(errno)"
    }
}

/// The one EINTR rule of the project: a call interrupted by a signal is made again; any other
/// failure is thrown with the call's name and what it worked on. `body` returns -1 and sets
/// errno on failure, as libc does.
@inline(__always)
func retryingSyscall(_ call: String, context: @autoclosure () -> String = "", _ body: () -> Int) throws(SystemError) -> Int {
    while true {
        let result = body()
        if result != -1 { return result }
        let code = Glibc.errno
        if code == EINTR { continue }
        throw SystemError(call, errno: code, context: context())
    }
}

/// The same rule for a call that returns an `Int32` result.
@inline(__always)
func retryingSyscall32(_ call: String, context: @autoclosure () -> String = "", _ body: () -> Int32) throws(SystemError) -> Int32 {
    Int32(truncatingIfNeeded: try retryingSyscall(call, context: context(), { Int(body()) }))
}
