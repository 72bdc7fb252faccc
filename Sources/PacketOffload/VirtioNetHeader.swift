import XenABI

/// Linux's `virtio_net_hdr` (10 bytes: flags, gso_type, hdr_len, gso_size, csum_start,
/// csum_offset, little-endian), as a TAP device with `IFF_VNET_HDR` puts before each frame:
/// checksums left partial become ``Packet/checksumBlank``, TCP segments up to 64 KiB
/// ``Packet/gso`` — netif's own offloads, so neither side computes a checksum or cuts a
/// segment in between.
public enum VirtioNetHeader {
    /// `sizeof(struct virtio_net_hdr)`.
    public static let size = 10

    /// The packet in a frame read from the device (`frame` starts with the header), or nil
    /// when it is one netif cannot carry (too short, or UDP segmentation, never offered).
    public static func packet(fromFrame frame: ArraySlice<UInt8>) -> Packet? {
        guard frame.count > size else { return nil }
        let base = frame.startIndex
        let flags = frame[base], gsoType = frame[base + 1] & 0x7F  // without the ECN bit
        let gsoSize = UInt16(frame[base + 4]) | UInt16(frame[base + 5]) << 8
        var packet = Packet(bytes: Array(frame[(base + size)...]))
        if flags & 1 != 0 {  // NEEDS_CSUM
            packet.checksumBlank = true
            packet.dataValidated = true
        }
        if flags & 2 != 0 { packet.dataValidated = true }  // DATA_VALID
        switch gsoType {
        case 0: break
        case 1: packet.gso = (.tcpv4, gsoSize)
        case 4: packet.gso = (.tcpv6, gsoSize)
        default: return nil
        }
        return packet
    }

    /// The header to write before `packet` (its partial checksum and segmentation said as
    /// Linux expects them), or nil when the packet is a segment Linux would not take (not
    /// TCP, or its checksum cannot be left partial).
    public static func header(for packet: inout Packet) -> [UInt8]? {
        var header = [UInt8](repeating: 0, count: size)
        if packet.checksumBlank || packet.gso != nil {
            let partial = packet.bytes.withUnsafeMutableBytes { Checksum.preparePartial($0) }
            if let (start, offset) = partial {
                header[0] = 1  // NEEDS_CSUM
                header[6] = UInt8(start & 0xFF)
                header[7] = UInt8(start >> 8)
                header[8] = UInt8(offset & 0xFF)
                header[9] = UInt8(offset >> 8)
                if let gso = packet.gso {
                    guard start + 12 < packet.bytes.count else { return nil }
                    let headers = start + Int(packet.bytes[start + 12] >> 4) * 4
                    header[1] = gso.type == .tcpv6 ? 4 : 1
                    header[2] = UInt8(headers & 0xFF)
                    header[3] = UInt8(headers >> 8)
                    header[4] = UInt8(gso.size & 0xFF)
                    header[5] = UInt8(gso.size >> 8)
                }
            } else if packet.gso != nil {
                return nil
            }
        } else if packet.dataValidated {
            header[0] = 2  // DATA_VALID
        }
        return header
    }

    /// The frames to write for `packet` to a device without headers: a segmented packet as
    /// its segments, blank checksums filled in; nil when it cannot be segmented.
    public static func plainFrames(for packet: Packet) -> [Packet]? {
        guard let frames = packet.gso == nil ? [packet] : packet.segmented() else { return nil }
        return frames.map { frame in
            var frame = frame
            _ = frame.completeChecksum()  // false when not TCP or UDP: nothing to fill in
            return frame
        }
    }
}
