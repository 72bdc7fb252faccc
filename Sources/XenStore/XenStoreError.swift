import PVSystem
import XenABI

/// What went wrong with a xenstore operation, as a client sees it: the daemon's error replies
/// by meaning (with the path they concern), a request that could not be framed, or a
/// connection that failed. Every case says what to do in its description.
public enum XenStoreError: Error, Equatable, Sendable, CustomStringConvertible {
    /// ENOENT: the node (or its parent, or the transaction) does not exist.
    case noEntry(String)
    /// EACCES: the caller's domain may not do this to the node.
    case accessDenied(String)
    /// EEXIST: e.g. the same watch (path, token) registered twice.
    case alreadyExists(String)
    /// ENOSPC: a quota (nodes, node size, transactions) was hit.
    case quotaExceeded(String)
    /// E2BIG: a reply would be over the payload limit, or too many watches.
    case tooBig(String)
    /// EAGAIN: a transaction conflicted with another writer and was retried `attempts` times.
    case transactionConflict(attempts: Int)
    /// Any other error the daemon named (EINVAL, ENOSYS, EBUSY, …) for a request.
    case daemon(XsErrorName, request: String)
    /// The request cannot be put on the wire (bad path, too long for the transport, …).
    case invalidRequest(XenStoreWireError)
    /// The daemon's reply does not fit the request (a lying or broken daemon).
    case badReply(String)
    /// The connection is gone (the daemon closed it, or the client was closed).
    case connectionClosed(String)
    /// No xenstore could be reached: the places tried and why each failed.
    case unreachable([String])
    /// A system call failed (which, on what, and its errno).
    case system(SystemError)

    /// Maps an ERROR reply for `request` on `path` to its case.
    public static func from(_ name: XsErrorName, request: XsMessageType, path: String?) -> XenStoreError {
        let subject = path ?? request.description
        switch name {
        case .ENOENT: return .noEntry(subject)
        case .EACCES: return .accessDenied(subject)
        case .EEXIST: return .alreadyExists(subject)
        case .ENOSPC: return .quotaExceeded(subject)
        case .E2BIG: return .tooBig(subject)
        case .EAGAIN: return .transactionConflict(attempts: 1)
        default: return .daemon(name, request: path.map { "\(request) \($0)" } ?? request.description)
        }
    }

    /// The errno name the daemon used, when this came from an ERROR reply.
    public var errorName: XsErrorName? {
        switch self {
        case .noEntry: .ENOENT
        case .accessDenied: .EACCES
        case .alreadyExists: .EEXIST
        case .quotaExceeded: .ENOSPC
        case .tooBig: .E2BIG
        case .transactionConflict: .EAGAIN
        case let .daemon(name, _): name
        default: nil
        }
    }

    public var description: String {
        switch self {
        case let .noEntry(path): "\(path): no such xenstore node (ENOENT)"
        case let .accessDenied(path): "\(path): permission denied (EACCES); check the node's permissions (pvstore ls -p)"
        case let .alreadyExists(path): "\(path): already exists (EEXIST)"
        case let .quotaExceeded(path): "\(path): xenstore quota exceeded (ENOSPC); remove nodes or raise the domain's quota"
        case let .tooBig(path): "\(path): reply or watch count over the daemon's limit (E2BIG)"
        case let .transactionConflict(attempts): "transaction conflicted with other writers (EAGAIN) \(attempts) time(s); retry later"
        case let .daemon(name, request): "\(request): xenstored answered \(name.rawValue)"
        case let .invalidRequest(error): "invalid request: \(error)"
        case let .badReply(what): "xenstored sent a reply that does not fit the request: \(what)"
        case let .connectionClosed(why): "xenstore connection closed: \(why)"
        case let .unreachable(tried): "no xenstore reachable; tried \(tried.joined(separator: "; ")). Is xenstored running? Set XENSTORED_PATH to its socket."
        case let .system(error): "\(error)"
        }
    }
}
