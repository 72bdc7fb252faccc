import XenABI
import XenStore

/// A transaction, sans I/O: it works on its own copy of the tree, records every path it read
/// or changed with the generation it saw, and at commit replays its changes on the live tree —
/// unless one of those paths changed meanwhile: then EAGAIN and nothing is applied (C
/// xenstored's behaviour; oxenstored would try to coalesce).
public struct XenStoreTransaction: Sendable {
    public let id: UInt32
    public let caller: XenStoreCaller
    private var view: XenStoreTree
    private var seen: [String: UInt64] = [:]
    private enum Change: Sendable {
        case write(String, [UInt8]), mkdir(String), remove(String), setPermissions(String, XenStorePermissions)
    }
    private var changes: [Change] = []

    public init(id: UInt32, caller: XenStoreCaller, base: XenStoreTree) {
        self.id = id
        self.caller = caller
        self.view = base
    }

    private mutating func note(_ path: String, in base: XenStoreTree) {
        if seen[path] == nil { seen[path] = base.nodeGeneration(path) }
        if let parent = XenStoreTree.parent(of: path), seen[parent] == nil { seen[parent] = base.nodeGeneration(parent) }
    }

    public mutating func read(_ path: String, base: XenStoreTree) throws(XsErrorName) -> [UInt8] {
        note(path, in: base)
        return try view.read(path, caller: caller)
    }

    public mutating func directory(_ path: String, base: XenStoreTree) throws(XsErrorName) -> [String] {
        note(path, in: base)
        return try view.directory(path, caller: caller)
    }

    public mutating func write(_ path: String, value: [UInt8], base: XenStoreTree) throws(XsErrorName) {
        note(path, in: base)
        try view.write(path, value: value, caller: caller)
        changes.append(.write(path, value))
    }

    public mutating func mkdir(_ path: String, base: XenStoreTree) throws(XsErrorName) {
        note(path, in: base)
        try view.mkdir(path, caller: caller)
        changes.append(.mkdir(path))
    }

    public mutating func remove(_ path: String, base: XenStoreTree) throws(XsErrorName) {
        note(path, in: base)
        try view.remove(path, caller: caller)
        changes.append(.remove(path))
    }

    public mutating func setPermissions(_ path: String, _ permissions: XenStorePermissions, base: XenStoreTree) throws(XsErrorName) {
        note(path, in: base)
        try view.setPermissions(path, permissions, caller: caller)
        changes.append(.setPermissions(path, permissions))
    }

    /// TRANSACTION_END with T: applies the changes to `tree` if nothing this transaction
    /// touched changed since; otherwise EAGAIN and `tree` is untouched.
    /// - Returns: the changed paths (for watches) and whether each was a removal.
    public func commit(to tree: inout XenStoreTree) throws(XsErrorName) -> [(path: String, removal: Bool)] {
        for (path, generation) in seen where tree.nodeGeneration(path) != generation { throw .EAGAIN }
        var result = tree
        var fired: [(String, Bool)] = []
        for change in changes {
            switch change {
            case let .write(path, value): fired += try result.write(path, value: value, caller: caller).map { ($0, false) }
            case let .mkdir(path): fired += try result.mkdir(path, caller: caller).map { ($0, false) }
            case let .remove(path):
                let removed = try result.remove(path, caller: caller)
                if !removed.isEmpty { fired.append((path, true)) }
            case let .setPermissions(path, permissions):
                try result.setPermissions(path, permissions, caller: caller)
                fired.append((path, false))
            }
        }
        tree = result
        return fired
    }
}
