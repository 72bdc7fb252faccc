import XenABI
import XenStoreWire

/// The xenstored engine, sans I/O: every connection's requests in, replies and watch events
/// out. Sockets and domain rings feed it bytes through their own adapters; it never blocks.
///
/// Transactions behave like C xenstored's (abort on conflict with EAGAIN). A relative path is
/// resolved against the connection's home (dom0's socket: `/local/domain/0`).
public struct XenStoreEngine: Sendable {
    /// Something to send: a message for a connection.
    public struct Output: Sendable, Equatable {
        public let connection: Int
        public let message: XsMessage
    }

    struct Connection: Sendable {
        var caller: XenStoreCaller
        var transactions: [UInt32: XenStoredTransaction] = [:]
    }

    public private(set) var tree = XenStoreTree()
    var watches = XenStoreWatches()
    var connections: [Int: Connection] = [:]
    var nextTransaction: UInt32 = 1
    /// Introduced domains and their rings (gfn, port).
    public private(set) var introduced: [DomainID: (gfn: UInt64, port: EventChannelPort)] = [:]
    /// Connections the engine ended (a released domain's): the I/O layer closes them.
    public private(set) var ended: [Int] = []

    /// The quotas in force: C xenstored 4.17's defaults, and per-domain overrides.
    public var quotas: XenStoreQuotas {
        get { tree.quotas }
        set { tree.quotas = newValue }
    }

    public init() {}

    /// A new connection (a socket client is dom0 and privileged; a ring is its domain).
    public mutating func connect(_ id: Int, caller: XenStoreCaller) { connections[id] = Connection(caller: caller) }

    /// A connection went away: its watches and transactions go with it.
    public mutating func disconnect(_ id: Int) {
        connections[id] = nil
        watches.removeAll(connection: id)
    }

    /// pvhost introduced a domain whose ring it serves (as the toolstack's INTRODUCE would):
    /// fires `@introduceDomain`.
    public mutating func introduceDomain(_ domain: DomainID, gfn: UInt64, port: EventChannelPort) -> [Output] {
        introduced[domain] = (gfn, port)
        return events([("@introduceDomain", false)])
    }

    /// Takes the list of connections the engine ended since the last call.
    public mutating func takeEnded() -> [Int] {
        defer { ended.removeAll() }
        return ended
    }

    /// A domain is gone (RELEASE, or pvhost reclaiming a dead guest): its connections end,
    /// with their watches and transactions; the nodes it owns are removed (with what lies
    /// below them); watchers hear the removals and `@releaseDomain`.
    public mutating func releaseDomain(_ domain: DomainID) -> [Output] {
        introduced[domain] = nil
        for (id, connection) in connections where connection.caller.domain == domain && !connection.caller.privileged {
            disconnect(id)
            ended.append(id)
        }
        var changes: [(String, Bool)] = []
        var before: [String: XenStorePermissions] = [:]
        if domain != .dom0 {
            let home = XenStorePath.home(of: domain).rawValue
            for root in [home] + tree.ownedRoots(of: domain) where tree.exists(root) {
                before[root] = tree[node: root]?.permissions
                if let removed = try? tree.remove(root, caller: .dom0), !removed.isEmpty { changes.append((root, true)) }
            }
        }
        changes.append(("@releaseDomain", false))
        return events(changes, removed: before)
    }

    /// Handles one request; returns the reply to the sender and any watch events.
    public mutating func handle(_ message: XsMessage, from id: Int) -> [Output] {
        guard let connection = connections[id] else { return [] }
        func reply(_ reply: XenStoreReply) -> Output { Output(connection: id, message: reply.message(answering: message.header)) }
        let request: XenStoreRequest
        do {
            request = try XenStoreRequest.decode(message)
        } catch {
            let name: XsErrorName = message.header.messageType == nil || message.header.messageType == .invalid ? .ENOSYS : .EINVAL
            return [reply(.error(name))]
        }
        do {
            var outputs = try perform(request, header: message.header, connection: connection, id: id)
            // A reply that would be over the payload limit is E2BIG (C xenstored: a directory
            // too long for one reply, which clients then read with DIRECTORY_PART).
            if let first = outputs.first, first.connection == id, first.message.payload.count > XsWire.payloadMax {
                outputs[0] = reply(.error(.E2BIG))
            }
            return outputs
        } catch {
            return [reply(.error(error))]
        }
    }

