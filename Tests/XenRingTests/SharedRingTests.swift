import PVSystem
import Testing
import XenABI
import XenRing

@Suite("Swift front and back on one ring", .timeLimit(.minutes(5)))
struct SharedRingTests {
    /// Random batches in both directions; every request answered once and in order, across
    /// 2^32 when started near the top.
    @Test(
        "every request arrives once, in order, across index wrap-around",
        arguments: [0, UInt32.max - 100, UInt32.max, 1 << 31] as [UInt32])
    func wrapAround(start: UInt32) throws {
        let pages = RingPages(order: 1)
        let ring = BlkifRing()
        var front = try FrontRing(initializing: pages.bytes, protocol: ring, startIndex: start)
        var back = try BackRing(attaching: pages.bytes, protocol: ring, startIndex: start)
        var rng = SeededGenerator(seed: UInt64(start))
        var nextID: UInt64 = 0
        var expectedBack: UInt64 = 0
        var expectedFront: UInt64 = 0
        var answered: [UInt64] = []
        while expectedFront < 5_000 {
            for _ in 0..<Int.random(in: 0...Int(front.freeRequests), using: &rng) {
                let accepted = front.enqueueRequest(referenceRead(id: nextID, sector: nextID * 8, segments: Int(nextID % 12)))
                #expect(accepted)
                nextID += 1
            }
            _ = front.pushRequestsAndCheckNotify()
            for _ in 0..<Int.random(in: 0...64, using: &rng) {
                guard let request = try back.nextRequest() else { break }
                #expect(request == referenceRead(id: expectedBack, sector: expectedBack * 8, segments: Int(expectedBack % 12)))
                expectedBack += 1
                answered.append(request.id)
            }
            for _ in 0..<Int.random(in: 0...answered.count, using: &rng) {
                back.enqueueResponse(BlkifResponse(id: answered.removeFirst(), operation: .read, status: .okay))
            }
            _ = back.pushResponsesAndCheckNotify()
            while let response = try front.nextResponse() {
                #expect(response.id == expectedFront)
                expectedFront += 1
            }
            let free = front.freeRequests
            #expect(free <= front.geometry.entryCount)
        }
        let consumer = front.responseConsumer
        #expect(consumer == start &+ UInt32(expectedFront))
    }

    @Test("a backend resuming a ring another served starts after its last response: nothing answered is served twice")
    func resume() throws {
        let pages = RingPages(order: 0)
        let ring = BlkifRing()
        var front = try FrontRing(initializing: pages.bytes, protocol: ring)
        var first = try BackRing(resuming: pages.bytes, protocol: ring)
        for id in 0..<20 as Range<UInt64> { front.enqueueRequest(referenceRead(id: id, sector: id * 8, segments: 1)) }
        _ = front.pushRequestsAndCheckNotify()
        while let request = try first.nextRequest() { first.enqueueResponse(BlkifResponse(id: request.id, operation: .read, status: .okay)) }
        _ = first.pushResponsesAndCheckNotify()
        while try front.nextResponse() != nil {}
        // The first backend goes; two more requests arrive; a new one takes over the ring.
        for id in 20..<22 as Range<UInt64> { front.enqueueRequest(referenceRead(id: id, sector: id * 8, segments: 1)) }
        _ = front.pushRequestsAndCheckNotify()
        var resumed = try BackRing(resuming: pages.bytes, protocol: ring)
        var served: [UInt64] = []
        while let request = try resumed.nextRequest() { served.append(request.id) }
        #expect(served == [20, 21], "only what was never answered")
        // Attached at index 0 instead, it would have served answered requests again.
        var fromZero = try BackRing(attaching: pages.bytes, protocol: ring)
        #expect(try fromZero.unconsumedRequests() > 2)
    }

