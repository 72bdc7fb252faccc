import Synchronization
import XenABI

/// A frame in pvhost's switch, with the offload state it travels with.
public struct Packet: Sendable {
    public var bytes: [UInt8]
    /// The L4 checksum is not filled in yet (the sender offloaded it).
    public var checksumBlank: Bool
    /// The checksum is known good (or blank and to be trusted).
    public var dataValidated: Bool
    /// A large TCP segment for the receiver to cut (its type and MSS).
    public var gso: (type: NetifGSOType, size: UInt16)?

    public init(bytes: [UInt8], checksumBlank: Bool = false, dataValidated: Bool = false, gso: (type: NetifGSOType, size: UInt16)? = nil) {
        self.bytes = bytes
        self.checksumBlank = checksumBlank
        self.dataValidated = dataValidated
        self.gso = gso
    }

    var destination: MACAddress { bytes.withUnsafeBytes { MACAddress(wire: $0, at: 0) } }
    var source: MACAddress { bytes.withUnsafeBytes { MACAddress(wire: $0, at: 6) } }

    /// Fills in a blank TCP or UDP checksum (IPv4 or IPv6, no extension headers) for a
    /// receiver that cannot take it blank; false when the frame is not one of those.
    mutating func completeChecksum() -> Bool {
        guard checksumBlank else { return true }
        let done = bytes.withUnsafeMutableBytes { Checksum.fill($0) }
        if done {
            checksumBlank = false
            dataValidated = true
        }
        return done
    }
}

/// A place the switch delivers to: a vif of a guest, or a TAP device into Linux.
public protocol SwitchPort: AnyObject, Sendable {
    /// For status and logs (`vif1.0`, `tap:pvtap0`).
    var portName: String { get }
    /// Takes packets for this port; called on the sending port's thread, so it must not wait
    /// for long (queue, or drop and count).
    func deliver(_ packets: [Packet])
}

/// pvhost's learning switch between every vif of every guest and the TAP devices: it learns
/// which port each source MAC address is behind, sends a frame for a known unicast address to
/// that port only, and floods broadcast, multicast and unknown destinations to every other
/// port. A frame is never sent back out of the port it came in on.
public final class VirtualSwitch: Sendable {
    private struct Entry {
        let port: any SwitchPort
    }
    private struct State {
        var ports: [ObjectIdentifier: Entry] = [:]
        var table: [MACAddress: ObjectIdentifier] = [:]
        var forwarded = 0, flooded = 0, filtered = 0
        /// Captures by port name.
        var captures: [String: PacketCapture] = [:]
    }
    private let state = Mutex(State())

    public init() {}

    public func attach(_ port: any SwitchPort) {
        state.withLock { $0.ports[ObjectIdentifier(port)] = Entry(port: port) }
    }

    /// Removes a port and every address learnt behind it.
    public func detach(_ port: any SwitchPort) {
        let id = ObjectIdentifier(port)
        state.withLock { s in
            s.ports[id] = nil
            s.table = s.table.filter { $0.value != id }
        }
    }

    /// Counters: frames sent to one port, frames flooded, frames dropped because their
    /// destination is behind the port they came from.
    public var counters: (forwarded: Int, flooded: Int, filtered: Int) { state.withLock { ($0.forwarded, $0.flooded, $0.filtered) } }

    /// Port names, sorted (for status and errors).
    public var portNames: [String] { state.withLock { $0.ports.values.map(\.port.portName).sorted() } }

    /// Why a capture could not start.
    public struct CaptureFailure: Error, CustomStringConvertible { public let description: String }

    /// Writes every frame `port` sends or receives from now on to a pcap file at `path`.
    public func startCapture(port: String, path: String) throws(CaptureFailure) {
        guard portNames.contains(port) else { throw CaptureFailure(description: "no switch port named \(port) (ports: \(portNames.joined(separator: ", ")))") }
        let capture: PacketCapture
        do { capture = try PacketCapture(path: path) } catch { throw CaptureFailure(description: "\(error)") }
        state.withLock { $0.captures[port] = capture }
    }

