import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Runs `tool` with `arguments` to its end: its exit status (128 + the signal when one killed
/// it) and everything it wrote to stdout and stderr; stdin is /dev/null. The child starts with
/// no signal blocked and SIGINT, SIGTERM and SIGPIPE at their defaults, whatever this process's
/// threads have. Spawned with posix_spawn, not Foundation's `Process`: 6.3.1's `Process.run()`
/// reads 256 bytes from each /proc/self/fd record, past glibc's buffer when a process holds
/// ~1 350 descriptors, and crashed a CI run so (swift-corelibs-foundation PR #5472).
func runCommand(_ tool: String, _ arguments: [String], environment: [String: String]? = nil) throws -> (status: Int32, output: String) {
    var ends: [Int32] = [-1, -1]
    guard pipe(&ends) == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
    _ = fcntl(ends[0], F_SETFD, FD_CLOEXEC)
    _ = fcntl(ends[1], F_SETFD, FD_CLOEXEC)
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_adddup2(&actions, ends[1], 1)
    posix_spawn_file_actions_adddup2(&actions, ends[1], 2)
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
    let argv: [UnsafeMutablePointer<CChar>?] = ([tool] + arguments).map { strdup($0) } + [nil]
    defer { for pointer in argv { free(pointer) } }
    let envp: [UnsafeMutablePointer<CChar>?]? = environment.map { $0.map { strdup("\($0.key)=\($0.value)") } + [nil] }
    defer { for pointer in envp ?? [] { free(pointer) } }
    var pid: pid_t = 0
    let spawned = envp.map { posix_spawn(&pid, tool, &actions, &attributes, argv, $0) } ?? posix_spawn(&pid, tool, &actions, &attributes, argv, environ)
    close(ends[1])
    guard spawned == 0 else {
        close(ends[0])
        throw POSIXError(POSIXErrorCode(rawValue: spawned) ?? .EIO, userInfo: [NSFilePathErrorKey: tool])
    }
    var output: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let count = read(ends[0], &buffer, buffer.count)
        if count > 0 { output += buffer[0..<count] } else if count < 0 && errno == EINTR { continue } else { break }
    }
    close(ends[0])
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    let signal = status & 0x7F
    return (signal == 0 ? (status >> 8) & 0xFF : 128 + signal, String(decoding: output, as: UTF8.self))
}
