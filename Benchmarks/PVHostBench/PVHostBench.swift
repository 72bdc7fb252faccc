import Foundation
#if canImport(Glibc)
    import Glibc
#endif
import BlockFront
import PVHost
import PVPlatform
import PVSystem
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
    static func pingPong(
        _ count: Int, ping: @escaping @Sendable () -> Void, waitPing: @escaping @Sendable () -> Void,
        pong: @escaping @Sendable () -> Void, waitPong: @escaping @Sendable () -> Void
    ) -> Double {
        let done = DispatchSemaphore(value: 0)
        let responder = Thread {
            for _ in 0..<count { waitPing(); pong() }
            done.signal()
        }
        responder.start()
        let t = seconds { for _ in 0..<count { ping(); waitPong() } }
        done.wait()  // the responder's last pong was waited for above: this returns at once
        return Double(count) / t
    }

    static func main() async throws {
        let quick = CommandLine.arguments.contains("--quick")
        let runs = quick ? 3 : 7
        if CommandLine.arguments.contains("--block") { return try await block(quick: quick, runs: runs) }
        if CommandLine.arguments.contains("--net") { return try await net(quick: quick, runs: runs) }
        if CommandLine.arguments.contains("--nbd") { return try await nbd(quick: quick, runs: runs) }
        let hv = Hypervisor()
        let guest = try hv.createDomain(name: "bench")
        let guestView = try SharedMemoryRegion(mapping: dup(guest.grantFrames.fileDescriptor), byteCount: guest.grantFrames.byteCount)
        let table = SharedGrantTable(base: guestView.baseAddress, frames: guest.limits.grantFrames)
        for ref in 8..<72 { table.grant(GrantRef(UInt32(ref)), to: .dom0, frame: UInt32(ref), readOnly: false) }
        let n = quick ? 50_000 : 500_000

        let maps = try median(runs) {
            try Double(n)
                / seconds {
                    for i in 0..<n {
                        let mapping = try hv.mapGrant(GrantRef(UInt32(8 + i % 64)), of: guest.id, by: .dom0, writable: true)
                        try hv.unmapGrant(mapping.handle, by: .dom0)
                    }
                }
        }
        var buffer = [UInt8](repeating: 0, count: 512)
        let copies = try median(runs) {
            try Double(n)
                / seconds {
                    for i in 0..<n {
                        try buffer.withUnsafeMutableBytes { try hv.copyGrant(GrantRef(UInt32(8 + i % 64)), of: guest.id, by: .dom0, offset: 0, into: $0) }
                    }
                }
        }
        let trips = quick ? 20_000 : 100_000
        let (port, guestEnd) = try hv.allocUnbound(guest.id, remote: .dom0)
        let (backendPort, backendEnd) = try hv.bindInterdomain(.dom0, remote: guest.id, remotePort: port)
        let channel = median(runs) {
            pingPong(
                trips, ping: { try? hv.notify(.dom0, backendPort) }, waitPing: { _ = try? guestEnd.delivery.wait() },
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
        try await net(quick: quick, runs: runs)
        try await nbd(quick: quick, runs: runs)
    }

    /// BlockFront through pvhost's blkback against `pread` on the same file (page cache warm),
    /// with every feature on, then with one feature off at a time.
    static func block(quick: Bool, runs: Int) async throws {
        let directory = NSTemporaryDirectory() + "pvhost-bench-\(getpid())"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let size = 64 << 20
        let path = directory + "/disk.img"
        _ = FileManager.default.createFile(atPath: path, contents: Data((0..<size).lazy.map { UInt8(truncatingIfNeeded: $0 >> 12) }))
        let daemon = try XenStoreDaemon(path: directory + "/xs")
        try daemon.start()
        let store = try XenStoreClient.connect(XenStoreLocation(environment: ["XENSTORED_PATH": directory + "/xs"]))
        let toolstack = Toolstack(hypervisor: Hypervisor(), xenstored: daemon, store: store)
        let server = try ControlServer(path: directory + "/control", toolstack: toolstack)
        try server.start()
        defer { server.stop() }

        let passes = quick ? 1 : 4
        let reads = quick ? 4_000 : 200_000
        // `--only TEXT`: the rows whose label contains TEXT (for profiling one configuration).
        let only = CommandLine.arguments.firstIndex(of: "--only").flatMap { CommandLine.arguments.dropFirst($0 + 1).first }
        let load = Load(path: path, size: size, passes: passes, reads: reads, runs: runs, readsFactor: 2)

        var rows: [(String, BlockBackend.Settings, BlockFront.Options)] = [("every feature (2 queues)", .init(), .init())]
        var settings = BlockBackend.Settings()
        settings.persistent = false
        rows.append(("persistent grants off", settings, .init()))
        settings = .init()
        settings.maxIndirectSegments = 0
        rows.append(("indirect off", settings, .init()))
        var options = BlockFront.Options()
        options.queues = 1
        rows.append(("1 queue", .init(), options))
        options.queues = 4
        rows.append(("4 queues", .init(), options))
        // blkback watching its rings for 50 µs before sleeping: the next request of a
        // sequential reader is taken without a wake-up.
        settings = .init()
        settings.pollMicroseconds = 50
        rows.append(("blkback polling 50 µs (2 queues)", settings, .init()))
        // The rings watched by both ends for 50 µs before sleeping (no wake-ups under load),
        // one ring: the frontend's completion thread and blkback's thread on a core each.
        settings = .init()
        settings.pollMicroseconds = 50
        options = .init()
        options.queues = 1
        options.pollMicroseconds = 50
        rows.append(("1 queue, rings polled 50 µs", settings, options))
        settings.mappedReads = false
        rows.append(("1 queue, polled, preadv (no mapping)", settings, options))
        settings = .init()
        settings.mappedReads = false
        rows.append(("preadv instead of the mapping", settings, .init()))
        rows.append(("nothing (1 page, 1 queue, 11 segments)", .minimal, .minimal))

        let (preadMiB, preadIOPS) = try load.baselines()
        print("")
        print(
            "blkfront ↔ pvhost blkback, page cache warm, medians of \(runs), each run beside its own pread baselines; before the rows: pread loop \(Int(preadMiB)) MiB/s, pread × 32 \(Int(preadIOPS)) IOPS"
        )
        Load.header()
        var devid = 51712
        for (label, settings, options) in rows where only.map({ label.contains($0) }) ?? true {
            try await load.row(label, settings: settings, options: options, toolstack: toolstack, control: directory + "/control", devid: devid)
            devid += 16
        }

        // The same through O_DIRECT on both sides: the disk's own speed, no page cache.
        guard only.map({ "O_DIRECT".contains($0) }) ?? true else { return }
        let direct = Load(path: path, size: size, passes: 1, reads: reads / 20, runs: runs, direct: true, readsFactor: 1)
        print("")
        print("O_DIRECT (the file opened O_DIRECT by blkback and by the baselines), medians of \(runs), each run beside its own pread baselines")
        Load.header()
        settings = .init()
        settings.direct = true
        try await direct.row(
            "every feature, O_DIRECT", settings: settings, options: .init(), toolstack: toolstack, control: directory + "/control", devid: devid)
    }

    /// One benchmark load on one backing file: sequential 1 MiB reads over the file (`passes`
    /// times) and `reads` random 4 KiB reads from 32 tasks or threads.
    struct Load {
        let path: String
        let size: Int
        let passes: Int
        let reads: Int
        let runs: Int
        /// The baselines read with `O_DIRECT`.
        var direct = false
        /// The `pread` × 32 baseline runs this many times as many reads (at over a million a
        /// second, as many as the PV load would be over before its threads were all scheduled).
        var readsFactor = 1
        static let megabyte = 1 << 20

        static func header() {
            print(
                "                                         seq 1 MiB reads, MiB/s          4 KiB random reads, QD32, IOPS (ratios to pread × 32)     tasks ÷ queue"
            )
            print(
                "configuration                            copied         BlockBuffer      32 tasks         32 tasks on loops  BlockIOQueue      plain  loops    notifications/request   pread MiB/s, IOPS"
            )
        }

        /// Medians of ``baseline()`` over `runs`.
        func baselines() throws -> (Double, Double) {
            var mib: [Double] = [], iops: [Double] = []
            for _ in 0..<runs {
                let (m, i) = try baseline()
                mib.append(m)
                iops.append(i)
            }
            return (mib.sorted()[runs / 2], iops.sorted()[runs / 2])
        }

        /// One run of each baseline: a `pread` loop over the file (`passes` times), and random
        /// 4 KiB `pread`s on 32 threads (`readsFactor` × `reads`). MiB/s and IOPS.
        func baseline() throws -> (Double, Double) {
            let fd = open(path, O_RDONLY | (direct ? BackingFile.directFlag : 0))
            guard fd >= 0 else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
            defer { close(fd) }
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Self.megabyte, alignment: 4096)
            defer { buffer.deallocate() }
            let (size, passes, megabyte, count) = (self.size, self.passes, Self.megabyte, reads * readsFactor)
            let mib =
                Double(passes * size)
                / PVHostBench.seconds {
                    for _ in 0..<passes { for m in 0..<(size / megabyte) { _ = pread(fd, buffer.baseAddress, megabyte, off_t(m * megabyte)) } }
                } / Double(megabyte)
            let done = DispatchSemaphore(value: 0)
            let iops =
                Double(count)
                / PVHostBench.seconds {
                    for worker in 0..<32 {
                        Thread {
                            let local = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 4096)
                            defer { local.deallocate() }
                            var state = UInt64(worker + 1) &* 0x9E37_79B9_7F4A_7C15
                            for _ in 0..<(count / 32) {
                                state ^= state << 13; state ^= state >> 7; state ^= state << 17
                                _ = pread(fd, local.baseAddress, 4096, off_t((state % UInt64(size / 4096)) * 4096))
                            }
                            done.signal()
                        }.start()
                    }
                    for _ in 0..<32 { done.wait() }
                }
            return (mib, iops)
        }

        /// The load through BlockFront on a new guest's disk, each part twice: through ordinary
        /// memory (copied to and from the grant pages) and through BlockBuffers (granted once,
        /// the backend moves the bytes in place). Each run measures the baselines first, and
        /// each ratio is the median of the runs' ratios (the machine's drift between rows
        /// cancels). Prints one row, with the row's baseline medians last.
        func row(
            _ label: String, settings: BlockBackend.Settings, options: BlockFront.Options, toolstack: Toolstack, control: String,
            devid: Int
        ) async throws {
            let (size, passes, reads, megabyte) = (self.size, self.passes, self.reads, Self.megabyte)
            let guest = try ReferencePlatform.attach(socket: control, name: "bench\(devid)", pages: 8192)
            let device = Toolstack.Device(type: "vbd", frontend: guest.domain, devid: devid)
            try await toolstack.addDevice(device)
            let backend = try await BlockBackend.start(toolstack: toolstack, device: device, path: path, settings: settings)
            let disk = try await BlockFront.connect(platform: guest, store: try guest.xenstore(), id: device.devid, options: options)
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: megabyte, alignment: 4096)
            defer { buffer.deallocate() }
            let big = try await disk.makeBuffer(byteCount: megabyte)
            var smalls: [BlockBuffer] = []
            for _ in 0..<32 { smalls.append(try await disk.makeBuffer(byteCount: 4096)) }
            var seq: [Double] = [], seqBuffer: [Double] = [], random: [Double] = [], randomBuffer: [Double] = [], randomOnLoops: [Double] = []
            var baseMiB: [Double] = [], baseIOPS: [Double] = []
            let served0 = backend.served, sent0 = disk.statistics.notificationsSent
            for _ in 0..<runs {
                let (mib, iops) = try baseline()
                baseMiB.append(mib)
                baseIOPS.append(iops)
                for zeroCopy in [false, true] {
                    let t1 = try await asyncSeconds {
                        for _ in 0..<passes {
                            for m in 0..<(size / megabyte) {
                                if zeroCopy {
                                    try await disk.read(at: UInt64(m * megabyte / 512), into: big)
                                } else {
                                    try await disk.read(at: UInt64(m * megabyte / 512), into: buffer)
                                }
                            }
                        }
                    }
                    if zeroCopy {
                        seqBuffer.append(Double(passes * size) / t1 / Double(megabyte))
                    } else {
                        seq.append(Double(passes * size) / t1 / Double(megabyte))
                    }
                    let t2 = try await asyncSeconds {
                        if zeroCopy {
                            try await PVHostBench.ioQueueReads(disk: disk, buffers: smalls, reads: reads, blocks: size / 4096)
                            return
                        }
                        try await PVHostBench.taskReads(disk: disk, reads: reads, blocks: size / 4096, onLoops: false)
                    }
                    if zeroCopy { randomBuffer.append(Double(reads) / t2) } else { random.append(Double(reads) / t2) }
                    if !zeroCopy {
                        // The same 32 tasks, each preferring the event loop of a ring
                        // (`Task(executorPreference:)`): a completion resumes its waiter on the
                        // thread that saw it, no hop through the global pool.
                        let t3 = try await asyncSeconds {
                            try await PVHostBench.taskReads(disk: disk, reads: reads, blocks: size / 4096, onLoops: true)
                        }
                        randomOnLoops.append(Double(reads) / t3)
                    }
                }
            }
            let perRequest = Double(disk.statistics.notificationsSent - sent0) / Double(max(backend.served - served0, 1))
            func median(_ values: [Double]) -> Double { values.sorted()[values.count / 2] }
            func ratio(_ values: [Double], _ bases: [Double]) -> Double { median(zip(values, bases).map { $0 / $1 }) }
            let name = label.padding(toLength: 40, withPad: " ", startingAt: 0)
            print(
                name
                    + String(
                        format: " %7.0f %5.2f×  %7.0f %5.2f×  %8.0f %5.2f×  %8.0f %5.2f×  %8.0f %5.2f×   %5.2f× %5.2f×   %.3f           %6.0f  %8.0f",
                        median(seq), ratio(seq, baseMiB), median(seqBuffer), ratio(seqBuffer, baseMiB),
                        median(random), ratio(random, baseIOPS), median(randomOnLoops), ratio(randomOnLoops, baseIOPS),
                        median(randomBuffer), ratio(randomBuffer, baseIOPS), ratio(random, randomBuffer), ratio(randomOnLoops, randomBuffer),
                        perRequest, median(baseMiB), median(baseIOPS)))
            await disk.close()
            await backend.stop()
            _ = try await toolstack.removeDevice(device)
        }
    }

    /// `reads` random 4 KiB reads from 32 tasks, each awaiting `disk.read(at:into:)` in turn:
    /// plain child tasks, or (`onLoops`) tasks preferring the event loops of the disk's rings.
    static func taskReads(disk: BlockFront, reads: Int, blocks: Int, onLoops: Bool) async throws {
        let loops = disk.eventLoops
        try await withThrowingTaskGroup(of: Void.self) { group in
            for worker in 0..<32 {
                let body: @Sendable () async throws -> Void = {
                    let local = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 4096)
                    defer { local.deallocate() }
                    var state = UInt64(worker + 1) &* 0x9E37_79B9_7F4A_7C15
                    for _ in 0..<(reads / 32) {
                        state ^= state << 13; state ^= state >> 7; state ^= state << 17
                        try await disk.read(at: (state % UInt64(blocks)) * 8, into: local)
                    }
                }
                if onLoops, !loops.isEmpty {
                    group.addTask(executorPreference: loops[worker % loops.count], operation: body)
                } else {
                    group.addTask(operation: body)
                }
            }
            try await group.waitForAll()
        }
    }

    /// `reads` random 4 KiB reads kept 32 in flight through a ``BlockIOQueue`` whose handler,
    /// on the ring's completion thread, queues the next read into the buffer that just filled.
    static func ioQueueReads(disk: BlockFront, buffers: [BlockBuffer], reads: Int, blocks: Int) async throws {
        struct Progress {
            var state: UInt64 = 0x9E37_79B9_7F4A_7C15
            var issued = 0
            var completed = 0
            var error: BlockFrontError?
            var finished: CheckedContinuation<Void, Never>?
            /// The next random block's sector.
            mutating func nextSector(_ blocks: Int) -> UInt64 {
                state ^= state << 13; state ^= state >> 7; state ^= state << 17
                return (state % UInt64(blocks)) * 8
            }
        }
        let progress = Locked(Progress())
        await withCheckedContinuation { (finished: CheckedContinuation<Void, Never>) in
            progress.withLock { $0.finished = finished }
            let queue = disk.makeIOQueue(depth: buffers.count) { queue, completions in
                let end: CheckedContinuation<Void, Never>? = progress.withLock { progress in
                    for completion in completions {
                        progress.completed += 1
                        if let error = completion.error { progress.error = progress.error ?? error }
                        guard progress.issued < reads, progress.error == nil else { continue }
                        do throws(BlockFrontError) {
                            try queue.read(at: progress.nextSector(blocks), into: buffers[completion.tag], tag: completion.tag)
                            progress.issued += 1
                        } catch {
                            progress.error = error
                        }
                    }
                    guard progress.completed == progress.issued else { return nil }
                    defer { progress.finished = nil }
                    return progress.finished
                }
                queue.submit()
                end?.resume()
            }
            progress.withLock { progress in
                for (tag, buffer) in buffers.enumerated() {
                    do throws(BlockFrontError) {
                        try queue.read(at: progress.nextSector(blocks), into: buffer, tag: tag)
                        progress.issued += 1
                    } catch {
                        progress.error = error
                    }
                }
            }
            queue.submit()
        }
        if let error = progress.withLock({ $0.error }) { throw error }
    }

    static func asyncSeconds(_ body: () async throws -> Void) async rethrows -> Double {
        var t0 = timespec(), t1 = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t0)
        try await body()
        clock_gettime(CLOCK_MONOTONIC, &t1)
        return Double(t1.tv_sec - t0.tv_sec) + Double(t1.tv_nsec - t0.tv_nsec) / 1e9
    }
}