    /// Ends a capture; returns the frames it holds (nil: none was running).
    @discardableResult
    public func stopCapture(port: String) -> Int? {
        state.withLock { $0.captures.removeValue(forKey: port) }?.frames
    }

    /// The port an address was learnt behind.
    public func port(of address: MACAddress) -> String? {
        state.withLock { s in s.table[address].flatMap { s.ports[$0]?.port.portName } }
    }

    /// Learns the packets' sources and delivers them, one batch per destination port.
    public func forward(_ packets: [Packet], from ingress: any SwitchPort) {
        let from = ObjectIdentifier(ingress)
        // Few ports get a batch: a short list beats hashing per packet. The last source and
        // destination looked up are remembered (a batch is mostly one flow).
        var batches: [(id: ObjectIdentifier, port: any SwitchPort, packets: [Packet])] = []
        var captures: [String: PacketCapture] = [:]
        func add(_ packet: Packet, to id: ObjectIdentifier, _ port: any SwitchPort) {
            if let i = batches.firstIndex(where: { $0.id == id }) { batches[i].packets.append(packet) } else { batches.append((id, port, [packet])) }
        }
        state.withLock { s in
            guard s.ports[from] != nil else { return }
            captures = s.captures
            var lastSource: MACAddress?
            var lastDestination: (MACAddress, ObjectIdentifier, any SwitchPort)?
            for packet in packets where packet.bytes.count >= 14 {
                let source = packet.source
                if source != lastSource {
                    if !source.isMulticast, s.table[source] != from {
                        s.table[source] = from
                        lastDestination = nil  // the table changed
                    }
                    lastSource = source
                }
                let destination = packet.destination
                if let last = lastDestination, last.0 == destination {
                    add(packet, to: last.1, last.2)
                    s.forwarded += 1
                } else if !destination.isMulticast, let to = s.table[destination] {
                    guard to != from, let entry = s.ports[to] else { s.filtered += 1; continue }
                    lastDestination = (destination, to, entry.port)
                    add(packet, to: to, entry.port)
                    s.forwarded += 1
                } else {
                    for (id, entry) in s.ports where id != from { add(packet, to: id, entry.port) }
                    s.flooded += 1
                }
            }
        }
        if !captures.isEmpty {
            captures[ingress.portName]?.record(packets)
            for batch in batches { captures[batch.port.portName]?.record(batch.packets) }
        }
        for batch in batches { batch.port.deliver(batch.packets) }
    }
}

/// The Internet checksum of TCP and UDP over IPv4 and IPv6, for frames whose sender left it
/// blank (checksum offload) going to a receiver that needs it filled in.
enum Checksum {
    /// Computes and stores the L4 checksum of an Ethernet frame in place. False for anything
    /// but TCP or UDP in IPv4 (any header length) or IPv6 (no extension headers), or a frame
    /// cut short.
    static func fill(_ frame: UnsafeMutableRawBufferPointer) -> Bool {
        guard frame.count >= 14 else { return false }
        var ethertype = Int(frame[12]) << 8 | Int(frame[13])
        var ip = 14
        if ethertype == 0x8100, frame.count >= 18 {  // one VLAN tag
            ethertype = Int(frame[16]) << 8 | Int(frame[17])
            ip = 18
        }
        var sum: UInt64 = 0
        let l4: Int, length: Int, proto: UInt8
        if ethertype == 0x0800 {
            guard frame.count >= ip + 20, frame[ip] >> 4 == 4 else { return false }
            let headerLength = Int(frame[ip] & 0x0F) * 4
            let total = Int(frame[ip + 2]) << 8 | Int(frame[ip + 3])
            guard headerLength >= 20, total >= headerLength, ip + total <= frame.count else { return false }
            proto = frame[ip + 9]
            l4 = ip + headerLength
            length = total - headerLength
            sum += words(frame, from: ip + 12, count: 8)  // source and destination
        } else if ethertype == 0x86DD {
            guard frame.count >= ip + 40, frame[ip] >> 4 == 6 else { return false }
            let payload = Int(frame[ip + 4]) << 8 | Int(frame[ip + 5])
            guard ip + 40 + payload <= frame.count else { return false }
            proto = frame[ip + 6]
            l4 = ip + 40
            length = payload
            sum += words(frame, from: ip + 8, count: 32)
        } else {
            return false
        }
        let field: Int
        switch proto {
        case 6: field = 16
        case 17: field = 6
        default: return false
        }
        guard length >= field + 2 else { return false }
        sum += UInt64(proto) + UInt64(length)
        frame[l4 + field] = 0
        frame[l4 + field + 1] = 0
        sum += words(frame, from: l4, count: length)
        while sum >> 16 != 0 { sum = (sum & 0xFFFF) + (sum >> 16) }
        var result = ~UInt16(sum)
        if proto == 17 && result == 0 { result = 0xFFFF }
        frame[l4 + field] = UInt8(result >> 8)
        frame[l4 + field + 1] = UInt8(result & 0xFF)
        return true
    }

