import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Testing

/// Sends `signal` to `process` and waits for it to exit, `seconds` at most. A process still
/// running then is killed (SIGKILL) and the test records it: a tool that outlives its SIGTERM
/// is a failure to report, never a test run that hangs.
func stop(_ process: Process, with signal: Int32 = SIGTERM, within seconds: Double = 10, sourceLocation: SourceLocation = #_sourceLocation) {
    guard process.isRunning else { return }
    let name = process.executableURL?.lastPathComponent ?? "process"
    kill(process.processIdentifier, signal)
    let deadline = Date().addingTimeInterval(seconds)
    while process.isRunning && Date() < deadline { usleep(10_000) }
    if process.isRunning {
        Issue.record("\(name) \(process.arguments?.first ?? "") was still running \(seconds) s after signal \(signal); killed", sourceLocation: sourceLocation)
        kill(process.processIdentifier, SIGKILL)
    }
    process.waitUntilExit()
}
