import PVSystem

/// The project's executables, built beside the test bundle (`swift build --build-tests`).
public enum Binaries {
    /// The directory of the running test executable.
    public static var directory: String {
        let me = ChildProcess.currentExecutablePath() ?? CommandLine.arguments[0]
        return String(me[..<(me.lastIndex(of: "/") ?? me.endIndex)])
    }

    /// The path of executable `name` beside the tests.
    public static func path(_ name: String) -> String { directory + "/" + name }
}
