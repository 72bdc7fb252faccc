@testable import BlockFront
import PVSystem
import Synchronization
import Testing
import XenABI

/// BlockFront's pure parts: how transfers become requests, what is negotiated from the
/// backend's keys, the semaphore that is its back-pressure, the ring's id list.
@Suite("BlockFront without a backend", .timeLimit(.minutes(5)))
struct BlockFrontUnitTests {
    @Test("a transfer is cut into requests of whole pages; the last page may be partial")
    func plan() {
        let plan = RequestPlan(sector: 3, byteCount: 100 * 1024 + 512, maxSegments: 11)
        #expect(plan.chunks.count == 3)
        #expect(plan.chunks.map(\.sector) == [3, 3 + 88, 3 + 176])
        #expect(plan.chunks.map(\.pages) == [11, 11, 4])
        let last = plan.chunks[2]
        #expect(last.length == 100 * 1024 + 512 - 2 * 11 * 4096)
        #expect(last.segment(3, gref: GrantRef(9)) == BlkifSegment(gref: GrantRef(9), firstSector: 0, lastSector: 0), "512 bytes: sector 0 only")
        #expect(last.segment(0, gref: GrantRef(9)).lastSector == 7)
        #expect(plan.chunks.allSatisfy { $0.indirectPages == 0 })
        let wide = RequestPlan(sector: 0, byteCount: 1 << 20, maxSegments: 256)
        #expect(wide.chunks.count == 1 && wide.chunks[0].pages == 256 && wide.chunks[0].indirectPages == 1 && wide.chunks[0].budget == 257)
        #expect(RequestPlan(sector: 0, byteCount: 513 * 4096, maxSegments: 1024).chunks[0].indirectPages == 2)
        #expect(RequestPlan(sector: 0, byteCount: 0, maxSegments: 11).chunks.isEmpty)
    }

    @Test("the transport asked for: the smaller of offer, wish and our limits; garbage refused")
    func transportAsked() throws {
        var options = BlockFront.Options()
        options.queues = 2
        #expect(try BlockNegotiation.transport(offer: [:], options: options) == .init(ringPageOrder: 0, queues: 1))
        #expect(
            try BlockNegotiation.transport(offer: ["max-ring-page-order": "99", "multi-queue-max-queues": "100000"], options: options)
                == .init(ringPageOrder: 4, queues: 2))
        #expect(
            try BlockNegotiation.transport(offer: ["max-ring-page-order": "2", "multi-queue-max-queues": "0"], options: .minimal)
                == .init(ringPageOrder: 0, queues: 1))
        #expect(throws: BlockFrontError.backendMisbehaved("max-ring-page-order = \"-1\" is not a number")) {
            try BlockNegotiation.transport(offer: ["max-ring-page-order": "-1"], options: options)
        }
    }

    let good = [
        "sectors": "8192", "sector-size": "512", "info": "0", "feature-flush-cache": "1", "feature-persistent": "1",
        "feature-max-indirect-segments": "4294967295", "feature-discard": "1", "discard-granularity": "4096"
    ]
    let transport = BlockNegotiation.Transport(ringPageOrder: 2, queues: 3)

    @Test("the disk from the backend's keys: features on only when both sides want them; limits clamped")
    func disk() throws {
        let info = try BlockNegotiation.disk(backend: good, transport: transport, trusted: nil, options: .init())
        #expect(info.sectors == 8192 && info.sectorSize == 512 && info.physicalSectorSize == 512 && info.flush && !info.barrier)
        #expect(info.persistentGrants && info.indirectSegments == 128 && info.queues == 3 && info.ringPages == 4 && info.trusted)
        #expect(info.discard == BlockFront.Discard(granularity: 4096, alignment: 0, secure: false))
        let plain = try BlockNegotiation.disk(backend: good, transport: transport, trusted: "0", options: .minimal)
        #expect(!plain.persistentGrants && plain.indirectSegments == 0 && !plain.trusted)
        var ro = good
        ro["info"] = "6"
        let info2 = try BlockNegotiation.disk(backend: ro, transport: transport, trusted: nil, options: .init())
        #expect(info2.readOnly && info2.removable && !info2.cdrom)
    }

    @Test(
        "impossible disks are refused with the key that is wrong",
        arguments: [
            ("sectors", "0", "sectors is missing or 0"),
            ("sectors", "lots", "sectors = \"lots\" is not a number"),
            ("sector-size", "3", "sector-size 3 is not a power of two from 512 to 64 KiB"),
            ("sector-size", "131072", "sector-size 131072 is not a power of two from 512 to 64 KiB"),
            ("physical-sector-size", "100", "physical-sector-size 100 is not a power of two from 512 to 64 KiB"),
            ("discard-granularity", "0", "discard-granularity 0 / discard-alignment 0")
        ])
    func refused(key: String, value: String, message: String) {
        var keys = good
        keys[key] = value
        #expect(throws: BlockFrontError.backendMisbehaved(message)) {
            try BlockNegotiation.disk(backend: keys, transport: transport, trusted: nil, options: .init())
        }
    }

    @Test("a 4 KiB-sector disk whose size is not whole blocks is refused; a missing sector-size too")
    func blocks() {
        var keys = good
        keys["sector-size"] = "4096"
        keys["sectors"] = "8193"
        #expect(throws: BlockFrontError.self) { try BlockNegotiation.disk(backend: keys, transport: transport, trusted: nil, options: .init()) }
        keys = good
        keys["sector-size"] = nil
        #expect(throws: BlockFrontError.backendMisbehaved("sector-size is missing")) {
            try BlockNegotiation.disk(backend: keys, transport: transport, trusted: nil, options: .init())
        }
    }

    @Test("the semaphore serves waiters in order, skips a cancelled one, and fails everyone on close")
    func semaphore() async throws {
        let semaphore = AsyncSemaphore(units: 2)
        try await semaphore.acquire(2)
        let order = Order()
        let big = Task {
            try await semaphore.acquire(2); order.append("big")
        }
        try await Task.sleep(for: .milliseconds(20))
        let cancelled = Task { try await semaphore.acquire(1) }
        try await Task.sleep(for: .milliseconds(20))
        let small = Task {
            try await semaphore.acquire(1); order.append("small")
        }
        try await Task.sleep(for: .milliseconds(20))
        cancelled.cancel()
        await #expect(throws: BlockFrontError.cancelled) { try await cancelled.value }
        semaphore.release(1)
        try await Task.sleep(for: .milliseconds(20))
        #expect(order.items.isEmpty, "the big waiter is first and needs 2: nobody passes it")
        semaphore.release(1)
        try await big.value
        semaphore.release(2)
        try await small.value
        #expect(order.items == ["big", "small"])
        #expect(semaphore.available == 1)
        let late = Task { try await semaphore.acquire(5) }
        try await Task.sleep(for: .milliseconds(20))
        semaphore.fail(.closed("test"))
        await #expect(throws: BlockFrontError.closed("test")) { try await late.value }
        await #expect(throws: BlockFrontError.closed("test")) { try await semaphore.acquire(1) }
    }

    @Test("ring ids come back first in, first out")
    func ids() {
        var ids = FreeIDs(count: 3)
        #expect([ids.take(), ids.take()] == [0, 1])
        ids.give(0)
        #expect([ids.take(), ids.take(), ids.take()] == [2, 0, nil])
    }
}

/// What happened, in order, across tasks.
final class Order: Sendable {
    private let list = Locked<[String]>([])
    func append(_ item: String) { list.withLock { $0.append(item) } }
    var items: [String] { list.withLock { $0 } }
}
