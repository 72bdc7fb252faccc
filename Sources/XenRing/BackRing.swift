import Atomics
import XenABI

/// The back end of a shared ring: it consumes requests and produces responses.
///
/// The ring.h macros as methods (`BACK_RING_INIT`, `RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`,
/// `RING_FINAL_CHECK_FOR_REQUESTS`, …). It never initialises the shared header (only the
/// front end does) and never trusts the front end's `req_prod`.
///
/// Non-copyable because it holds the private indexes (`rsp_prod_pvt`, `req_cons`).
public struct BackRing<P: RingProtocol>: ~Copyable, @unchecked Sendable {
    public let ringProtocol: P
    public let geometry: RingGeometry
    private let base: UnsafeMutableRawPointer
    private let header: SharedRingHeaderAccess
    /// C `req_cons`: the next request to consume.
    public private(set) var requestConsumer: RingIndex
    /// C `rsp_prod_pvt`: the next response slot to fill.
    public private(set) var responseProducer: RingIndex
    /// The value last stored to the shared `rsp_prod`.
    public private(set) var publishedResponses: RingIndex
    /// The shared `req_prod` as last read and checked.
    private var knownRequestProducer: RingIndex

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
        requestConsumer = startIndex
        responseProducer = startIndex
        publishedResponses = startIndex
        knownRequestProducer = startIndex
    }

    /// Requests consumed and not yet answered.
    public var pendingResponses: UInt32 { requestConsumer &- responseProducer }

    /// C `RING_HAS_UNCONSUMED_REQUESTS`: requests the front end published that may be consumed,
    /// bounded by the room for their responses.
    ///
    /// - Throws: ``RingError/requestProducerAhead(producer:responseProducer:size:)``
    ///   (`RING_REQUEST_PROD_OVERFLOW`) when the front end claims more than a ring's worth.
    public mutating func unconsumedRequests() throws(RingError) -> UInt32 {
        if knownRequestProducer == requestConsumer { try refreshRequestProducer() }
        return RingArithmetic.unconsumedRequests(
            sharedProducer: knownRequestProducer, requestConsumer: requestConsumer,
            responseProducer: responseProducer, size: geometry.entryCount)
    }

    private mutating func refreshRequestProducer() throws(RingError) {
        // Read barrier: slots are read only after the index that covers them.
        let producer = header.requestProducer.load(ordering: .acquiring)
        guard !RingArithmetic.requestProducerOverflows(producer, responseProducer: responseProducer, size: geometry.entryCount),
              producer &- responseProducer >= requestConsumer &- responseProducer else {
            throw .requestProducerAhead(producer: producer, responseProducer: responseProducer, size: geometry.entryCount)
        }
        knownRequestProducer = producer
    }

    /// Consumes the next request, copied out of the ring once and decoded by the protocol.
    ///
    /// - Returns: nil when none is waiting, or when every slot holds an unanswered request.
    /// - Throws: ``RingError`` for a lying `req_prod` or a malformed slot (which is consumed:
    ///   the caller still owes it a response).
    public mutating func nextRequest() throws(RingError) -> P.Request? {
        let ringProtocol = self.ringProtocol
        return try nextRequest { (slot) throws(XenABIError) in try ringProtocol.decodeRequest(slot) }
    }

    /// Consumes the next request with a decoder of the caller's.
    public mutating func nextRequest<T>(decode: (UnsafeRawBufferPointer) throws(XenABIError) -> T) throws(RingError) -> T? {
        guard try unconsumedRequests() > 0 else { return nil }
        // RING_REQUEST_CONS_OVERFLOW cannot hold here: unconsumedRequests bounds by the room.
        let index = requestConsumer
        requestConsumer &+= 1
        return try copyOutSlot(base: base, geometry: geometry, index: index, decode)
    }

    /// Writes a response into the next response slot (`RING_GET_RESPONSE(rsp_prod_pvt++)`);
    /// not visible until a push. Every response answers a consumed request: answering more
    /// than were consumed is a programming error and traps.
    public mutating func enqueueResponse(_ response: P.Response) {
        precondition(pendingResponses > 0, "a response without a consumed request would overwrite an unread request")
        let slot = UnsafeMutableRawBufferPointer(start: base + geometry.slotOffset(responseProducer), count: geometry.slotSize)
        ringProtocol.encodeResponse(response, into: slot)
        responseProducer &+= 1
    }

    /// C `RING_PUSH_RESPONSES`: publishes without the notify test.
    public mutating func pushResponses() {
        header.responseProducer.store(responseProducer, ordering: .releasing)
        publishedResponses = responseProducer
    }

    /// C `RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`.
    ///
    /// - Returns: true when the front end asked to be woken for one of these responses.
    public mutating func pushResponsesAndCheckNotify() -> Bool {
        let old = publishedResponses
        let new = responseProducer
        // Write barrier: response slots are visible before rsp_prod.
        header.responseProducer.store(new, ordering: .releasing)
        publishedResponses = new
        // Full barrier: rsp_prod is visible before rsp_event is read (pairs with the front's final check).
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        let event = header.responseEvent.load(ordering: .relaxed)
        return RingArithmetic.needsNotify(old: old, new: new, event: event)
    }

    /// C `RING_FINAL_CHECK_FOR_REQUESTS`: before sleeping, asks to be notified of the next
    /// request and re-checks.
    ///
    /// - Returns: true when requests are waiting (do not sleep).
    public mutating func finalCheckForRequests() throws(RingError) -> Bool {
        if try unconsumedRequests() > 0 { return true }
        header.requestEvent.store(requestConsumer &+ 1, ordering: .relaxed)
        // Full barrier: req_event is visible before req_prod is re-read (pairs with the front's push).
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        return try unconsumedRequests() > 0
    }
}
