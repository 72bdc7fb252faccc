import XenABI

/// A xenstore path as a client writes it: absolute (`/local/domain/1/name`), relative to the
/// connection's home (`device/vbd/51712`), or one of the two special watch paths. Checked
/// against xenstored's rules when made, so a bad path is an error before it reaches the wire.
public struct XenStorePath: Hashable, Sendable, CustomStringConvertible, ExpressibleByStringLiteral {
    public let rawValue: String

    /// The special path fired when a domain is introduced. C: `@introduceDomain`.
    public static let introduceDomain = XenStorePath(unchecked: "@introduceDomain")
    /// The special path fired when a domain is released or dies. C: `@releaseDomain`.
    public static let releaseDomain = XenStorePath(unchecked: "@releaseDomain")

    /// Checks a path: allowed characters `A–Z a–z 0–9 - / _ @`, no empty path, no `//`, no
    /// trailing `/` (except "/"), within the length limits; `@…` only for the special paths.
    public init(_ text: String) throws(XenStoreWireError) {
        guard !text.isEmpty else { throw .invalidPath(text, "empty") }
        if text.hasPrefix("@") {
            guard text == "@introduceDomain" || text == "@releaseDomain" else { throw .invalidPath(text, "unknown special path") }
            rawValue = text
            return
        }
        for byte in text.utf8 {
            let ok =
                (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A) || (byte >= 0x30 && byte <= 0x39)
                || byte == 0x2D || byte == 0x2F || byte == 0x5F || byte == 0x40
            guard ok else {
                throw .invalidPath(
                    text, "character \(byte < 0x20 || byte >= 0x7F ? "0x" + String(byte, radix: 16) : String(UnicodeScalar(byte))) is not allowed")
            }
        }
        guard !text.contains("//") else { throw .invalidPath(text, "empty component (//)") }
        guard text == "/" || !text.hasSuffix("/") else { throw .invalidPath(text, "trailing /") }
        let limit = text.hasPrefix("/") ? XsWire.absolutePathMax : XsWire.relativePathMax
        guard text.utf8.count <= limit else { throw .invalidPath(text, "longer than \(limit) bytes") }
        rawValue = text
    }

    init(unchecked text: String) { rawValue = text }

    public init(stringLiteral value: String) {
        do { try self.init(value) } catch { preconditionFailure("invalid xenstore path literal \"\(value)\": \(error)") }
    }

    public var isAbsolute: Bool { rawValue.hasPrefix("/") }
    public var isSpecial: Bool { rawValue.hasPrefix("@") }

    /// The absolute path, resolving a relative one against `home` (`/local/domain/<id>`).
    public func resolved(home: XenStorePath) -> XenStorePath {
        guard !isAbsolute, !isSpecial else { return self }
        return XenStorePath(unchecked: home.rawValue == "/" ? "/" + rawValue : home.rawValue + "/" + rawValue)
    }

    /// The home of a domain. C xenstored: `/local/domain/<domid>`.
    public static func home(of domain: DomainID) -> XenStorePath { XenStorePath(unchecked: "/local/domain/\(domain.rawValue)") }

    public var description: String { rawValue }
}

/// One entry of a node's permission list: `n`, `r`, `w` or `b`, then a domain id.
public struct XenStorePermission: Hashable, Sendable, CustomStringConvertible {
    public enum Access: Character, Sendable, CaseIterable {
        case none = "n", read = "r", write = "w", both = "b"
        public var canRead: Bool { self == .read || self == .both }
        public var canWrite: Bool { self == .write || self == .both }
    }

    public var access: Access
    public var domain: DomainID

    public init(_ access: Access, _ domain: DomainID) {
        self.access = access
        self.domain = domain
    }

    /// Parses `r5`, `b0`, …
    public init(_ text: some StringProtocol) throws(XenStoreWireError) {
        guard let first = text.first, let access = Access(rawValue: first) else { throw .invalidPermission(String(text)) }
        let digits = text.dropFirst()
        guard !digits.isEmpty, digits.allSatisfy({ $0.isASCII && $0.isNumber }), let id = UInt16(digits),
            id < DomainID.firstReserved.rawValue || id == UInt16.max
        else {
            throw .invalidPermission(String(text))
        }
        self.access = access
        self.domain = DomainID(id)
    }

    public var description: String { "\(access.rawValue)\(domain.rawValue)" }
}

/// A node's permissions: the first entry names the owner and the access of everyone else.
public struct XenStorePermissions: Hashable, Sendable, CustomStringConvertible {
    public var entries: [XenStorePermission]

    public init(_ entries: [XenStorePermission]) throws(XenStoreWireError) {
        guard !entries.isEmpty else { throw .invalidPermission("(empty list)") }
        self.entries = entries
    }

    public var owner: DomainID { entries[0].domain }

    /// The access of `domain`: the owner has everything; an entry of its own, else the first entry's.
    public func access(for domain: DomainID) -> XenStorePermission.Access {
        if domain == owner { return .both }
        return entries.dropFirst().first { $0.domain == domain }?.access ?? entries[0].access
    }

    public var description: String { entries.map(\.description).joined(separator: ",") }
}
