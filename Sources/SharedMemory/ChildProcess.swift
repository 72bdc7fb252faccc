#if canImport(Glibc)
import Glibc
#endif

/// A child process that inherits this process's non-CLOEXEC descriptors (shared regions and
/// eventfds made `inheritable`), the simplest way to hand a peer the same memory.
public struct ChildProcess: Sendable {
    /// The child's process id.
    public let pid: pid_t

    /// Starts `path` with `arguments` (argv[1...]) and this process's environment.
    /// C: `posix_spawn`.
    public init(path: String, arguments: [String]) throws(SystemError) {
        var argv: [UnsafeMutablePointer<CChar>?] = ([path] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var child: pid_t = 0
        let result = posix_spawn(&child, path, nil, nil, &argv, environ)
        guard result == 0 else { throw SystemError("posix_spawn", errno: result, context: path) }
        pid = child
    }

    /// Waits for the child to end.
    ///
    /// - Returns: its exit status, or 128 + the signal that killed it.
    public func waitForExit() throws(SystemError) -> Int32 {
        var status: Int32 = 0
        _ = try retryingSyscall("waitpid", context: "pid \(pid)") { Int(waitpid(pid, &status, 0)) }
        let signal = status & 0x7F
        return signal == 0 ? (status >> 8) & 0xFF : 128 + signal
    }

    /// The path of the running executable (`/proc/self/exe`), to find programs built beside it.
    public static func currentExecutablePath() -> String? {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let length = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard length > 0 else { return nil }
        return String(decoding: buffer[0..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