    @Test("polling a ring: stops at the first find, at once when nothing can come, and not before its time otherwise")
    func polling() {
        var looks = 0
        #expect(
            RingPolling.wait(nanoseconds: 1_000_000_000) {
                looks += 1; return looks == 3
            })
        #expect(looks == 3)
        looks = 0
        #expect(
            !RingPolling.wait(nanoseconds: 1_000_000_000) {
                looks += 1; return nil
            })
        #expect(looks == 1)
        let clock = ContinuousClock()
        let started = clock.now
        #expect(!RingPolling.wait(nanoseconds: 2_000_000) { false })
        #expect(clock.now - started >= .milliseconds(2))
    }

    @Test("a full ring refuses a request and writes nothing")
    func fullRing() throws {
        let pages = RingPages(order: 0)
        var front = try FrontRing(initializing: pages.bytes, protocol: NetifTxRing())
        let request = NetifTxSlot.request(NetifTxRequest(gref: GrantRef(8), offset: 0, flags: [], id: 0, size: 60))
        var accepted = 0
        for _ in 0..<257 where front.enqueueRequest(request) { accepted += 1 }
        let full = front.isFull
        let producer = front.requestProducer
        #expect(accepted == 256 && full && producer == 256)
    }

    @Test("SHARED_RING_INIT state")
    func initialState() throws {
        let pages = RingPages(order: 0)
        pages.bytes.initializeMemory(as: UInt8.self, repeating: 0xFF)
        _ = try FrontRing(initializing: pages.bytes, protocol: BlkifRing())
        #expect(pages.header == [0, 1, 0, 1])
        #expect(pages.bytes[16..<64].allSatisfy { $0 == 0 })
    }

    @Test("regions that cannot hold a ring are refused")
    func badRegions() throws {
        let pages = RingPages(order: 1)
        #expect(throws: RingError.self) {
            _ = try FrontRing(initializing: UnsafeMutableRawBufferPointer(rebasing: pages.bytes[0..<100]), protocol: BlkifRing())
        }
        #expect(throws: RingError.self) {
            _ = try BackRing(attaching: UnsafeMutableRawBufferPointer(rebasing: pages.bytes[4..<4100]), protocol: BlkifRing())
        }
    }
}

@Suite("a lying peer is an error, not a crash or a hang", .timeLimit(.minutes(5)))
struct HostilePeerTests {
    @Test("back end publishing responses nobody asked for")
    func responsesAhead() throws {
        let pages = RingPages(order: 0)
        var front = try FrontRing(initializing: pages.bytes, protocol: BlkifRing())
        front.enqueueRequest(referenceRead(id: 1, sector: 0, segments: 1))
        _ = front.pushRequestsAndCheckNotify()
        pages.store(2, at: SharedRingHeader.responseProducer)  // two responses to one request
        #expect(throws: RingError.responseProducerAhead(producer: 2, consumer: 0, requestsPublished: 1)) {
            _ = try front.nextResponse()
        }
        pages.store(UInt32.max, at: SharedRingHeader.responseProducer)  // runs backwards
        #expect(throws: RingError.self) { _ = try front.finalCheckForResponses() }
    }

    @Test("front end publishing more than a ring of requests", arguments: [33, 1000, UInt32.max] as [UInt32])
    func requestsAhead(producer: UInt32) throws {
        let pages = RingPages(order: 0)
        _ = try FrontRing(initializing: pages.bytes, protocol: BlkifRing())
        var back = try BackRing(attaching: pages.bytes, protocol: BlkifRing())
        pages.store(producer, at: SharedRingHeader.requestProducer)
        #expect(throws: RingError.requestProducerAhead(producer: producer, responseProducer: 0, size: 32)) {
            _ = try back.nextRequest()
        }
    }

    @Test("a front end that fills every slot gets no more consumed than there is room to answer")
    func consumerBoundedByRoom() throws {
        let pages = RingPages(order: 0)
        var front = try FrontRing(initializing: pages.bytes, protocol: BlkifRing())
        var back = try BackRing(attaching: pages.bytes, protocol: BlkifRing())
        for id in 0..<32 { front.enqueueRequest(referenceRead(id: UInt64(id), sector: 0, segments: 0)) }
        front.pushRequests()
        var consumed = 0
        while try back.nextRequest() != nil { consumed += 1 }
        #expect(consumed == 32)
        // The front end now lies that it published 32 more without seeing any response.
        pages.store(64, at: SharedRingHeader.requestProducer)
        #expect(throws: RingError.self) { _ = try back.nextRequest() }
    }

    @Test("a malformed slot is reported with its index and consumed")
    func malformedSlot() throws {
        let pages = RingPages(order: 0)
        var front = try FrontRing(initializing: pages.bytes, protocol: BlkifRing())
        var back = try BackRing(attaching: pages.bytes, protocol: BlkifRing())
        front.enqueueRequest(referenceRead(id: 1, sector: 0, segments: 1))
        front.enqueueRequest(referenceRead(id: 2, sector: 0, segments: 1))
        front.pushRequests()
        pages.bytes[64 + 1] = 200  // nr_segments of slot 0
        #expect(throws: RingError.malformedSlot(index: 0, .countOutOfRange(field: "blkif nr_segments", value: 200, limit: 11))) {
            _ = try back.nextRequest()
        }
        let second = try back.nextRequest()
        let pending = back.pendingResponses
        #expect(second?.id == 2 && pending == 2)
    }

    @Test("attaching to a live ring whose req_prod is out of range fails")
    func attachChecks() throws {
        let pages = RingPages(order: 0)
        _ = try FrontRing(initializing: pages.bytes, protocol: BlkifRing())
        pages.store(100, at: SharedRingHeader.requestProducer)
        #expect(throws: RingError.self) { _ = try FrontRing(attaching: pages.bytes, protocol: BlkifRing(), responseConsumer: 0) }
        pages.store(5, at: SharedRingHeader.requestProducer)
        let front = try FrontRing(attaching: pages.bytes, protocol: BlkifRing(), responseConsumer: 0)
        let free = front.freeRequests
        #expect(free == 27)
    }
}

