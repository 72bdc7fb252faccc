import XenStoredCore
import Testing
import XenABI
import XenStoreWire

let guest5 = XenStoreCaller(domain: DomainID(5), privileged: false)
let guest6 = XenStoreCaller(domain: DomainID(6), privileged: false)

func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

@Suite("xenstored tree: nodes, parents, permissions, errors", .timeLimit(.minutes(5)))
struct XenStoreTreeTests {
    /// A tree with a guest home owned by domain 5 (as the toolstack makes it).
    func tree() throws -> XenStoreTree {
        var tree = XenStoreTree()
        try tree.mkdir("/local/domain/5", caller: .dom0)
        try tree.setPermissions("/local/domain/5", XenStorePermissions([XenStorePermission(.none, DomainID(5))]), caller: .dom0)
        return tree
    }

    @Test("the initial tree")
    func initial() throws {
        let tree = XenStoreTree()
        #expect(tree.paths == ["/", "/local", "/local/domain", "/tool", "/tool/xenstored"])
        #expect(try tree.directory("/", caller: .dom0) == ["local", "tool"])
    }

    @Test("WRITE creates missing parents with empty values, in creation order")
    func implicitParents() throws {
        var tree = try tree()
        let created = try tree.write("/local/domain/5/data/a/b", value: bytes("x"), caller: guest5)
        #expect(created == ["/local/domain/5/data", "/local/domain/5/data/a", "/local/domain/5/data/a/b"])
        #expect(try tree.read("/local/domain/5/data/a", caller: guest5) == [])
        #expect(try tree.read("/local/domain/5/data/a/b", caller: guest5) == bytes("x"))
        try tree.write("/local/domain/5/data/z", value: [], caller: guest5)
        try tree.write("/local/domain/5/data/c", value: [], caller: guest5)
        #expect(try tree.directory("/local/domain/5/data", caller: guest5) == ["a", "z", "c"])
        #expect(try tree.permissions("/local/domain/5/data/a/b", caller: guest5).owner == DomainID(5))
    }

    @Test(
        "errors as C xenstored gives them",
        arguments: [
            ("read a missing node", XsErrorName.ENOENT),
            ("a guest reads dom0's node", .EACCES),
            ("a guest writes outside its home", .EACCES),
            ("a guest reads another guest's home", .EACCES),
            ("rm under a missing parent", .ENOENT),
            ("rm /", .EINVAL),
            ("a guest gives its node away", .EPERM),
            ("a guest sets perms on dom0's node", .EACCES)
        ])
    func errors(what: String, error: XsErrorName) throws {
        var tree = try tree()
        try tree.write("/tool/secret", value: bytes("s"), caller: .dom0)
        try tree.write("/local/domain/5/mine", value: [], caller: guest5)
        #expect(throws: error) {
            switch what {
            case "read a missing node": _ = try tree.read("/nope", caller: .dom0)
            case "a guest reads dom0's node": _ = try tree.read("/tool/secret", caller: guest5)
            case "a guest writes outside its home": try tree.write("/tool/x", value: [], caller: guest5)
            case "a guest reads another guest's home": _ = try tree.directory("/local/domain/5", caller: guest6)
            case "rm under a missing parent": try tree.remove("/nope/child", caller: .dom0)
            case "rm /": try tree.remove("/", caller: .dom0)
            case "a guest gives its node away":
                try tree.setPermissions("/local/domain/5/mine", XenStorePermissions([XenStorePermission(.none, DomainID(6))]), caller: guest5)
            default: try tree.setPermissions("/tool/secret", XenStorePermissions([XenStorePermission(.read, DomainID(5))]), caller: guest5)
            }
        }
    }

    @Test("rm of an absent node under an existing parent is fine; rm removes the subtree")
    func remove() throws {
        var tree = try tree()
        #expect(try tree.remove("/local/domain/5/absent", caller: .dom0) == [])
        try tree.write("/local/domain/5/a/b/c", value: [], caller: .dom0)
        let removed = try tree.remove("/local/domain/5/a", caller: .dom0)
        #expect(removed.first == "/local/domain/5/a" && Set(removed) == ["/local/domain/5/a", "/local/domain/5/a/b", "/local/domain/5/a/b/c"])
        let remaining = try tree.directory("/local/domain/5", caller: .dom0)
        #expect(!tree.exists("/local/domain/5/a/b") && !remaining.contains("a"))
    }

    @Test("ACL entries: read access for another domain, write for a third")
    func acl() throws {
        var tree = try tree()
        try tree.write("/local/domain/5/shared", value: bytes("v"), caller: guest5)
        try tree.setPermissions(
            "/local/domain/5/shared", XenStorePermissions([XenStorePermission(.none, DomainID(5)), XenStorePermission(.read, DomainID(6))]), caller: guest5)
        #expect(try tree.read("/local/domain/5/shared", caller: guest6) == bytes("v"))
        #expect(throws: XsErrorName.EACCES) { try tree.write("/local/domain/5/shared", value: [], caller: guest6) }
    }
}

