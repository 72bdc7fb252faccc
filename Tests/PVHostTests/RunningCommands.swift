import Foundation
#if canImport(Glibc)
import Glibc
#endif
import PVSystem

/// Runs `tool` with `arguments` to its end: its exit status (128 + the signal when one killed
/// it) and everything it wrote to stdout and stderr; stdin is /dev/null. Spawned through
/// ``ChildProcess`` (posix_spawn), not Foundation's `Process`: 6.3.1's `Process.run()` reads
/// 256 bytes from each /proc/self/fd record, past glibc's buffer when a process holds ~1 350
/// descriptors, and crashed a CI run so (swift-corelibs-foundation PR #5472).
func runCommand(_ tool: String, _ arguments: [String], environment: [String: String]? = nil) throws -> (status: Int32, output: String) {
    var ends: [Int32] = [-1, -1]
    guard pipe(&ends) == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
    _ = fcntl(ends[0], F_SETFD, FD_CLOEXEC)
    _ = fcntl(ends[1], F_SETFD, FD_CLOEXEC)
    let child: ChildProcess
    do { child = try ChildProcess(path: tool, arguments: arguments, environment: environment, output: ends[1]) } catch {
        close(ends[0]); close(ends[1])
        throw error
    }
    close(ends[1])
    var output: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let count = read(ends[0], &buffer, buffer.count)
        if count > 0 { output += buffer[0..<count] } else if count < 0 && errno == EINTR { continue } else { break }
    }
    close(ends[0])
    return (try child.waitForExit(), String(decoding: output, as: UTF8.self))
}
