import Testing
import XenABI

/// Encodes into a zeroed slot and returns its bytes.
func encoded(_ size: Int, _ body: (UnsafeMutableRawBufferPointer) -> Void) -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: size)
    bytes.withUnsafeMutableBytes(body)
    return bytes
}

func decoded<T>(_ bytes: [UInt8], _ body: (UnsafeRawBufferPointer) throws(XenABIError) -> T) throws(XenABIError) -> T {
    var result: Result<T, XenABIError>!
    bytes.withUnsafeBytes { buffer in
        do throws(XenABIError) { result = .success(try body(buffer)) } catch { result = .failure(error) }
    }
    return try result.get()
}

func hex(_ text: String) -> [UInt8] {
    let digits = text.filter(\.isHexDigit)
    var bytes: [UInt8] = []
    var index = digits.startIndex
    while index < digits.endIndex {
        let next = digits.index(index, offsetBy: 2)
        bytes.append(UInt8(digits[index..<next], radix: 16)!)
        index = next
    }
    return bytes
}

@Suite("blkif wire format", .timeLimit(.minutes(5)))
struct BlkifWireTests {
    let ring = BlkifRing()

    @Test("a read request has the header's bytes")
    func readRequestGolden() throws {
        let request = BlkifRequest.io(
            BlkifIORequest(
                operation: .read, handle: 51712, id: 0x1122_3344_5566_7788, sector: 0x0102_0304,
                segments: [BlkifSegment(gref: GrantRef(0xABCD), firstSector: 1, lastSector: 7)]))
        let bytes = encoded(112) { ring.encodeRequest(request, into: $0) }
        let expected = hex(
            """
            00 01 00ca 00000000        # operation READ, nr_segments 1, handle 51712, pad
            8877665544332211           # id
            0403020100000000           # sector_number
            cdab0000 01 07 0000        # seg[0]: gref, first_sect, last_sect, pad
            """.split(separator: "\n").map { $0.split(separator: "#")[0] }.joined())
        #expect(Array(bytes[0..<32]) == expected)
        #expect(try decoded(bytes) { (b) throws(XenABIError) in try ring.decodeRequest(b) } == request)
    }

    @Test("discard and indirect requests round-trip in both ABIs", arguments: BlkifABI.allCases)
    func roundTrips(abi: BlkifABI) throws {
        let ring = BlkifRing(abi: abi)
        let requests: [BlkifRequest] = [
            .discard(BlkifDiscardRequest(secure: true, handle: 3, id: 9, sector: 4096, sectorCount: 2048)),
            .indirect(
                BlkifIndirectRequest(
                    operation: .write, segmentCount: 600, handle: 5, id: 77, sector: 8,
                    indirectGrants: [GrantRef(100), GrantRef(101)])),
            .io(BlkifIORequest(operation: .flushDiskCache, handle: 1, id: 2, sector: 0)),
            .io(
                BlkifIORequest(
                    operation: .write, handle: 1, id: 3, sector: 64,
                    segments: BlkifSegmentList(
                        (0..<11).map { BlkifSegment(gref: GrantRef(UInt32(1000 + $0)), firstSector: 0, lastSector: 7) })))
        ]
        for request in requests {
            let bytes = encoded(ring.slotSize) { ring.encodeRequest(request, into: $0) }
            #expect(try decoded(bytes) { (b) throws(XenABIError) in try ring.decodeRequest(b) } == request)
        }
        let response = BlkifResponse(id: 0xDEAD_BEEF_0000_0001, operation: .indirect, status: .notSupported)
        let bytes = encoded(ring.slotSize) { ring.encodeResponse(response, into: $0) }
        #expect(try decoded(bytes) { (b) throws(XenABIError) in try ring.decodeResponse(b) } == response)
    }

    @Test("x86_32 puts the id at byte 4")
    func x86_32Golden() {
        let ring = BlkifRing(abi: .x86_32)
        let bytes = encoded(108) {
            ring.encodeRequest(.io(BlkifIORequest(operation: .write, handle: 2, id: 0xAA, sector: 0xBB)), into: $0)
        }
        #expect(bytes[4] == 0xAA && bytes[12] == 0xBB && bytes[0] == 1 && bytes[2] == 2)
    }

    struct Malformed: Sendable, CustomTestStringConvertible {
        let name: String
        let bytes: [UInt8]
        let error: XenABIError
        var testDescription: String { name }
    }

