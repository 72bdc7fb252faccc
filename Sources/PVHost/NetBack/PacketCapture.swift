import Foundation
import PacketOffload
import PVSystem
#if canImport(Glibc)
    import Glibc
#endif

/// A pcap file (the classic format tcpdump, tshark and Wireshark read: microsecond time
/// stamps, Ethernet link type) that the switch writes frames into.
final class PacketCapture: @unchecked Sendable {  // @unchecked: writes under `lock`
    let path: String
    private let fd: Int32
    private let lock = NSLock()
    private(set) var frames = 0

    /// Creates (truncating) `path` and writes the file header.
    init(path: String) throws(SystemError) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw SystemError("open", errno: errno, context: path) }
        self.fd = fd
        self.path = path
        var header = [UInt8]()
        for (value, bytes) in [(0xA1B2_C3D4 as UInt32, 4), (2, 2), (4, 2), (0, 4), (0, 4), (65535, 4), (1, 4)] as [(UInt32, Int)] {
            header += (0..<bytes).map { UInt8(truncatingIfNeeded: value >> (8 * $0)) }
        }
        _ = header.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    }

    deinit { close(fd) }

    /// Appends frames, each with the time now.
    func record(_ packets: [Packet]) {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var out = [UInt8]()
        for packet in packets {
            let length = UInt32(packet.bytes.count)
            for value in [UInt32(truncatingIfNeeded: now.tv_sec), UInt32(now.tv_nsec / 1000), length, length] {
                out += (0..<4).map { UInt8(truncatingIfNeeded: value >> (8 * $0)) }
            }
            out += packet.bytes
        }
        lock.withLock {
            _ = out.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            frames += packets.count
        }
    }
}
