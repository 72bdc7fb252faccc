import PacketOffload
import PVSystem

/// A pcap file (the classic format tcpdump, tshark and Wireshark read: microsecond time
/// stamps, Ethernet link type) that the switch writes frames into.
final class PacketCapture: Sendable {
    var path: String { file.path }
    private let file: OutputFile
    /// Frames written, and the last write that failed (its frames are not in the file).
    private let state = Locked<(frames: Int, lastError: SystemError?)>((0, nil))

    var frames: Int { state.withLock { $0.frames } }
    var lastError: SystemError? { state.withLock { $0.lastError } }

    /// Creates (truncating) `path` and writes the file header.
    init(path: String) throws(SystemError) {
        file = try OutputFile(creating: path)
        var header = [UInt8]()
        for (value, bytes) in [(0xA1B2_C3D4 as UInt32, 4), (2, 2), (4, 2), (0, 4), (0, 4), (65535, 4), (1, 4)] as [(UInt32, Int)] {
            header += (0..<bytes).map { UInt8(truncatingIfNeeded: value >> (8 * $0)) }
        }
        try file.append(header)
    }

    /// Appends frames, each with the time now.
    func record(_ packets: [Packet]) {
        let now = WallClock.now()
        var out = [UInt8]()
        for packet in packets {
            let length = UInt32(truncatingIfNeeded: packet.bytes.count)
            for value in [UInt32(truncatingIfNeeded: now.seconds), UInt32(truncatingIfNeeded: now.microseconds), length, length] {
                out += (0..<4).map { UInt8(truncatingIfNeeded: value >> (8 * $0)) }
            }
            out += packet.bytes
        }
        state.withLock { state in
            do throws(SystemError) {
                try file.append(out)
                state.frames += packets.count
            } catch {
                state.lastError = error
            }
        }
    }
}
