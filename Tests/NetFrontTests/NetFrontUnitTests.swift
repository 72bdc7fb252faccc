import Testing
import XenABI
@testable import NetFront

@Suite("NetFront without a backend: negotiation, tx plan, rx assembly", .timeLimit(.minutes(5)))
struct NetFrontUnitTests {
    static let everything = [
        "feature-rx-copy": "1", "feature-sg": "1", "feature-gso-tcpv4": "1", "feature-gso-tcpv6": "1",
        "feature-ipv6-csum-offload": "1", "feature-split-event-channels": "1", "multi-queue-max-queues": "8"
    ]

    static func features(_ offer: [String: String] = everything, _ options: NetFrontOptions = NetFrontOptions()) throws -> NetNegotiation.Features {
        try NetNegotiation.features(offer: offer, options: options)
    }

    @Test("features: each used only when both sides want it; queues capped; no rx-copy refused; bad values refused")
    func negotiation() throws {
        var options = NetFrontOptions()
        options.queues = 4
        let all = try Self.features(Self.everything, options)
        #expect(all.queues == 4 && all.splitEventChannels && all.scatterGather && all.gsoTCPv4 && all.gsoTCPv6 && all.ipv6ChecksumOffload)
        #expect(all.maxSlotsPerPacket == 18 && all.maxFrameBytes == 0xFFFF)
        let bare = try Self.features(["feature-rx-copy": "1"], options)
        #expect(bare.queues == 1 && !bare.splitEventChannels && !bare.scatterGather && !bare.gsoTCPv4 && !bare.ipv6ChecksumOffload)
        #expect(bare.maxSlotsPerPacket == 1 && bare.maxFrameBytes == 4096)
        let minimal = try Self.features(Self.everything, .minimal)
        #expect(minimal.queues == 1 && !minimal.scatterGather && !minimal.gsoTCPv4 && !minimal.checksumOffload)
        options.queues = 1000
        #expect(try Self.features(["feature-rx-copy": "1", "multi-queue-max-queues": "4294967295"], options).queues == NetNegotiation.maxQueues)
        #expect(throws: NetFrontError.self) { try Self.features(["feature-sg": "1"]) }
        #expect(throws: NetFrontError.self) { try Self.features(["feature-rx-copy": "yes"]) }
        #expect(throws: NetFrontError.self) { try Self.features(["feature-rx-copy": "1", "multi-queue-max-queues": "0"]) }
    }

    @Test("frontend keys: per-queue rings and split channels, request-rx-copy always, offloads as negotiated")
    func keys() throws {
        var options = NetFrontOptions()
        options.queues = 2
        let features = try Self.features(Self.everything, options)
        let keys = NetNegotiation.frontendKeys(
            features: features,
            queues: [
                .init(txRing: GrantRef(8), rxRing: GrantRef(9), ports: [EventChannelPort(3), EventChannelPort(4)]),
                .init(txRing: GrantRef(10), rxRing: GrantRef(11), ports: [EventChannelPort(5), EventChannelPort(6)])
            ])
        let table = Dictionary(uniqueKeysWithValues: keys)
        #expect(table["multi-queue-num-queues"] == "2" && table["queue-1/rx-ring-ref"] == "11" && table["queue-0/event-channel-rx"] == "4")
        #expect(table["tx-ring-ref"] == nil && table["event-channel"] == nil)
        #expect(table["request-rx-copy"] == "1" && table["feature-sg"] == "1" && table["feature-no-csum-offload"] == nil)
        let one = NetNegotiation.frontendKeys(
            features: try Self.features(["feature-rx-copy": "1"], .minimal),
            queues: [.init(txRing: GrantRef(8), rxRing: GrantRef(9), ports: [EventChannelPort(3)])])
        let flat = Dictionary(uniqueKeysWithValues: one)
        #expect(flat["tx-ring-ref"] == "8" && flat["event-channel"] == "3" && flat["multi-queue-num-queues"] == nil)
        #expect(flat["feature-no-csum-offload"] == "1" && flat["feature-sg"] == "0" && flat["feature-gso-tcpv4"] == "0")
    }

    @Test("mac and mtu from our own keys: parsed, checked against the features")
    func macAndMTU() throws {
        let features = try Self.features()
        #expect(try NetNegotiation.mac("00:16:3e:01:02:03") == MACAddress(0x00, 0x16, 0x3E, 1, 2, 3))
        #expect(throws: NetFrontError.self) { try NetNegotiation.mac(nil) }
        #expect(throws: NetFrontError.self) { try NetNegotiation.mac("01:00:5e:00:00:01") }
        #expect(throws: NetFrontError.self) { try NetNegotiation.mac("00:16:3e:01:02") }
        #expect(try NetNegotiation.mtu(nil, features: features) == 1500)
        #expect(try NetNegotiation.mtu("9000", features: features) == 9000)
        #expect(throws: NetFrontError.self) { try NetNegotiation.mtu("9000", features: try Self.features(["feature-rx-copy": "1"])) }
        #expect(throws: NetFrontError.self) { try NetNegotiation.mtu("-1", features: features) }
    }