@Suite("xenstored watches", .timeLimit(.minutes(5)))
struct XenStoreWatchTests {
    @Test("a change fires watches on it and its ancestors; a removal fires watches below, with their own path")
    func matching() throws {
        var watches = XenStoreWatches()
        _ = try watches.add(connection: 1, path: "/local/domain/5/device", token: "dev", home: .home(of: .dom0), privileged: true)
        _ = try watches.add(connection: 1, path: "/local/domain/5/device/vbd/51712/state", token: "state", home: .home(of: .dom0), privileged: true)
        _ = try watches.add(connection: 2, path: "device", token: "rel", home: .home(of: DomainID(5)), privileged: false)
        _ = try watches.add(connection: 3, path: .releaseDomain, token: "rel-dom", home: .home(of: .dom0), privileged: true)
        let write = watches.events(for: "/local/domain/5/device/vbd/51712/state")
        #expect(write.map(\.watch.token).sorted() == ["dev", "rel", "state"])
        #expect(write.first { $0.watch.token == "rel" }?.path == "device/vbd/51712/state", "relative watches hear relative paths")
        let removal = watches.events(for: "/local/domain/5/device/vbd", removal: true)
        #expect(removal.first { $0.watch.token == "state" }?.path == "/local/domain/5/device/vbd/51712/state")
        #expect(watches.events(for: "/local/domain/5/devices").isEmpty, "a sibling with a longer name does not match")
        #expect(watches.events(for: "@releaseDomain").map(\.watch.token) == ["rel-dom"])
    }

    @Test("EEXIST for the same watch twice, E2BIG past the quota, ENOENT unwatching nothing")
    func quotas() throws {
        var watches = XenStoreWatches()
        let home = XenStorePath.home(of: DomainID(5))
        _ = try watches.add(connection: 1, path: "a", token: "t", home: home, privileged: false, limit: 2)
        #expect(throws: XsErrorName.EEXIST) { _ = try watches.add(connection: 1, path: "a", token: "t", home: home, privileged: false, limit: 2) }
        _ = try watches.add(connection: 1, path: "b", token: "t", home: home, privileged: false, limit: 2)
        #expect(throws: XsErrorName.E2BIG) { _ = try watches.add(connection: 1, path: "c", token: "t", home: home, privileged: false, limit: 2) }
        _ = try watches.add(connection: 2, path: "c", token: "t", home: home, privileged: false, limit: 2)
        try watches.remove(connection: 1, path: "b", token: "t")
        _ = try watches.add(connection: 1, path: "d", token: "t", home: home, privileged: false, limit: 2)
        #expect(throws: XsErrorName.ENOENT) { try watches.remove(connection: 1, path: "zzz", token: "t") }
        watches.removeAll(connection: 1)
        #expect(watches.events(for: "/local/domain/5/a").isEmpty)
    }
}

@Suite("xenstored transactions", .timeLimit(.minutes(5)))
struct XenStoreTransactionTests {
    @Test("a transaction commits its changes, and watches see them only then")
    func commit() throws {
        var tree = XenStoreTree()
        var t = XenStoredTransaction(id: 1, caller: .dom0)
        try t.write("/tool/a", value: bytes("1"), base: tree)
        try t.write("/tool/b", value: bytes("2"), base: tree)
        #expect(!tree.exists("/tool/a"), "nothing is visible before commit")
        #expect(try t.read("/tool/a", base: tree) == bytes("1"), "the transaction sees its own writes")
        let fired = try t.commit(to: &tree)
        #expect(fired.map(\.path) == ["/tool/a", "/tool/b"])
        #expect(try tree.read("/tool/b", caller: .dom0) == bytes("2"))
    }

    @Test("a conflicting write makes the commit EAGAIN and applies nothing")
    func conflict() throws {
        var tree = XenStoreTree()
        try tree.write("/tool/counter", value: bytes("1"), caller: .dom0)
        var t = XenStoredTransaction(id: 1, caller: .dom0)
        _ = try t.read("/tool/counter", base: tree)
        try t.write("/tool/counter", value: bytes("2"), base: tree)
        try t.write("/tool/other", value: bytes("x"), base: tree)
        try tree.write("/tool/counter", value: bytes("9"), caller: .dom0)  // someone else
        #expect(throws: XsErrorName.EAGAIN) { _ = try t.commit(to: &tree) }
        #expect(try tree.read("/tool/counter", caller: .dom0) == bytes("9"))
        #expect(!tree.exists("/tool/other"))
    }

    @Test("unrelated changes meanwhile do not conflict and are kept")
    func unrelated() throws {
        var tree = XenStoreTree()
        var t = XenStoredTransaction(id: 1, caller: .dom0)
        try t.write("/local/domain/1/x", value: bytes("t"), base: tree)
        try tree.write("/tool/elsewhere", value: bytes("e"), caller: .dom0)
        _ = try t.commit(to: &tree)
        #expect(try tree.read("/tool/elsewhere", caller: .dom0) == bytes("e"))
        #expect(try tree.read("/local/domain/1/x", caller: .dom0) == bytes("t"))
    }
}
