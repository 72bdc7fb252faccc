/// Why an image could not be audited: what went wrong, where (a byte offset when there is
/// one), and what to do about it. Every hostile or broken input ends in one of these.
public struct KernelAuditError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The kind of failure, stable across releases (JSON `error.code`).
    public enum Code: String, Sendable, Codable {
        case unreadable
        case notAFile
        case empty
        case truncated
        case notAKernel
        case corruptStream
        case outputLimitExceeded
        case badELF
        case badHeader
        case unsupported
        /// A disk image or guest root that is damaged, has no readable root, or no kernel.
        case badDiskImage
        case noKernel
        /// Reading it needs root (a loop mount).
        case needsPrivilege
    }

    public let code: Code
    /// What went wrong, in one line.
    public let message: String
    /// The byte offset in the input (or in the decompressed payload, as the message says).
    public let offset: Int?
    /// What the user can do.
    public let hint: String

    public init(_ code: Code, _ message: String, offset: Int? = nil, hint: String) {
        self.code = code
        self.message = message
        self.offset = offset
        self.hint = hint
    }

    public var description: String {
        let place = offset.map { " at byte \($0)" } ?? ""
        return "\(message)\(place). \(hint)"
    }
}
