import Atomics
import XenABI
import XenRing

/// blkback's hostile modes (``BlockBackend/HostileMode``), as a layer over what the ring's
/// handler answers: the conformance suite switches one on to see how a frontend copes with
/// a backend that lies. The ring handler asks it at three points — whether to answer at all,
/// what to answer instead, and what to do to the shared ring after a push — and is otherwise
/// the honest one.
struct HostileBlockBack: Sendable {
    let mode: BlockBackend.HostileMode

    /// Whether requests are answered (`neverAnswer` takes them and says nothing).
    var answers: Bool { mode != .neverAnswer }

    /// Whether the backend disappears at the first request (`vanish`).
    var vanishes: Bool { mode == .vanish }

    /// The response put on the ring for `response`.
    func rewrite(_ response: BlkifResponse) -> BlkifResponse {
        switch mode {
        case .unknownID: BlkifResponse(id: response.id &+ 1000, operationCode: response.operationCode, status: response.status)
        case .garbageStatus: BlkifResponse(id: response.id, operationCode: response.operationCode, status: BlkifStatus(rawValue: 7))
        case .wrongOperation: BlkifResponse(id: response.id, operationCode: 99, status: response.status)
        default: response
        }
    }

    /// Acts on the shared ring after responses `old..<now` were pushed (`notify` sends an
    /// event to the frontend).
    func afterPush(
        ring address: UnsafeMutableRawPointer, geometry: RingGeometry, published old: RingIndex, now: RingIndex,
        notify: () -> Void
    ) {
        guard old != now else { return }
        switch mode {
        case .responseProducerAhead:
            (address + SharedRingHeader.responseProducer).storeBytes(of: now &+ 5, as: UInt32.self)
            notify()
        case .duplicateResponse:
            // The last response again, in the next slot (BackRing itself refuses to answer
            // more than was asked, so this is done by hand).
            let source = address + geometry.slotOffset(now &- 1), target = address + geometry.slotOffset(now)
            target.copyMemory(from: source, byteCount: geometry.slotSize)
            atomicMemoryFence(ordering: .releasing)
            (address + SharedRingHeader.responseProducer).storeBytes(of: now &+ 1, as: UInt32.self)
            notify()
        case .rewriteAfterPublish:
            let slot = address + geometry.slotOffset(now &- 1)
            let id = slot.loadUnaligned(as: UInt64.self)
            slot.storeBytes(of: id &+ 77, as: UInt64.self)
            (slot + BlkifLayout.x86_64.responseStatus).storeBytes(of: Int16(5), as: Int16.self)
        case .eventStorm:
            for _ in 0..<1000 { notify() }
        default:
            break
        }
    }
}
