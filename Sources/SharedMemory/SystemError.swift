#if canImport(Glibc)
import Glibc
#endif

/// A failed Linux call: which call, on what, and the errno it left.
public struct SystemError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The C function that failed.
    public let call: String
    /// The errno value.
    public let errno: Int32
    /// What it was working on.
    public let context: String

    public init(_ call: String, errno: Int32, context: String = "") {
        self.call = call
        self.errno = errno
        self.context = context
    }

    public var description: String {
        let reason = String(cString: strerror(errno))
        return context.isEmpty ? "\(call): \(reason)" : "\(call) (\(context)): \(reason)"
    }
}

/// Runs a libc call that returns -1 with errno on failure, retrying on EINTR.
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
