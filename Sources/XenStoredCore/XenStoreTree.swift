import XenABI
import XenStoreWire

/// Who is asking: a connection's domain, and whether it is privileged (the control domain, or
/// dom0's socket).
public struct XenStoreCaller: Sendable, Hashable {
    public let domain: DomainID
    public let privileged: Bool
    public init(domain: DomainID, privileged: Bool) {
        self.domain = domain
        self.privileged = privileged
    }
    public static let dom0 = XenStoreCaller(domain: .dom0, privileged: true)
}

/// Quotas of one domain, with C xenstored 4.17's defaults. The control domain (and dom0's
/// socket) is exempt, as in C xenstored; a quota hit is ENOSPC (E2BIG for watches) to that
/// client only.
public struct XenStoreQuota: Sendable, Equatable {
    /// Nodes the domain may own. C: `quota-nb-entry-per-domain`.
    public var entries = 1000
    /// Bytes in one node: value, child names (each with its NUL) and 8 per permission entry.
    /// C: `quota-max-entry-size` (which also counts a fixed record header).
    public var nodeSize = 2048
    /// Watches per connection. C: `quota-nb-watch-per-domain`.
    public var watches = 128
    /// Open transactions per connection. C: `quota-max-transaction`.
    public var transactions = 10
    /// Permission entries per node. C: `quota-nb-perms-per-node`.
    public var permissionsPerNode = 5
    /// Requests a domain's ring may have unanswered in the daemon before it stops reading
    /// more (back-pressure, never an error). C: `quota-req-outstanding`.
    public var outstanding = 20

    public init() {}

    /// The names `pvhost xenstored --quota` takes (C xenstored's `-Q` names in brackets).
    public static let names = ["entries", "node-size", "watches", "transactions", "perms", "outstanding"]

    /// Sets one quota by name: entries (nb-entry-per-domain), node-size (max-entry-size),
    /// watches (nb-watch-per-domain), transactions (max-transaction), perms
    /// (nb-perms-per-node), outstanding (req-outstanding).
    public mutating func set(_ name: String, to value: Int) -> Bool {
        guard value > 0 else { return false }
        switch name {
        case "entries": entries = value
        case "node-size": nodeSize = value
        case "watches": watches = value
        case "transactions": transactions = value
        case "perms": permissionsPerNode = value
        case "outstanding": outstanding = value
        default: return false
        }
        return true
    }
}

/// The defaults and per-domain overrides (e.g. a driver domain that owns many nodes).
public struct XenStoreQuotas: Sendable, Equatable {
    public var defaults = XenStoreQuota()
    public var overrides: [DomainID: XenStoreQuota] = [:]

    public init() {}

    public func quota(for domain: DomainID) -> XenStoreQuota { overrides[domain] ?? defaults }
}

/// One node: value, permissions, children and generation.
public struct XenStoreNode: Sendable {
    public var value: [UInt8]
    public var permissions: XenStorePermissions
    /// Children in creation order (DIRECTORY lists them so, as C xenstored does).
    public var children: [String]
    /// Bumped on every change of this node: transactions compare it at commit.
    public var generation: UInt64

    /// The size the node-size quota counts.
    public var size: Int { value.count + children.reduce(0) { $0 + $1.utf8.count + 1 } + 8 * permissions.entries.count }
}

/// Storage the tree operations work on: the live tree, or a transaction's overlay on it.
public protocol XenStoreNodeStore {
    subscript(node path: String) -> XenStoreNode? { get set }
    /// The next generation number to give a changed node.
    mutating func nextGeneration() -> UInt64
    /// Nodes `domain` owns.
    func entries(of domain: DomainID) -> Int
    var quotas: XenStoreQuotas { get }
}

/// The store's tree, sans I/O: nodes with values and permissions, implicit parents, the standard
/// errors, quotas, and the generations transactions compare. Paths here are absolute.
public struct XenStoreTree: Sendable, XenStoreNodeStore {
    private(set) var nodes: [String: XenStoreNode]
    private(set) var generation: UInt64 = 1
    private var owned: [DomainID: Int] = [:]
    /// While a commit replays: the first old value of every node it set, to put back on failure.
    private var undo: [String: XenStoreNode?]?
    /// The quotas in force (defaults and per-domain overrides).
    public var quotas = XenStoreQuotas()

