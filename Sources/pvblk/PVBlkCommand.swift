import PVSystem
import ArgumentParser
import BlockFront
import Foundation
import Histogram
import Logging
import NBDServer
import ServiceLifecycle
import Synchronization
import PVPlatform
import XenStore

/// `pvblk`: a guest tool on BlockFront. It attaches to a pvhost as a domain and uses that
/// domain's virtual disk over the PV block protocol. Exit status: 0 success, 1 an I/O or
/// connection error, 2 a verification mismatch, 64 bad usage. `bench` measures it.
@main
struct PVBlkCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pvblk",
        abstract: "Use a virtual disk through Xen's PV block protocol, as a guest of pvhost.",
        subcommands: [Info.self, Read.self, Write.self, Verify.self, Discard.self, Journal.self, Bench.self, Export.self])
}

struct Connection: ParsableArguments {
    @Option(help: "pvhost's control socket.") var pvhost: String = "/run/pvhost/control"
    @Option(help: "The guest's domain name (pvhost's configuration gives it its disks).") var name: String?
    @Flag(help: "Run in this real Xen domain instead (/dev/xen/gntalloc, evtchn, xenbus; as root).") var xen = false
    @Option(help: "The disk's vbd number.") var device = 51712
    @Option(help: "Rings to ask for (default: one per processor).") var queues: Int?
    @Option(help: "Ring size to ask for: 2^N pages (0…4).") var ringPageOrder = 4
    @Flag(help: "Do not use persistent grants.") var noPersistent = false
    @Option(help: "Indirect segments to ask for (≤ 11: none).") var indirectSegments = 128
    @Option(help: "Microseconds each ring's completion thread polls for responses before sleeping (0: never).") var pollMicroseconds = 0

    func validate() throws {
        if !xen && name == nil { throw ValidationError("--name is needed with pvhost (or --xen in a real Xen domain)") }
        if !(0...4).contains(ringPageOrder) { throw ValidationError("--ring-page-order is 0…4") }
        if !(0...10_000).contains(pollMicroseconds) { throw ValidationError("--poll-microseconds is 0…10000") }
    }

    /// The features asked for (each used only when the backend offers it too).
    var options: BlockFront.Options {
        var options = BlockFront.Options()
        if let queues { options.queues = queues }
        options.ringPageOrder = ringPageOrder
        options.persistentGrants = !noPersistent
        options.indirectSegments = indirectSegments
        options.pollMicroseconds = pollMicroseconds
        return options
    }

    /// Attaches (to pvhost, or this Xen domain) and connects the disk; prints a clear error and
    /// exits 1 on failure.
    func open() async throws -> (BlockFront, any PVPlatform) {
        do {
            let platform: any PVPlatform = xen ? try await LinuxXenPlatform.open() : try ReferencePlatform.attach(socket: pvhost, name: name ?? "")
            let disk = try await BlockFront.connect(platform: platform, store: try platform.xenstore(), id: device, options: options)
            return (disk, platform)
        } catch {
            FileHandle.standardError.write(Data("pvblk: \(error)\n".utf8))
            throw ExitCode(1)
        }
    }
}

/// Runs `body`, turning a BlockFront error into a message and exit status 1.
func running<T>(_ body: () async throws -> T) async throws -> T {
    do { return try await body() } catch let error as BlockFrontError {
        FileHandle.standardError.write(Data("pvblk: \(error)\n".utf8))
        throw ExitCode(1)
    }
}

