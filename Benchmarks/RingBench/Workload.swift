import PVSystem
import XenABI
import XenRing

/// One protocol's benchmark messages: what the front end sends for request n, and what each
/// end checks. Mirrors the C harness (ring-bench-c) message for message.
protocol Workload: Sendable {
    associatedtype P: RingProtocol
    var ring: P { get }
    func request(_ n: UInt64) -> P.Request
    /// The back end's validation of request n and its answer; nil when it is wrong.
    func answer(_ request: P.Request, expected n: UInt64) -> P.Response?
    func responseIsRight(_ response: P.Response, expected n: UInt64) -> Bool
}

/// blkif: 112-byte slots, a read of 11 full pages.
struct BlkifWorkload: Workload {
    let ring = BlkifRing()
    func request(_ n: UInt64) -> BlkifRequest {
        var segments = BlkifSegmentList()
        for i in 0..<UInt64(Blkif.maxSegmentsPerRequest) {
            segments.append(BlkifSegment(gref: GrantRef(UInt32(truncatingIfNeeded: n &+ i)), firstSector: 0, lastSector: 7))
        }
        return .io(BlkifIORequest(operation: .read, handle: 51712, id: n, sector: n &* 88, segments: segments))
    }
    func answer(_ request: BlkifRequest, expected n: UInt64) -> BlkifResponse? {
        guard case let .io(io) = request, io.operation == .read, io.id == n else { return nil }
        return BlkifResponse(id: io.id, operation: io.operation, status: .okay)
    }
    func responseIsRight(_ response: BlkifResponse, expected n: UInt64) -> Bool {
        response.id == n && response.status == .okay && response.operation == .read
    }
}

/// netif tx: 12-byte slots, one single-slot packet per request.
struct NetifTxWorkload: Workload {
    let ring = NetifTxRing()
    func request(_ n: UInt64) -> NetifTxSlot {
        .request(
            NetifTxRequest(
                gref: GrantRef(UInt32(truncatingIfNeeded: n &+ 8)), offset: 0, flags: [],
                id: UInt16(truncatingIfNeeded: n), size: 60 + UInt16(n % 1400)))
    }
    func answer(_ slot: NetifTxSlot, expected n: UInt64) -> NetifTxResponse? {
        guard case let .request(r) = slot, r.id == UInt16(truncatingIfNeeded: n),
            Int(r.offset) + Int(r.size) <= XenPage.size
        else { return nil }
        return NetifTxResponse(id: r.id, status: Netif.statusOkay)
    }
    func responseIsRight(_ response: NetifTxResponse, expected n: UInt64) -> Bool {
        response.id == UInt16(truncatingIfNeeded: n) && response.status == Netif.statusOkay
    }
}

struct WorkloadFailure: Error, CustomStringConvertible {
    let description: String
}

/// The front end's loop: fill the ring, push (notify when asked), drain responses, and sleep
/// only after the final check says there is nothing to do.
///
/// - Returns: notifications sent.
func runFront<W: Workload>(
    _ w: W, region: UnsafeMutableRawBufferPointer, count: UInt64,
    wake: EventFD, sleep: EventFD
) throws -> UInt64 {
    var ring = try FrontRing(initializing: region, protocol: w.ring)
    var sent: UInt64 = 0, received: UInt64 = 0, events: UInt64 = 0
    while received < count {
        while sent < count, ring.enqueueRequest(w.request(sent)) { sent += 1 }
        if ring.pushRequestsAndCheckNotify() {
            try wake.notify()
            events += 1
        }
        var got = false
        while let response = try ring.nextResponse() {
            guard w.responseIsRight(response, expected: received) else {
                throw WorkloadFailure(description: "response \(received) is wrong: \(response)")
            }
            received += 1
            got = true
        }
        if !got, received < count, try !ring.finalCheckForResponses() { try sleep.wait() }
    }
    return events
}

/// The back end's loop: consume and answer everything waiting, push, final check, sleep.
///
/// - Returns: notifications sent.
func runBack<W: Workload>(
    _ w: W, region: UnsafeMutableRawBufferPointer, count: UInt64,
    wake: EventFD, sleep: EventFD
) throws -> UInt64 {
    var ring = try BackRing(attaching: region, protocol: w.ring)
    var done: UInt64 = 0, events: UInt64 = 0
    while done < count {
        while let request = try ring.nextRequest() {
            guard let response = w.answer(request, expected: done) else {
                throw WorkloadFailure(description: "request \(done) is wrong: \(request)")
            }
            ring.enqueueResponse(response)
            done += 1
        }
        if ring.pushResponsesAndCheckNotify() {
            try wake.notify()
            events += 1
        }
        if done < count, try !ring.finalCheckForRequests() { try sleep.wait() }
    }
    return events
}
