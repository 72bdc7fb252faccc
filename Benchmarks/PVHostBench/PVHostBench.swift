import Foundation
#if canImport(Glibc)
import Glibc
#endif
import PVHost
import SharedMemory
import XenABI
import XenGrants

/// pvhost's hypervisor operations, release build, medians of 7: grant map+unmap and grant copy
/// rates (the guest granting through its own mapping of its table), and an event-channel round
/// trip between two threads against the same round trip on two bare eventfds (the baseline:
/// what the kernel alone costs).
@main
struct PVHostBench {
    static func seconds(_ body: () throws -> Void) rethrows -> Double {
        var t0 = timespec(), t1 = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t0)
        try body()
        clock_gettime(CLOCK_MONOTONIC, &t1)
        return Double(t1.tv_sec - t0.tv_sec) + Double(t1.tv_nsec - t0.tv_nsec) / 1e9
    }

    static func median(_ runs: Int, _ body: () throws -> Double) rethrows -> Double {
        var values: [Double] = []
        for _ in 0..<runs { values.append(try body()) }
        return values.sorted()[runs / 2]
    }

    /// Ping-pong `count` times between this thread and a responder over two eventfds.
    static func pingPong(_ count: Int, ping: @escaping @Sendable () -> Void, waitPing: @escaping @Sendable () -> Void,
                         pong: @escaping @Sendable () -> Void, waitPong: @escaping @Sendable () -> Void) -> Double {
        let responder = Thread {
            for _ in 0..<count { waitPing(); pong() }
        }
        responder.start()
        let t = seconds { for _ in 0..<count { ping(); waitPong() } }
        while !responder.isFinished { usleep(100) }
        return Double(count) / t
    }

    static func main() throws {
        let quick = CommandLine.arguments.contains("--quick")
        let runs = quick ? 3 : 7
        let hv = Hypervisor()
        let guest = try hv.createDomain(name: "bench")
        let guestView = try SharedMemoryRegion(mapping: dup(guest.grantFrames.fileDescriptor), byteCount: guest.grantFrames.byteCount)
        let table = SharedGrantTable(base: guestView.baseAddress, frames: guest.limits.grantFrames)
        for ref in 8..<72 { table.grant(GrantRef(UInt32(ref)), to: .dom0, frame: UInt32(ref), readOnly: false) }
        let n = quick ? 50_000 : 500_000

        let maps = try median(runs) {
            try Double(n) / seconds {
                for i in 0..<n {
                    let mapping = try hv.mapGrant(GrantRef(UInt32(8 + i % 64)), of: guest.id, by: .dom0, writable: true)
                    try hv.unmapGrant(mapping.handle, by: .dom0)
                }
            }
        }
        var buffer = [UInt8](repeating: 0, count: 512)
        let copies = try median(runs) {
            try Double(n) / seconds {
                for i in 0..<n {
                    try buffer.withUnsafeMutableBytes { try hv.copyGrant(GrantRef(UInt32(8 + i % 64)), of: guest.id, by: .dom0, offset: 0, into: $0) }
                }
            }
        }
        let trips = quick ? 20_000 : 100_000
        let (port, guestEnd) = try hv.allocUnbound(guest.id, remote: .dom0)
        let (backendPort, backendEnd) = try hv.bindInterdomain(.dom0, remote: guest.id, remotePort: port)
        let channel = median(runs) {
            pingPong(trips, ping: { try? hv.notify(.dom0, backendPort) }, waitPing: { _ = try? guestEnd.delivery.wait() },
                     pong: { try? guestEnd.peer.notify() }, waitPong: { _ = try? backendEnd.delivery.wait() })
        }
        let a = try EventFD(), b = try EventFD()
        let bare = median(runs) {
            pingPong(trips, ping: { try? a.notify() }, waitPing: { _ = try? a.wait() }, pong: { try? b.notify() }, waitPong: { _ = try? b.wait() })
        }
        print("pvhost hypervisor operations (release, medians of \(runs))")
        print(String(format: "grant map + unmap (writable)      %10.0f /s   (%.0f ns each)", maps, 1e9 / maps))
        print(String(format: "grant copy, 512 bytes             %10.0f /s   (%.0f ns each)", copies, 1e9 / copies))
        print(String(format: "event channel round trip          %10.0f /s   (%.1f µs)", channel, 1e6 / channel))
        print(String(format: "bare eventfd round trip (baseline)%10.0f /s   (%.1f µs)   ratio %.2f×", bare, 1e6 / bare, channel / bare))
    }
}