extension PVBlkCommand {
    struct Info: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print the disk's size and features.")
        @OptionGroup var connection: Connection
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            let (disk, platform) = try await connection.open()
            let i = disk.info
            if json {
                let discard = i.discard.map { #"{"alignment":\#($0.alignment),"granularity":\#($0.granularity),"secure":\#($0.secure)}"# } ?? "null"
                print(
                    #"{"barrier":\#(i.barrier),"bytes":\#(i.bytes),"discard":\#(discard),"flush":\#(i.flush),"indirectSegments":\#(i.indirectSegments),"#
                        + #""persistentGrants":\#(i.persistentGrants),"physicalSectorSize":\#(i.physicalSectorSize),"queues":\#(i.queues),"readOnly":\#(i.readOnly),"#
                        + #""ringPages":\#(i.ringPages),"sectorSize":\#(i.sectorSize),"sectors":\#(i.sectors),"trusted":\#(i.trusted)}"#)
            } else {
                print(
                    "vbd \(connection.device) of domain \(platform.domain.rawValue): \(i.sectors) sectors (\(i.bytes) bytes), sector size \(i.sectorSize), \(i.readOnly ? "read-only" : "read-write"), flush \(i.flush ? "yes" : "no")"
                )
                let discard =
                    i.discard.map { "discard yes (granularity \($0.granularity), alignment \($0.alignment)\($0.secure ? ", secure" : ""))" } ?? "discard no"
                print(
                    "\(i.queues) queue(s) of \(i.ringPages) ring page(s), persistent grants \(i.persistentGrants ? "yes" : "no"), indirect segments \(i.indirectSegments), "
                        + "barrier \(i.barrier ? "yes" : "no"), \(discard), physical sector \(i.physicalSectorSize), trusted \(i.trusted ? "yes" : "no")")
            }
            await disk.close()
        }
    }

    struct Read: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Read bytes from the disk to a file or standard output.")
        @OptionGroup var connection: Connection
        @Option(help: "First 512-byte sector.") var sector: UInt64 = 0
        @Option(help: "Bytes to read (a multiple of the sector size).") var count: Int
        @Option(help: "Write here instead of standard output.") var output: String?

