import XenABI
import XenStore

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

/// The store's tree, sans I/O: nodes with values and permissions, implicit parents, the standard
/// errors, and the change log that watches and transactions use. Paths here are absolute.
public struct XenStoreTree: Sendable {
    struct Node: Sendable {
        var value: [UInt8]
        var permissions: XenStorePermissions
        /// Children in creation order (DIRECTORY lists them so, as C xenstored does).
        var children: [String]
        /// Bumped on every change of this node: transactions compare it at commit.
        var generation: UInt64
    }

    private(set) var nodes: [String: Node]
    private(set) var generation: UInt64 = 1

    /// A tree with `/`, `/local`, `/local/domain`, `/tool` and `/tool/xenstored` owned by dom0
    /// (`n0`), as C xenstored starts.
    public init() {
        let dom0Only = try! XenStorePermissions([XenStorePermission(.none, .dom0)])
        nodes = ["/": Node(value: [], permissions: dom0Only, children: [], generation: 0)]
        for path in ["/local", "/local/domain", "/tool", "/tool/xenstored"] { try! createNode(path, caller: .dom0) }
    }

    static func parent(of path: String) -> String? {
        guard path != "/" else { return nil }
        guard let slash = path.lastIndex(of: "/") else { return nil }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }

    static func name(of path: String) -> String { String(path[path.index(after: path.lastIndex(of: "/")!)...]) }

    func canRead(_ node: Node, _ caller: XenStoreCaller) -> Bool { caller.privileged || node.permissions.access(for: caller.domain).canRead }
    func canWrite(_ node: Node, _ caller: XenStoreCaller) -> Bool { caller.privileged || node.permissions.access(for: caller.domain).canWrite }

    public func exists(_ path: String) -> Bool { nodes[path] != nil }
    public func nodeGeneration(_ path: String) -> UInt64 { nodes[path]?.generation ?? 0 }

    public func read(_ path: String, caller: XenStoreCaller) throws(XsErrorName) -> [UInt8] {
        guard let node = nodes[path] else { throw .ENOENT }
        guard canRead(node, caller) else { throw .EACCES }
        return node.value
    }

    public func directory(_ path: String, caller: XenStoreCaller) throws(XsErrorName) -> [String] {
        guard let node = nodes[path] else { throw .ENOENT }
        guard canRead(node, caller) else { throw .EACCES }
        return node.children
    }

    public func permissions(_ path: String, caller: XenStoreCaller) throws(XsErrorName) -> XenStorePermissions {
        guard let node = nodes[path] else { throw .ENOENT }
        guard canRead(node, caller) else { throw .EACCES }
        return node.permissions
    }

    /// WRITE: creates the node and any missing parents (empty values), each inheriting its
    /// parent's permissions with the caller as owner when the caller is not privileged.
    /// - Returns: the paths created (for watches), the node itself last.
    @discardableResult
    public mutating func write(_ path: String, value: [UInt8], caller: XenStoreCaller) throws(XsErrorName) -> [String] {
        if var node = nodes[path] {
            guard canWrite(node, caller) else { throw .EACCES }
            generation += 1
            node.value = value
            node.generation = generation
            nodes[path] = node
            return [path]
        }
        let created = try createMissing(path, caller: caller)
        nodes[path]!.value = value
        return created
    }

    /// MKDIR: like WRITE with an empty value, but a no-op when the node exists.
    @discardableResult
    public mutating func mkdir(_ path: String, caller: XenStoreCaller) throws(XsErrorName) -> [String] {
        if let node = nodes[path] {
            guard canRead(node, caller) else { throw .EACCES }
            return []
        }
        return try createMissing(path, caller: caller)
    }

