/// Why a guest's files could not be read: what failed, where, and what to do.
public struct GuestFileError: Error, Sendable, CustomStringConvertible {
    public enum Code: String, Sendable, Codable {
        /// The image or directory cannot be opened or read.
        case unreadable
        /// A disk image format pvcheck reads, but this image uses a feature it does not (backing file, encryption).
        case unsupported
        /// The image, partition table or file system is damaged or lies about its layout.
        case damaged
        /// No partition holds a file system pvcheck can read as a guest root.
        case noRoot
        /// A path inside the guest does not exist, loops, or is not what was asked for.
        case notFound
        /// The file is larger than the limit given to read it.
        case tooLarge
        /// Reading needs something this process does not have (root for a loop mount).
        case needsPrivilege
    }

    public let code: Code
    /// What went wrong, naming the thing it went wrong on.
    public let message: String
    /// What to do about it.
    public let hint: String

    public init(_ code: Code, _ message: String, hint: String) {
        self.code = code
        self.message = message
        self.hint = hint
    }

    public var description: String { "\(message) (\(hint))" }
}
