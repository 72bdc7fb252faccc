import Foundation
import PVSystem
import Testing
import XenABI
import XenRing

/// A Swift ring end in this process and a ring.h end in another, sharing one memfd mapping and
/// waking each other through eventfds, for a million requests each way.
@Suite("cross-process: Swift and ring.h in two processes", .serialized, .timeLimit(.minutes(5)))
struct CrossProcessRingTests {
    static let count: UInt64 = 1_000_000

    /// The C peer, built beside the test bundle by `swift build --build-tests`.
    static func peerPath() throws -> String {
        let me = try #require(ChildProcess.currentExecutablePath())
        let path = URL(fileURLWithPath: me).deletingLastPathComponent().appendingPathComponent("ring-bench-c").path
        try #require(
            FileManager.default.isExecutableFile(atPath: path),
            "ring-bench-c is not built at \(path): run `swift build --build-tests` first")
        return path
    }

    struct Channel {
        let region: SharedMemoryRegion
        let frontEvent: EventFD
        let backEvent: EventFD

        init() throws {
            region = try SharedMemoryRegion(creating: "pvkit-ring-test", byteCount: XenPage.size, inheritable: true)
            frontEvent = try EventFD(inheritable: true)
            backEvent = try EventFD(inheritable: true)
        }

        func spawnPeer(role: String, proto: String) throws -> ChildProcess {
            try ChildProcess(
                path: CrossProcessRingTests.peerPath(),
                arguments: [
                    "peer", "--proto", proto, "--role", role, "--memfd", "\(region.fileDescriptor)",
                    "--bytes", "\(region.byteCount)", "--front-evt", "\(frontEvent.fileDescriptor)",
                    "--back-evt", "\(backEvent.fileDescriptor)", "--count", "\(CrossProcessRingTests.count)"
                ])
        }
    }

    @Test("Swift blkif front end against a ring.h back end: 10^6 requests")
    func swiftFront() throws {
        let channel = try Channel()
        var ring = try FrontRing(initializing: channel.region.bytes, protocol: BlkifRing())
        let peer = try channel.spawnPeer(role: "back", proto: "blkif")
        var sent: UInt64 = 0, received: UInt64 = 0
        while received < Self.count {
            while sent < Self.count {
                var segments = BlkifSegmentList()
                for i in 0..<UInt64(11) {
                    segments.append(BlkifSegment(gref: GrantRef(UInt32(truncatingIfNeeded: sent + i)), firstSector: 0, lastSector: 7))
                }
                guard
                    ring.enqueueRequest(
                        .io(
                            BlkifIORequest(
                                operation: .read, handle: 51712, id: sent, sector: sent * 88,
                                segments: segments)))
                else { break }
                sent += 1
            }
            if ring.pushRequestsAndCheckNotify() { try channel.backEvent.notify() }
            var got = false
            while let response = try ring.nextResponse() {
                guard response.id == received, response.status == .okay, response.operation == .read else {
                    Issue.record("response \(received) arrived as \(response)")
                    return
                }
                received += 1
                got = true
            }
            if !got, received < Self.count, try !ring.finalCheckForResponses() { try channel.frontEvent.wait() }
        }
        #expect(try peer.waitForExit() == 0, "the ring.h back end saw a malformed or out-of-order request")
        #expect(received == Self.count)
    }

    @Test("Swift netif back end against a ring.h front end: 10^6 requests")
    func swiftBack() throws {
        let channel = try Channel()
        let peer = try channel.spawnPeer(role: "front", proto: "netif")
        var ring = try BackRing(attaching: channel.region.bytes, protocol: NetifTxRing())
        var done: UInt64 = 0
        while done < Self.count {
            while let slot = try ring.nextRequest() {
                guard case let .request(request) = slot, request.id == UInt16(truncatingIfNeeded: done),
                    request.gref == GrantRef(UInt32(truncatingIfNeeded: done + 8)), request.size == 60 + UInt16(done % 1400)
                else {
                    Issue.record("request \(done) arrived as \(slot)")
                    return
                }
                ring.enqueueResponse(NetifTxResponse(id: request.id, status: Netif.statusOkay))
                done += 1
            }
            if ring.pushResponsesAndCheckNotify() { try channel.frontEvent.notify() }
            if done < Self.count, try !ring.finalCheckForRequests() { try channel.backEvent.wait() }
        }
        #expect(try peer.waitForExit() == 0, "the ring.h front end saw a wrong or out-of-order response")
    }
}
