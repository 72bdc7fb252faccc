import Atomics
import XenABI

/// A domain's xenstore ring page (`struct xenstore_domain_interface`): two 1024-byte byte
/// streams with free-running 32-bit offsets (byte k at `k & 1023`). The guest writes requests
/// and reads responses; the daemon the other way round. Barriers as docs/misc/xenstore-ring.txt
/// and Mini-OS prescribe: a writer copies, then publishes its producer with release order
/// (wmb); a reader loads the producer with acquire order (rmb), copies, and a full fence (mb)
/// orders the copy before it publishes its consumer.
///
/// Never trusting the peer: an index pair that says more than 1024 bytes are outstanding is
/// a ``Fault`` (the daemon then sets the page's error field, as XENSTORE_ERROR_RINGIDX).
public struct XenStoreRing: @unchecked Sendable {  // @unchecked: the shared page is reached only through its atomics and the copies they order
    /// Which end this process is.
    public enum Side: Sendable { case guest, daemon }

    /// A peer broke the ring's rules.
    public enum Fault: Error, Equatable, Sendable {
        /// `prod − cons` over 1024: the indexes cannot be right.
        case indexes(producer: UInt32, consumer: UInt32)
    }

    public let page: UnsafeMutableRawPointer
    public let side: Side
    private let outProducer, outConsumer, inProducer, inConsumer: UnsafeAtomic<UInt32>
    private let outData, inData: UnsafeMutableRawPointer
    private let connectionWord, errorWord, featuresWord: UnsafeAtomic<UInt32>

    public init(page: UnsafeMutableRawPointer, side: Side) {
        func word(_ offset: Int) -> UnsafeAtomic<UInt32> {
            UnsafeAtomic(at: (page + offset).bindMemory(to: UInt32.AtomicRepresentation.self, capacity: 1))
        }
        self.page = page
        self.side = side
        let requests = (
            data: page + XenstoreDomainInterface.request, prod: word(XenstoreDomainInterface.requestProducer),
            cons: word(XenstoreDomainInterface.requestConsumer)
        )
        let responses = (
            data: page + XenstoreDomainInterface.response, prod: word(XenstoreDomainInterface.responseProducer),
            cons: word(XenstoreDomainInterface.responseConsumer)
        )
        let (outgoing, incoming) = side == .guest ? (requests, responses) : (responses, requests)
        outData = outgoing.data
        outProducer = outgoing.prod
        outConsumer = outgoing.cons
        inData = incoming.data
        inProducer = incoming.prod
        inConsumer = incoming.cons
        connectionWord = word(XenstoreDomainInterface.connection)
        errorWord = word(XenstoreDomainInterface.error)
        featuresWord = word(XenstoreDomainInterface.serverFeatures)
    }

    /// Zeroes the page as the toolstack hands it over (offsets start at 0; peers must not
    /// assume so) and advertises the daemon's features.
    public func initialize(serverFeatures: UInt32 = XsWire.serverFeatureReconnection | XsWire.serverFeatureError) {
        page.initializeMemory(as: UInt8.self, repeating: 0, count: XenstoreDomainInterface.size)
        featuresWord.store(serverFeatures, ordering: .releasing)
    }

    /// Copies as much of `bytes` as there is room for; returns how many went in (publish
    /// happens before return; the caller then notifies the peer).
    public func write(_ bytes: UnsafeRawBufferPointer) throws(Fault) -> Int {
        let consumer = outConsumer.load(ordering: .acquiring)
        let producer = outProducer.load(ordering: .relaxed)
        let used = producer &- consumer
        guard used <= UInt32(XsWire.ringSize) else { throw .indexes(producer: producer, consumer: consumer) }
        let count = min(bytes.count, XsWire.ringSize - Int(used))
        guard count > 0 else { return 0 }
        let start = Int(producer & UInt32(XsWire.ringSize - 1))
        let first = min(count, XsWire.ringSize - start)
        (outData + start).copyMemory(from: bytes.baseAddress!, byteCount: first)
        if count > first { outData.copyMemory(from: bytes.baseAddress! + first, byteCount: count - first) }
        outProducer.store(producer &+ UInt32(count), ordering: .releasing)  // wmb, then publish
        return count
    }

    /// Copies the bytes available (up to `buffer.count`) out of the ring; returns how many.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(Fault) -> Int {
        let producer = inProducer.load(ordering: .acquiring)  // rmb after reading prod
        let consumer = inConsumer.load(ordering: .relaxed)
        let available = producer &- consumer
        guard available <= UInt32(XsWire.ringSize) else { throw .indexes(producer: producer, consumer: consumer) }
        let count = min(Int(available), buffer.count)
        guard count > 0 else { return 0 }
        let start = Int(consumer & UInt32(XsWire.ringSize - 1))
        let first = min(count, XsWire.ringSize - start)
        buffer.baseAddress!.copyMemory(from: inData + start, byteCount: first)
        if count > first { (buffer.baseAddress! + first).copyMemory(from: inData, byteCount: count - first) }
        atomicMemoryFence(ordering: .sequentiallyConsistent)  // mb: the copy completes before cons moves
        inConsumer.store(consumer &+ UInt32(count), ordering: .relaxed)
        return count
    }

    /// Bytes waiting to be read.
    public var readable: Int {
        let available = inProducer.load(ordering: .acquiring) &- inConsumer.load(ordering: .relaxed)
        return available <= UInt32(XsWire.ringSize) ? Int(available) : 0
    }

    /// Room left for writing.
    public var writable: Int {
        let used = outProducer.load(ordering: .relaxed) &- outConsumer.load(ordering: .acquiring)
        return used <= UInt32(XsWire.ringSize) ? XsWire.ringSize - Int(used) : 0
    }

    /// The connection field: `XsWire.connected` or `XsWire.reconnecting`.
    public var connection: UInt32 {
        get { connectionWord.load(ordering: .acquiring) }
        nonmutating set { connectionWord.store(newValue, ordering: .releasing) }
    }

    /// The error field (`XsWire.error…`), set by the daemon.
    public var error: UInt32 {
        get { errorWord.load(ordering: .acquiring) }
        nonmutating set { errorWord.store(newValue, ordering: .releasing) }
    }

    /// The daemon's advertised features.
    public var serverFeatures: UInt32 { featuresWord.load(ordering: .acquiring) }

    /// The daemon's side of a reconnect: drop everything in flight (consumers catch up with
    /// producers), clear the error, and end the reconnect.
    public func resetForReconnect() {
        inConsumer.store(inProducer.load(ordering: .acquiring), ordering: .relaxed)
        outProducer.store(outConsumer.load(ordering: .acquiring), ordering: .releasing)
        errorWord.store(XsWire.errorNone, ordering: .relaxed)
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        connectionWord.store(XsWire.connected, ordering: .releasing)
    }
}