@Suite("notification batching", .timeLimit(.minutes(5)))
struct NotificationBatchingTests {
    @Test("a front end asking to be woken after 3 responses is notified on the third")
    func batchedResponses() throws {
        let pages = RingPages(order: 0)
        var front = try FrontRing(initializing: pages.bytes, protocol: NetifTxRing())
        var back = try BackRing(attaching: pages.bytes, protocol: NetifTxRing())
        for id in 0..<3 {
            front.enqueueRequest(.request(NetifTxRequest(gref: GrantRef(8), offset: 0, flags: [], id: UInt16(id), size: 60)))
        }
        front.pushRequests()
        front.requestNotification(afterResponses: 3)
        var decisions: [Bool] = []
        for _ in 0..<3 {
            guard case let .request(request)? = try back.nextRequest() else { Issue.record("request missing"); return }
            back.enqueueResponse(NetifTxResponse(id: request.id, status: Netif.statusOkay))
            decisions.append(back.pushResponsesAndCheckNotify())
        }
        #expect(decisions == [false, false, true])
    }
}

/// A protocol whose slots are larger than any classic ring's, to check the ring refuses it.
struct OversizedSlotRing: RingProtocol {
    var slotSize: Int { 200 }
    func encodeRequest(_ request: UInt8, into slot: UnsafeMutableRawBufferPointer) { slot[0] = request }
    func decodeRequest(_ slot: UnsafeRawBufferPointer) throws(XenABIError) -> UInt8 { slot[0] }
    func encodeResponse(_ response: UInt8, into slot: UnsafeMutableRawBufferPointer) { slot[0] = response }
    func decodeResponse(_ slot: UnsafeRawBufferPointer) throws(XenABIError) -> UInt8 { slot[0] }
}

@Suite("ring construction limits", .timeLimit(.minutes(5)))
struct RingConstructionTests {
    @Test("slots over 128 bytes are refused, not copied past a buffer")
    func oversizedSlots() {
        let pages = RingPages(order: 0)
        #expect(throws: RingError.self) { _ = try FrontRing(initializing: pages.bytes, protocol: OversizedSlotRing()) }
        #expect(throws: RingError.self) { _ = try BackRing(attaching: pages.bytes, protocol: OversizedSlotRing()) }
    }
}