    /// A tree with `/`, `/local`, `/local/domain`, `/tool` and `/tool/xenstored` owned by dom0
    /// (`n0`), as C xenstored starts.
    public init() {
        let dom0Only = try! XenStorePermissions([XenStorePermission(.none, .dom0)])
        nodes = ["/": XenStoreNode(value: [], permissions: dom0Only, children: [], generation: 0)]
        owned[.dom0] = 1
        for path in ["/local", "/local/domain", "/tool", "/tool/xenstored"] { try! mkdir(path, caller: .dom0) }
    }

    public subscript(node path: String) -> XenStoreNode? {
        get { nodes[path] }
        set {
            if undo != nil, undo![path] == nil { undo![path] = .some(nodes[path]) }
            if let old = nodes[path] { owned[old.permissions.owner, default: 0] -= 1 }
            if let new = newValue { owned[new.permissions.owner, default: 0] += 1 }
            nodes[path] = newValue
        }
    }

    /// Applies `changes` all or nothing: if one throws, every node it or an earlier one set is
    /// put back.
    mutating func atomically<T>(_ changes: (inout XenStoreTree) throws(XsErrorName) -> T) throws(XsErrorName) -> T {
        undo = [:]
        do {
            let result = try changes(&self)
            undo = nil
            return result
        } catch {
            let saved = undo!
            undo = nil
            for (path, node) in saved { self[node: path] = node }
            throw error
        }
    }

    public mutating func nextGeneration() -> UInt64 {
        generation += 1
        return generation
    }

    public func entries(of domain: DomainID) -> Int { owned[domain] ?? 0 }

    public func exists(_ path: String) -> Bool { nodes[path] != nil }
    public func nodeGeneration(_ path: String) -> UInt64 { nodes[path]?.generation ?? 0 }

    /// Every path in the tree (for tests and dumps), sorted.
    public var paths: [String] { nodes.keys.sorted() }

    /// Paths of the nodes `domain` owns whose parent it does not own (the roots of its subtrees).
    func ownedRoots(of domain: DomainID) -> [String] {
        nodes.compactMap { path, node in
            guard node.permissions.owner == domain, let parent = Self.parent(of: path),
                nodes[parent]?.permissions.owner != domain
            else { return nil }
            return path
        }.sorted()
    }

    static func parent(of path: String) -> String? {
        guard path != "/" else { return nil }
        guard let slash = path.lastIndex(of: "/") else { return nil }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }

    static func name(of path: String) -> String { String(path[path.index(after: path.lastIndex(of: "/")!)...]) }

    static func child(_ name: String, of path: String) -> String { path == "/" ? "/" + name : path + "/" + name }
}

/// The operations, on any node store: the live tree or a transaction's overlay.
extension XenStoreNodeStore {
    func canRead(_ node: XenStoreNode, _ caller: XenStoreCaller) -> Bool { caller.privileged || node.permissions.access(for: caller.domain).canRead }
    func canWrite(_ node: XenStoreNode, _ caller: XenStoreCaller) -> Bool { caller.privileged || node.permissions.access(for: caller.domain).canWrite }

    public func read(_ path: String, caller: XenStoreCaller) throws(XsErrorName) -> [UInt8] {
        guard let node = self[node: path] else { throw .ENOENT }
        guard canRead(node, caller) else { throw .EACCES }
        return node.value
    }

    public func directory(_ path: String, caller: XenStoreCaller) throws(XsErrorName) -> [String] {
        guard let node = self[node: path] else { throw .ENOENT }
        guard canRead(node, caller) else { throw .EACCES }
        return node.children
    }

    public func permissions(_ path: String, caller: XenStoreCaller) throws(XsErrorName) -> XenStorePermissions {
        guard let node = self[node: path] else { throw .ENOENT }
        guard canRead(node, caller) else { throw .EACCES }
        return node.permissions
    }

