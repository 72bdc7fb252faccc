import CLinux
import Glibc

/// A child process that inherits this process's non-CLOEXEC descriptors (shared regions and
/// eventfds made `inheritable`), the simplest way to hand a peer the same memory.
public struct ChildProcess: Sendable {
    /// The child's process id.
    public let pid: pid_t

    /// Starts `path` with `arguments` (argv[1...]) and this process's environment (or
    /// `environment`). With `output`, the child's stdout and stderr are that descriptor and its
    /// stdin is /dev/null. The child starts with no signal blocked and SIGINT, SIGTERM and
    /// SIGPIPE at their defaults, whatever the calling thread has (libdispatch's threads block
    /// nearly every signal, and a mask survives exec). C: `posix_spawn`.
    public init(path: String, arguments: [String], environment: [String: String]? = nil, output: Int32? = nil) throws(SystemError) {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if let output {
            posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
            posix_spawn_file_actions_adddup2(&actions, output, 1)
            posix_spawn_file_actions_adddup2(&actions, output, 2)
        }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var none = sigset_t(), defaults = sigset_t()
        sigemptyset(&none)
        sigemptyset(&defaults)
        for number in [SIGINT, SIGTERM, SIGPIPE] { sigaddset(&defaults, number) }
        posix_spawnattr_setsigmask(&attributes, &none)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        var argv: [UnsafeMutablePointer<CChar>?] = ([path] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var envp: [UnsafeMutablePointer<CChar>?]? = environment.map { $0.map { strdup("\($0.key)=\($0.value)") } + [nil] }
        defer { for pointer in envp ?? [] { free(pointer) } }
        var child: pid_t = 0
        let result =
            envp == nil
            ? posix_spawn(&child, path, &actions, &attributes, &argv, environ)
            : posix_spawn(&child, path, &actions, &attributes, &argv, &envp!)
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

    /// Whether the child has ended; if so its status (as ``waitForExit()``), reaped. Never blocks.
    public func exitStatus() throws(SystemError) -> Int32? {
        var status: Int32 = 0
        let reaped = try retryingSyscall("waitpid", context: "pid \(pid)") { Int(waitpid(pid, &status, WNOHANG)) }
        guard reaped == pid else { return nil }
        let signal = status & 0x7F
        return signal == 0 ? (status >> 8) & 0xFF : 128 + signal
    }

    /// Waits for the child to end without a thread (its pidfd watched on an event loop), at
    /// most `timeout`; returns its status, or nil when it still runs then (not reaped).
    ///
    /// - Throws: ``SystemError`` from `pidfd_open` or `waitpid`; `CancellationError`.
    public func exit(within timeout: Duration? = nil, on loop: EventLoop = EventLoopGroup.shared.next()) async throws -> Int32? {
        if let status = try exitStatus() { return status }
        let fd = try retryingSyscall32("pidfd_open", context: "pid \(pid)") { pvkit_pidfd_open(pid) }
        defer { close(fd) }
        guard try await loop.readable(fd, name: "pid \(pid)", timeout: timeout) else { return try exitStatus() }
        return try exitStatus() ?? waitForExit()
    }

    /// Sends `signal` to the child. C: `kill`. An ended child (not yet reaped) takes it silently.
    public func signal(_ signal: Int32) {
        _ = kill(pid, signal)
    }

    /// Runs `path` to its end and returns its status and everything it wrote to stdout and
    /// stderr (stdin is /dev/null); the output is read on an event loop, no thread waits.
    public static func run(
        _ path: String, _ arguments: [String], environment: [String: String]? = nil,
        on loop: EventLoop = EventLoopGroup.shared.next()
    ) async throws -> (status: Int32, output: String) {
        var ends: [Int32] = [-1, -1]
        _ = try retryingSyscall32("pipe2") { pipe2(&ends, O_CLOEXEC) }
        let reader = StreamDescriptor(adopting: ends[0], isSocket: false, name: "\(path)'s output")
        let child: ChildProcess
        do { child = try ChildProcess(path: path, arguments: arguments, environment: environment, output: ends[1]) } catch {
            close(ends[1])
            throw error
        }
        close(ends[1])
        var output: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = try buffer.withUnsafeMutableBytes { try reader.read(into: $0) }
            if let count {
                if count == 0 { break }
                output += buffer[0..<count]
            } else {
                try await loop.readable(reader.fileDescriptor, name: "\(path)'s output")
            }
        }
        let status = try await child.exit(on: loop) ?? child.waitForExit()
        return (status, String(decoding: output, as: UTF8.self))
    }

    /// Whether `path` is an executable file. C: `access(path, X_OK)`.
    public static func isExecutable(_ path: String) -> Bool { access(path, X_OK) == 0 }

    /// The path of the running executable (`/proc/self/exe`), to find programs built beside it.
    public static func currentExecutablePath() -> String? {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let length = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard length > 0 else { return nil }
        return String(decoding: buffer[0..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