    @Test("tx plan: first slot carries the frame's length, more_data chains pages, GSO adds one extra slot; limits refused")
    func txPlan() throws {
        let features = try Self.features()
        let small = try TxPlan(frameBytes: 60, features: features)
        #expect(small.data == [TxPlan.DataSlot(frameOffset: 0, length: 60, sizeField: 60, flags: [])] && small.extra == nil)
        let big = try TxPlan(frameBytes: 65535, offload: .init(gso: (.tcpv4, 1448)), features: features)
        #expect(big.data.count == 16 && big.slots == 17)
        #expect(big.data[0].sizeField == 65535 && big.data[0].flags == [.moreData, .checksumBlank, .dataValidated, .extraInfo])
        #expect(big.data[15].length == 65535 - 15 * 4096 && big.data[15].sizeField == UInt16(65535 - 15 * 4096) && big.data[15].flags == [])
        #expect(big.data.dropFirst().dropLast().allSatisfy { $0.flags == [.moreData] && $0.length == 4096 })
        #expect(big.extra == NetifExtraInfo(.gso(size: 1448, type: .tcpv4, features: 0)))
        #expect(throws: NetFrontError.self) { try TxPlan(frameBytes: 13, features: features) }
        #expect(throws: NetFrontError.self) { try TxPlan(frameBytes: 65536, features: features) }
        let bare = try Self.features(["feature-rx-copy": "1"], .minimal)
        #expect(throws: NetFrontError.self) { try TxPlan(frameBytes: 4097, features: bare) }
        #expect(throws: NetFrontError.self) { try TxPlan(frameBytes: 1514, offload: .init(gso: (.tcpv6, 1440)), features: bare) }
        #expect(throws: NetFrontError.self) { try TxPlan(frameBytes: 1514, offload: .init(checksumBlank: true), features: bare) }
        #expect(try TxPlan(frameBytes: 4096, features: bare).slots == 1)
    }

    /// Rx slots as a backend writes them, fed in order with the buffer posted in each slot.
    static func feed(_ assembler: inout RxAssembler, _ slots: [(NetifRxSlot, UInt16)]) -> [RxAssembler.Event] {
        var events: [RxAssembler.Event] = []
        for (slot, posted) in slots {
            var bytes = [UInt8](repeating: 0, count: 8)
            bytes.withUnsafeMutableBytes { NetifRxRing().encodeResponse(slot, into: $0) }
            if let event = bytes.withUnsafeBytes({ assembler.consume(slot: $0, posted: posted) }) { events.append(event) }
        }
        return events
    }

    static func data(_ id: UInt16, _ offset: UInt16, _ status: Int16, _ flags: NetRxFlags = []) -> NetifRxSlot {
        .response(NetifRxResponse(id: id, offset: offset, flags: flags, status: status))
    }

    @Test("rx: single and multi-slot frames, a GSO extra, checksum flags; every buffer handed back")
    func rxFrames() throws {
        var rx = RxAssembler(features: try Self.features())
        let events = Self.feed(
            &rx,
            [
                (Self.data(1, 0, 60, [.dataValidated]), 1),
                (Self.data(2, 16, 4080, [.moreData, .extraInfo, .checksumBlank]), 2),
                (.extraInfo(NetifExtraInfo(.gso(size: 1448, type: .tcpv4, features: 0))), 3),
                (Self.data(4, 0, 4096, [.moreData]), 4),
                (Self.data(5, 0, 100), 5)
            ])
        #expect(events.count == 2)
        guard case let .frame(first, buffers)? = events.first, case let .frame(second, more)? = events.last else {
            Issue.record("\(events)")
            return
        }
        #expect(first.length == 60 && first.checksumValidated && !first.checksumBlank && buffers == [1])
        #expect(second.length == 4080 + 4096 + 100 && second.checksumBlank && second.gso?.type == .tcpv4 && second.gso?.size == 1448)
        #expect(second.fragments.map(\.buffer) == [2, 4, 5] && more == [2, 3, 4, 5])
        #expect(rx.counts.isEmpty)
    }

    @Test(
        "rx from a lying backend: wrong id, offset past the page, empty slot, error status, unnegotiated GSO, endless more_data — dropped, counted, buffers back, the next frame fine"
    )
    func rxLies() throws {
        var rx = RxAssembler(features: try Self.features())
        var bad: [(NetifRxSlot, UInt16)] = [
            (Self.data(99, 0, 60), 1),
            (Self.data(2, 4000, 200), 2),
            (Self.data(3, 0, 0), 3),
            (Self.data(4, 0, -1), 4),
            (Self.data(5, 0, 60, [.extraInfo]), 5),
            (.extraInfo(NetifExtraInfo(.gso(size: 1448, type: .none, features: 0))), 6)
        ]
        for n in 0..<20 { bad.append((Self.data(UInt16(10 + n), 0, 100, [.moreData]), UInt16(10 + n))) }
        // 17 full pages: over 64 KiB.
        for n in 0..<17 { bad.append((Self.data(UInt16(50 + n), 0, 4096, n < 16 ? [.moreData] : []), UInt16(50 + n))) }
        bad.append((Self.data(40, 0, 60), 40))
        let events = Self.feed(&rx, bad)
        let reasons = events.compactMap { event -> RxAssembler.Reason? in if case let .dropped(reason, _) = event { reason } else { nil } }
        #expect(Array(reasons.prefix(5)) == [.wrongID, .badLength, .badLength, .backendError, .badExtra])
        #expect(reasons.contains(.tooManySlots) && reasons.contains(.tooLong))
        let handedBack = events.flatMap { event -> [UInt16] in
            switch event {
            case let .frame(_, b): b;
            case let .dropped(_, b): b
            }
        }
        #expect(handedBack.sorted() == bad.map(\.1).sorted(), "every posted buffer comes back exactly once")
        #expect(rx.counts[.badLength] == 2 && rx.counts[.wrongID] == 1)
        // Without scatter-gather a second slot is already too many.
        var plain = RxAssembler(features: try Self.features(["feature-rx-copy": "1"]))
        let split = Self.feed(&plain, [(Self.data(1, 0, 4096, [.moreData]), 1), (Self.data(2, 0, 10), 2), (Self.data(3, 0, 60), 3)])
        guard case .frame(let last, _)? = split.last else { Issue.record("\(split)"); return }
        #expect(last.length == 60 && plain.counts[.tooManySlots] == 1)
    }
}