    /// ENOSPC when an unprivileged caller would make a node bigger than its quota allows.
    private func checkSize(_ node: XenStoreNode, _ caller: XenStoreCaller) throws(XsErrorName) {
        guard caller.privileged || node.size <= quotas.quota(for: caller.domain).nodeSize else { throw .ENOSPC }
    }

    /// WRITE: creates the node and any missing parents (empty values), each inheriting its
    /// parent's permissions with the caller as owner when the caller is not privileged.
    /// - Returns: the paths created (for watches), the node itself last.
    @discardableResult
    public mutating func write(_ path: String, value: [UInt8], caller: XenStoreCaller) throws(XsErrorName) -> [String] {
        if var node = self[node: path] {
            guard canWrite(node, caller) else { throw .EACCES }
            node.value = value
            try checkSize(node, caller)
            node.generation = nextGeneration()
            self[node: path] = node
            return [path]
        }
        if !caller.privileged {
            let probe = XenStoreNode(
                value: value, permissions: try! XenStorePermissions([XenStorePermission(.none, caller.domain)]), children: [], generation: 0)
            try checkSize(probe, caller)
        }
        let created = try createMissing(path, caller: caller)
        self[node: path]!.value = value
        return created
    }

    /// MKDIR: like WRITE with an empty value, but a no-op when the node exists.
    @discardableResult
    public mutating func mkdir(_ path: String, caller: XenStoreCaller) throws(XsErrorName) -> [String] {
        if let node = self[node: path] {
            guard canRead(node, caller) else { throw .EACCES }
            return []
        }
        return try createMissing(path, caller: caller)
    }

    /// The missing nodes from the nearest existing ancestor down to `path` (that ancestor must
    /// be writable), created in order; ENOSPC past the caller's entry quota, before any change.
    private mutating func createMissing(_ path: String, caller: XenStoreCaller) throws(XsErrorName) -> [String] {
        var missing: [String] = []
        var cursor = path
        while self[node: cursor] == nil {
            missing.append(cursor)
            guard let parent = XenStoreTree.parent(of: cursor) else { throw .EINVAL }
            cursor = parent
        }
        guard var ancestor = self[node: cursor], canWrite(ancestor, caller) else { throw .EACCES }
        if !caller.privileged {
            guard entries(of: caller.domain) + missing.count <= quotas.quota(for: caller.domain).entries else { throw .ENOSPC }
            ancestor.children.append(XenStoreTree.name(of: missing.last!))
            try checkSize(ancestor, caller)
        }
        for node in missing.reversed() { createNode(node, caller: caller) }
        return missing.reversed()
    }

    private mutating func createNode(_ path: String, caller: XenStoreCaller) {
        let parentPath = XenStoreTree.parent(of: path)!
        var parent = self[node: parentPath]!
        var permissions = parent.permissions
        if !caller.privileged { permissions.entries[0].domain = caller.domain }
        let generation = nextGeneration()
        self[node: path] = XenStoreNode(value: [], permissions: permissions, children: [], generation: generation)
        parent.children.append(XenStoreTree.name(of: path))
        parent.generation = generation
        self[node: parentPath] = parent
    }

    /// RM: removes the subtree. An absent node is fine when its parent exists (C xenstored).
    /// - Returns: the removed paths, the subtree's root first.
    @discardableResult
    public mutating func remove(_ path: String, caller: XenStoreCaller) throws(XsErrorName) -> [String] {
        guard path != "/" else { throw .EINVAL }
        guard let node = self[node: path] else {
            guard let parent = XenStoreTree.parent(of: path), self[node: parent] != nil else { throw .ENOENT }
            return []
        }
        guard let parentPath = XenStoreTree.parent(of: path), var parent = self[node: parentPath] else { throw .EINVAL }
        guard canWrite(node, caller) else { throw .EACCES }
        var removed: [String] = []
        var queue = [path]
        while let p = queue.popLast() {
            removed.append(p)
            for child in self[node: p]?.children ?? [] { queue.append(XenStoreTree.child(child, of: p)) }
        }
        for p in removed { self[node: p] = nil }
        parent.children.removeAll { $0 == XenStoreTree.name(of: path) }
        parent.generation = nextGeneration()
        self[node: parentPath] = parent
        return removed
    }

