import XenABI
import XenRing

/// A small seeded generator (SplitMix64) so a failing schedule can be replayed from its seed.
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Page-aligned, zeroed memory standing in for a shared ring's pages.
final class RingPages {
    let bytes: UnsafeMutableRawBufferPointer
    init(order: Int) {
        let count = XenPage.size << order
        let base = UnsafeMutableRawPointer.allocate(byteCount: count, alignment: XenPage.size)
        base.initializeMemory(as: UInt8.self, repeating: 0, count: count)
        bytes = UnsafeMutableRawBufferPointer(start: base, count: count)
    }
    deinit { bytes.deallocate() }

    /// The four shared header indexes: req_prod, req_event, rsp_prod, rsp_event.
    var header: [UInt32] {
        (0..<4).map { UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 4 * $0, as: UInt32.self)) }
    }

    func store(_ value: UInt32, at offset: Int) {
        bytes.storeBytes(of: value.littleEndian, toByteOffset: offset, as: UInt32.self)
    }
}

/// The blkif read request the C reference front end writes for (id, sector, nseg).
func referenceRead(id: UInt64, sector: UInt64, segments: Int) -> BlkifRequest {
    .io(
        BlkifIORequest(
            operation: .read, handle: 51712, id: id, sector: sector,
            segments: BlkifSegmentList(
                (0..<segments).map { BlkifSegment(gref: GrantRef(UInt32(truncatingIfNeeded: id &+ UInt64($0))), firstSector: 0, lastSector: 7) })))
}
