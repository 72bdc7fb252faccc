import Glibc

/// This process's environment variables.
public enum ProcessEnvironment {
    /// The value of `name`, if set. C: `getenv`.
    public static func value(_ name: String) -> String? {
        getenv(name).map { String(cString: $0) }
    }
}