    /// SET_PERMS: owner or privileged; only the privileged may change the owner; an
    /// unprivileged caller is held to the per-node permission quota.
    public mutating func setPermissions(_ path: String, _ permissions: XenStorePermissions, caller: XenStoreCaller) throws(XsErrorName) {
        guard var node = self[node: path] else { throw .ENOENT }
        guard caller.privileged || node.permissions.owner == caller.domain else { throw .EACCES }
        if !caller.privileged && permissions.owner != node.permissions.owner { throw .EPERM }
        if !caller.privileged && permissions.entries.count > quotas.quota(for: caller.domain).permissionsPerNode { throw .ENOSPC }
        node.permissions = permissions
        try checkSize(node, caller)
        node.generation = nextGeneration()
        self[node: path] = node
    }
}

/// Watches, sans I/O: which (connection, watch path, token) pairs fire for a change.
public struct XenStoreWatches: Sendable {
    public struct Watch: Sendable, Hashable {
        public let connection: Int
        /// As registered (relative or absolute): events report paths the same way.
        public let path: String
        public let token: String
        /// The absolute form used for matching.
        public let absolute: String
        /// The home a relative watch is relative to.
        public let home: String
    }

    private(set) var watches: [Watch] = []
    private var counts: [Int: Int] = [:]

    public init() {}

    /// WATCH: EEXIST for the same (path, token) twice; E2BIG past `limit` watches on the
    /// connection (C: `quota-nb-watch-per-domain`, 128), unless privileged.
    public mutating func add(connection: Int, path: XenStorePath, token: String, home: XenStorePath, privileged: Bool, limit: Int = 128) throws(XsErrorName)
        -> Watch
    {
        let absolute = path.resolved(home: home).rawValue
        guard !watches.contains(where: { $0.connection == connection && $0.path == path.rawValue && $0.token == token }) else { throw .EEXIST }
        guard privileged || counts[connection, default: 0] < limit else { throw .E2BIG }
        let watch = Watch(connection: connection, path: path.rawValue, token: token, absolute: absolute, home: home.rawValue)
        watches.append(watch)
        counts[connection, default: 0] += 1
        return watch
    }

    public mutating func remove(connection: Int, path: XenStorePath, token: String) throws(XsErrorName) {
        guard let index = watches.firstIndex(where: { $0.connection == connection && $0.path == path.rawValue && $0.token == token }) else { throw .ENOENT }
        watches.remove(at: index)
        counts[connection, default: 1] -= 1
    }

    /// RESET_WATCHES, or a connection going away.
    public mutating func removeAll(connection: Int) {
        guard counts.removeValue(forKey: connection) != nil else { return }
        watches.removeAll { $0.connection == connection }
    }

    /// The events a change at `changed` (absolute) fires: watches on it or on an ancestor, and
    /// — for a removal — watches below it, which report their own path.
    public func events(for changed: String, removal: Bool = false) -> [(watch: Watch, path: String)] {
        var events: [(Watch, String)] = []
        for watch in watches {
            let report: String?
            if changed.hasPrefix("@") || watch.absolute.hasPrefix("@") {
                report = watch.absolute == changed ? watch.path : nil
            } else if watch.absolute == changed || watch.absolute == "/" || changed.hasPrefix(watch.absolute + "/") {
                report = changed
            } else if removal, watch.absolute.hasPrefix(changed == "/" ? "/" : changed + "/") {
                report = watch.absolute
            } else {
                report = nil
            }
            guard let report else { continue }
            // A relative watch hears relative paths.
            let prefix = watch.home + "/"
            let shown = !watch.path.hasPrefix("/") && !watch.path.hasPrefix("@") && report.hasPrefix(prefix) ? String(report.dropFirst(prefix.count)) : report
            events.append((watch, shown))
        }
        return events
    }
}