    private mutating func createMissing(_ path: String, caller: XenStoreCaller) throws(XsErrorName) -> [String] {
        // Find the nearest existing ancestor; it must be writable.
        var missing: [String] = []
        var cursor = path
        while nodes[cursor] == nil {
            missing.append(cursor)
            guard let parent = Self.parent(of: cursor) else { throw .EINVAL }
            cursor = parent
        }
        guard canWrite(nodes[cursor]!, caller) else { throw .EACCES }
        for node in missing.reversed() { try createNode(node, caller: caller) }
        return missing.reversed()
    }

    private mutating func createNode(_ path: String, caller: XenStoreCaller) throws(XsErrorName) {
        guard let parentPath = Self.parent(of: path), var parent = nodes[parentPath] else { throw .ENOENT }
        var permissions = parent.permissions
        if !caller.privileged { permissions.entries[0].domain = caller.domain }
        generation += 1
        nodes[path] = Node(value: [], permissions: permissions, children: [], generation: generation)
        parent.children.append(Self.name(of: path))
        parent.generation = generation
        nodes[parentPath] = parent
    }

    /// RM: removes the subtree. An absent node is fine when its parent exists (C xenstored).
    /// - Returns: the removed paths, the subtree's root first.
    @discardableResult
    public mutating func remove(_ path: String, caller: XenStoreCaller) throws(XsErrorName) -> [String] {
        guard path != "/" else { throw .EINVAL }
        guard let node = nodes[path] else {
            guard let parent = Self.parent(of: path), nodes[parent] != nil else { throw .ENOENT }
            return []
        }
        guard let parentPath = Self.parent(of: path), var parent = nodes[parentPath] else { throw .EINVAL }
        guard canWrite(node, caller) else { throw .EACCES }
        var removed: [String] = []
        func collect(_ p: String) {
            removed.append(p)
            for child in nodes[p]?.children ?? [] { collect(p == "/" ? "/" + child : p + "/" + child) }
        }
        collect(path)
        for p in removed { nodes[p] = nil }
        generation += 1
        parent.children.removeAll { $0 == Self.name(of: path) }
        parent.generation = generation
        nodes[parentPath] = parent
        return removed
    }

    /// SET_PERMS: owner or privileged; only the privileged may change the owner.
    public mutating func setPermissions(_ path: String, _ permissions: XenStorePermissions, caller: XenStoreCaller) throws(XsErrorName) {
        guard var node = nodes[path] else { throw .ENOENT }
        guard caller.privileged || node.permissions.owner == caller.domain else { throw .EACCES }
        if !caller.privileged && permissions.owner != node.permissions.owner { throw .EPERM }
        generation += 1
        node.permissions = permissions
        node.generation = generation
        nodes[path] = node
    }

    /// Every path in the tree (for tests and dumps), sorted.
    public var paths: [String] { nodes.keys.sorted() }
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
    public let perConnectionLimit: Int

    public init(perConnectionLimit: Int = 128) { self.perConnectionLimit = perConnectionLimit }

    /// WATCH: EEXIST for the same (path, token) twice; E2BIG past the per-connection quota.
    public mutating func add(connection: Int, path: XenStorePath, token: String, home: XenStorePath, privileged: Bool) throws(XsErrorName) -> Watch {
        let absolute = path.resolved(home: home).rawValue
        guard !watches.contains(where: { $0.connection == connection && $0.path == path.rawValue && $0.token == token }) else { throw .EEXIST }
        guard privileged || watches.filter({ $0.connection == connection }).count < perConnectionLimit else { throw .E2BIG }
        let watch = Watch(connection: connection, path: path.rawValue, token: token, absolute: absolute, home: home.rawValue)
        watches.append(watch)
        return watch
    }

    public mutating func remove(connection: Int, path: XenStorePath, token: String) throws(XsErrorName) {
        guard let index = watches.firstIndex(where: { $0.connection == connection && $0.path == path.rawValue && $0.token == token }) else { throw .ENOENT }
        watches.remove(at: index)
    }

    /// RESET_WATCHES, or a connection going away.
    public mutating func removeAll(connection: Int) { watches.removeAll { $0.connection == connection } }

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
