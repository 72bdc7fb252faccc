import Atomics
import XenABI

/// The back end of a shared ring: it consumes requests and produces responses.
///
/// The ring.h macros as methods (`BACK_RING_INIT`, `RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`,
/// `RING_FINAL_CHECK_FOR_REQUESTS`, …). It never initialises the shared header (only the
/// front end does) and never trusts the front end's `req_prod`.
///
/// Non-copyable because it holds the private indexes (`rsp_prod_pvt`, `req_cons`).
public struct BackRing<P: RingProtocol>: ~Copyable, @unchecked Sendable {  // @unchecked: one owner; shared indexes are atomics (ring.h's barriers)
    public let ringProtocol: P
    public let geometry: RingGeometry
    @usableFromInline let base: UnsafeMutableRawPointer
    @usableFromInline let header: SharedRingHeaderAccess
    /// C `req_cons`: the next request to consume.
    @usableFromInline var reqCons: RingIndex
    @inlinable public var requestConsumer: RingIndex { reqCons }
    /// C `rsp_prod_pvt`: the next response slot to fill.
    @usableFromInline var rspProdPvt: RingIndex
    @inlinable public var responseProducer: RingIndex { rspProdPvt }
    /// The value last stored to the shared `rsp_prod`.
    @usableFromInline var publishedRspProd: RingIndex
    @inlinable public var publishedResponses: RingIndex { publishedRspProd }
    /// The shared `req_prod` as last read and checked.
    @usableFromInline var knownRequestProducer: RingIndex

    /// Attaches to a ring the front end initialised (`BACK_RING_INIT` for `startIndex` 0,
    /// `BACK_RING_ATTACH` otherwise).
    ///
    /// - Parameter startIndex: the shared `rsp_prod` the front end initialised, and the first request to consume.
    public init(attaching region: UnsafeMutableRawBufferPointer, protocol ringProtocol: P, startIndex: RingIndex = 0) throws(RingError) {
        let (base, geometry) = try ringGeometry(region: region, slotSize: ringProtocol.slotSize)
        self.base = base
        self.geometry = geometry
        self.ringProtocol = ringProtocol
        self.header = SharedRingHeaderAccess(base: base)
        reqCons = startIndex
        rspProdPvt = startIndex
        publishedRspProd = startIndex
        knownRequestProducer = startIndex
    }

    /// Attaches where the shared `rsp_prod` stands (`BACK_RING_ATTACH` with `sring->rsp_prod`,
    /// as Linux's backends attach): a backend taking over a ring that another instance served
    /// starts after the last response published, and never serves again a request that was
    /// answered. On a ring the front end just initialised it is `BACK_RING_INIT`.
    public init(resuming region: UnsafeMutableRawBufferPointer, protocol ringProtocol: P) throws(RingError) {
        let (base, _) = try ringGeometry(region: region, slotSize: ringProtocol.slotSize)
        let start = SharedRingHeaderAccess(base: base).responseProducer.load(ordering: .acquiring)
        try self.init(attaching: region, protocol: ringProtocol, startIndex: start)
    }

    /// Requests consumed and not yet answered.
    @inlinable public var pendingResponses: UInt32 { reqCons &- rspProdPvt }

    /// C `RING_HAS_UNCONSUMED_REQUESTS`: requests the front end published that may be consumed,
    /// bounded by the room for their responses.
    ///
    /// - Throws: ``RingError/requestProducerAhead(producer:responseProducer:size:)``
    ///   (`RING_REQUEST_PROD_OVERFLOW`) when the front end claims more than a ring's worth.
    @inlinable public mutating func unconsumedRequests() throws(RingError) -> UInt32 {
        if knownRequestProducer == reqCons { try refreshRequestProducer() }
        return RingArithmetic.unconsumedRequests(
            sharedProducer: knownRequestProducer, requestConsumer: reqCons,
            responseProducer: rspProdPvt, size: geometry.entryCount)
    }

    /// Requests waiting, reading `req_prod` afresh (a consumer that needs several at once,
    /// such as netback's rx path needing one slot per page of a packet).
    @inlinable public mutating func availableRequests() throws(RingError) -> UInt32 {
        try refreshRequestProducer()
        return RingArithmetic.unconsumedRequests(
            sharedProducer: knownRequestProducer, requestConsumer: reqCons,
            responseProducer: rspProdPvt, size: geometry.entryCount)
    }

