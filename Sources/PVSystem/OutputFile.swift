import Glibc

/// A file written from its start, in order (a capture, a log): created or truncated when
/// opened, each ``append(_:)`` one `write` loop that finishes or throws.
public final class OutputFile: Sendable {
    /// The path it was opened at.
    public let path: String
    private let descriptor: Int32

    /// Creates (or truncates) `path`, mode 0644.
    public init(creating path: String) throws(SystemError) {
        descriptor = try retryingSyscall32("open", context: path) { open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644) }
        self.path = path
    }

    deinit { _ = close(descriptor) }  // close(2) releases the descriptor even when it reports an error

    /// Writes all of `bytes` after what was written before.
    public func append(_ bytes: [UInt8]) throws(SystemError) {
        let failure: SystemError? = bytes.withUnsafeBytes { buffer in
            var done = 0
            while done < buffer.count {
                do throws(SystemError) {
                    done += try retryingSyscall("write", context: path) { write(descriptor, buffer.baseAddress! + done, buffer.count - done) }
                } catch {
                    return error
                }
            }
            return nil
        }
        if let failure { throw failure }
    }
}
