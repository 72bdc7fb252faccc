import Atomics
import CLinux
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import SharedMemory

/// Joins a ``NetFront`` to a TAP device in this process's network namespace, so Linux's own
/// network stack runs over the PV path: frames Linux sends on the TAP go out on the
/// interface's tx rings, frames received on it are written to the TAP. The TAP takes the
/// interface's MAC address, so the backend's view of the guest and Linux's agree.
public final class TapBridge: @unchecked Sendable {
    public let name: String
    private let fd: Int32
    private let nic: NetFront
    private let stopSignal: EventFD
    private var reader: Thread?
    private var writer: Task<Void, Never>?
    /// Frames Linux sent (out on the rings), frames written to Linux, frames lost either way.
    public let toGuestNetwork = ManagedAtomic<Int>(0), toLinux = ManagedAtomic<Int>(0), lost = ManagedAtomic<Int>(0)

    /// Opens (creating) TAP `name`, gives it the interface's MAC address, sets it up, and
    /// starts moving frames both ways. Needs CAP_NET_ADMIN.
    public init(nic: NetFront, tap name: String) throws(NetFrontError) {
        guard !name.isEmpty, name.utf8.count < 16 else { throw .platform("TAP name \"\(name)\" must be 1…15 bytes") }
        let fd = pvkit_tap_open(name)
        guard fd >= 0 else {
            throw .platform("opening TAP \(name): \(String(cString: strerror(errno))) (needs /dev/net/tun and CAP_NET_ADMIN)")
        }
        let mac = nic.info.mac.bytes
        guard pvkit_link_up(name, mac) == 0 else {
            let why = String(cString: strerror(errno))
            close(fd)
            throw .platform("setting TAP \(name) up with address \(nic.info.mac): \(why)")
        }
        do { stopSignal = try EventFD() } catch {
            close(fd)
            throw .platform("\(error)")
        }
        self.fd = fd
        self.name = name
        self.nic = nic
        let reader = Thread { [self] in readLoop() }
        reader.name = "tap \(name) → netfront"
        self.reader = reader
        reader.start()
        writer = Task { [self] in await writeLoop() }
    }

    deinit { close(fd) }

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
                let written = frame.bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
                if written == frame.bytes.count { toLinux.wrappingIncrement(ordering: .relaxed) } else { lost.wrappingIncrement(ordering: .relaxed) }
            }
        }
    }

    /// Linux's frames to the rings, in batches (a thread of its own: reading the TAP blocks).
    private func readLoop() {
        var fds = [pollfd(fd: stopSignal.fileDescriptor, events: Int16(POLLIN), revents: 0), pollfd(fd: fd, events: Int16(POLLIN), revents: 0)]
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        var buffer = [UInt8](repeating: 0, count: 65536 + 64)
        let nic = self.nic
        while true {
            fds[0].revents = 0
            fds[1].revents = 0
            guard poll(&fds, 2, -1) >= 0 || errno == EINTR else { return }
            if fds[0].revents != 0 { return }
            var batch: [NetFrame] = []
            while batch.count < 64 {
                let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                guard count > 0 else { break }
                batch.append(NetFrame(bytes: Array(buffer[0..<count])))
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