    private func home(_ caller: XenStoreCaller) -> XenStorePath { .home(of: caller.domain) }

    private mutating func perform(_ request: XenStoreRequest, header: XsHeader, connection: Connection, id: Int) throws(XsErrorName) -> [Output] {
        let caller = connection.caller
        func out(_ reply: XenStoreReply) -> Output { Output(connection: id, message: reply.message(answering: header)) }
        func absolute(_ path: XenStorePath) -> String { path.resolved(home: home(caller)).rawValue }
        let tx = header.transactionID
        if tx != 0, ![.watch, .unwatch].contains(request.type), connection.transactions[tx] == nil, request.type != .transactionStart {
            throw .ENOENT
        }
        switch request {
        case let .read(path):
            if tx != 0 { return [out(.value(try connections[id]!.transactions[tx]!.read(absolute(path), base: tree)))] }
            return [out(.value(try tree.read(absolute(path), caller: caller)))]
        case let .directory(path):
            if tx != 0 { return [out(.children(try connections[id]!.transactions[tx]!.directory(absolute(path), base: tree)))] }
            return [out(.children(try tree.directory(absolute(path), caller: caller)))]
        case let .directoryPart(path, offset):
            // The offset counts bytes into the whole list ("a\0b\0…"), as in C xenstored.
            let children = try tree.directory(absolute(path), caller: caller)
            let generation = String(tree.nodeGeneration(absolute(path)))
            let list = XsPayload.encode(children)
            let rest: ArraySlice<UInt8> = offset < list.count ? list[offset...] : []
            // One reply holds as many whole names as fit in the payload limit.
            var end = rest.startIndex
            let room = XsWire.payloadMax - generation.utf8.count - 2
            while let nul = rest[end...].firstIndex(of: 0), nul + 1 - rest.startIndex <= room { end = nul + 1 }
            let taken = rest[..<end].split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            return [out(.childrenPart(generation: generation, children: taken, complete: end == rest.endIndex))]
        case let .getPerms(path):
            if tx != 0 { return [out(.permissions(try connections[id]!.transactions[tx]!.permissions(absolute(path), base: tree)))] }
            return [out(.permissions(try tree.permissions(absolute(path), caller: caller)))]
        case let .write(path, value):
            guard !path.isSpecial else { throw .EINVAL }
            if tx != 0 {
                try connections[id]!.transactions[tx]!.write(absolute(path), value: value, base: tree)
                return [out(.ok)]
            }
            _ = try tree.write(absolute(path), value: value, caller: caller)
            // One event for the node written, as C xenstored (implicitly created parents are
            // above it, so their watchers hear this path anyway).
            return [out(.ok)] + events([(absolute(path), false)])
        case let .mkdir(path):
            guard !path.isSpecial else { throw .EINVAL }
            if tx != 0 {
                try connections[id]!.transactions[tx]!.mkdir(absolute(path), base: tree)
                return [out(.ok)]
            }
            let created = try tree.mkdir(absolute(path), caller: caller)
            return [out(.ok)] + (created.isEmpty ? [] : events([(absolute(path), false)]))
        case let .rm(path):
            guard !path.isSpecial else { throw .EINVAL }
            if tx != 0 {
                try connections[id]!.transactions[tx]!.remove(absolute(path), base: tree)
                return [out(.ok)]
            }
            // Watchers hear of a removal if they could read the node before it went (as C
            // xenstored checks the deleted node's own permissions).
            let before = tree[node: absolute(path)]?.permissions
            let removed = try tree.remove(absolute(path), caller: caller)
            return [out(.ok)] + (removed.isEmpty ? [] : events([(absolute(path), true)], removed: before.map { [absolute(path): $0] } ?? [:]))
        case let .setPerms(path, permissions):
            if tx != 0 {
                try connections[id]!.transactions[tx]!.setPermissions(absolute(path), permissions, base: tree)
                return [out(.ok)]
            }
            try tree.setPermissions(absolute(path), permissions, caller: caller)
            return [out(.ok)] + events([(absolute(path), false)])
        case let .watch(path, token):
            let watch = try watches.add(
                connection: id, path: path, token: token, home: home(caller), privileged: caller.privileged,
                limit: quotas.quota(for: caller.domain).watches)
            // OK first, then the event that fires on registration.
            let event = XenStoreReply.watchEvent(path: watch.path, token: token)
            return [out(.ok), Output(connection: id, message: event.message(answering: header))]
        case let .unwatch(path, token):
            try watches.remove(connection: id, path: path, token: token)
            return [out(.ok)]
        case .transactionStart:
            guard tx == 0 else { throw .EBUSY }
            guard caller.privileged || connection.transactions.count < quotas.quota(for: caller.domain).transactions else { throw .ENOSPC }
            let number = nextTransaction
            nextTransaction = nextTransaction &+ 1 == 0 ? 1 : nextTransaction &+ 1
            connections[id]!.transactions[number] = XenStoredTransaction(id: number, caller: caller)
            return [out(.transactionID(number))]
        case let .transactionEnd(commit):
            guard tx != 0, let transaction = connections[id]!.transactions.removeValue(forKey: tx) else { throw .ENOENT }
            guard commit else { return [out(.ok)] }
            let changed = try transaction.commit(to: &tree)
            return [out(.ok)] + events(changed)
        case let .getDomainPath(domain):
            return [out(.domainPath(XenStorePath.home(of: domain).rawValue))]
        case let .introduce(domain, gfn, port):
            guard caller.privileged else { throw .EACCES }
            guard domain.isRegular else { throw .EINVAL }
            if let existing = introduced[domain] {
                guard existing.gfn == gfn && existing.port == port else { throw .EEXIST }
                return [out(.ok)]
            }
            introduced[domain] = (gfn, port)
            return [out(.ok)] + events([("@introduceDomain", false)])
        case let .release(domain):
            guard caller.privileged else { throw .EACCES }
            guard introduced[domain] != nil else { throw .ENOENT }
            return [out(.ok)] + releaseDomain(domain)
        case let .isDomainIntroduced(domain):
            guard caller.privileged else { throw .EACCES }
            return [out(.introduced(domain == .dom0 || introduced[domain] != nil))]
        case .resume, .setTarget:
            guard caller.privileged else { throw .EACCES }
            return [out(.ok)]
        case .resetWatches:
            watches.removeAll(connection: id)
            connections[id]!.transactions.removeAll()
            return [out(.ok)]
        case .control:
            guard caller.privileged else { throw .EACCES }
            return [out(.text("OK"))]
        }
    }

    /// Watch events for changes, to watchers allowed to read the changed node (or its parent,
    /// for a removal); special paths go to privileged watchers.
    /// - Parameter removed: permissions of removed nodes as they were (who may hear of it).
    private func events(_ changes: [(String, Bool)], removed: [String: XenStorePermissions] = [:]) -> [Output] {
        var outputs: [Output] = []
        for (path, removal) in changes {
            for (watch, shown) in watches.events(for: path, removal: removal) {
                guard let caller = connections[watch.connection]?.caller else { continue }
                if path.hasPrefix("@") {
                    guard caller.privileged else { continue }
                } else if !caller.privileged, let permissions = removed[path], !tree.exists(path) {
                    guard permissions.access(for: caller.domain).canRead else { continue }
                } else if !caller.privileged {
                    let target = tree.exists(path) ? path : XenStoreTree.parent(of: path) ?? "/"
                    guard (try? tree.permissions(target, caller: caller)) != nil else { continue }
                }
                let event = XenStoreReply.watchEvent(path: shown, token: watch.token)
                outputs.append(Output(connection: watch.connection, message: event.message(answering: XsHeader(type: .watch, requestID: 0, length: 0))))
            }
        }
        return outputs
    }
}
