import CLinux
import Foundation
#if canImport(Glibc)
    import Glibc
#endif
import XenABI

/// A TAP device: Linux's network stack on the other side of a file descriptor. With offloads
/// (the default), frames carry Linux's `virtio_net_hdr`: checksums Linux left partial arrive
/// as ``Packet/checksumBlank``, TCP segments up to 64 KiB as ``Packet/gso`` — netif's own
/// offloads, so neither side computes a checksum or cuts a segment in between. Without
/// offloads, blank checksums are filled in and segments cut before writing.
public final class TapDevice: @unchecked Sendable {
    public let name: String
    public let offloads: Bool
    public let fileDescriptor: Int32
    /// `virtio_net_hdr`: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset.
    static let headerSize = 10

    /// What went wrong, with what to do.
    public struct Failure: Error, CustomStringConvertible { public let description: String }

    /// Opens (creating) TAP `name` in this process's network namespace (non-blocking reads).
    /// Needs CAP_NET_ADMIN.
    public init(name: String, offloads: Bool = true) throws(Failure) {
        guard !name.isEmpty, name.utf8.count < 16 else { throw Failure(description: "TAP name \"\(name)\" must be 1…15 bytes") }
        let fd = pvkit_tap_open(name, offloads ? 1 : 0)
        guard fd >= 0 else {
            throw Failure(description: "opening TAP \(name): \(String(cString: strerror(errno))) (needs /dev/net/tun and CAP_NET_ADMIN: run as root)")
        }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        self.name = name
        self.offloads = offloads
        fileDescriptor = fd
    }

    deinit { close(fileDescriptor) }

    /// Sets the device up in this namespace, with a MAC address when given.
    public func setUp(mac: MACAddress? = nil) throws(Failure) {
        let result = mac.map { address in address.bytes.withUnsafeBufferPointer { pvkit_link_up(name, $0.baseAddress) } } ?? pvkit_link_up(name, nil)
        guard result == 0 else { throw Failure(description: "setting TAP \(name) up: \(String(cString: strerror(errno)))") }
    }

    /// Reads one frame if one is waiting (nil when none is, or on an error). `buffer` must hold
    /// 64 KiB and the header.
    public func read(into buffer: inout [UInt8]) -> Packet? {
        let count = buffer.withUnsafeMutableBytes { Glibc.read(fileDescriptor, $0.baseAddress, $0.count) }
        guard count > 0 else { return nil }
        guard offloads else { return Packet(bytes: Array(buffer[0..<count])) }
        guard count > Self.headerSize else { return nil }
        let flags = buffer[0], gsoType = buffer[1] & 0x7F  // without the ECN bit
        let gsoSize = UInt16(buffer[4]) | UInt16(buffer[5]) << 8
        var packet = Packet(bytes: Array(buffer[Self.headerSize..<count]))
        if flags & 1 != 0 { packet.checksumBlank = true; packet.dataValidated = true }  // NEEDS_CSUM
        if flags & 2 != 0 { packet.dataValidated = true }  // DATA_VALID
        switch gsoType {
        case 0: break
        case 1: packet.gso = (.tcpv4, gsoSize)
        case 4: packet.gso = (.tcpv6, gsoSize)
        default: return nil  // UDP segments: not enabled, never offered
        }
        return packet
    }

    /// Writes a frame (a segmented one as several); false when Linux refused it.
    @discardableResult
    public func write(_ packet: Packet) -> Bool {
        var packet = packet
        guard offloads else {
            if packet.gso != nil {
                guard let segments = packet.segmented() else { return false }
                return segments.allSatisfy { write($0) }
            }
            _ = packet.completeChecksum()  // not TCP or UDP: nothing to fill in
            return writeRaw(packet.bytes)
        }
        var header = [UInt8](repeating: 0, count: Self.headerSize)
        if packet.checksumBlank || packet.gso != nil {
            let partial = packet.bytes.withUnsafeMutableBytes { Checksum.preparePartial($0) }
            if let (start, offset) = partial {
                header[0] = 1  // NEEDS_CSUM
                header[6] = UInt8(start & 0xFF); header[7] = UInt8(start >> 8)
                header[8] = UInt8(offset & 0xFF); header[9] = UInt8(offset >> 8)
                if let gso = packet.gso {
                    let tcpLength = Int(packet.bytes[start + 12] >> 4) * 4
                    let headers = start + tcpLength
                    header[1] = gso.type == .tcpv6 ? 4 : 1
                    header[2] = UInt8(headers & 0xFF); header[3] = UInt8(headers >> 8)
                    header[4] = UInt8(gso.size & 0xFF); header[5] = UInt8(gso.size >> 8)
                }
            } else if packet.gso != nil {
                return false  // a segment that is not TCP: nothing Linux would take
            }
        } else if packet.dataValidated {
            header[0] = 2  // DATA_VALID
        }
        return writeRaw(packet.bytes, header: header)
    }

    /// One `writev`: the header (if any), then the frame, without joining them.
    private func writeRaw(_ bytes: [UInt8], header: [UInt8] = []) -> Bool {
        let written: Int = header.withUnsafeBytes { head in
            bytes.withUnsafeBytes { body in
                var vectors = [
                    iovec(iov_base: UnsafeMutableRawPointer(mutating: head.baseAddress), iov_len: head.count),
                    iovec(iov_base: UnsafeMutableRawPointer(mutating: body.baseAddress), iov_len: body.count)
                ]
                return vectors.withUnsafeMutableBufferPointer { list in
                    head.isEmpty ? writev(fileDescriptor, list.baseAddress! + 1, 1) : writev(fileDescriptor, list.baseAddress!, 2)
                }
            }
        }
        return written == header.count + bytes.count
    }
}
