import XenABI

/// What is wrong with a xenstore message or one of its parts.
public enum XenStoreWireError: Error, Equatable, Sendable, CustomStringConvertible {
    /// A header announcing more than `XENSTORE_PAYLOAD_MAX` (4096) bytes: the connection must end.
    case payloadTooLarge(length: UInt32, limit: Int)
    /// A payload that does not have the shape its message type requires.
    case malformedPayload(type: String, what: String)
    case invalidPath(String, String)
    case invalidPermission(String)
    /// An ERROR reply whose payload names no known error.
    case unknownErrorName(String)

    public var description: String {
        switch self {
        case let .payloadTooLarge(length, limit): "payload of \(length) bytes is over the xenstore limit of \(limit)"
        case let .malformedPayload(type, what): "malformed \(type) payload: \(what)"
        case let .invalidPath(path, why): "invalid xenstore path \"\(path)\": \(why)"
        case let .invalidPermission(text): "invalid xenstore permission \"\(text)\" (expected n, r, w or b followed by a domain id)"
        case let .unknownErrorName(name): "unknown xenstore error \"\(name)\""
        }
    }
}
