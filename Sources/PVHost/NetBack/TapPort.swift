import Atomics
import Foundation
import PacketOffload
#if canImport(Glibc)
import Glibc
#endif
import PVSystem
import XenABI

/// A TAP device as a port of pvhost's switch: Linux's own network stack on the other side.
/// Frames Linux sends on the TAP go into the switch (a thread reads them, in batches);
/// frames switched to it are written to the TAP. With offloads (the default) partial
/// checksums and 64 KiB TCP segments cross as they are, in Linux's `virtio_net_hdr`; without,
/// checksums are filled in and segments cut first (``TapDevice``).
public final class TapPort: SwitchPort, @unchecked Sendable {
    public let name: String
    public var portName: String { "tap:\(name)" }
    private let device: TapDevice
    /// Weak: the switch holds its ports; the port holding it back would keep both alive.
    private weak var network: VirtualSwitch?
    private let stopSignal: EventFD
    /// Weak: a running Thread keeps itself alive, and its block holds this object; a strong
    /// reference here would keep both (and every descriptor this holds) after it ended.
    private weak var thread: Thread?
    /// Frames from Linux into the switch, frames from the switch to Linux, frames dropped.
    public let fromLinux = ManagedAtomic<Int>(0), toLinux = ManagedAtomic<Int>(0), dropped = ManagedAtomic<Int>(0)

    /// Why a TAP could not be opened.
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    /// Opens (creating) the TAP `name` in pvhost's network namespace, sets it up and joins the
    /// switch. With `namespace`, moves it into that network namespace first (`ip link set …
    /// netns`; the descriptor keeps working there). Needs CAP_NET_ADMIN.
    public static func open(name: String, namespace: String? = nil, offloads: Bool = true, network: VirtualSwitch) throws(Failure) -> TapPort {
        let device: TapDevice
        do { device = try TapDevice(name: name, offloads: offloads) } catch { throw Failure(description: error.description) }
        if let namespace {
            let status = Self.run("/usr/sbin/ip", ["link", "set", name, "netns", namespace])
                ?? Self.run("/sbin/ip", ["link", "set", name, "netns", namespace])
            guard status == 0 else {
                throw Failure(description: "moving TAP \(name) into network namespace \(namespace) failed (does `ip netns add \(namespace)` exist?)")
            }
        } else {
            do { try device.setUp() } catch { throw Failure(description: error.description) }
        }
        let stop: EventFD
        do { stop = try EventFD() } catch { throw Failure(description: "\(error)") }
        let port = TapPort(name: name, device: device, network: network, stopSignal: stop)
        network.attach(port)
        port.start()
        return port
    }

    private static func run(_ tool: String, _ arguments: [String]) -> Int32? {
        guard FileManager.default.isExecutableFile(atPath: tool) else { return nil }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: tool)
        process.arguments = arguments
        do { try process.run() } catch { return nil }
        process.waitUntilExit()
        return process.terminationStatus
    }

    private init(name: String, device: TapDevice, network: VirtualSwitch, stopSignal: EventFD) {
        self.name = name
        self.device = device
        self.network = network
        self.stopSignal = stopSignal
    }

    private func start() {
        let thread = Thread { [self] in readLoop() }
        thread.name = "tap \(name)"
        self.thread = thread
        thread.start()
    }

    /// Leaves the switch and stops reading (the device goes when pvhost closes it).
    public func stop() {
        network?.detach(self)
        try? stopSignal.notify()
        if let thread { while !thread.isFinished { usleep(200) } }
    }

    private func readLoop() {
        var fds = [pollfd(fd: stopSignal.fileDescriptor, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: device.fileDescriptor, events: Int16(POLLIN), revents: 0)]
        var buffer = [UInt8](repeating: 0, count: 65536 + 64)
        while true {
            fds[0].revents = 0
            fds[1].revents = 0
            guard poll(&fds, 2, -1) >= 0 || errno == EINTR else { return }
            if fds[0].revents != 0 { return }
            if fds[1].revents & Int16(POLLERR | POLLHUP | POLLNVAL) != 0 && fds[1].revents & Int16(POLLIN) == 0 { return }
            var batch: [Packet] = []
            while batch.count < 64, let packet = device.read(into: &buffer) { batch.append(packet) }
            if !batch.isEmpty {
                fromLinux.wrappingIncrement(by: batch.count, ordering: .relaxed)
                network?.forward(batch, from: self)
            }
        }
    }

    public func deliver(_ packets: [Packet]) {
        for packet in packets {
            if device.write(packet) { toLinux.wrappingIncrement(ordering: .relaxed) } else { dropped.wrappingIncrement(ordering: .relaxed) }
        }
    }
}
