import Atomics
import Foundation
import PacketOffload
#if canImport(Glibc)
import Glibc
#endif
import PVSystem

/// Joins a ``NetFront`` to a TAP device in this process's network namespace, so Linux's own
/// network stack runs over the PV path: frames Linux sends on the TAP go out on the
/// interface's tx rings, frames received on it are written to the TAP. The TAP takes the
/// interface's MAC address, so the backend's view of the guest and Linux's agree. Linux's
/// partial checksums and 64 KiB TCP segments become netif's `csum_blank` and GSO extras when
/// the interface negotiated them (the TAP is opened with offloads only then).
public final class TapBridge: @unchecked Sendable {
    public let name: String
    private let device: TapDevice
    private let nic: NetFront
    private let stopSignal: EventFD
    private var reader: Thread?
    private var writer: Task<Void, Never>?
    /// Frames Linux sent (out on the rings), frames written to Linux, frames lost either way.
    public let toGuestNetwork = ManagedAtomic<Int>(0), toLinux = ManagedAtomic<Int>(0), lost = ManagedAtomic<Int>(0)

    /// Opens (creating) TAP `name`, gives it the interface's MAC address, sets it up, and
    /// starts moving frames both ways. Needs CAP_NET_ADMIN.
    public init(nic: NetFront, tap name: String) throws(NetFrontError) {
        let features = nic.info.features
        // Offloads only when the interface can carry them (GSO needs scatter-gather too).
        let offloads = features.checksumOffload && features.gsoTCPv4 && features.gsoTCPv6
        do {
            device = try TapDevice(name: name, offloads: offloads)
            try device.setUp(mac: nic.info.mac)
            stopSignal = try EventFD()
        } catch let error as TapDevice.Failure {
            throw .platform(error.description)
        } catch {
            throw .platform("\(error)")
        }
        self.name = name
        self.nic = nic
        let reader = Thread { [self] in readLoop() }
        reader.name = "tap \(name) → netfront"
        self.reader = reader
        reader.start()
        writer = Task { [self] in await writeLoop() }
    }

    /// Stops both directions (the TAP goes when the process closes it).
    public func stop() async {
        try? stopSignal.notify()
        writer?.cancel()
        if let reader { while !reader.isFinished { try? await Task.sleep(for: .milliseconds(1)) } }
    }

    /// Received frames to Linux, until the interface closes.
    private func writeLoop() async {
        while !Task.isCancelled {
            guard let frames = try? await nic.receive(max: 64) else { return }
            for frame in frames {
                let packet = Packet(bytes: frame.bytes, checksumBlank: frame.checksumBlank, dataValidated: frame.checksumValidated,
                                    gso: frame.gso.map { ($0.type, $0.size) })
                if device.write(packet) { toLinux.wrappingIncrement(ordering: .relaxed) } else { lost.wrappingIncrement(ordering: .relaxed) }
            }
        }
    }

    /// Linux's frames to the rings, in batches (a thread of its own: reading the TAP blocks).
    private func readLoop() {
        var fds = [pollfd(fd: stopSignal.fileDescriptor, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: device.fileDescriptor, events: Int16(POLLIN), revents: 0)]
        var buffer = [UInt8](repeating: 0, count: 65536 + 64)
        let nic = self.nic
        let largest = nic.info.features.maxFrameBytes
        while true {
            fds[0].revents = 0
            fds[1].revents = 0
            guard poll(&fds, 2, -1) >= 0 || errno == EINTR else { return }
            if fds[0].revents != 0 { return }
            var batch: [NetFrame] = []
            while batch.count < 64, let packet = device.read(into: &buffer) {
                // A segment over what netif carries (64 KiB − 1 with its Ethernet header) is cut here.
                for piece in packet.bytes.count > largest ? (packet.segmented() ?? []) : [packet] {
                    batch.append(NetFrame(bytes: piece.bytes, checksumBlank: piece.checksumBlank, checksumValidated: piece.dataValidated,
                                          gso: piece.gso.map { NetFrame.GSO(type: $0.type, size: $0.size) }))
                }
            }
            guard !batch.isEmpty else { continue }
            let frames = batch
            let done = DispatchSemaphore(value: 0)
            let sent = ManagedAtomic<Bool>(false)
            Task {
                do {
                    try await nic.send(frames)
                    sent.store(true, ordering: .relaxed)
                } catch {}
                done.signal()
            }
            done.wait()
            if sent.load(ordering: .relaxed) { toGuestNetwork.wrappingIncrement(by: frames.count, ordering: .relaxed) } else { lost.wrappingIncrement(by: frames.count, ordering: .relaxed) }
        }
    }
}
