import XenABI
import XenStoreWire

/// A transaction, sans I/O. It keeps only the nodes it touched (an overlay over the live tree,
/// so starting one costs nothing), records the
/// generation of every node it read or changed, and at commit replays its changes on the live
/// tree all or nothing — unless one of those nodes changed meanwhile: then EAGAIN and nothing
/// is applied. This is C xenstored's behaviour (abort on conflict); oxenstored would instead
/// try to coalesce non-overlapping changes.
public struct XenStoredTransaction: Sendable {
    public let id: UInt32
    public let caller: XenStoreCaller
    private var changed: [String: XenStoreNode?] = [:]
    private var entryDelta: [DomainID: Int] = [:]
    private var generation: UInt64 = 0
    private var seen: [String: UInt64] = [:]
    private enum Change: Sendable {
        case write(String, [UInt8]), mkdir(String), remove(String), setPermissions(String, XenStorePermissions)
    }
    private var changes: [Change] = []

    public init(id: UInt32, caller: XenStoreCaller) {
        self.id = id
        self.caller = caller
    }

    /// The transaction's view for one operation: its changes over the live tree.
    private struct Overlay: XenStoreNodeStore {
        var changed: [String: XenStoreNode?]
        var entryDelta: [DomainID: Int]
        var generation: UInt64
        let base: XenStoreTree

        subscript(node path: String) -> XenStoreNode? {
            get { if let entry = changed[path] { return entry } else { return base[node: path] } }
            set {
                if let old = self[node: path] { entryDelta[old.permissions.owner, default: 0] -= 1 }
                if let new = newValue { entryDelta[new.permissions.owner, default: 0] += 1 }
                changed.updateValue(newValue, forKey: path)
            }
        }

        mutating func nextGeneration() -> UInt64 {
            generation += 1
            return generation
        }

        func entries(of domain: DomainID) -> Int { base.entries(of: domain) + (entryDelta[domain] ?? 0) }
        var quotas: XenStoreQuotas { base.quotas }
    }

    private mutating func withOverlay<T>(_ base: XenStoreTree, _ body: (inout Overlay) throws(XsErrorName) -> T) throws(XsErrorName) -> T {
        var overlay = Overlay(changed: [:], entryDelta: [:], generation: generation, base: base)
        swap(&overlay.changed, &changed)
        swap(&overlay.entryDelta, &entryDelta)
        defer {
            swap(&overlay.changed, &changed)
            swap(&overlay.entryDelta, &entryDelta)
            generation = overlay.generation
        }
        return try body(&overlay)
    }

    /// The first time the transaction touches `path`: remembers its live generation and keeps
    /// the node as it is now, so later reads in the transaction see the same value even if
    /// others change it (they will make the commit fail). C xenstored does the same.
    private mutating func note(_ path: String, in base: XenStoreTree) {
        guard seen[path] == nil else { return }
        seen[path] = base.nodeGeneration(path)
        if changed[path] == nil { changed.updateValue(base[node: path], forKey: path) }
    }

    /// For a change: the node, its parent, and every missing ancestor up to an existing one
    /// (all of which the change may create or modify).
    private mutating func noteChange(_ path: String, in base: XenStoreTree) {
        note(path, in: base)
        var cursor = path
        while let parent = XenStoreTree.parent(of: cursor) {
            note(parent, in: base)
            let exists = changed[parent].map { $0 != nil } ?? base.exists(parent)
            if exists { break }
            cursor = parent
        }
    }

    public mutating func read(_ path: String, base: XenStoreTree) throws(XsErrorName) -> [UInt8] {
        note(path, in: base)
        let caller = self.caller
        return try withOverlay(base) { overlay throws(XsErrorName) in try overlay.read(path, caller: caller) }
    }

    public mutating func directory(_ path: String, base: XenStoreTree) throws(XsErrorName) -> [String] {
        note(path, in: base)
        let caller = self.caller
        return try withOverlay(base) { overlay throws(XsErrorName) in try overlay.directory(path, caller: caller) }
    }

    public mutating func permissions(_ path: String, base: XenStoreTree) throws(XsErrorName) -> XenStorePermissions {
        note(path, in: base)
        let caller = self.caller
        return try withOverlay(base) { overlay throws(XsErrorName) in try overlay.permissions(path, caller: caller) }
    }

    public mutating func write(_ path: String, value: [UInt8], base: XenStoreTree) throws(XsErrorName) {
        noteChange(path, in: base)
        let caller = self.caller
        try withOverlay(base) { overlay throws(XsErrorName) in _ = try overlay.write(path, value: value, caller: caller) }
        changes.append(.write(path, value))
    }

    public mutating func mkdir(_ path: String, base: XenStoreTree) throws(XsErrorName) {
        noteChange(path, in: base)
        let caller = self.caller
        try withOverlay(base) { overlay throws(XsErrorName) in _ = try overlay.mkdir(path, caller: caller) }
        changes.append(.mkdir(path))
    }

    public mutating func remove(_ path: String, base: XenStoreTree) throws(XsErrorName) {
        noteChange(path, in: base)
        let caller = self.caller
        try withOverlay(base) { overlay throws(XsErrorName) in _ = try overlay.remove(path, caller: caller) }
        changes.append(.remove(path))
    }

    public mutating func setPermissions(_ path: String, _ permissions: XenStorePermissions, base: XenStoreTree) throws(XsErrorName) {
        note(path, in: base)
        let caller = self.caller
        try withOverlay(base) { overlay throws(XsErrorName) in try overlay.setPermissions(path, permissions, caller: caller) }
        changes.append(.setPermissions(path, permissions))
    }

    /// TRANSACTION_END with T: applies the changes to `tree` if nothing this transaction
    /// touched changed since; otherwise EAGAIN and `tree` is untouched.
    /// - Returns: the changed paths (for watches) and whether each was a removal.
    public func commit(to tree: inout XenStoreTree) throws(XsErrorName) -> [(path: String, removal: Bool)] {
        for (path, generation) in seen where tree.nodeGeneration(path) != generation { throw .EAGAIN }
        let caller = self.caller, changes = self.changes
        return try tree.atomically { tree throws(XsErrorName) in
            var fired: [(String, Bool)] = []
            for change in changes {
                switch change {
                case let .write(path, value):
                    _ = try tree.write(path, value: value, caller: caller)
                    fired.append((path, false))
                case let .mkdir(path):
                    if !(try tree.mkdir(path, caller: caller)).isEmpty { fired.append((path, false)) }
                case let .remove(path):
                    let removed = try tree.remove(path, caller: caller)
                    if !removed.isEmpty { fired.append((path, true)) }
                case let .setPermissions(path, permissions):
                    try tree.setPermissions(path, permissions, caller: caller)
                    fired.append((path, false))
                }
            }
            return fired
        }
    }
}
