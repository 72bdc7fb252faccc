import PVSystem
import PacketOffload
import Atomics
import XenABI

/// A TAP device carrying ``Packet``s: Linux's network stack on the other side of a
/// descriptor. With offloads (the default), frames carry Linux's `virtio_net_hdr`
/// (``VirtioNetHeader``): checksums Linux left partial arrive as ``Packet/checksumBlank``,
/// TCP segments up to 64 KiB as ``Packet/gso``. Without offloads, blank checksums are filled
/// in and segments cut before writing.
public final class TapDevice: Sendable {
    /// The descriptor and its system calls.
    public let interface: TapInterface
    /// Frames read that netif cannot carry (UDP segments, runts), skipped.
    public let unusableFrames = ManagedAtomic<Int>(0)

    public var name: String { interface.name }
    public var offloads: Bool { interface.virtioHeaders }
    public var fileDescriptor: Int32 { interface.fileDescriptor.rawValue }

    /// Opens (creating) TAP `name` in this process's network namespace (non-blocking reads).
    /// Needs CAP_NET_ADMIN.
    public init(name: String, offloads: Bool = true) throws(SystemError) {
        interface = try TapInterface(name: name, virtioHeaders: offloads)
    }

    /// Sets the device up in this namespace, with a MAC address when given.
    public func setUp(mac: MACAddress? = nil) throws(SystemError) {
        try interface.setUp(mac: mac.map { Array($0.bytes) })
    }

    /// Reads the next usable frame if one is waiting (nil when none is). `buffer` must hold
    /// 64 KiB and the header.
    public func read(into buffer: inout [UInt8]) throws(SystemError) -> Packet? {
        while true {
            let read = buffer.withUnsafeMutableBytes { bytes in Result { () throws(SystemError) in try interface.read(into: bytes) } }
            guard let count = try read.get() else { return nil }
            let frame = buffer[0..<count]
            if let packet = offloads ? VirtioNetHeader.packet(fromFrame: frame) : Packet(bytes: Array(frame)) { return packet }
            unusableFrames.wrappingIncrement(ordering: .relaxed)
        }
    }

    /// Writes a frame (a segmented one as several without offloads); false when Linux refused
    /// it or it is one Linux would not take.
    @discardableResult
    public func write(_ packet: Packet) throws(SystemError) -> Bool {
        guard offloads else {
            guard let frames = VirtioNetHeader.plainFrames(for: packet) else { return false }
            for frame in frames where !(try writeRaw(frame.bytes, header: [])) { return false }
            return true
        }
        var packet = packet
        guard let header = VirtioNetHeader.header(for: &packet) else { return false }
        return try writeRaw(packet.bytes, header: header)
    }

    private func writeRaw(_ bytes: [UInt8], header: [UInt8]) throws(SystemError) -> Bool {
        let written = header.withUnsafeBytes { head in
            bytes.withUnsafeBytes { body in Result { () throws(SystemError) in try interface.write(header: head, body: body) } }
        }
        return try written.get()
    }
}