    /// Asks the front end to notify when `count` requests are waiting (`req_event`), then
    /// re-reads: returns how many are waiting now (sleep only if still fewer than `count`).
    @inlinable public mutating func requestNotification(whenAvailable count: UInt32) throws(RingError) -> UInt32 {
        header.requestEvent.store(reqCons &+ max(count, 1), ordering: .relaxed)
        // Full barrier: req_event is visible before req_prod is re-read (pairs with the front's push).
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        return try availableRequests()
    }

    @inlinable mutating func refreshRequestProducer() throws(RingError) {
        // Read barrier: slots are read only after the index that covers them.
        let producer = header.requestProducer.load(ordering: .acquiring)
        guard !RingArithmetic.requestProducerOverflows(producer, responseProducer: rspProdPvt, size: geometry.entryCount),
            producer &- rspProdPvt >= reqCons &- rspProdPvt
        else {
            throw .requestProducerAhead(producer: producer, responseProducer: rspProdPvt, size: geometry.entryCount)
        }
        knownRequestProducer = producer
    }

    /// Consumes the next request, copied out of the ring once and decoded by the protocol.
    ///
    /// - Returns: nil when none is waiting, or when every slot holds an unanswered request.
    /// - Throws: ``RingError`` for a lying `req_prod` or a malformed slot (which is consumed:
    ///   the caller still owes it a response).
    @inlinable public mutating func nextRequest() throws(RingError) -> P.Request? {
        let ringProtocol = self.ringProtocol
        return try nextRequest { (slot) throws(XenABIError) in try ringProtocol.decodeRequest(slot) }
    }

    /// Consumes the next request with a decoder of the caller's.
    @inlinable public mutating func nextRequest<T>(decode: (UnsafeRawBufferPointer) throws(XenABIError) -> T) throws(RingError) -> T? {
        guard try unconsumedRequests() > 0 else { return nil }
        // RING_REQUEST_CONS_OVERFLOW cannot hold here: unconsumedRequests bounds by the room.
        let index = reqCons
        reqCons &+= 1
        return try copyOutSlot(base: base, geometry: geometry, index: index, decode)
    }

    /// Writes a response into the next response slot (`RING_GET_RESPONSE(rsp_prod_pvt++)`);
    /// not visible until a push. Every response answers a consumed request: answering more
    /// than were consumed is a programming error and traps.
    @inlinable public mutating func enqueueResponse(_ response: P.Response) {
        precondition(pendingResponses > 0, "a response without a consumed request would overwrite an unread request")
        let slot = UnsafeMutableRawBufferPointer(start: base + geometry.slotOffset(rspProdPvt), count: geometry.slotSize)
        ringProtocol.encodeResponse(response, into: slot)
        rspProdPvt &+= 1
    }

    /// C `RING_PUSH_RESPONSES`: publishes without the notify test.
    @inlinable public mutating func pushResponses() {
        header.responseProducer.store(rspProdPvt, ordering: .releasing)
        publishedRspProd = rspProdPvt
    }

    /// C `RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`.
    ///
    /// - Returns: true when the front end asked to be woken for one of these responses.
    @inlinable public mutating func pushResponsesAndCheckNotify() -> Bool {
        let old = publishedRspProd
        let new = rspProdPvt
        // Write barrier: response slots are visible before rsp_prod.
        header.responseProducer.store(new, ordering: .releasing)
        publishedRspProd = new
        // Full barrier: rsp_prod is visible before rsp_event is read (pairs with the front's final check).
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        let event = header.responseEvent.load(ordering: .relaxed)
        return RingArithmetic.needsNotify(old: old, new: new, event: event)
    }

    /// C `RING_FINAL_CHECK_FOR_REQUESTS`: before sleeping, asks to be notified of the next
    /// request and re-checks.
    ///
    /// - Returns: true when requests are waiting (do not sleep).
    @inlinable public mutating func finalCheckForRequests() throws(RingError) -> Bool {
        if try unconsumedRequests() > 0 { return true }
        header.requestEvent.store(reqCons &+ 1, ordering: .relaxed)
        // Full barrier: req_event is visible before req_prod is re-read (pairs with the front's push).
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        return try unconsumedRequests() > 0
    }
}
