import XenStoredCore
import Testing
import XenABI
import XenStoreWire

/// The engine through xs_wire messages, as a socket or ring adapter would drive it.
@Suite("xenstored engine: requests in, replies and events out", .timeLimit(.minutes(5)))
struct XenStoreEngineTests {
    struct Harness {
        var engine = XenStoreEngine()
        var nextRequest: UInt32 = 1

        init() {
            engine.connect(0, caller: .dom0)
            engine.connect(5, caller: XenStoreCaller(domain: DomainID(5), privileged: false))
        }

        /// Sends a request; returns (reply to the sender, events per connection).
        mutating func send(_ request: XenStoreRequest, from connection: Int = 0, tx: UInt32 = 0) throws -> (
            reply: XenStoreReply, events: [Int: [XenStoreReply]]
        ) {
            let message = try request.message(requestID: nextRequest, transactionID: tx)
            nextRequest += 1
            return decode(engine.handle(message, from: connection), request: request.type, sender: connection, requestID: message.header.requestID)
        }

        mutating func raw(_ message: XsMessage, from connection: Int = 0) throws -> XenStoreReply {
            let outputs = engine.handle(message, from: connection)
            return try XenStoreReply.decode(try #require(outputs.first).message, answering: message.header.messageType)
        }

        func decode(_ outputs: [XenStoreEngine.Output], request: XsMessageType, sender: Int, requestID: UInt32) -> (XenStoreReply, [Int: [XenStoreReply]]) {
            var reply: XenStoreReply? = nil
            var events: [Int: [XenStoreReply]] = [:]
            for output in outputs {
                let decoded = try! XenStoreReply.decode(output.message, answering: request)
                if output.connection == sender && output.message.header.requestID == requestID && reply == nil {
                    reply = decoded
                } else {
                    events[output.connection, default: []].append(decoded)
                }
            }
            return (reply!, events)
        }
    }

    @Test("write, read, directory; relative paths resolve against the caller's home")
    func basics() throws {
        var h = Harness()
        #expect(try h.send(.write("name", value: Array("dom0".utf8))).reply == .ok)
        #expect(try h.send(.read("/local/domain/0/name")).reply == .value(Array("dom0".utf8)))
        #expect(try h.send(.directory("/local/domain/0")).reply == .children(["name"]))
        #expect(try h.send(.read("/nope")).reply == .error(.ENOENT))
        #expect(try h.send(.getDomainPath(DomainID(7))).reply == .domainPath("/local/domain/7"))
        #expect(try h.send(.write("/tool/x", value: []), from: 5).reply == .error(.EACCES))
    }

    @Test("a watch answers OK, fires once on registration, then on every change below it")
    func watches() throws {
        var h = Harness()
        _ = try h.send(.mkdir("/local/domain/5"))
        _ = try h.send(.setPerms("/local/domain/5", XenStorePermissions([XenStorePermission(.none, DomainID(5))])))
        let registered = try h.send(.watch("device", token: "dev"), from: 5)
        #expect(registered.reply == .ok)
        #expect(registered.events[5] == [.watchEvent(path: "device", token: "dev")])
        let write = try h.send(.write("/local/domain/5/device/vif/0/state", value: Array("1".utf8)))
        #expect(write.events[5]?.contains(.watchEvent(path: "device/vif/0/state", token: "dev")) == true)
        #expect(try h.send(.watch("device", token: "dev"), from: 5).reply == .error(.EEXIST))
        // A change the watcher may not read is not told to it.
        _ = try h.send(.watch("/tool", token: "tool"), from: 5)
        #expect(try h.send(.write("/tool/secret", value: [])).events[5] == nil)
        h.engine.disconnect(5)
        #expect(try h.send(.write("/local/domain/5/device/x", value: [])).events.isEmpty)
    }

    @Test("a removal is told to a watcher that could read the removed node, even when it cannot read the parent (as C xenstored)")
    func removalSeenThroughTheNodesOwnPermissions() throws {
        var h = Harness()
        // A backend directory the guest may read, under a parent it may not (libxl's layout).
        _ = try h.send(.write("/local/domain/0/backend/vbd/5/51712/state", value: Array("4".utf8)))
        _ = try h.send(
            .setPerms("/local/domain/0/backend/vbd/5/51712", XenStorePermissions([XenStorePermission(.none, .dom0), XenStorePermission(.read, DomainID(5))])))
        _ = try h.send(
            .setPerms(
                "/local/domain/0/backend/vbd/5/51712/state", XenStorePermissions([XenStorePermission(.none, .dom0), XenStorePermission(.read, DomainID(5))])))
        _ = try h.send(.watch("/local/domain/0/backend/vbd/5/51712/state", token: "be"), from: 5)
        let removed = try h.send(.rm("/local/domain/0/backend/vbd/5/51712"))
        #expect(removed.events[5] == [.watchEvent(path: "/local/domain/0/backend/vbd/5/51712/state", token: "be")])
        // A node it could never read: its removal stays unheard.
        _ = try h.send(.write("/local/domain/0/private/x", value: []))
        _ = try h.send(.watch("/local/domain/0/private/x", token: "p"), from: 5)
        #expect(try h.send(.rm("/local/domain/0/private")).events[5] == nil)
    }