    /// The sum of big-endian 16-bit words (a last odd byte padded with zero).
    private static func words(_ bytes: UnsafeMutableRawBufferPointer, from start: Int, count: Int) -> UInt64 {
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
enum Segmentation {
    /// The frames, or nil for a packet that is not TCP over IPv4 (any header length) or IPv6
    /// (no extension headers) with a sane MSS.
    static func segment(_ packet: Packet) -> [Packet]? {
        guard let gso = packet.gso, gso.size > 0 else { return nil }
        let frame = packet.bytes
        guard frame.count >= 14 else { return nil }
        var ip = 14
        var ethertype = Int(frame[12]) << 8 | Int(frame[13])
        if ethertype == 0x8100, frame.count >= 18 {
            ethertype = Int(frame[16]) << 8 | Int(frame[17])
            ip = 18
        }
        let l4: Int
        let v4 = ethertype == 0x0800
        if v4 {
            guard frame.count >= ip + 20, frame[ip] >> 4 == 4, frame[ip + 9] == 6 else { return nil }
            l4 = ip + Int(frame[ip] & 0x0F) * 4
        } else if ethertype == 0x86DD {
            guard frame.count >= ip + 40, frame[ip] >> 4 == 6, frame[ip + 6] == 6 else { return nil }
            l4 = ip + 40
        } else {
            return nil
        }
        guard frame.count >= l4 + 20 else { return nil }
        let tcpLength = Int(frame[l4 + 12] >> 4) * 4
        let payloadStart = l4 + tcpLength
        guard tcpLength >= 20, frame.count >= payloadStart else { return nil }
        let mss = Int(gso.size)
        let payload = frame.count - payloadStart
        if payload <= mss {
            var single = packet
            single.gso = nil
            single.checksumBlank = true
            _ = single.completeChecksum()
            return [single]
        }
        let sequence = UInt32(frame[l4 + 4]) << 24 | UInt32(frame[l4 + 5]) << 16 | UInt32(frame[l4 + 6]) << 8 | UInt32(frame[l4 + 7])
        let identification = Int(frame[ip + 4]) << 8 | Int(frame[ip + 5])
        let flags = frame[l4 + 13]
        var out: [Packet] = []
        var offset = 0
        var index = 0
        while offset < payload {
            let chunk = min(mss, payload - offset)
            var bytes = Array(frame[0..<payloadStart])
            bytes += frame[(payloadStart + offset)..<(payloadStart + offset + chunk)]
            let last = offset + chunk == payload
            if v4 {
                let total = payloadStart - ip + chunk
                bytes[ip + 2] = UInt8(total >> 8)
                bytes[ip + 3] = UInt8(total & 0xFF)
                let id = (identification + index) & 0xFFFF
                bytes[ip + 4] = UInt8(id >> 8)
                bytes[ip + 5] = UInt8(id & 0xFF)
                bytes[ip + 10] = 0
                bytes[ip + 11] = 0
                var sum: UInt32 = 0
                for i in stride(from: ip, to: l4, by: 2) { sum += UInt32(bytes[i]) << 8 | UInt32(bytes[i + 1]) }
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
        }
        return out
    }
}
