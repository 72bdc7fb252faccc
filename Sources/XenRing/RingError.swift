import XenABI

/// Something the peer wrote into a shared ring that no correct peer can write.
///
/// The ring never trusts the other end: an index that runs ahead of what the peer may
/// produce, or a slot that does not decode, is reported here instead of being acted on.
public enum RingError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The back end published responses for requests that were never published.
    case responseProducerAhead(producer: RingIndex, consumer: RingIndex, requestsPublished: RingIndex)
    /// The front end published more requests than the ring holds beyond the responses.
    case requestProducerAhead(producer: RingIndex, responseProducer: RingIndex, size: UInt32)
    /// A slot's bytes do not decode as the protocol's message.
    case malformedSlot(index: RingIndex, XenABIError)
    /// The shared region cannot hold a ring of this protocol.
    case regionUnusable(String)

    public var description: String {
        switch self {
        case let .responseProducerAhead(producer, consumer, published):
            "back end's rsp_prod \(producer) runs ahead of the \(published &- consumer) requests outstanding from \(consumer)"
        case let .requestProducerAhead(producer, responseProducer, size):
            "front end's req_prod \(producer) is more than \(size) slots ahead of rsp_prod_pvt \(responseProducer)"
        case let .malformedSlot(index, error):
            "malformed slot at ring index \(index): \(error)"
        case let .regionUnusable(why):
            "shared ring region unusable: \(why)"
        }
    }
}
