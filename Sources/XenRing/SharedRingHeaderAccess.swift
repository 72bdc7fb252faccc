import Atomics
import XenABI

/// The four shared indexes of a ring header, reached as atomics.
///
/// All pointers reference memory the peer can write at any time. Loads of the peer's
/// producer index are `.acquiring` (ring.h's read barrier before reading slots); stores of
/// our producer index are `.releasing` (the write barrier after filling slots); the full
/// barriers ring.h places between a producer store and an event load (and between an event
/// store and a producer re-load) are explicit sequentially consistent fences at the call sites.
@usableFromInline
struct SharedRingHeaderAccess {
    @usableFromInline let requestProducer: UnsafeAtomic<UInt32>
    @usableFromInline let requestEvent: UnsafeAtomic<UInt32>
    @usableFromInline let responseProducer: UnsafeAtomic<UInt32>
    @usableFromInline let responseEvent: UnsafeAtomic<UInt32>

    /// - Parameter base: the first byte of the ring's first page, 4-byte aligned.
    init(base: UnsafeMutableRawPointer) {
        func word(_ offset: Int) -> UnsafeAtomic<UInt32> {
            UnsafeAtomic(at: (base + offset).bindMemory(to: UInt32.AtomicRepresentation.self, capacity: 1))
        }
        requestProducer = word(SharedRingHeader.requestProducer)
        requestEvent = word(SharedRingHeader.requestEvent)
        responseProducer = word(SharedRingHeader.responseProducer)
        responseEvent = word(SharedRingHeader.responseEvent)
    }

    /// `SHARED_RING_INIT`: both producers at `start`, both events one past, pad zeroed.
    /// Only the front end initialises a ring.
    static func initialize(base: UnsafeMutableRawPointer, start: RingIndex) {
        base.initializeMemory(as: UInt8.self, repeating: 0, count: SharedRingHeader.size)
        let header = SharedRingHeaderAccess(base: base)
        header.requestProducer.store(start, ordering: .relaxed)
        header.responseProducer.store(start, ordering: .relaxed)
        header.requestEvent.store(start &+ 1, ordering: .relaxed)
        header.responseEvent.store(start &+ 1, ordering: .relaxed)
        atomicMemoryFence(ordering: .releasing)
    }
}

/// Checks a region for a ring of `protocolSlotSize`-byte slots.
func ringGeometry(region: UnsafeMutableRawBufferPointer, slotSize: Int) throws(RingError) -> (UnsafeMutableRawPointer, RingGeometry) {
    guard let base = region.baseAddress else { throw .regionUnusable("empty region") }
    guard Int(bitPattern: base) % 8 == 0 else { throw .regionUnusable("region is not 8-byte aligned") }
    guard region.count >= XenPage.size, region.count % XenPage.size == 0 else {
        throw .regionUnusable("region of \(region.count) bytes is not a whole number of 4 KiB pages")
    }
    guard slotSize <= MemoryLayout<SlotCopy>.size else {
        throw .regionUnusable("\(slotSize)-byte slots are larger than the \(MemoryLayout<SlotCopy>.size)-byte copy buffer")
    }
    guard let geometry = RingGeometry(slotSize: slotSize, byteCount: region.count) else {
        throw .regionUnusable("no \(slotSize)-byte slot fits in \(region.count) bytes")
    }
    return (base, geometry)
}

/// Copies slot `index` out of shared memory once and decodes the private copy
/// (ring.h `RING_COPY_REQUEST`: the peer may rewrite the slot while we read it).
@inlinable @inline(__always)
func copyOutSlot<T>(
    base: UnsafeMutableRawPointer, geometry: RingGeometry, index: RingIndex,
    _ decode: (UnsafeRawBufferPointer) throws(XenABIError) -> T
) throws(RingError) -> T {
    let size = geometry.slotSize
    let source = UnsafeRawPointer(base + geometry.slotOffset(index))
    // A stack buffer (ring initialisers refuse slots larger than it), filled by a copy whose size
    // is a constant for every classic ring so that it compiles to a few moves.
    var storage = SlotCopy(repeating: 0)
    return try withUnsafeMutableBytes(of: &storage) { (buffer) throws(RingError) -> T in
        let copy = buffer.baseAddress!
        switch size {
        case 8: copy.copyMemory(from: source, byteCount: 8)
        case 12: copy.copyMemory(from: source, byteCount: 12)
        case 16: copy.copyMemory(from: source, byteCount: 16)
        case 108: copy.copyMemory(from: source, byteCount: 108)
        case 112: copy.copyMemory(from: source, byteCount: 112)
        default: copy.copyMemory(from: source, byteCount: size)
        }
        do throws(XenABIError) {
            return try decode(UnsafeRawBufferPointer(start: copy, count: size))
        } catch {
            throw .malformedSlot(index: index, error)
        }
    }
}

/// Stack storage for one slot copy: 128 bytes, 8-aligned.
@usableFromInline
typealias SlotCopy = InlineArray<16, UInt64>
