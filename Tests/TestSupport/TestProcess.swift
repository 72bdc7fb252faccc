import Glibc
import PVSystem
import Synchronization

/// A process a test started (a daemon, a guest, a tool): spawned with `posix_spawn` (no signal
/// blocked, SIGINT/SIGTERM/SIGPIPE at their defaults), its output discarded or written to a
/// file, and waited for without blocking a thread (its pidfd watched on an event loop), always
/// with a time limit. A process the test forgot is killed when the object goes.
public final class TestProcess: Sendable {
    public let path: String
    public let child: ChildProcess
    /// Where stdout and stderr went (nil: discarded).
    public let outputPath: String?
    private let status = Locked<Int32?>(nil)

    /// The child's process id.
    public var pid: pid_t { child.pid }

    /// Starts `path` with `arguments`; with `outputPath`, stdout and stderr go to that file
    /// (created or truncated), else to /dev/null.
    public init(_ path: String, _ arguments: [String], environment: [String: String]? = nil, outputPath: String? = nil) throws {
        let target = outputPath ?? "/dev/null"
        let fd = open(target, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw SystemError("open", errno: errno, context: target) }
        defer { close(fd) }
        self.path = path
        self.outputPath = outputPath
        child = try ChildProcess(path: path, arguments: arguments, environment: environment, output: fd)
    }

    /// Its exit status once it ended (128 + signal when one killed it), or nil while running.
    public var exitStatus: Int32? {
        if let known = status.withLock({ $0 }) { return known }
        guard let ended = try? child.exitStatus() else { return nil }
        status.withLock { $0 = ended }
        return ended
    }

    public var isRunning: Bool { exitStatus == nil }

    /// Waits for it to end, `timeout` at most; nil when it still runs then.
    public func exit(within timeout: Duration) async throws -> Int32? {
        if let known = exitStatus { return known }
        guard let ended = try await child.exit(within: timeout) else { return nil }
        status.withLock { $0 = ended }
        return ended
    }

    /// Sends `signal` and waits `timeout` for it to end. A process still running then is
    /// killed (SIGKILL) and nil returned: the caller records that as a failure.
    public func stop(with signal: Int32 = SIGTERM, within timeout: Duration = .seconds(10)) async throws -> Int32? {
        guard isRunning else { return exitStatus }
        child.signal(signal)
        if let ended = try await exit(within: timeout) { return ended }
        child.signal(SIGKILL)
        _ = try await exit(within: .seconds(10))
        return nil
    }

    /// What it wrote (when it wrote to a file).
    public var output: String {
        guard let outputPath, let text = try? readFile(outputPath) else { return "" }
        return text
    }

    deinit {
        if isRunning {
            child.signal(SIGKILL)
            _ = try? child.waitForExit()  // a killed process ends at once
        }
    }
}

/// Runs `tool` to its end, at most `timeout` (then it is killed): its status and what it
/// wrote to stdout and stderr.
public func runCommand(
    _ tool: String, _ arguments: [String], environment: [String: String]? = nil,
    timeout: Duration = .seconds(120)
) async throws -> (status: Int32, output: String) {
    let log = temporaryPath("pvkit-run")
    defer { unlink(log) }
    let process = try TestProcess(tool, arguments, environment: environment, outputPath: log)
    guard let status = try await process.exit(within: timeout) else {
        _ = try await process.stop(with: SIGKILL, within: .seconds(5))
        throw TimedOut(what: "\(tool) \(arguments.joined(separator: " "))", after: timeout)
    }
    return (status, process.output)
}

/// A command or a wait that ran past its limit.
public struct TimedOut: Error, CustomStringConvertible {
    public let what: String
    public let after: Duration
    public init(what: String, after: Duration) {
        self.what = what
        self.after = after
    }
    public var description: String { "\(what) did not finish within \(after)" }
}

/// Waits until `condition` holds, looking every 10 ms, `timeout` at most; whether it held. The
/// default is generous: `make test` runs every suite at once on two cores (a guest process took
/// over 5 s to attach while the disk-image tier was writing 2 GiB images).
public func eventually(within timeout: Duration = .seconds(30), _ condition: () async throws -> Bool) async rethrows -> Bool {
    let deadline = MonotonicClock.now() &+ MonotonicClock.nanoseconds(timeout)
    while true {
        if try await condition() { return true }
        if MonotonicClock.now() >= deadline { return false }
        try? await Task.sleep(for: .milliseconds(10))
    }
}

/// A fresh path in the temporary directory (`$TMPDIR` or /tmp).
public func temporaryPath(_ prefix: String) -> String {
    let directory = ProcessEnvironment.value("TMPDIR").flatMap { $0.isEmpty ? nil : $0 } ?? "/tmp"
    return "\(directory)/\(prefix)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
}

/// A file's contents as UTF-8.
public func readFile(_ path: String) throws -> String {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw SystemError("open", errno: errno, context: path) }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = read(fd, &buffer, buffer.count)
        if n > 0 { bytes += buffer[0..<n]; continue }
        if n < 0 && errno == EINTR { continue }
        break
    }
    return String(decoding: bytes, as: UTF8.self)
}
