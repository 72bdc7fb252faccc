import Foundation
import PVSystem
import PacketOffload
@testable import PVHost
import Testing
import XenABI

/// netback's sans-I/O parts: tx slots into packets (against a hostile frontend), the
/// checksum fill-in, the learning switch.
@Suite("NetBack without rings: tx assembly, checksums, switching", .timeLimit(.minutes(5)))
struct NetBackUnitTests {
    /// The 12 bytes of a tx request slot.
    static func slot(_ request: NetifTxRequest) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: NetifTxRequest.wireSize)
        bytes.withUnsafeMutableBytes { NetifTxRing().encodeRequest(.request(request), into: $0) }
        return bytes
    }

    static func extraSlot(_ info: NetifExtraInfo) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: NetifTxRequest.wireSize)
        bytes.withUnsafeMutableBytes { info.encode(into: $0) }
        return bytes
    }

    /// Feeds slots; returns the outcomes in order.
    static func run(_ slots: [[UInt8]]) -> [TxAssembler.Outcome] {
        var assembler = TxAssembler()
        return slots.compactMap { bytes in bytes.withUnsafeBytes { assembler.consume($0) } }
    }

    static func request(_ id: UInt16, size: Int, offset: Int = 0, flags: NetTxFlags = []) -> NetifTxRequest {
        NetifTxRequest(gref: GrantRef(100 + UInt32(id)), offset: UInt16(offset), flags: flags, id: id, size: UInt16(size))
    }

    @Test("packets: one slot; three slots (the first slot's length is what the others leave); a GSO extra after the first slot")
    func packets() {
        let one = Self.run([Self.slot(Self.request(1, size: 60))])
        #expect(one == [.packet(.init(first: .init(id: 1, gref: GrantRef(101), offset: 0, length: 60), rest: [], length: 60, flags: [], gso: nil, extras: 0))])
        let three = Self.run([
            Self.slot(Self.request(1, size: 9000, flags: .moreData)), Self.slot(Self.request(2, size: 4096, flags: .moreData)),
            Self.slot(Self.request(3, size: 808))
        ])
        guard case let .packet(p)? = three.first else { Issue.record("\(three)"); return }
        #expect(three.count == 1 && p.first.length == 9000 - 4096 - 808 && p.rest.map(\.length) == [4096, 808] && p.length == 9000)
        let gso = Self.run([
            Self.slot(Self.request(1, size: 3000, flags: [.extraInfo, .checksumBlank])),
            Self.extraSlot(NetifExtraInfo(.gso(size: 1448, type: .tcpv4, features: 0)))
        ])
        guard case let .packet(g)? = gso.first else { Issue.record("\(gso)"); return }
        #expect(g.extras == 1 && g.gso == .gso(size: 1448, type: .tcpv4, features: 0) && g.flags.contains(.checksumBlank))
    }

    static let hostile: [(String, [[UInt8]], TxAssembler.Reason)] = [
        ("a first slot shorter than an Ethernet header", [slot(request(1, size: 10))], .tooShort),
        ("data past the end of its page", [slot(request(1, size: 200, offset: 4000))], .outsidePage),
        ("a later slot past its page", [slot(request(1, size: 5000, flags: .moreData)), slot(request(2, size: 1000, offset: 3500))], .outsidePage),
        ("later slots claiming more than the packet's length", [slot(request(1, size: 100, flags: .moreData)), slot(request(2, size: 200))], .sizeMismatch),
        ("the first slot left with too little", [slot(request(1, size: 100, flags: .moreData)), slot(request(2, size: 95))], .tooShort),
        ("19 data slots", (0..<19).map { slot(request(UInt16($0), size: $0 == 0 ? 18 * 100 + 60 : 100, flags: $0 < 18 ? .moreData : [])) }, .tooManySlots),
        ("an extra of an unknown type", [slot(request(1, size: 60, flags: .extraInfo)), [9] + [UInt8](repeating: 0, count: 11)], .badExtra),
        (
            "a GSO extra with MSS 0", [slot(request(1, size: 60, flags: .extraInfo)), extraSlot(NetifExtraInfo(.gso(size: 0, type: .tcpv4, features: 0)))],
            .badExtra
        ),
        (
            "an endless extra chain",
            [slot(request(1, size: 60, flags: .extraInfo))]
                + (0..<TxAssembler.maxExtras).map { _ in extraSlot(NetifExtraInfo(.hash(type: 0, algorithm: 0, value: 0), more: true)) }, .badExtra
        )
    ]

    @Test("a hostile frontend's packets are refused whole, every slot answered, and the next packet is read right", arguments: 0..<hostile.count)
    func refusals(row: Int) {
        let (name, slots, reason) = Self.hostile[row]
        let outcomes = Self.run(slots + [Self.slot(Self.request(77, size: 60))])
        guard outcomes.count == 2, case let .refused(ids, _, got) = outcomes[0] else { Issue.record("\(name): \(outcomes)"); return }
        #expect(got == reason, "\(name)")
        #expect(!ids.isEmpty, "\(name): its data slots get error responses")
        #expect(
            outcomes[1]
                == .packet(.init(first: .init(id: 77, gref: GrantRef(177), offset: 0, length: 60), rest: [], length: 60, flags: [], gso: nil, extras: 0)),
            "\(name): back in step afterwards")
    }

    @Test("checksums: TCP and UDP over IPv4 and IPv6 filled in as the RFCs compute them; other frames left alone")
    func checksums() {
        let mac = MACAddress(2, 0, 0, 0, 0, 1)
        let tcp = NetConformanceTests.tcpFrame(to: mac, from: mac, payload: 333)
        var blank = Packet(bytes: tcp.blank, checksumBlank: true)
        let filled = blank.completeChecksum()
        #expect(filled && blank.bytes == tcp.good && !blank.checksumBlank)
        // UDP over IPv6: the result verifies (sum over pseudo-header and datagram is 0xFFFF).
        var v6: [UInt8] = [0x86, 0xDD, 0x60, 0, 0, 0, 0, 20, 17, 64] + (0..<32).map { UInt8($0) }
        v6 += [0x12, 0x34, 0x00, 0x35, 0, 20, 0, 0] + (0..<12).map { UInt8($0 &* 9) }
        var udp = Packet(bytes: mac.bytes + mac.bytes + v6, checksumBlank: true)
        let udpFilled = udp.completeChecksum()
        #expect(udpFilled)
        let frame = udp.bytes
        var sum: UInt32 = 0
        let pseudo = Array(frame[22..<54]) + [0, 0, 0, 20, 0, 0, 0, 17]
        let covered = pseudo + Array(frame[54..<74])
        for i in stride(from: 0, to: covered.count, by: 2) { sum += UInt32(covered[i]) << 8 | UInt32(covered[i + 1]) }
        while sum >> 16 != 0 { sum = (sum & 0xFFFF) + (sum >> 16) }
        #expect(sum == 0xFFFF)
        // ARP, and a truncated IPv4 header: refused, bytes untouched.
        var arp = Packet(bytes: mac.bytes + mac.bytes + [0x08, 0x06] + [UInt8](repeating: 1, count: 28), checksumBlank: true)
        let arpFilled = arp.completeChecksum()
        #expect(!arpFilled && arp.checksumBlank)
        var short = Packet(bytes: Array(tcp.blank.prefix(30)), checksumBlank: true)
        let shortFilled = short.completeChecksum()
        #expect(!shortFilled && short.bytes == Array(tcp.blank.prefix(30)))
    }

    final class Sink: SwitchPort, Sendable {
        let portName: String
        private let received = Locked<[[UInt8]]>([])
        var got: [[UInt8]] { received.withLock { $0 } }
        init(_ name: String) { portName = name }
        func deliver(_ packets: [Packet]) { received.withLock { $0 += packets.map(\.bytes) } }
    }

    @Test("the switch learns, forwards, floods, filters, and forgets a port's addresses when it leaves")
    func switching() {
        let network = VirtualSwitch()
        let (a, b, c) = (Sink("a"), Sink("b"), Sink("c"))
        for port in [a, b, c] { network.attach(port) }
        let (ma, mb) = (MACAddress(2, 0, 0, 0, 0, 0xA), MACAddress(2, 0, 0, 0, 0, 0xB))
        func frame(_ to: MACAddress, _ from: MACAddress) -> Packet { Packet(bytes: to.bytes + from.bytes + [0x88, 0xB5, 1, 2]) }
        network.forward([frame(mb, ma)], from: a)  // b unknown: flood
        #expect(b.got.count == 1 && c.got.count == 1 && a.got.isEmpty)
        network.forward([frame(ma, mb)], from: b)  // a learnt: to a only
        #expect(a.got.count == 1 && c.got.count == 1)
        network.forward([frame(mb, ma), frame(mb, ma), frame(.broadcast, ma)], from: a)
        #expect(b.got.count == 4 && c.got.count == 2)
        // To an address behind the port it came from: dropped, counted.
        network.forward([frame(ma, ma)], from: a)
        #expect(network.counters.filtered == 1 && a.got.count == 1 && b.got.count == 4 && c.got.count == 2)
        network.detach(b)
        #expect(network.port(of: mb) == nil && network.port(of: ma) == "a")
        network.forward([frame(mb, ma)], from: a)  // forgotten: floods, and only to ports still there
        #expect(c.got.count == 3)
    }
}
