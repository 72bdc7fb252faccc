import Testing
import XenABI
import XenRing

@Suite("ring.h index arithmetic", .timeLimit(.minutes(5)))
struct RingArithmeticTests {
    @Test(
        "notify iff the event index lies in (old, new]",
        arguments: [
            (10, 13, 11, true), (10, 13, 13, true), (10, 13, 14, false), (10, 13, 10, false), (10, 10, 10, false),
            (UInt32.max - 1, 2, 0, true), (UInt32.max - 1, 2, UInt32.max, true), (UInt32.max - 1, 2, 3, false),
            (UInt32.max - 1, 2, UInt32.max - 1, false)
        ] as [(UInt32, UInt32, UInt32, Bool)])
    func notifyRule(old: UInt32, new: UInt32, event: UInt32, expected: Bool) {
        #expect(RingArithmetic.needsNotify(old: old, new: new, event: event) == expected)
    }

    @Test("the notify rule equals interval membership for random indexes, across 2^32")
    func notifyProperty() {
        var rng = SeededGenerator(seed: 0x5EED)
        for _ in 0..<200_000 {
            let old = UInt32.random(in: .min ... .max, using: &rng)
            let pushed = UInt32.random(in: 0...64, using: &rng)
            let new = old &+ pushed
            let offset = UInt32.random(in: 0...128, using: &rng) &- 32
            let event = old &+ offset
            // event in (old, new] measured as distances from old, all mod 2^32.
            let inside = (event &- old) >= 1 && (event &- old) <= pushed
            #expect(RingArithmetic.needsNotify(old: old, new: new, event: event) == inside)
        }
    }

    @Test("free and unconsumed counts are modular", arguments: [0, UInt32.max - 3, UInt32.max, 1 << 31] as [UInt32])
    func counts(start: UInt32) {
        let size: UInt32 = 32
        #expect(RingArithmetic.freeRequests(requestProducer: start &+ 5, responseConsumer: start, size: size) == 27)
        #expect(RingArithmetic.freeRequests(requestProducer: start &+ 32, responseConsumer: start, size: size) == 0)
        // A front end claiming 40 requests with only 32 - (5 - 0) slots free for responses.
        #expect(
            RingArithmetic.unconsumedRequests(
                sharedProducer: start &+ 40, requestConsumer: start &+ 5,
                responseProducer: start, size: size) == 27)
        #expect(RingArithmetic.requestProducerOverflows(start &+ 33, responseProducer: start, size: size))
        #expect(!RingArithmetic.requestProducerOverflows(start &+ 32, responseProducer: start, size: size))
        #expect(RingArithmetic.responseProducerOverflows(start &+ 33, responseConsumer: start, size: size))
        #expect(RingArithmetic.requestConsumerOverflows(start &+ 32, responseProducer: start, size: size))
    }

    @Test(
        "geometry rounds down to a power of two",
        arguments: [
            (112, 0, 32), (112, 4, 512), (12, 0, 256), (8, 0, 256), (16, 0, 128), (108, 0, 32), (4032, 0, 1), (3000, 1, 2)
        ] as [(Int, Int, UInt32)])
    func geometry(slot: Int, order: Int, entries: UInt32) {
        #expect(RingGeometry(slotSize: slot, pageOrder: order)?.entryCount == entries)
    }

    @Test("no geometry when nothing fits")
    func noGeometry() {
        #expect(RingGeometry(slotSize: 4033, pageOrder: 0) == nil)
        #expect(RingGeometry(slotSize: 0, pageOrder: 0) == nil)
        #expect(RingGeometry(slotSize: 8, byteCount: 64) == nil)
    }
}
