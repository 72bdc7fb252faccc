import XenABI

/// An Ethernet frame with the offload state it travels with: what pvhost's switch carries
/// between vifs and TAPs, and what a TAP with offloads reads and writes.
public struct Packet: Sendable {
    public var bytes: [UInt8]
    /// The L4 checksum is not filled in yet (the sender offloaded it).
    public var checksumBlank: Bool
    /// The checksum is known good (or blank and to be trusted).
    public var dataValidated: Bool
    /// A large TCP segment for the receiver to cut (its type and MSS).
    public var gso: (type: NetifGSOType, size: UInt16)?

    @inlinable
    public init(bytes: [UInt8], checksumBlank: Bool = false, dataValidated: Bool = false, gso: (type: NetifGSOType, size: UInt16)? = nil) {
        self.bytes = bytes
        self.checksumBlank = checksumBlank
        self.dataValidated = dataValidated
        self.gso = gso
    }

    @inlinable public var destination: MACAddress { bytes.withUnsafeBytes { MACAddress(wire: $0, at: 0) } }
    @inlinable public var source: MACAddress { bytes.withUnsafeBytes { MACAddress(wire: $0, at: 6) } }

    /// Fills in a blank TCP or UDP checksum (IPv4 or IPv6, no extension headers) for a
    /// receiver that cannot take it blank; false when the frame is not one of those.
    public mutating func completeChecksum() -> Bool {
        guard checksumBlank else { return true }
        let done = bytes.withUnsafeMutableBytes { Checksum.fill($0) }
        if done {
            checksumBlank = false
            dataValidated = true
        }
        return done
    }

    /// Software GSO (see ``Segmentation``): the frames, or nil when this is not a GSO TCP frame.
    public func segmented() -> [Packet]? { Segmentation.segment(self) }
}

/// Where a TCP or UDP frame's headers are: what checksum and segmentation work from.
struct FrameLayout {
    /// Offset of the IP header, and whether it is IPv4.
    let ip: Int
    let v4: Bool
    /// Offset of the TCP/UDP header, its protocol (6 or 17) and its length with payload.
    let l4: Int
    let proto: UInt8
    let l4Length: Int
    /// Where the checksum field is, from `l4`.
    var checksumField: Int { proto == 6 ? 16 : 6 }

    /// Parses Ethernet (one optional VLAN tag), IPv4 (any header length) or IPv6 (no
    /// extension headers), TCP or UDP; nil for anything else or a frame cut short.
    init?(_ frame: UnsafeRawBufferPointer) {
        guard frame.count >= 14 else { return nil }
        var ethertype = Int(frame[12]) << 8 | Int(frame[13])
        var ip = 14
        if ethertype == 0x8100, frame.count >= 18 {
            ethertype = Int(frame[16]) << 8 | Int(frame[17])
            ip = 18
        }
        if ethertype == 0x0800 {
            guard frame.count >= ip + 20, frame[ip] >> 4 == 4 else { return nil }
            let headerLength = Int(frame[ip] & 0x0F) * 4
            let total = Int(frame[ip + 2]) << 8 | Int(frame[ip + 3])
            guard headerLength >= 20, total >= headerLength, ip + total <= frame.count else { return nil }
            (v4, proto, l4, l4Length) = (true, frame[ip + 9], ip + headerLength, total - headerLength)
        } else if ethertype == 0x86DD {
            guard frame.count >= ip + 40, frame[ip] >> 4 == 6 else { return nil }
            let payload = Int(frame[ip + 4]) << 8 | Int(frame[ip + 5])
            guard ip + 40 + payload <= frame.count else { return nil }
            (v4, proto, l4, l4Length) = (false, frame[ip + 6], ip + 40, payload)
        } else {
            return nil
        }
        self.ip = ip
        guard proto == 6 || proto == 17, l4Length >= (proto == 6 ? 20 : 8) else { return nil }
    }

    /// The pseudo-header's sum (addresses, protocol, L4 length), not folded.
    func pseudoHeaderSum(_ frame: UnsafeRawBufferPointer) -> UInt64 {
        Checksum.words(frame, from: v4 ? ip + 12 : ip + 8, count: v4 ? 8 : 32) + UInt64(proto) + UInt64(l4Length)
    }
}

/// The Internet checksum of TCP and UDP over IPv4 and IPv6.
public enum Checksum {
    /// Computes and stores the L4 checksum of an Ethernet frame in place (whatever the field
    /// held). False for anything but TCP or UDP over IPv4/IPv6, or a frame cut short.
    public static func fill(_ frame: UnsafeMutableRawBufferPointer) -> Bool {
        guard let layout = FrameLayout(UnsafeRawBufferPointer(frame)) else { return false }
        let field = layout.l4 + layout.checksumField
        frame[field] = 0
        frame[field + 1] = 0
        var sum = layout.pseudoHeaderSum(UnsafeRawBufferPointer(frame)) + words(UnsafeRawBufferPointer(frame), from: layout.l4, count: layout.l4Length)
        while sum >> 16 != 0 { sum = (sum & 0xFFFF) + (sum >> 16) }
        var result = ~UInt16(sum)
        if layout.proto == 17 && result == 0 { result = 0xFFFF }
        frame[field] = UInt8(result >> 8)
        frame[field + 1] = UInt8(result & 0xFF)
        return true
    }

