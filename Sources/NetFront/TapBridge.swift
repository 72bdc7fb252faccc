import Atomics
import PacketOffload
import PacketTap
import PVSystem
import Synchronization

/// Joins a ``NetFront`` to a TAP device in this process's network namespace, so Linux's own
/// network stack runs over the PV path: frames Linux sends on the TAP go out on the
/// interface's tx rings, frames received on it are written to the TAP. The TAP takes the
/// interface's MAC address, so the backend's view of the guest and Linux's agree. Linux's
/// partial checksums and 64 KiB TCP segments become netif's `csum_blank` and GSO extras when
/// the interface negotiated them (the TAP is opened with offloads only then).
///
/// Both directions run on the event loop of the interface's first queue: the TAP descriptor is
/// watched there, and the task that writes received frames to Linux prefers that loop (frames
/// delivered by the queue's handler reach it without a hop).
public final class TapBridge: Sendable {
    public let name: String
    private let device: TapDevice
    private let nic: NetFront
    private let loop: EventLoop
    private let registration = Locked<EventLoop.Registration?>(nil)
    private let writer = Locked<Task<Void, Never>?>(nil)
    /// Frames Linux sent (out on the rings), frames written to Linux, frames lost either way.
    public let toGuestNetwork = ManagedAtomic<Int>(0), toLinux = ManagedAtomic<Int>(0), lost = ManagedAtomic<Int>(0)
    /// The last error either direction met (a TAP read or write, the interface ending).
    public let lastError = Locked<NetFrontError?>(nil)

    /// Opens (creating) TAP `name`, gives it the interface's MAC address, sets it up, and
    /// starts moving frames both ways. Needs CAP_NET_ADMIN.
    public init(nic: NetFront, tap name: String) throws(NetFrontError) {
        let features = nic.info.features
        // Offloads only when the interface can carry them (GSO needs scatter-gather too).
        let offloads = features.checksumOffload && features.gsoTCPv4 && features.gsoTCPv6
        let device: TapDevice
        do {
            device = try TapDevice(name: name, offloads: offloads)
            try device.setUp(mac: nic.info.mac)
        } catch {
            throw .system(error)
        }
        self.device = device
        self.name = name
        self.nic = nic
        loop = nic.eventLoops.first ?? EventLoopGroup.shared.next()
        // Registered watching nothing, then armed: the handler always finds its registration.
        let made: EventLoop.Registration
        do {
            made = try loop.register(device.fileDescriptor, events: [], name: "TAP \(name)", owner: device) { [weak self] _ in
                self?.readFromLinux() ?? .wait
            }
        } catch {
            throw .system(error)
        }
        registration.withLock { $0 = made }
        do { try made.modify(.readable) } catch {
            made.cancel()
            throw .system(error)
        }
        let task = Task(executorPreference: loop) { [weak self] in
            guard let self else { return }
            await self.writeToLinux()
        }
        writer.withLock { $0 = task }
    }

    /// Stops both directions (the TAP goes when the last reference to it does).
    public func stop() async {
        registration.withLock { $0 }?.cancel()
        let task = writer.withLock { $0 }
        task?.cancel()
        await task?.value
        await loop.submit {}  // the registration is out of the loop
    }

    /// Received frames to Linux, until the interface closes or the bridge stops.
    private func writeToLinux() async {
        while !Task.isCancelled {
            let frames: [NetFrame]
            do { frames = try await nic.receive(max: 64) } catch {
                if error != .cancelled { lastError.withLock { $0 = error } }
                return
            }
            for frame in frames {
                let packet = Packet(
                    bytes: frame.bytes, checksumBlank: frame.checksumBlank, dataValidated: frame.checksumValidated,
                    gso: frame.gso.map { ($0.type, $0.size) })
                do {
                    if try device.write(packet) { toLinux.wrappingIncrement(ordering: .relaxed) } else { lost.wrappingIncrement(ordering: .relaxed) }
                } catch {
                    lost.wrappingIncrement(ordering: .relaxed)
                    lastError.withLock { $0 = .system(error) }
                }
            }
        }
    }

    /// The TAP is readable: a batch of Linux's frames to the rings. The TAP is not watched
    /// while the batch waits for ring space (back-pressure on Linux, not a growing queue).
    private func readFromLinux() -> EventLoop.Next {
        var buffer = [UInt8](repeating: 0, count: 65536 + 64)
        let largest = nic.info.features.maxFrameBytes
        var batch: [NetFrame] = []
        while batch.count < 64 {
            let read: Packet?
            do { read = try device.read(into: &buffer) } catch {
                lastError.withLock { $0 = .system(error) }
                break
            }
            guard let packet = read else { break }
            // A segment over what netif carries (64 KiB − 1 with its Ethernet header) is cut here.
            for piece in packet.bytes.count > largest ? (packet.segmented() ?? []) : [packet] {
                batch.append(
                    NetFrame(
                        bytes: piece.bytes, checksumBlank: piece.checksumBlank, checksumValidated: piece.dataValidated,
                        gso: piece.gso.map { NetFrame.GSO(type: $0.type, size: $0.size) }))
            }
        }
        guard !batch.isEmpty, let registration = registration.withLock({ $0 }) else { return .wait }
        let frames = batch
        do { try registration.modify([]) } catch {
            // The registration is being cancelled: the bridge stops.
            lost.wrappingIncrement(by: frames.count, ordering: .relaxed)
            return .wait
        }
        Task(executorPreference: loop) { [self] in
            do {
                try await nic.send(frames)
                toGuestNetwork.wrappingIncrement(by: frames.count, ordering: .relaxed)
            } catch {
                lost.wrappingIncrement(by: frames.count, ordering: .relaxed)
            }
            // Watched again (a cancelled registration ignores this).
            try? registration.modify(.readable)
        }
        return .wait
    }
}
