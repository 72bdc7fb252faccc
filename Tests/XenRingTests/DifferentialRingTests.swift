import CXenReference
import Testing
import XenABI
import XenRing

/// The Swift ring against Xen's own `ring.h` macros.
///
/// Two rings run the same randomized schedule step by step: on one, a Swift end faces a C end
/// driven by ring.h; on the other, both ends are ring.h (the reference). After every step the
/// shared indexes of both must be equal, every notify and final-check decision must be equal,
/// and every request and response must arrive exactly once, in order.
@Suite("differential against ring.h", .timeLimit(.minutes(5)))
struct DifferentialRingTests {
    enum SwiftEnd: String, CaseIterable, Sendable { case front, back }

    struct Schedule: Sendable, CustomTestStringConvertible {
        let swiftEnd: SwiftEnd
        let order: Int
        let start: UInt32
        let seed: UInt64
        var testDescription: String { "Swift \(swiftEnd), order \(order), start \(start), seed \(seed)" }
    }

    static let schedules: [Schedule] = SwiftEnd.allCases.flatMap { end in
        [
            (0, 0 as UInt32, 1 as UInt64), (0, UInt32.max - 50, 2), (1, UInt32.max - 3, 3), (2, 1 << 31, 4),
            (4, UInt32.max - 700, 5), (0, 12345, 6)
        ]
        .map { Schedule(swiftEnd: end, order: $0.0, start: $0.1, seed: $0.2) }
    }