    @Test("transactions: commit, conflict, unknown id, nesting, quota")
    func transactions() throws {
        var h = Harness()
        guard case let .transactionID(t1) = try h.send(.transactionStart).reply else { Issue.record("no id"); return }
        #expect(try h.send(.write("/tool/a", value: Array("1".utf8)), tx: t1).reply == .ok)
        #expect(try h.send(.read("/tool/a")).reply == .error(.ENOENT), "invisible until commit")
        #expect(try h.send(.read("/tool/a"), tx: t1).reply == .value(Array("1".utf8)))
        #expect(try h.send(.transactionEnd(commit: true), tx: t1).reply == .ok)
        #expect(try h.send(.read("/tool/a")).reply == .value(Array("1".utf8)))
        guard case let .transactionID(t2) = try h.send(.transactionStart).reply else { return }
        _ = try h.send(.read("/tool/a"), tx: t2)
        _ = try h.send(.write("/tool/a", value: Array("2".utf8)), tx: t2)
        _ = try h.send(.write("/tool/a", value: Array("3".utf8)))
        #expect(try h.send(.transactionEnd(commit: true), tx: t2).reply == .error(.EAGAIN))
        #expect(try h.send(.read("/tool/a")).reply == .value(Array("3".utf8)))
        #expect(try h.send(.transactionEnd(commit: true), tx: t2).reply == .error(.ENOENT), "ended transactions are gone")
        #expect(try h.send(.read("/tool/a"), tx: 999).reply == .error(.ENOENT))
        guard case let .transactionID(t3) = try h.send(.transactionStart).reply else { return }
        #expect(try h.send(.transactionStart, tx: t3).reply == .error(.EBUSY))
        for _ in 0..<10 { _ = try h.send(.transactionStart, from: 5) }
        #expect(try h.send(.transactionStart, from: 5).reply == .error(.ENOSPC))
    }

    @Test("INTRODUCE and RELEASE fire the special watches; only the privileged may")
    func domains() throws {
        var h = Harness()
        let watched = try h.send(.watch(.introduceDomain, token: "in"))
        #expect(watched.events[0] == [.watchEvent(path: "@introduceDomain", token: "in")])
        _ = try h.send(.watch(.releaseDomain, token: "out"))
        let introduce = try h.send(.introduce(DomainID(5), gfn: 0x1000, port: EventChannelPort(3)))
        #expect(introduce.reply == .ok && introduce.events[0] == [.watchEvent(path: "@introduceDomain", token: "in")])
        #expect(try h.send(.isDomainIntroduced(DomainID(5))).reply == .introduced(true))
        #expect(try h.send(.introduce(DomainID(6), gfn: 1, port: EventChannelPort(1)), from: 5).reply == .error(.EACCES))
        let release = try h.send(.release(DomainID(5)))
        #expect(release.events[0] == [.watchEvent(path: "@releaseDomain", token: "out")])
        #expect(try h.send(.isDomainIntroduced(DomainID(5))).reply == .introduced(false))
        #expect(try h.send(.release(DomainID(5))).reply == .error(.ENOENT))
    }

    /// Domain 5's home, owned by it, as the toolstack makes it.
    func guestHome(_ h: inout Harness) throws {
        _ = try h.send(.mkdir("/local/domain/5"))
        _ = try h.send(.setPerms("/local/domain/5", XenStorePermissions([XenStorePermission(.none, DomainID(5))])))
    }

