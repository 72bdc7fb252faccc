/// One request/response protocol carried on a shared ring (blkif, netif tx, netif rx, …).
///
/// The protocol knows its slot size and how to turn its messages into slot bytes and back.
/// Decoders get a private copy of the slot (the ring copies it out of shared memory once,
/// as `RING_COPY_REQUEST` does) and throw on anything the ABI forbids.
public protocol RingProtocol: Sendable {
    associatedtype Request: Sendable
    associatedtype Response: Sendable

    /// Bytes per slot: the size of the C `union <name>_sring_entry`.
    var slotSize: Int { get }

    /// Writes `request` into a slot (`slot.count == slotSize`).
    func encodeRequest(_ request: Request, into slot: UnsafeMutableRawBufferPointer)
    /// Decodes a private copy of a request slot.
    func decodeRequest(_ slot: UnsafeRawBufferPointer) throws(XenABIError) -> Request
    /// Writes `response` into a slot (`slot.count == slotSize`).
    func encodeResponse(_ response: Response, into slot: UnsafeMutableRawBufferPointer)
    /// Decodes a private copy of a response slot.
    func decodeResponse(_ slot: UnsafeRawBufferPointer) throws(XenABIError) -> Response
}

extension RingProtocol {
    /// The ring geometry of this protocol in `2^pageOrder` pages.
    public func geometry(pageOrder: Int = 0) -> RingGeometry? {
        RingGeometry(slotSize: slotSize, pageOrder: pageOrder)
    }
}