    static let malformed: [Malformed] = {
        func slot(_ edit: (inout [UInt8]) -> Void) -> [UInt8] {
            var bytes = [UInt8](repeating: 0, count: 112)
            edit(&bytes)
            return bytes
        }
        return [
            Malformed(
                name: "unknown operation", bytes: slot { $0[0] = 9 },
                error: .unknownCode(field: "blkif operation", value: 9)),
            Malformed(
                name: "12 segments",
                bytes: slot {
                    $0[0] = 0; $0[1] = 12
                },
                error: .countOutOfRange(field: "blkif nr_segments", value: 12, limit: 11)),
            Malformed(
                name: "reversed sectors",
                bytes: slot {
                    $0[1] = 1; $0[28] = 5; $0[29] = 2
                },
                error: .badSegmentSectors(index: 0, first: 5, last: 2)),
            Malformed(
                name: "sector past the page",
                bytes: slot {
                    $0[1] = 1; $0[28] = 0; $0[29] = 8
                },
                error: .badSegmentSectors(index: 0, first: 0, last: 8)),
            Malformed(
                name: "indirect with a discard inside",
                bytes: slot {
                    $0[0] = 6; $0[1] = 5
                },
                error: .unknownCode(field: "blkif indirect_op", value: 5)),
            Malformed(
                name: "indirect over 4096 segments",
                bytes: slot {
                    $0[0] = 6; $0[1] = 0; $0[2] = 0x01; $0[3] = 0x10
                },
                error: .countOutOfRange(field: "blkif indirect nr_segments", value: 4097, limit: 4096)),
            Malformed(
                name: "truncated", bytes: [0, 1, 0],
                error: .truncated(structure: "blkif_request", needed: 112, available: 3))
        ]
    }()

    @Test("malformed requests are typed errors", arguments: malformed)
    func malformedRequest(_ c: Malformed) {
        #expect(throws: c.error) { try decoded(c.bytes) { (b) throws(XenABIError) in try ring.decodeRequest(b) } }
    }

    @Test("indirect pages pack 512 segments")
    func indirectPage() throws {
        let segments = (0..<512).map { BlkifSegment(gref: GrantRef(UInt32($0)), firstSector: 0, lastSector: UInt8($0 % 8)) }
        let page = encoded(4096) { BlkifSegment.encodeIndirectPage(segments, into: $0) }
        #expect(try decoded(page) { (b) throws(XenABIError) in try BlkifSegment.decodeIndirectPage(b, count: 512) } == segments)
        #expect(throws: XenABIError.self) {
            try decoded(page) { (b) throws(XenABIError) in try BlkifSegment.decodeIndirectPage(b, count: 513) }
        }
    }
}

@Suite("netif, xs_wire, grant and xenbus wire formats", .timeLimit(.minutes(5)))
struct OtherWireTests {
    @Test("tx request golden bytes")
    func txGolden() throws {
        let ring = NetifTxRing()
        let request = NetifTxSlot.request(
            NetifTxRequest(
                gref: GrantRef(0x0102_0304), offset: 0x10, flags: [.moreData, .checksumBlank],
                id: 7, size: 1514))
        let bytes = encoded(12) { ring.encodeRequest(request, into: $0) }
        #expect(bytes == hex("04030201 1000 0500 0700 ea05"))
        #expect(try decoded(bytes) { (b) throws(XenABIError) in try ring.decodeRequest(b) } == request)
    }

    @Test("rx response golden bytes")
    func rxGolden() throws {
        let ring = NetifRxRing()
        let response = NetifRxSlot.response(NetifRxResponse(id: 3, offset: 0, flags: [.dataValidated, .moreData], status: 1500))
        let bytes = encoded(8) { ring.encodeResponse(response, into: $0) }
        #expect(bytes == hex("0300 0000 0500 dc05"))
        #expect(try decoded(bytes) { (b) throws(XenABIError) in try ring.decodeResponse(b) } == response)
    }

