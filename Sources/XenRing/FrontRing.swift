import Atomics
import XenABI

/// The front end of a shared ring: it produces requests and consumes responses.
///
/// The ring.h macros as methods (`FRONT_RING_INIT`, `RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`,
/// `RING_FINAL_CHECK_FOR_RESPONSES`, …). The ring never notifies by itself: a push answers
/// whether the peer must be notified, and the caller owns the event channel.
///
/// Non-copyable because it holds the private indexes (`req_prod_pvt`, `rsp_cons`): two copies
/// would each believe they own the same slots. It points into shared memory that it does not
/// own; the region must outlive it.
public struct FrontRing<P: RingProtocol>: ~Copyable, @unchecked Sendable {  // @unchecked: one owner; shared indexes are atomics (ring.h's barriers)
    /// The protocol carried on this ring.
    public let ringProtocol: P
    /// Slot size and count.
    public let geometry: RingGeometry
    @usableFromInline let base: UnsafeMutableRawPointer
    @usableFromInline let header: SharedRingHeaderAccess
    /// C `req_prod_pvt`: the next slot to fill.
    @usableFromInline var reqProdPvt: RingIndex
    @inlinable public var requestProducer: RingIndex { reqProdPvt }
    /// C `rsp_cons`: the next response to consume.
    @usableFromInline var rspCons: RingIndex
    @inlinable public var responseConsumer: RingIndex { rspCons }
    /// The value last stored to the shared `req_prod`.
    @usableFromInline var publishedReqProd: RingIndex
    @inlinable public var publishedRequests: RingIndex { publishedReqProd }
    /// The shared `rsp_prod` as last read (re-read only when it looks exhausted).
    @usableFromInline var knownResponseProducer: RingIndex

    /// Initialises the shared header and attaches (ring.h `SHARED_RING_INIT` + `FRONT_RING_INIT`).
    ///
    /// - Parameters:
    ///   - region: the ring's pages, whole 4 KiB pages, 8-byte aligned; the slot count is
    ///     `__RING_SIZE` for its size.
    ///   - startIndex: where the free-running indexes start; 0 for a new ring (Xen's own
    ///     choice). Other values behave as if that many requests had completed.
    /// - Throws: ``RingError/regionUnusable(_:)``.
    public init(initializing region: UnsafeMutableRawBufferPointer, protocol ringProtocol: P, startIndex: RingIndex = 0) throws(RingError) {
        let (base, geometry) = try ringGeometry(region: region, slotSize: ringProtocol.slotSize)
        SharedRingHeaderAccess.initialize(base: base, start: startIndex)
        self.init(base: base, geometry: geometry, ringProtocol: ringProtocol, index: startIndex)
    }

    /// Attaches to a ring whose shared header is live (`FRONT_RING_ATTACH`), e.g. after a restart.
    /// Requests already published are taken as outstanding, responses already published as unconsumed.
    ///
    /// - Parameter responseConsumer: the first response not yet consumed.
    public init(attaching region: UnsafeMutableRawBufferPointer, protocol ringProtocol: P, responseConsumer: RingIndex) throws(RingError) {
        let (base, geometry) = try ringGeometry(region: region, slotSize: ringProtocol.slotSize)
        let published = SharedRingHeaderAccess(base: base).requestProducer.load(ordering: .acquiring)
        guard published &- responseConsumer <= geometry.entryCount else {
            throw .requestProducerAhead(producer: published, responseProducer: responseConsumer, size: geometry.entryCount)
        }
        self.init(base: base, geometry: geometry, ringProtocol: ringProtocol, index: responseConsumer)
        reqProdPvt = published
        publishedReqProd = published
    }

    private init(base: UnsafeMutableRawPointer, geometry: RingGeometry, ringProtocol: P, index: RingIndex) {
        self.base = base
        self.geometry = geometry
        self.ringProtocol = ringProtocol
        self.header = SharedRingHeaderAccess(base: base)
        reqProdPvt = index
        rspCons = index
        publishedReqProd = index
        knownResponseProducer = index
    }

    /// C `RING_FREE_REQUESTS`: how many requests may still be enqueued.
    @inlinable public var freeRequests: UInt32 {
        RingArithmetic.freeRequests(requestProducer: reqProdPvt, responseConsumer: rspCons, size: geometry.entryCount)
    }

    /// C `RING_FULL`.
    @inlinable public var isFull: Bool { freeRequests == 0 }

