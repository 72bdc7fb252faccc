import Synchronization
import XenABI

/// The node operations, shared by a client (outside any transaction) and a transaction
/// (every request carries its id).
public protocol XenStoreOperations: Sendable {
    /// Sends one request with `transaction` in its header and returns the reply; an ERROR
    /// reply is thrown as its ``XenStoreError`` case.
    func call(_ request: XenStoreRequest, transaction: UInt32) async throws(XenStoreError) -> XenStoreReply
    /// The transaction id these operations run in (0: none).
    var transactionID: UInt32 { get }
}

extension XenStoreClient {
    public var transactionID: UInt32 { 0 }
}

extension XenStoreOperations {
    /// A node's value, exact bytes.
    public func read(_ path: XenStorePath) async throws(XenStoreError) -> [UInt8] {
        guard case let .value(bytes) = try await call(.read(path), transaction: transactionID) else { throw .badReply("READ \(path)") }
        return bytes
    }

    /// A node's value as UTF-8 text.
    public func readString(_ path: XenStorePath) async throws(XenStoreError) -> String {
        String(decoding: try await read(path), as: UTF8.self)
    }

    /// Whether a node exists (a read that fails with ENOENT says no).
    public func exists(_ path: XenStorePath) async throws(XenStoreError) -> Bool {
        do {
            _ = try await read(path)
            return true
        } catch .noEntry {
            return false
        }
    }

    /// Writes a value, creating the node and missing parents.
    public func write(_ path: XenStorePath, _ value: [UInt8]) async throws(XenStoreError) {
        _ = try await call(.write(path, value: value), transaction: transactionID)
    }

    /// Writes text as the node's value.
    public func write(_ path: XenStorePath, _ value: String) async throws(XenStoreError) {
        try await write(path, Array(value.utf8))
    }

    /// Creates a node with an empty value (nothing if it exists).
    public func mkdir(_ path: XenStorePath) async throws(XenStoreError) {
        _ = try await call(.mkdir(path), transaction: transactionID)
    }

    /// Removes a node and everything below it.
    public func remove(_ path: XenStorePath) async throws(XenStoreError) {
        _ = try await call(.rm(path), transaction: transactionID)
    }

    /// A node's children (names, not paths). Lists too long for one reply are read with
    /// DIRECTORY_PART, restarting if the node changes meanwhile.
    public func directory(_ path: XenStorePath) async throws(XenStoreError) -> [String] {
        do throws(XenStoreError) {
            guard case let .children(names) = try await call(.directory(path), transaction: transactionID) else { throw .badReply("DIRECTORY \(path)") }
            return names
        } catch .tooBig {
            return try await directoryInParts(path)
        }
    }

    private func directoryInParts(_ path: XenStorePath) async throws(XenStoreError) -> [String] {
        restart: for _ in 0..<8 {
            var names: [String] = []
            var offset = 0  // bytes of "name\0" received so far
            var generation: String?
            while true {
                guard case let .childrenPart(gen, children, complete) = try await call(.directoryPart(path, offset: offset), transaction: transactionID) else {
                    throw .badReply("DIRECTORY_PART \(path)")
                }
                if let generation, generation != gen { continue restart }
                generation = gen
                names += children
                offset += children.reduce(0) { $0 + $1.utf8.count + 1 }
                if complete { return names }
                guard !children.isEmpty else { throw .badReply("DIRECTORY_PART \(path): an incomplete part with no children") }
            }
        }
        throw .transactionConflict(attempts: 8)
    }

    /// A node's permissions (the first entry is the owner).
    public func permissions(_ path: XenStorePath) async throws(XenStoreError) -> XenStorePermissions {
        guard case let .permissions(permissions) = try await call(.getPerms(path), transaction: transactionID) else { throw .badReply("GET_PERMS \(path)") }
        return permissions
    }

    /// Replaces a node's permissions (owner or control domain only).
    public func setPermissions(_ path: XenStorePath, _ permissions: XenStorePermissions) async throws(XenStoreError) {
        _ = try await call(.setPerms(path, permissions), transaction: transactionID)
    }
}

/// A running transaction: the same operations, isolated until the client commits it.
/// Made by ``XenStoreClient/transaction(attempts:_:)``.
public struct XenStoreTransaction: XenStoreOperations {
    public let client: XenStoreClient
    public let id: UInt32
    public var transactionID: UInt32 { id }

    /// Operations in transaction `id` (from ``XenStoreClient/startTransaction()``).
    public init(client: XenStoreClient, id: UInt32) {
        self.client = client
        self.id = id
    }

    public func call(_ request: XenStoreRequest, transaction: UInt32) async throws(XenStoreError) -> XenStoreReply {
        try await client.call(request, transaction: transaction)
    }
}

/// The count of a watch's events that found its queue full.
final class XenStoreWatchDrops: Sendable {
    let count = Mutex(0)
}

/// One watch event: the path that changed (relative if the watch was) and the watch's token.
public struct XenStoreWatchEvent: Sendable, Equatable {
    public let path: String
    public let token: String

    public init(path: String, token: String) {
        self.path = path
        self.token = token
    }
}

/// A registered watch: its events, in order. Ending iteration (or ``cancel()``) unregisters it.
///
/// An event says "look again at this path", not "this many changes happened": the first one
/// is the daemon's registration event, and a daemon may merge events. Xen's C xenstored drops
/// an event identical to one still queued for the connection, so the registration event of a
/// watch on `P` and a write to `P` made before it left can arrive as one event. Read the state
/// after each event rather than counting events.
///
/// The queue is bounded (``queueLimit`` events, as FreeBSD's XSA-349 fix bounds it): a peer that
/// floods events cannot grow it without end. When it is full the oldest events give way;
/// ``droppedEvents`` counts them — when it grows, read the whole watched subtree again.
public struct XenStoreWatch: AsyncSequence, Sendable {
    public typealias Element = XenStoreWatchEvent
    /// Events held for one watch at most.
    public static let queueLimit = 1024
    public let path: XenStorePath
    public let token: String
    let stream: AsyncStream<XenStoreWatchEvent>
    let continuation: AsyncStream<XenStoreWatchEvent>.Continuation
    let drops: XenStoreWatchDrops

    /// Events that arrived while the queue was full (their place went to newer ones).
    public var droppedEvents: Int { drops.count.withLock { $0 } }

    /// Unregisters the watch; iteration ends.
    public func cancel() { continuation.finish() }

    public struct AsyncIterator: AsyncIteratorProtocol {
        var base: AsyncStream<XenStoreWatchEvent>.Iterator

        public mutating func next() async -> XenStoreWatchEvent? { await base.next() }
    }

    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(base: stream.makeAsyncIterator()) }
}
