import XenABI
import XenStoreWire

/// What the daemon has yet to send on one connection (socket or ring), sans I/O: framed bytes,
/// how many of them went out, and the watch events still queued — an event identical to one
/// still queued is dropped (C xenstored coalesces the same way), so a slow reader watching a
/// busy node costs one queued event, not one per change. Bounded: past `limit` unsent bytes the
/// connection must be dropped.
public struct XenStoreOutputQueue: Sendable {
    public let limit: Int
    private(set) var bytes: [UInt8] = []
    private(set) var sent = 0
    /// Queued watch events (path, token) and where each ends in `bytes`.
    private var queuedEvents: [EventKey: Int] = [:]
    /// Events dropped as duplicates of queued ones.
    public private(set) var coalesced = 0
    /// Where each queued message ends in `bytes`, oldest first (from `firstEnd`).
    private var ends: [Int] = []
    private var firstEnd = 0

    private struct EventKey: Hashable, Sendable {
        let payload: [UInt8]
    }

    public init(limit: Int = 1 << 20) { self.limit = limit }

    /// Bytes waiting to go out.
    public var pending: Int { bytes.count - sent }
    public var isEmpty: Bool { sent == bytes.count }
    /// Messages not yet wholly sent.
    public var queuedMessages: Int { ends.count - firstEnd }

    /// Queues a message. Returns false when the unsent bytes are over the limit (drop the
    /// connection).
    public mutating func append(_ message: XsMessage) -> Bool {
        if message.header.messageType == .watchEvent {
            let key = EventKey(payload: message.payload)
            if let end = queuedEvents[key], end > sent {
                coalesced += 1
                return true
            }
            message.append(to: &bytes)
            queuedEvents[key] = bytes.count
        } else {
            message.append(to: &bytes)
        }
        ends.append(bytes.count)
        return pending <= limit
    }

    /// The unsent bytes, for a `send` or a ring copy.
    public func withUnsent<T>(_ body: (UnsafeRawBufferPointer) throws -> T) rethrows -> T {
        try bytes.withUnsafeBytes { raw in try body(UnsafeRawBufferPointer(rebasing: raw[sent...])) }
    }

    /// `count` bytes went out.
    public mutating func consumed(_ count: Int) {
        sent += count
        while firstEnd < ends.count && ends[firstEnd] <= sent { firstEnd += 1 }
        if sent == bytes.count {
            bytes.removeAll(keepingCapacity: bytes.capacity <= 65536)
            sent = 0
            queuedEvents.removeAll(keepingCapacity: true)
            ends.removeAll(keepingCapacity: true)
            firstEnd = 0
        }
    }
}