    /// Prepares a frame whose checksum a Linux receiver will finish (`CHECKSUM_PARTIAL`): the
    /// field gets the folded pseudo-header sum. Returns where the sum starts and where the
    /// field is from there (`csum_start`, `csum_offset`), or nil as ``fill(_:)``.
    public static func preparePartial(_ frame: UnsafeMutableRawBufferPointer) -> (start: Int, offset: Int)? {
        guard let layout = FrameLayout(UnsafeRawBufferPointer(frame)) else { return nil }
        var sum = layout.pseudoHeaderSum(UnsafeRawBufferPointer(frame))
        while sum >> 16 != 0 { sum = (sum & 0xFFFF) + (sum >> 16) }
        let field = layout.l4 + layout.checksumField
        frame[field] = UInt8(sum >> 8)
        frame[field + 1] = UInt8(sum & 0xFF)
        return (layout.l4, layout.checksumField)
    }

    /// The sum of big-endian 16-bit words (a last odd byte padded with zero).
    static func words(_ bytes: UnsafeRawBufferPointer, from start: Int, count: Int) -> UInt64 {
        var sum: UInt64 = 0
        var i = start
        let end = start + count
        while i + 1 < end {
            sum += UInt64(bytes[i]) << 8 | UInt64(bytes[i + 1])
            i += 2
        }
        if i < end { sum += UInt64(bytes[i]) << 8 }
        return sum
    }
}

/// Software GSO: cuts a large TCP segment into frames of at most `gso.size` payload bytes for
/// a receiver that did not negotiate GSO (a guest without `feature-gso-tcpv4`, a plain TAP),
/// as Linux's `skb_gso_segment` would: the headers copied to each, IPv4 total length, id and
/// header checksum or IPv6 payload length fixed, the TCP sequence advanced, FIN and PSH only on
/// the last, CWR only on the first, every checksum computed.
public enum Segmentation {
    /// The frames, or nil for a packet that is not GSO TCP over IPv4 or IPv6 with a sane MSS.
    public static func segment(_ packet: Packet) -> [Packet]? {
        guard let gso = packet.gso, gso.size > 0 else { return nil }
        let frame = packet.bytes
        guard let layout = frame.withUnsafeBytes({ FrameLayout($0) }), layout.proto == 6 else { return nil }
        let (ip, l4) = (layout.ip, layout.l4)
        let tcpLength = Int(frame[l4 + 12] >> 4) * 4
        let payloadStart = l4 + tcpLength
        guard tcpLength >= 20, layout.l4Length >= tcpLength else { return nil }
        let mss = Int(gso.size)
        let payload = layout.l4Length - tcpLength
        let sequence = UInt32(frame[l4 + 4]) << 24 | UInt32(frame[l4 + 5]) << 16 | UInt32(frame[l4 + 6]) << 8 | UInt32(frame[l4 + 7])
        let identification = Int(frame[ip + 4]) << 8 | Int(frame[ip + 5])
        let flags = frame[l4 + 13]
        var out: [Packet] = []
        var offset = 0
        var index = 0
        repeat {
            let chunk = min(mss, payload - offset)
            var bytes = Array(frame[0..<payloadStart])
            bytes += frame[(payloadStart + offset)..<(payloadStart + offset + chunk)]
            let last = offset + chunk == payload
            if layout.v4 {
                let total = payloadStart - ip + chunk
                bytes[ip + 2] = UInt8(total >> 8)
                bytes[ip + 3] = UInt8(total & 0xFF)
                let id = (identification + index) & 0xFFFF
                bytes[ip + 4] = UInt8(id >> 8)
                bytes[ip + 5] = UInt8(id & 0xFF)
                bytes[ip + 10] = 0
                bytes[ip + 11] = 0
                var sum = bytes.withUnsafeBytes { Checksum.words($0, from: ip, count: l4 - ip) }
                while sum >> 16 != 0 { sum = (sum & 0xFFFF) + (sum >> 16) }
                let checksum = ~UInt16(sum)
                bytes[ip + 10] = UInt8(checksum >> 8)
                bytes[ip + 11] = UInt8(checksum & 0xFF)
            } else {
                let length = tcpLength + chunk
                bytes[ip + 4] = UInt8(length >> 8)
                bytes[ip + 5] = UInt8(length & 0xFF)
            }
            let seq = sequence &+ UInt32(offset)
            for k in 0..<4 { bytes[l4 + 4 + k] = UInt8(truncatingIfNeeded: seq >> (24 - 8 * k)) }
            var segmentFlags = flags
            if !last { segmentFlags &= ~(0x01 | 0x08) }  // FIN, PSH: the last segment's
            if index > 0 { segmentFlags &= ~0x80 }  // CWR: the first's
            bytes[l4 + 13] = segmentFlags
            var segment = Packet(bytes: bytes, checksumBlank: true, dataValidated: true)
            _ = segment.completeChecksum()
            out.append(segment)
            offset += chunk
            index += 1
        } while offset < payload
        return out
    }
}