        func run() async throws {
            let (disk, _) = try await connection.open()
            let bytes = try await running { try await disk.read(sector: sector, count: count) }
            if let output { _ = FileManager.default.createFile(atPath: output, contents: Data(bytes)) } else { FileHandle.standardOutput.write(Data(bytes)) }
            await disk.close()
        }
    }

    struct Write: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Write a file (or standard input) to the disk, then flush.")
        @OptionGroup var connection: Connection
        @Option(help: "First 512-byte sector.") var sector: UInt64 = 0
        @Option(help: "Read from here instead of standard input.") var input: String?
        @Flag(help: "Write with BLKIF_OP_WRITE_BARRIER (ordered after everything before it).") var barrier = false

        func run() async throws {
            let data = input.flatMap { FileManager.default.contents(atPath: $0) } ?? FileHandle.standardInput.readDataToEndOfFile()
            let (disk, _) = try await connection.open()
            try await running {
                try await disk.write(sector: sector, Array(data), barrier: barrier)
                if disk.info.flush { try await disk.flush() }
            }
            await disk.close()
        }
    }

    struct Verify: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write a pattern, flush, read it back and compare (and with the backing file, if given).")
        @OptionGroup var connection: Connection
        @Option(help: "First 512-byte sector.") var sector: UInt64 = 0
        @Option(help: "Bytes to write (a multiple of the sector size).") var count = 1 << 20
        @Option(help: "The backing file, to compare with what the backend wrote.") var backing: String?
        @Flag(help: "Write the pattern with BLKIF_OP_WRITE_BARRIER.") var barrier = false
        @Flag(help: "Write, flush and read back through a BlockIOQueue (32 KiB operations, 8 in flight).") var ioQueue = false

        func validate() throws {
            if barrier && ioQueue { throw ValidationError("--barrier goes through the ordinary calls, not --io-queue") }
        }

        func run() async throws {
            let (disk, _) = try await connection.open()
            var state = UInt64(0x9E37_79B9_7F4A_7C15) ^ sector
            let pattern = (0..<count).map { _ -> UInt8 in
                state ^= state << 13; state ^= state >> 7; state ^= state << 17
                return UInt8(truncatingIfNeeded: state)
            }
            let back = try await running { () async throws -> [UInt8] in
                if ioQueue { return try await queued(disk: disk, pattern: pattern) }
                try await disk.write(sector: sector, pattern, barrier: barrier)
                if disk.info.flush { try await disk.flush() }
                return try await disk.read(sector: sector, count: count)
            }
            await disk.close()
            guard back == pattern else {
                print("MISMATCH: read back differs from what was written")
                throw ExitCode(2)
            }
            if let backing {
                let file = FileHandle(forReadingAtPath: backing)
                try file?.seek(toOffset: sector * 512)
                let onDisk = file.map { Array($0.readData(ofLength: count)) } ?? []
                guard onDisk == pattern else {
                    print("MISMATCH: \(backing) differs from what was written")
                    throw ExitCode(2)
                }
            }
            print(
                "verified \(count) bytes at sector \(sector)\(barrier ? " (barrier write)" : "")\(ioQueue ? " through an I/O queue" : "")\(backing.map { ", and in \($0)" } ?? "")"
            )
        }

        /// Writes `pattern` at `sector` in 32 KiB operations through a BlockIOQueue, flushes
        /// through it, and reads everything back the same way.
        private func queued(disk: BlockFront, pattern: [UInt8]) async throws -> [UInt8] {
            let piece = min(32 << 10, pattern.count), depth = 8
            var buffers: [BlockBuffer] = []
            for _ in 0..<depth { buffers.append(try await disk.makeBuffer(byteCount: piece)) }
            let queue = disk.makeIOQueue(depth: depth + 1)
            var back = [UInt8](repeating: 0, count: pattern.count)
            for write in [true, false] {
                var next = 0
                var free = Array(0..<depth)
                var placed: [Int: (offset: Int, count: Int)] = [:]
                while next < pattern.count || !placed.isEmpty {
                    while next < pattern.count, let tag = free.popLast() {
                        let length = min(piece, pattern.count - next)
                        let at = sector + UInt64(next / 512)
                        if write {
                            pattern.withUnsafeBytes { buffers[tag].bytes.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[next..<next + length])) }
                            try queue.write(at: at, from: buffers[tag], count: length, tag: tag)
                        } else {
                            try queue.read(at: at, into: buffers[tag], count: length, tag: tag)
                        }
                        placed[tag] = (next, length)
                        next += length
                    }
                    queue.submit()
                    for completion in try await queue.completions() {
                        if let error = completion.error { throw error }
                        guard let (offset, length) = placed.removeValue(forKey: completion.tag) else { continue }
                        if !write {
                            back.withUnsafeMutableBytes {
                                $0.baseAddress!.advanced(by: offset).copyMemory(from: buffers[completion.tag].bytes.baseAddress!, byteCount: length)
                            }
                        }
                        free.append(completion.tag)
                    }
                }
                if write && disk.info.flush {
                    try queue.flush(tag: depth)
                    queue.submit()
                    if let error = try await queue.completions().first?.error { throw error }
                }
            }
            return back
        }
    }

    struct Discard: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Discard a range (BLKIF_OP_DISCARD): the backend may forget those bytes (pvhost's file-backed disks punch a hole).")
        @OptionGroup var connection: Connection
        @Option(help: "First 512-byte sector.") var sector: UInt64
        @Option(help: "Bytes to discard (a multiple of the sector size).") var count: Int
        @Flag(help: "Ask for a secure erase (when the backend offers it).") var secure = false

        func run() async throws {
            let (disk, _) = try await connection.open()
            try await running { try await disk.discard(sector: sector, count: count, secure: secure) }
            await disk.close()
            print("discarded \(count) bytes at sector \(sector)")
        }
    }

    struct Journal: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract:
                "Write numbered 4 KiB blocks in order, flushing every few, and print \"durable N\" after each flush (blocks 0..<N are on stable storage): a workload for crash tests."
        )
        @OptionGroup var connection: Connection
        @Option(help: "Blocks to write.") var blocks = 1024
        @Option(help: "Blocks between flushes.") var flushEvery = 8

        /// The content of block `index`: its number in every 8-byte word.
        static func block(_ index: Int) -> [UInt8] {
            (0..<512).flatMap { _ in withUnsafeBytes(of: UInt64(index).littleEndian, Array.init) }
        }

        func run() async throws {
            let (disk, _) = try await connection.open()
            guard disk.info.flush, UInt64(blocks) * 4096 <= disk.info.bytes else {
                FileHandle.standardError.write(Data("pvblk: the disk must offer flush and hold \(blocks) blocks\n".utf8))
                throw ExitCode(1)
            }
            try await running {
                for index in 0..<blocks {
                    try await disk.write(sector: UInt64(index * 8), Self.block(index))
                    if (index + 1) % flushEvery == 0 || index + 1 == blocks {
                        try await disk.flush()
                        // Unbuffered: the line is out before the next write starts.
                        FileHandle.standardOutput.write(Data("durable \(index + 1)\n".utf8))
                    }
                }
            }
            await disk.close()
        }
    }

    struct Bench: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Measure the disk: sequential or random reads (or writes), at a queue depth; IOPS, MiB/s and latency percentiles.")
        enum Pattern: String, ExpressibleByArgument { case sequential, random }
        @OptionGroup var connection: Connection
        @Option(help: "sequential or random.") var pattern: Pattern = .random
        @Option(help: "Bytes per request (a multiple of the sector size).") var blockSize = 4096
        @Option(help: "Requests in flight.") var queueDepth = 32
        @Option(help: "Seconds to run.") var seconds = 5.0
        @Flag(help: "Write (destroys the disk's contents) instead of reading.") var write = false
        @Flag(help: "Use BlockBuffers (memory granted to the backend once, no copies in the guest) instead of ordinary memory.")
        var zeroCopy = false
        @Flag(help: "Keep the requests in flight through a BlockIOQueue (batched submission; completions handled on the ring's thread); implies --zero-copy.")
        var ioQueue = false

        func validate() throws {
            guard blockSize > 0, blockSize % 512 == 0, queueDepth >= 1, seconds > 0 else {
                throw ValidationError("--block-size must be a positive multiple of 512, --queue-depth and --seconds positive")
            }
        }

        func run() async throws {
            let (disk, _) = try await connection.open()
            let info = disk.info
            let blocks = info.bytes / UInt64(blockSize)
            guard blocks > 0, blockSize % info.sectorSize == 0 else {
                FileHandle.standardError.write(
                    Data("pvblk: a \(blockSize)-byte block does not fit this disk (\(info.bytes) bytes, \(info.sectorSize)-byte sectors)\n".utf8))
                throw ExitCode(64)
            }
            if write && info.readOnly {
                FileHandle.standardError.write(Data("pvblk: the disk is read-only\n".utf8))
                throw ExitCode(1)
            }
            let (blockSize, pattern, write) = (self.blockSize, self.pattern, self.write)
            var granted: [BlockBuffer] = []
            do {
                if zeroCopy || ioQueue { for _ in 0..<queueDepth { granted.append(try await disk.makeBuffer(byteCount: blockSize)) } }
            } catch {
                FileHandle.standardError.write(
                    Data(
                        "pvblk: \(queueDepth) buffers of \(blockSize) bytes do not fit the guest's memory (\(error)); lower --queue-depth or --block-size\n"
                            .utf8))
                await disk.close()
                throw ExitCode(1)
            }
            let buffers = granted
            let run = BenchRun(blocks: blocks, deadline: DispatchTime.now().uptimeNanoseconds + UInt64(seconds * 1e9))
            let progress = Task {
                while !Task.isCancelled {
                    try? await Task.sleep(for: .seconds(1))
                    let (count, elapsed) = run.snapshot()
                    FileHandle.standardError.write(
                        Data(
                            String(
                                format: "\r%.0f s: %.0f IOPS, %.1f MiB/s   ", elapsed, Double(count) / elapsed,
                                Double(count * blockSize) / elapsed / 1_048_576
                            ).utf8))
                }
            }
            try await running {
                if ioQueue {
                    let all = try await queued(disk: disk, buffers: buffers, run: run)
                    progress.cancel()
                    await progress.value
                    report(disk: disk, run: run, latencies: all)
                    return
                }
                try await withThrowingTaskGroup(of: Histogram<UInt64>.self) { group in
                    for worker in 0..<queueDepth {
                        group.addTask {
                            var latencies = Histogram<UInt64>(highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
                            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: blockSize, alignment: 4096)
                            defer { buffer.deallocate() }
                            let zeroCopyBuffer = buffers.isEmpty ? nil : buffers[worker]
                            if write {
                                for i in 0..<blockSize { buffer[i] = UInt8(truncatingIfNeeded: i &* 31 &+ worker) }
                                zeroCopyBuffer?.bytes.copyMemory(from: UnsafeRawBufferPointer(buffer))
                            }
                            var state = UInt64(worker + 1) &* 0x9E37_79B9_7F4A_7C15
                            while let next = run.next() {
                                let block: UInt64
                                if pattern == .random {
                                    state ^= state << 13; state ^= state >> 7; state ^= state << 17
                                    block = state % run.blocks
                                } else {
                                    block = next % run.blocks
                                }
                                let sector = block * UInt64(blockSize / 512)
                                let start = DispatchTime.now().uptimeNanoseconds
                                switch (write, zeroCopyBuffer) {
                                case let (true, granted?): try await disk.write(at: sector, from: granted)
                                case let (false, granted?): try await disk.read(at: sector, into: granted)
                                case (true, nil): try await disk.write(at: sector, from: UnsafeRawBufferPointer(buffer))
                                case (false, nil): try await disk.read(at: sector, into: buffer)
                                }
                                _ = latencies.record(DispatchTime.now().uptimeNanoseconds - start)
                                run.done()
                            }
                            return latencies
                        }
                    }
                    var all = Histogram<UInt64>(highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
                    for try await part in group { all.add(part) }
                    progress.cancel()
                    await progress.value
                    report(disk: disk, run: run, latencies: all)
                }
            }
            await disk.close()
        }

        private func report(disk: BlockFront, run: BenchRun, latencies all: Histogram<UInt64>) {
            let info = disk.info
            let (count, elapsed) = run.snapshot()
            FileHandle.standardError.write(Data("\n".utf8))
            let stats = disk.statistics
            print(
                "\(pattern.rawValue) \(write ? "writes" : "reads") of \(blockSize) bytes at queue depth \(queueDepth)\(ioQueue ? " through an I/O queue" : ""), \(info.queues) ring(s) of \(info.ringPages) page(s), persistent grants \(info.persistentGrants ? "on" : "off"), indirect segments \(info.indirectSegments)"
            )
            print(
                String(
                    format: "%.0f IOPS, %.1f MiB/s over %.1f s (%d I/Os), %.3f notifications per I/O", Double(count) / elapsed,
                    Double(count * blockSize) / elapsed / 1_048_576, elapsed, count, Double(stats.notificationsSent) / Double(max(count, 1))))
            func us(_ p: Double) -> String { String(format: "%.1f", Double(all.valueAtPercentile(p)) / 1000) }
            print("latency µs: p50 \(us(50)), p90 \(us(90)), p99 \(us(99)), p99.9 \(us(99.9)), max \(String(format: "%.1f", Double(all.max) / 1000))")
        }

        /// The load through a ``BlockIOQueue``: its handler, on the ring's completion thread,
        /// records each latency and queues the next request into the buffer that just finished.
        private func queued(disk: BlockFront, buffers: [BlockBuffer], run: BenchRun) async throws -> Histogram<UInt64> {
            struct Load {
                var latencies = Histogram<UInt64>(highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
                var started: [UInt64]
                var state: UInt64 = 0x9E37_79B9_7F4A_7C15
                var inFlight = 0
                var error: BlockFrontError?
                var finished: CheckedContinuation<Void, Never>?
            }
            let (blockSize, pattern, write) = (self.blockSize, self.pattern, self.write)
            if write {
                for (n, buffer) in buffers.enumerated() {
                    for i in 0..<blockSize { buffer.bytes[i] = UInt8(truncatingIfNeeded: i &* 31 &+ n) }
                }
            }
            final class Shared: Sendable {
                let load: Locked<Load>
                init(depth: Int) { load = Locked(Load(started: Array(repeating: 0, count: depth))) }
            }
            let shared = Shared(depth: buffers.count)
            /// Queues the next request on `tag`'s buffer (the caller holds the load's lock); false when time is up.
            @Sendable func issue(_ queue: BlockIOQueue, tag: Int, _ load: inout Load) -> Bool {
                guard load.error == nil, let next = run.next() else { return false }
                let block: UInt64
                if pattern == .random {
                    load.state ^= load.state << 13; load.state ^= load.state >> 7; load.state ^= load.state << 17
                    block = load.state % run.blocks
                } else {
                    block = next % run.blocks
                }
                let sector = block * UInt64(blockSize / 512)
                do throws(BlockFrontError) {
                    if write { try queue.write(at: sector, from: buffers[tag], tag: tag) } else { try queue.read(at: sector, into: buffers[tag], tag: tag) }
                } catch {
                    load.error = error
                    return false
                }
                load.started[tag] = DispatchTime.now().uptimeNanoseconds
                load.inFlight += 1
                return true
            }
            await withCheckedContinuation { (finished: CheckedContinuation<Void, Never>) in
                shared.load.withLock { $0.finished = finished }
                let queue = disk.makeIOQueue(depth: buffers.count) { queue, completions in
                    let now = DispatchTime.now().uptimeNanoseconds
                    let end: CheckedContinuation<Void, Never>? = shared.load.withLock { load in
                        for completion in completions {
                            load.inFlight -= 1
                            if let error = completion.error {
                                load.error = load.error ?? error
                                continue
                            }
                            _ = load.latencies.record(now - load.started[completion.tag])
                            run.done()
                            _ = issue(queue, tag: completion.tag, &load)
                        }
                        guard load.inFlight == 0 else { return nil }
                        defer { load.finished = nil }
                        return load.finished
                    }
                    queue.submit()
                    end?.resume()
                }
                let end: CheckedContinuation<Void, Never>? = shared.load.withLock { load in
                    for tag in buffers.indices where !issue(queue, tag: tag, &load) { break }
                    guard load.inFlight == 0 else { return nil }
                    defer { load.finished = nil }
                    return load.finished
                }
                queue.submit()
                end?.resume()
            }
            let (error, latencies) = shared.load.withLock { ($0.error, $0.latencies) }
            if let error { throw error }
            return latencies
        }
    }
}

/// The shared state of a benchmark: requests handed out until the deadline, and counted.
final class BenchRun: Sendable {
    let blocks: UInt64
    let deadline: UInt64
    let started = DispatchTime.now().uptimeNanoseconds
    private let issued = Locked<UInt64>(0)
    private let completed = Locked(0)

    init(blocks: UInt64, deadline: UInt64) {
        self.blocks = blocks
        self.deadline = deadline
    }

    /// The next request's sequence number, nil once time is up.
    func next() -> UInt64? {
        guard DispatchTime.now().uptimeNanoseconds < deadline else { return nil }
        return issued.withLock { n in
            defer { n += 1 }; return n
        }
    }

    func done() { completed.withLock { $0 += 1 } }

    /// Requests completed and seconds elapsed.
    func snapshot() -> (Int, Double) {
        (completed.withLock { $0 }, Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9)
    }
}
