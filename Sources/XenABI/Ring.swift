/// Facts of Xen's generic shared ring, `xen/include/public/io/ring.h`.
///
/// A ring is one or more 4 KiB pages: a 64-byte header (`struct <name>_sring`) followed by a
/// power-of-two array of slots, each the size of the C `union { request; response; }`.
/// Indexes are free-running `UInt32` (`RING_IDX`); every difference is taken modulo 2^32.

/// A free-running ring index, C `RING_IDX`.
public typealias RingIndex = UInt32

/// Xen's page: 4 KiB on every architecture, whatever the OS page size (C `XEN_PAGE_SIZE`).
public enum XenPage {
    /// C `XEN_PAGE_SHIFT`.
    public static let shift = 12
    /// C `XEN_PAGE_SIZE`.
    public static let size = 1 << shift
}

/// Byte offsets of the shared ring header.
///
/// ```c
/// struct __name##_sring {
///     RING_IDX req_prod, req_event;   /* 0, 4   */
///     RING_IDX rsp_prod, rsp_event;   /* 8, 12  */
///     union { uint8_t pvt_pad[4]; ... } pvt;  /* 16 */
///     uint8_t __pad[44];              /* 20     */
///     union __name##_sring_entry ring[];  /* 64 */
/// };
/// ```
public enum SharedRingHeader {
    /// `req_prod`: one past the last request published (written by the front end).
    public static let requestProducer = 0
    /// `req_event`: the back end asks to be notified when `req_prod` passes this.
    public static let requestEvent = 4
    /// `rsp_prod`: one past the last response published (written by the back end).
    public static let responseProducer = 8
    /// `rsp_event`: the front end asks to be notified when `rsp_prod` passes this.
    public static let responseEvent = 12
    /// `pvt`: private to some protocols (netif smartpoll); kept zero.
    public static let privateArea = 16
    /// Start of the slot array, and the header's size.
    public static let size = 64
}

/// The size of a ring: how many slots of which size fit in which region.
public struct RingGeometry: Sendable, Equatable, CustomStringConvertible {
    /// Bytes per slot: the size of the C request/response union.
    public let slotSize: Int
    /// Bytes of the shared region (header included).
    public let byteCount: Int
    /// Number of slots, a power of two (C `__RING_SIZE`).
    public let entryCount: UInt32

    /// The geometry of a ring of `slotSize`-byte slots in `byteCount` bytes.
    ///
    /// - Returns: nil when not even one slot fits.
    public init?(slotSize: Int, byteCount: Int) {
        guard slotSize > 0, byteCount > SharedRingHeader.size else { return nil }
        let fit = (byteCount - SharedRingHeader.size) / slotSize
        guard fit > 0 else { return nil }
        // Round down to a power of two, as __RD32 does, with integer bit operations.
        let count = 1 << (Int.bitWidth - 1 - fit.leadingZeroBitCount)
        guard count <= Int(UInt32.max / 2) else { return nil }
        self.slotSize = slotSize
        self.byteCount = byteCount
        self.entryCount = UInt32(count)
    }

    /// The geometry of a ring of `slotSize`-byte slots in `2^pageOrder` Xen pages.
    public init?(slotSize: Int, pageOrder: Int) {
        guard (0...20).contains(pageOrder) else { return nil }
        self.init(slotSize: slotSize, byteCount: XenPage.size << pageOrder)
    }

    /// Byte offset of the slot that index `index` addresses.
    @inlinable @inline(__always)
    public func slotOffset(_ index: RingIndex) -> Int {
        SharedRingHeader.size &+ Int(index & (entryCount &- 1)) &* slotSize
    }

    public var description: String { "\(entryCount) slots of \(slotSize) bytes in \(byteCount) bytes" }
}

/// The index arithmetic of `ring.h`, pure and modulo 2^32.
public enum RingArithmetic {
    /// `RING_PUSH_*_AND_CHECK_NOTIFY`'s decision: notify iff the consumer's event index lies in
    /// `(old, new]`, the indexes this push just published.
    @inlinable @inline(__always)
    public static func needsNotify(old: RingIndex, new: RingIndex, event: RingIndex) -> Bool {
        (new &- event) < (new &- old)
    }

    /// `RING_FREE_REQUESTS`: slots the front end may still fill.
    @inlinable @inline(__always)
    public static func freeRequests(requestProducer: RingIndex, responseConsumer: RingIndex, size: UInt32) -> UInt32 {
        size &- (requestProducer &- responseConsumer)
    }

    /// `RING_HAS_UNCONSUMED_REQUESTS`: requests the back end may consume, bounded by the free
    /// response space so that a lying front end cannot push it past its own responses.
    @inlinable @inline(__always)
    public static func unconsumedRequests(
        sharedProducer: RingIndex, requestConsumer: RingIndex, responseProducer: RingIndex, size: UInt32
    ) -> UInt32 {
        let published = sharedProducer &- requestConsumer
        let room = size &- (requestConsumer &- responseProducer)
        return min(published, room)
    }

    /// `RING_REQUEST_PROD_OVERFLOW`: true when a front end's `req_prod` is more than a ring's
    /// worth ahead of the responses, which no honest front end can publish.
    @inlinable @inline(__always)
    public static func requestProducerOverflows(_ producer: RingIndex, responseProducer: RingIndex, size: UInt32) -> Bool {
        (producer &- responseProducer) > size
    }

    /// `RING_RESPONSE_PROD_OVERFLOW`: true when a back end's `rsp_prod` is more than a ring's
    /// worth ahead of the consumed responses.
    @inlinable @inline(__always)
    public static func responseProducerOverflows(_ producer: RingIndex, responseConsumer: RingIndex, size: UInt32) -> Bool {
        (producer &- responseConsumer) > size
    }

    /// `RING_REQUEST_CONS_OVERFLOW`: true when consuming index `consumer` would overwrite
    /// responses not yet published.
    @inlinable @inline(__always)
    public static func requestConsumerOverflows(_ consumer: RingIndex, responseProducer: RingIndex, size: UInt32) -> Bool {
        (consumer &- responseProducer) >= size
    }
}