    /// Writes a request into the next free slot (`RING_GET_REQUEST(req_prod_pvt++)`); it is
    /// not visible to the back end until a push.
    ///
    /// - Returns: false, writing nothing, when the ring is full.
    @inlinable @discardableResult
    public mutating func enqueueRequest(_ request: P.Request) -> Bool {
        guard !isFull else { return false }
        let slot = UnsafeMutableRawBufferPointer(start: base + geometry.slotOffset(reqProdPvt), count: geometry.slotSize)
        ringProtocol.encodeRequest(request, into: slot)
        reqProdPvt &+= 1
        return true
    }

    /// C `RING_PUSH_REQUESTS`: publishes the enqueued requests without the notify test
    /// (for callers that always notify).
    @inlinable public mutating func pushRequests() {
        // Write barrier: slots are visible before the index that covers them.
        header.requestProducer.store(reqProdPvt, ordering: .releasing)
        publishedReqProd = reqProdPvt
    }

    /// C `RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`: publishes the enqueued requests.
    ///
    /// - Returns: true when the back end asked to be woken for one of them (`req_event` in
    ///   `(old, new]`): the caller must notify its event channel.
    @inlinable public mutating func pushRequestsAndCheckNotify() -> Bool {
        let old = publishedReqProd
        let new = reqProdPvt
        // Write barrier: slots are visible before the index that covers them.
        header.requestProducer.store(new, ordering: .releasing)
        publishedReqProd = new
        // Full barrier: the req_prod store is globally visible before req_event is read,
        // pairing with the back end's fence between its req_event store and req_prod re-read.
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        let event = header.requestEvent.load(ordering: .relaxed)
        return RingArithmetic.needsNotify(old: old, new: new, event: event)
    }

    /// C `RING_HAS_UNCONSUMED_RESPONSES`: responses published and not yet consumed.
    ///
    /// - Throws: ``RingError/responseProducerAhead(producer:consumer:requestsPublished:)`` when
    ///   the back end claims more responses than requests were published.
    @inlinable public mutating func unconsumedResponses() throws(RingError) -> UInt32 {
        if knownResponseProducer != rspCons { return knownResponseProducer &- rspCons }
        try refreshResponseProducer()
        return knownResponseProducer &- rspCons
    }

    @inlinable mutating func refreshResponseProducer() throws(RingError) {
        // Read barrier: slots are read only after the index that covers them.
        let producer = header.responseProducer.load(ordering: .acquiring)
        guard producer &- rspCons <= publishedReqProd &- rspCons else {
            throw .responseProducerAhead(producer: producer, consumer: rspCons, requestsPublished: publishedReqProd)
        }
        knownResponseProducer = producer
    }

    /// Consumes the next response, copied out of the ring once and decoded by the protocol.
    ///
    /// - Returns: nil when no response is waiting.
    /// - Throws: ``RingError`` when the back end's index or the slot is bad; a malformed slot is
    ///   consumed all the same.
    @inlinable public mutating func nextResponse() throws(RingError) -> P.Response? {
        let ringProtocol = self.ringProtocol
        return try nextResponse { (slot) throws(XenABIError) in try ringProtocol.decodeResponse(slot) }
    }

    /// Consumes the next response with a decoder of the caller's (for slots whose meaning the
    /// previous slot decides, such as netif extra info).
    @inlinable public mutating func nextResponse<T>(decode: (UnsafeRawBufferPointer) throws(XenABIError) -> T) throws(RingError) -> T? {
        if knownResponseProducer == rspCons {
            try refreshResponseProducer()
            if knownResponseProducer == rspCons { return nil }
        }
        let index = rspCons
        rspCons &+= 1
        return try copyOutSlot(base: base, geometry: geometry, index: index, decode)
    }

    /// C `RING_FINAL_CHECK_FOR_RESPONSES`: before sleeping, asks to be notified of the next
    /// response and re-checks, closing the race with a back end that pushed meanwhile.
    ///
    /// - Returns: true when responses are waiting (do not sleep).
    @inlinable public mutating func finalCheckForResponses() throws(RingError) -> Bool {
        if try unconsumedResponses() > 0 { return true }
        header.responseEvent.store(rspCons &+ 1, ordering: .relaxed)
        // Full barrier: the rsp_event store is visible before rsp_prod is re-read,
        // pairing with the back end's fence between its rsp_prod store and rsp_event read.
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        return try unconsumedResponses() > 0
    }

    /// Sets `rsp_event` so that the back end notifies only after `count` more responses
    /// (batching; `finalCheckForResponses` is the `count == 1` case).
    @inlinable public mutating func requestNotification(afterResponses count: UInt32) {
        header.responseEvent.store(rspCons &+ max(count, 1), ordering: .relaxed)
        atomicMemoryFence(ordering: .sequentiallyConsistent)
    }
}