    @Test("entry quota: ENOSPC to that domain only, per-domain override, dom0 exempt")
    func entryQuota() throws {
        var h = Harness()
        h.engine.connect(6, caller: XenStoreCaller(domain: DomainID(6), privileged: false))
        var small = XenStoreQuota()
        small.entries = 4
        h.engine.quotas.overrides[DomainID(5)] = small
        try guestHome(&h)  // the home counts as one of domain 5's entries
        for i in 0..<3 { #expect(try h.send(.write(XenStorePath("data-\(i)"), value: []), from: 5).reply == .ok) }
        #expect(try h.send(.write("data-3", value: []), from: 5).reply == .error(.ENOSPC))
        #expect(try h.send(.write("deep/a/b", value: []), from: 5).reply == .error(.ENOSPC), "all or nothing")
        #expect(try h.send(.read("deep"), from: 5).reply == .error(.ENOENT))
        #expect(try h.send(.read("data-0"), from: 5).reply == .value([]), "the connection lives on")
        _ = try h.send(.rm("data-0"), from: 5)
        #expect(try h.send(.write("data-3", value: []), from: 5).reply == .ok, "removal frees an entry")
        // Others are not affected: dom0 writes freely, domain 6 has the default quota.
        for i in 0..<20 { #expect(try h.send(.write(XenStorePath("/tool/q/\(i)"), value: [])).reply == .ok) }
        _ = try h.send(.mkdir("/local/domain/6"))
        _ = try h.send(.setPerms("/local/domain/6", XenStorePermissions([XenStorePermission(.none, DomainID(6))])))
        for i in 0..<20 { #expect(try h.send(.write(XenStorePath("n\(i)"), value: []), from: 6).reply == .ok) }
    }

    @Test("node size and permissions-per-node quotas: ENOSPC for a guest, dom0 exempt")
    func sizeQuota() throws {
        var h = Harness()
        try guestHome(&h)
        #expect(try h.send(.write("big", value: Array(repeating: 0x41, count: 2000)), from: 5).reply == .ok)
        #expect(try h.send(.write("big", value: Array(repeating: 0x41, count: 2100)), from: 5).reply == .error(.ENOSPC))
        #expect(try h.send(.read("big"), from: 5).reply == .value(Array(repeating: 0x41, count: 2000)), "the old value stays")
        #expect(try h.send(.write("/local/domain/5/big", value: Array(repeating: 0x42, count: 3000))).reply == .ok, "dom0 is exempt")
        let six = try XenStorePermissions([XenStorePermission(.none, DomainID(5))] + (1...5).map { XenStorePermission(.read, DomainID(UInt16(10 + $0))) })
        _ = try h.send(.write("small", value: []), from: 5)
        #expect(try h.send(.setPerms("small", six), from: 5).reply == .error(.ENOSPC))
        let five = try XenStorePermissions(Array(six.entries.prefix(5)))
        #expect(try h.send(.setPerms("small", five), from: 5).reply == .ok)
    }

    @Test("RELEASE ends the domain's connections and removes its nodes and watches; watchers hear it")
    func release() throws {
        var h = Harness()
        try guestHome(&h)
        _ = try h.send(.introduce(DomainID(5), gfn: 1, port: EventChannelPort(1)))
        _ = try h.send(.write("device/vbd/51712/state", value: Array("4".utf8)), from: 5)
        _ = try h.send(.watch("device", token: "guest"), from: 5)
        _ = try h.send(.watch("/local/domain/5", token: "toolstack"))
        _ = try h.send(.watch(.releaseDomain, token: "rel"))
        // A node domain 5 owns outside its home goes too.
        _ = try h.send(.mkdir("/tool/guest5"))
        _ = try h.send(.setPerms("/tool/guest5", XenStorePermissions([XenStorePermission(.none, DomainID(5))])))
        let release = try h.send(.release(DomainID(5)))
        #expect(release.reply == .ok)
        #expect(h.engine.takeEnded() == [5])
        #expect(release.events[0]?.contains(.watchEvent(path: "/local/domain/5", token: "toolstack")) == true)
        #expect(release.events[0]?.contains(.watchEvent(path: "@releaseDomain", token: "rel")) == true)
        #expect(release.events[5] == nil, "the released domain hears nothing")
        #expect(try h.send(.read("/local/domain/5/device/vbd/51712/state")).reply == .error(.ENOENT))
        #expect(try h.send(.read("/tool/guest5")).reply == .error(.ENOENT))
        #expect(h.engine.tree.entries(of: DomainID(5)) == 0)
    }

    @Test("unknown types are ENOSYS, malformed payloads EINVAL, and the connection lives on")
    func badRequests() throws {
        var h = Harness()
        #expect(try h.raw(XsMessage(header: XsHeader(type: 20, requestID: 1, transactionID: 0, length: 0), payload: [])) == .error(.ENOSYS))
        #expect(try h.raw(XsMessage(header: XsHeader(type: 0xFFFF, requestID: 1, transactionID: 0, length: 0), payload: [])) == .error(.ENOSYS))
        #expect(try h.raw(XsMessage(header: XsHeader(type: .read, requestID: 2, length: 4), payload: Array("/a b".utf8) + [0])) == .error(.EINVAL))
        #expect(try h.send(.write("/tool/ok", value: [])).reply == .ok)
    }

    @Test("DIRECTORY_PART pages a long child list within the payload limit")
    func directoryPart() throws {
        var h = Harness()
        for index in 0..<400 { _ = try h.send(.write(try XenStorePath("/tool/dir/child-with-a-long-name-\(index)"), value: [])) }
        var offset = 0, seen: [String] = []
        while true {
            guard case let .childrenPart(_, children, complete) = try h.send(.directoryPart("/tool/dir", offset: offset)).reply else { return }
            seen += children
            offset += children.reduce(0) { $0 + $1.utf8.count + 1 }  // a byte offset, as in C xenstored
            if complete { break }
            #expect(!children.isEmpty)
        }
        #expect(seen.count == 400 && seen.first == "child-with-a-long-name-0")
        #expect(try h.send(.directory("/tool/dir")).reply == .error(.E2BIG), "too long for one DIRECTORY reply")
    }
}
