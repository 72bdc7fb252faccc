import Foundation
import XenABI

/// Frames per second from one interface to another (guest to guest through a backend's
/// switch): the sender streams batches of equal frames, the receiver counts what arrives.
/// Used by `pvnet bench` and `pvhost-bench --net`.
public enum NetBenchmark {
    public struct Result: Sendable {
        /// Frames that arrived, and in how long (from the first send to the last arrival).
        public let frames: Int
        public let seconds: Double
        public let size: Int
        /// Notifications the two guests sent, per frame that arrived.
        public let notificationsPerFrame: Double
        public var pps: Double { Double(frames) / seconds }
        public var gbits: Double { Double(frames) * Double(size) * 8 / seconds / 1e9 }
    }

    /// How the receiver takes its frames.
    public enum Receiving: Sendable {
        /// `receive(max:)`: whatever has arrived, up to `max` per call.
        case batches(max: Int)
        /// `for try await frame in nic.frames`, one frame per step.
        case frames
    }

    /// Streams `size`-byte frames from `sender` to `receiver` for `seconds`, `batch` per send
    /// call (as GSO TCPv4 segments with `gso`).
    public static func run(
        sender: NetFront, receiver: NetFront, size: Int, batch: Int, seconds: Double, gso: Bool = false, receiving: Receiving = .batches(max: 4096)
    ) async throws(NetFrontError) -> Result {
        let to = receiver.info.mac, from = sender.info.mac
        var header = to.bytes + from.bytes + [0x08, 0x00]
        header += [UInt8](repeating: 0, count: max(0, size - header.count))
        let frame = NetFrame(bytes: Array(header.prefix(max(size, 14))), checksumBlank: gso, gso: gso ? .init(type: .tcpv4, size: 1448) : nil)
        let frames = Array(repeating: frame, count: max(batch, 1))
        // The switch learns the receiver's port (else every frame floods).
        try await receiver.send(NetFrame(bytes: from.bytes + to.bytes + [0x88, 0xB5] + [UInt8](repeating: 0, count: 46)))
        try? await Task.sleep(for: .milliseconds(50))
        _ = sender.poll(max: 1 << 20)
        _ = receiver.poll(max: 1 << 20)
        let before = sender.statistics.notificationsSent + receiver.statistics.notificationsSent
        let clock = ContinuousClock()
        let start = clock.now
        let deadline = start + .milliseconds(Int(seconds * 1000))
        let counting = Task { () -> (Int, ContinuousClock.Instant) in
            var count = 0
            var last = clock.now
            // An error (the device closed, or cancelled) ends the count.
            switch receiving {
            case let .batches(max):
                while !Task.isCancelled, last <= deadline + .milliseconds(200) {
                    do { count += try await receiver.receive(max: max).count } catch { break }
                    last = clock.now
                }
            case .frames:
                var frames = receiver.frames.makeAsyncIterator()
                while !Task.isCancelled, last <= deadline + .milliseconds(200) {
                    do {
                        guard try await frames.next() != nil else { break }
                    } catch { break }
                    count += 1
                    last = clock.now
                }
            }
            return (count, last)
        }
        var sent = 0
        while clock.now < deadline {
            try await sender.send(frames)
            sent += frames.count
        }
        // Let the last frames arrive, then stop counting.
        try? await Task.sleep(for: .milliseconds(300))
        counting.cancel()
        // One more frame wakes the counter if it is waiting (it sees the cancellation, not the frame).
        try? await sender.send(frame)
        let (count, last) = await counting.value
        let notifications = sender.statistics.notificationsSent + receiver.statistics.notificationsSent - before
        let elapsed = last - start
        return Result(
            frames: count, seconds: Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18,
            size: size, notificationsPerFrame: count == 0 ? 0 : Double(notifications) / Double(count))
    }
}
