import Foundation
#if canImport(Glibc)
import Glibc
#endif
import BlockFront
import PVHost
import PVPlatform
import SharedMemory
import XenStore
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

    static func main() async throws {
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
        try await block(quick: quick, runs: runs)
    }

    /// BlockFront through pvhost's blkback against `pread` on the same file (page cache warm).
    static func block(quick: Bool, runs: Int) async throws {
        let directory = NSTemporaryDirectory() + "pvhost-bench-\(getpid())"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let size = 64 << 20
        let path = directory + "/disk.img"
        FileManager.default.createFile(atPath: path, contents: Data((0..<size).lazy.map { UInt8(truncatingIfNeeded: $0 >> 12) }))
        let daemon = try XenStoreDaemon(path: directory + "/xs")
        Thread { daemon.run() }.start()
        let store = try XenStoreClient.connect(XenStoreLocation(environment: ["XENSTORED_PATH": directory + "/xs"]))
        let toolstack = Toolstack(hypervisor: Hypervisor(), xenstored: daemon, store: store)
        let server = try ControlServer(path: directory + "/control", toolstack: toolstack)
        Thread { server.run() }.start()
        defer { server.stop(); daemon.stop() }
        var limits = Domain.Limits()
        limits.pages = 4096
        let guest = try ReferencePlatform.attach(socket: directory + "/control", name: "bench", pages: limits.pages)
        let device = Toolstack.Device(type: "vbd", frontend: guest.domain, devid: 51712)
        try await toolstack.addDevice(device)
        let backend = try await BlockBackend.start(toolstack: toolstack, device: device, path: path)
        let disk = try await BlockFront.connect(platform: guest, store: try guest.xenstore(), id: 51712)

        let megabyte = 1 << 20
        let passes = quick ? 1 : 4
        var blockRates: [Double] = [], preadRates: [Double] = []
        let fd = open(path, O_RDONLY)
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: megabyte)
        for _ in 0..<runs {
            let t1 = try await asyncSeconds {
                for _ in 0..<passes { for m in 0..<(size / megabyte) { _ = try await disk.read(sector: UInt64(m * megabyte / 512), count: megabyte) } }
            }
            blockRates.append(Double(passes * size) / t1 / Double(megabyte))
            let t2 = seconds {
                for _ in 0..<passes { for m in 0..<(size / megabyte) { _ = pread(fd, &buffer, megabyte, off_t(m * megabyte)) } }
            }
            preadRates.append(Double(passes * size) / t2 / Double(megabyte))
        }
        let served0 = backend.served
        let sent0 = toolstack.hypervisor.status.notificationsSent
        let blockMiB = blockRates.sorted()[runs / 2], preadMiB = preadRates.sorted()[runs / 2]
        // 4 KiB random reads, 32 at a time, against pread on 32 threads.
        let reads = quick ? 4_000 : 40_000
        var random: [Double] = [], threaded: [Double] = []
        for _ in 0..<runs {
            let t1 = try await asyncSeconds {
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for worker in 0..<32 {
                        group.addTask {
                            var state = UInt64(worker + 1) &* 0x9E37_79B9_7F4A_7C15
                            for _ in 0..<(reads / 32) {
                                state ^= state << 13; state ^= state >> 7; state ^= state << 17
                                _ = try await disk.read(sector: (state % UInt64(size / 4096)) * 8, count: 4096)
                            }
                        }
                    }
                    try await group.waitForAll()
                }
            }
            random.append(Double(reads) / t1)
            let done = DispatchSemaphore(value: 0)
            let t2 = seconds {
                for worker in 0..<32 {
                    Thread {
                        var local = [UInt8](repeating: 0, count: 4096)
                        var state = UInt64(worker + 1) &* 0x9E37_79B9_7F4A_7C15
                        for _ in 0..<(reads / 32) {
                            state ^= state << 13; state ^= state >> 7; state ^= state << 17
                            _ = pread(fd, &local, 4096, off_t((state % UInt64(size / 4096)) * 4096))
                        }
                        done.signal()
                    }.start()
                }
                for _ in 0..<32 { done.wait() }
            }
            threaded.append(Double(reads) / t2)
        }
        let requests = backend.served - served0
        let notifications = toolstack.hypervisor.status.notificationsSent - sent0
        let blockIOPS = random.sorted()[runs / 2], preadIOPS = threaded.sorted()[runs / 2]
        print("")
        print("blkfront ↔ pvhost blkback (one ring page, one queue), page cache warm, medians of \(runs)")
        print(String(format: "sequential 1 MiB reads   BlockFront %8.0f MiB/s   pread loop %8.0f MiB/s   ratio %.2f×", blockMiB, preadMiB, blockMiB / preadMiB))
        print(String(format: "4 KiB random reads, QD32 BlockFront %8.0f IOPS    pread × 32 %8.0f IOPS    ratio %.2f×", blockIOPS, preadIOPS, blockIOPS / preadIOPS))
        print(String(format: "backend notifications per request (random reads): %.3f", Double(notifications) / Double(max(requests, 1))))
        await disk.close()
        await backend.stop()
    }

    static func asyncSeconds(_ body: () async throws -> Void) async rethrows -> Double {
        var t0 = timespec(), t1 = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t0)
        try await body()
        clock_gettime(CLOCK_MONOTONIC, &t1)
        return Double(t1.tv_sec - t0.tv_sec) + Double(t1.tv_nsec - t0.tv_nsec) / 1e9
    }
}