    @Test("same indexes, same notify decisions, every message once", arguments: schedules)
    func schedule(_ s: Schedule) throws {
        let bytes = XenPage.size << s.order
        let mixed = RingPages(order: s.order)
        let reference = RingPages(order: s.order)
        let ring = BlkifRing()

        // Reference: ring.h on both ends.
        let refFront = cxr_blk_front_new(reference.bytes.baseAddress, bytes, 1, s.start)!
        let refBack = cxr_blk_back_new(reference.bytes.baseAddress, bytes, s.start)!
        defer { cxr_blk_front_free(refFront); cxr_blk_back_free(refBack) }

        // Mixed: one Swift end, one ring.h end.
        var swiftFront: FrontRing<BlkifRing>? = nil
        var swiftBack: BackRing<BlkifRing>? = nil
        var cFront: OpaquePointer? = nil
        var cBack: OpaquePointer? = nil
        switch s.swiftEnd {
        case .front:
            swiftFront = try FrontRing(initializing: mixed.bytes, protocol: ring, startIndex: s.start)
            cBack = cxr_blk_back_new(mixed.bytes.baseAddress, bytes, s.start)
        case .back:
            cFront = cxr_blk_front_new(mixed.bytes.baseAddress, bytes, 1, s.start)
            swiftBack = try BackRing(attaching: mixed.bytes, protocol: ring, startIndex: s.start)
        }
        defer {
            if let cFront { cxr_blk_front_free(cFront) }
            if let cBack { cxr_blk_back_free(cBack) }
        }
        #expect(mixed.header == reference.header)

        var rng = SeededGenerator(seed: s.seed)
        var nextID: UInt64 = 0
        var backSeen: UInt64 = 0
        var frontSeen: UInt64 = 0
        var refOwed: [UInt64] = []
        var mixedOwed: [UInt64] = []
        var notifies = 0

        for step in 0..<20_000 {
            let action = Int.random(in: 0..<6, using: &rng)
            let count = Int.random(in: 0...40, using: &rng)
            switch action {
            case 0:  // front enqueues
                for _ in 0..<count {
                    let free = cxr_blk_front_free_requests(refFront)
                    guard free > 0 else { break }
                    let nseg = UInt8(nextID % 12)
                    #expect(cxr_blk_front_put(refFront, nextID, nextID &* 8, nseg) == 1)
                    if var front = swiftFront.take() {
                        #expect(front.freeRequests == free)
                        let accepted = front.enqueueRequest(referenceRead(id: nextID, sector: nextID &* 8, segments: Int(nseg)))
                        #expect(accepted)
                        swiftFront = consume front
                    } else {
                        #expect(cxr_blk_front_put(cFront, nextID, nextID &* 8, nseg) == 1)
                    }
                    nextID += 1
                }
            case 1:  // front pushes
                let expected = cxr_blk_front_push(refFront) != 0
                let actual: Bool
                if var front = swiftFront.take() {
                    actual = front.pushRequestsAndCheckNotify()
                    swiftFront = consume front
                } else {
                    actual = cxr_blk_front_push(cFront) != 0
                }
                #expect(actual == expected, "step \(step): front notify")
                if expected { notifies += 1 }
            case 2:  // back consumes
                for _ in 0..<count {
                    var id: UInt64 = 0, sector: UInt64 = 0, nseg: UInt8 = 0, gref: UInt32 = 0
                    let refGot = cxr_blk_back_take(refBack, &id, &sector, &nseg, &gref) == 1
                    if refGot {
                        #expect(id == backSeen && sector == backSeen &* 8 && Int(nseg) == Int(backSeen % 12))
                        refOwed.append(id)
                    }
                    let mixedGot: Bool
                    if var back = swiftBack.take() {
                        let request = try back.nextRequest()
                        swiftBack = consume back
                        mixedGot = request != nil
                        if let request {
                            #expect(request == referenceRead(id: backSeen, sector: backSeen &* 8, segments: Int(backSeen % 12)))
                            mixedOwed.append(request.id)
                        }
                    } else {
                        var mid: UInt64 = 0, msector: UInt64 = 0, mnseg: UInt8 = 0, mgref: UInt32 = 0
                        mixedGot = cxr_blk_back_take(cBack, &mid, &msector, &mnseg, &mgref) == 1
                        if mixedGot {
                            let expectedGref = backSeen % 12 == 0 ? 0 : UInt32(truncatingIfNeeded: backSeen)
                            #expect(mid == backSeen && msector == backSeen &* 8 && mgref == expectedGref)
                            mixedOwed.append(mid)
                        }
                    }
                    #expect(refGot == mixedGot, "step \(step): back consume")
                    if !refGot { break }
                    backSeen += 1
                }
            case 3:  // back answers some, then pushes
                let answer = min(count, refOwed.count)
                for _ in 0..<answer {
                    let id = refOwed.removeFirst()
                    let mid = mixedOwed.removeFirst()
                    #expect(id == mid)
                    cxr_blk_back_respond(refBack, id, 0, 0)
                    if var back = swiftBack.take() {
                        back.enqueueResponse(BlkifResponse(id: mid, operation: .read, status: .okay))
                        swiftBack = consume back
                    } else {
                        cxr_blk_back_respond(cBack, mid, 0, 0)
                    }
                }
                let expected = cxr_blk_back_push(refBack) != 0
                let actual: Bool
                if var back = swiftBack.take() {
                    actual = back.pushResponsesAndCheckNotify()
                    swiftBack = consume back
                } else {
                    actual = cxr_blk_back_push(cBack) != 0
                }
                #expect(actual == expected, "step \(step): back notify")
                if expected { notifies += 1 }
            case 4:  // front consumes, then its final check
                while true {
                    var id: UInt64 = 0, op: UInt8 = 0, status: Int16 = 0
                    let refGot = cxr_blk_front_take(refFront, &id, &op, &status) == 1
                    let mixedID: UInt64?
                    if var front = swiftFront.take() {
                        mixedID = try front.nextResponse()?.id
                        swiftFront = consume front
                    } else {
                        var mid: UInt64 = 0
                        mixedID = cxr_blk_front_take(cFront, &mid, &op, &status) == 1 ? mid : nil
                    }
                    #expect(refGot == (mixedID != nil), "step \(step): front consume")
                    guard refGot, let mixedID else { break }
                    #expect(id == frontSeen && mixedID == frontSeen)
                    frontSeen += 1
                }
                let expected = cxr_blk_front_final_check(refFront) != 0
                let actual: Bool
                if var front = swiftFront.take() {
                    actual = try front.finalCheckForResponses()
                    swiftFront = consume front
                } else {
                    actual = cxr_blk_front_final_check(cFront) != 0
                }
                #expect(actual == expected, "step \(step): front final check")
            default:  // back final check
                let expected = cxr_blk_back_final_check(refBack) != 0
                let actual: Bool
                if var back = swiftBack.take() {
                    actual = try back.finalCheckForRequests()
                    swiftBack = consume back
                } else {
                    actual = cxr_blk_back_final_check(cBack) != 0
                }
                #expect(actual == expected, "step \(step): back final check")
            }
            let same = mixed.header == reference.header
            #expect(same, "step \(step): shared indexes \(mixed.header) vs ring.h \(reference.header)")
            if !same { return }
        }
        #expect(frontSeen > 1000, "the schedule must complete real work, completed \(frontSeen)")
        #expect(notifies > 10, "the schedule must exercise notifications, saw \(notifies)")
    }
}