    @Test("extra info round-trips and rejects unknown types")
    func extraInfo() throws {
        let extras: [NetifExtraInfo] = [
            NetifExtraInfo(.gso(size: 1448, type: .tcpv4, features: 0), more: true),
            NetifExtraInfo(.multicastAdd(MACAddress(1, 0, 0x5e, 0, 0, 1))),
            NetifExtraInfo(.multicastDelete(MACAddress("01:00:5e:00:00:02")!)),
            NetifExtraInfo(.hash(type: 1, algorithm: 1, value: 0xCAFE_F00D))
        ]
        for extra in extras {
            let bytes = encoded(8) { extra.encode(into: $0) }
            #expect(try decoded(bytes) { (b) throws(XenABIError) in try NetifExtraInfo.decode(b) } == extra)
        }
        #expect(encoded(8) { extras[0].encode(into: $0) } == hex("01 01 a805 01 00 0000"))
        #expect(throws: XenABIError.unknownCode(field: "netif extra type", value: 0)) {
            try decoded([0, 0, 0, 0, 0, 0, 0, 0]) { (b) throws(XenABIError) in try NetifExtraInfo.decode(b) }
        }
        #expect(throws: XenABIError.unknownCode(field: "netif GSO type", value: 9)) {
            try decoded([1, 0, 0, 0, 9, 0, 0, 0]) { (b) throws(XenABIError) in try NetifExtraInfo.decode(b) }
        }
    }

    @Test("MAC addresses parse, print and keep their bytes in wire order")
    func macAddresses() {
        let mac = MACAddress("00:16:3e:0a:ff:01")
        #expect(mac?.bytes == [0x00, 0x16, 0x3e, 0x0a, 0xff, 0x01])
        #expect(mac?.description == "00:16:3e:0a:ff:01")
        #expect(mac?.isMulticast == false)
        #expect(MACAddress.broadcast.isMulticast)
        for bad in ["", "00:16:3e:0a:ff", "00:16:3e:0a:ff:01:02", "0:16:3e:0a:ff:01", "zz:16:3e:0a:ff:01"] {
            #expect(MACAddress(bad) == nil, "\(bad)")
        }
        let wire = encoded(8) { NetifExtraInfo(.multicastAdd(mac!)).encode(into: $0) }
        #expect(Array(wire[2..<8]) == mac!.bytes)
    }

    @Test("control ring round-trip")
    func controlRing() throws {
        let ring = NetifControlRing()
        let request = NetifControlRequest(id: 1, type: .setHashKey, data: (10, 20, 30))
        let bytes = encoded(16) { ring.encodeRequest(request, into: $0) }
        #expect(bytes == hex("0100 0300 0a000000 14000000 1e000000"))
        #expect(try decoded(bytes) { (b) throws(XenABIError) in try ring.decodeRequest(b) } == request)
        let response = NetifControlResponse(id: 1, type: 3, status: NetifControlStatus.invalidParameter.rawValue, data: 0)
        let rbytes = encoded(16) { ring.encodeResponse(response, into: $0) }
        #expect(try decoded(rbytes) { (b) throws(XenABIError) in try ring.decodeResponse(b) } == response)
    }

    @Test("xsd_sockmsg golden bytes")
    func xsHeader() throws {
        let header = XsHeader(type: .write, requestID: 0x0102_0304, transactionID: 5, length: 12)
        #expect(header.bytes == hex("0b000000 04030201 05000000 0c000000"))
        #expect(try decoded(header.bytes) { (b) throws(XenABIError) in try XsHeader.decode(b) } == header)
        #expect(XsHeader(type: 20, requestID: 0, transactionID: 0, length: 0).messageType == nil)
        #expect(throws: XenABIError.self) { try decoded([1, 2, 3]) { (b) throws(XenABIError) in try XsHeader.decode(b) } }
    }

    @Test("grant entry v1 golden bytes and in-use flags")
    func grantEntry() throws {
        let entry = GrantEntryV1(flags: [.permitAccess, .readOnly], domid: DomainID(7), frame: 0x12345)
        let bytes = encoded(8) { entry.encode(into: $0) }
        #expect(bytes == hex("0500 0700 45230100"))
        #expect(try decoded(bytes) { (b) throws(XenABIError) in try GrantEntryV1.decode(b) } == entry)
        #expect(!entry.flags.inUse)
        #expect(GrantFlags([.permitAccess, .writing]).inUse)
        #expect(GrantFlags([.permitAccess, .readOnly]).type == 1)
    }

    @Test(
        "xenbus state node values",
        arguments: [
            ("4", XenbusState.connected), ("1\n", .initialising), ("6\0", .closed), ("", nil), ("9", nil), ("x", nil),
            ("-1", nil), ("٣", nil)
        ] as [(String, XenbusState?)])
    func xenbusState(value: String, state: XenbusState?) {
        #expect(XenbusState(nodeValue: value) == state)
    }

    @Test("feature names map to bits")
    func featureNames() {
        #expect(XenFeature(name: "dom0") == .dom0)
        #expect(XenFeature(name: "writable_page_tables")?.rawValue == 0)
        #expect(XenFeature(name: "no_such_feature") == nil)
        #expect(XenElfNoteType.phys32Entry.kind == .numeric)
        #expect(XenElfNoteType.features.kind == .string)
    }
}
