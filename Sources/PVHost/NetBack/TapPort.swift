import Atomics
import PacketOffload
import PacketTap
import PVSystem
import Synchronization
import XenABI

/// A TAP device as a port of pvhost's switch: Linux's own network stack on the other side.
/// Frames Linux sends on the TAP go into the switch (read in batches by the handler of its
/// registration on one of pvhost's event loops); frames switched to it are written to the TAP. With offloads (the default) partial
/// checksums and 64 KiB TCP segments cross as they are, in Linux's `virtio_net_hdr`; without,
/// checksums are filled in and segments cut first (``TapDevice``).
public final class TapPort: SwitchPort, Sendable {
    public let name: String
    public var portName: String { "tap:\(name)" }
    private let device: TapDevice
    /// Weak: the switch holds its ports; the port holding it back would keep both alive.
    private weak let network: VirtualSwitch?
    private let registration = Locked<EventLoop.Registration?>(nil)
    /// Frames from Linux into the switch, frames from the switch to Linux, frames dropped.
    public let fromLinux = ManagedAtomic<Int>(0), toLinux = ManagedAtomic<Int>(0), dropped = ManagedAtomic<Int>(0)
    /// The last failed read or write on the TAP.
    public let lastError = Locked<SystemError?>(nil)

    /// Why a TAP could not be opened.
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
        /// The system call that failed, when one did.
        public let cause: SystemError?

        init(description: String, cause: SystemError? = nil) {
            self.description = description
            self.cause = cause
        }
    }

    /// Opens (creating) the TAP `name` in pvhost's network namespace, sets it up and joins the
    /// switch. With `namespace`, moves it into that network namespace first (`ip link set …
    /// netns`; the descriptor keeps working there). Needs CAP_NET_ADMIN.
    public static func open(
        name: String, namespace: String? = nil, offloads: Bool = true, network: VirtualSwitch,
        loop: EventLoop = Hypervisor.sharedLoops.next()
    ) throws(Failure) -> TapPort {
        let device: TapDevice
        do { device = try TapDevice(name: name, offloads: offloads) } catch { throw Failure(description: error.description, cause: error) }
        if let namespace {
            let status =
                Self.run("/usr/sbin/ip", ["link", "set", name, "netns", namespace])
                ?? Self.run("/sbin/ip", ["link", "set", name, "netns", namespace])
            guard status == 0 else {
                throw Failure(description: "moving TAP \(name) into network namespace \(namespace) failed (does `ip netns add \(namespace)` exist?)")
            }
        } else {
            do { try device.setUp() } catch { throw Failure(description: error.description, cause: error) }
        }
        let port = TapPort(name: name, device: device, network: network)
        network.attach(port)
        do {
            let made = try loop.register(device.fileDescriptor, name: "TAP \(name)", owner: device) { [weak port] events in
                port?.readFromLinux(events) ?? .wait
            }
            port.registration.withLock { $0 = made }
        } catch {
            network.detach(port)
            throw Failure(description: "watching TAP \(name): \(error)", cause: error)
        }
        return port
    }

    /// Runs `tool` to its end; nil when it is not there or could not start.
    private static func run(_ tool: String, _ arguments: [String]) -> Int32? {
        guard ChildProcess.isExecutable(tool) else { return nil }
        return try? ChildProcess(path: tool, arguments: arguments).waitForExit()
    }

    private init(name: String, device: TapDevice, network: VirtualSwitch) {
        self.name = name
        self.device = device
        self.network = network
    }

    /// Leaves the switch and stops reading (the device goes once the loop lets go of it).
    public func stop() {
        network?.detach(self)
        registration.withLock { $0 }?.cancel()
    }

    /// Scratch of the handler (the loop's thread only).
    /// Where frames are read (on the loop thread; the lock is never contended).
    private let buffer = Locked([UInt8](repeating: 0, count: 65536 + 64))

    /// The TAP is readable (or gone): a batch of Linux's frames into the switch.
    private func readFromLinux(_ events: EventLoop.Readiness) -> EventLoop.Next {
        if !events.isDisjoint(with: [.error, .hangUp]) && !events.contains(.readable) {
            registration.withLock { $0 }?.cancel()
            return .wait
        }
        var batch: [Packet] = []
        do {
            try buffer.withLock { (buffer) throws(SystemError) in
                while batch.count < 64, let packet = try device.read(into: &buffer) { batch.append(packet) }
            }
        } catch {
            lastError.withLock { $0 = error }
        }
        if !batch.isEmpty {
            fromLinux.wrappingIncrement(by: batch.count, ordering: .relaxed)
            network?.forward(batch, from: self)
        }
        return .wait
    }

    public func deliver(_ packets: [Packet]) {
        for packet in packets {
            do {
                if try device.write(packet) { toLinux.wrappingIncrement(ordering: .relaxed) } else { dropped.wrappingIncrement(ordering: .relaxed) }
            } catch {
                dropped.wrappingIncrement(ordering: .relaxed)
                lastError.withLock { $0 = error }
            }
        }
    }
}
