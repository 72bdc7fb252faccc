import BlockFront
import Foundation
#if canImport(Glibc)
    import Glibc
#endif
import PVHost
import PVPlatform
import PVSystem
import Testing
import XenABI
import XenStore

/// BlockIOQueue (batched submission, collected or handed-over completions) against pvhost's
/// blkback on a real file, and blkback's mapped reads.
@Suite("BlockIOQueue ↔ blkback on pvhost", .serialized, .timeLimit(.minutes(5)))
struct BlockIOQueueTests {
    let conformance = BlockConformanceTests()

    /// Configurations the random workload runs through.
    static let configurations: [(String, BlockBackend.Settings, BlockFront.Options)] = {
        var rows: [(String, BlockBackend.Settings, BlockFront.Options)] = [("everything", .init(), .init())]
        rows.append(("nothing (1 page, 1 queue, 11 segments, grants per request)", .minimal, .minimal))
        var settings = BlockBackend.Settings()
        settings.pollMicroseconds = 50
        var options = BlockFront.Options()
        options.queues = 1
        options.pollMicroseconds = 50
        rows.append(("1 queue, both ends polling 50 µs", settings, options))
        settings = .init()
        settings.mappedReads = false
        rows.append(("preadv instead of the mapping", settings, .init()))
        settings = .init()
        settings.ioThreads = 4
        rows.append(("4 I/O threads per queue", settings, .init()))
        return rows
    }()

    @Test(
        "random reads, writes and flushes queued in batches match a model and the backing file byte for byte",
        arguments: 0..<configurations.count)
    func randomWorkload(row: Int) async throws {
        let (name, settings, options) = Self.configurations[row]
        let d = try await conformance.disk(settings: settings, options: options, pages: 4096)
        let size = 4 << 20, block = 16 << 10
        var model = conformance.fileBytes(d.path, offset: 0, count: size)
        var buffers: [BlockBuffer] = []
        for _ in 0..<24 { buffers.append(try await d.disk.makeBuffer(byteCount: block)) }
        let queue = d.disk.makeIOQueue(depth: 32)
        var rng = SeededBytes(seed: UInt64(row) + 99)
        for round in 0..<25 {
            // Distinct blocks per round: operations in flight together never overlap.
            var blocks = Set<Int>()
            while blocks.count < buffers.count { blocks.insert(Int(rng.nextWord() % UInt64(size / block))) }
            var expected: [Int: [UInt8]] = [:]
            for (tag, index) in blocks.enumerated() {
                let sector = UInt64(index * block / 512)
                if rng.nextWord() % 2 == 0 {
                    try queue.read(at: sector, into: buffers[tag], tag: tag)
                    expected[tag] = Array(model[index * block..<(index + 1) * block])
                } else {
                    for i in 0..<block { buffers[tag].bytes[i] = UInt8(truncatingIfNeeded: rng.nextWord()) }
                    model.replaceSubrange(index * block..<(index + 1) * block, with: buffers[tag].bytes)
                    try queue.write(at: sector, from: buffers[tag], tag: tag)
                }
            }
            queue.submit()
            var completed = 0
            while completed < buffers.count {
                for completion in try await queue.completions(atLeast: 4) {
                    #expect(completion.error == nil, "\(name): round \(round), operation \(completion.tag)")
                    if let want = expected[completion.tag] {
                        #expect(Array(buffers[completion.tag].bytes) == want, "\(name): round \(round), read \(completion.tag)")
                    }
                    completed += 1
                }
            }
            if round % 8 == 7, d.disk.info.flush {
                try queue.flush(tag: 1000)
                queue.submit()
                #expect(try await queue.completions() == [BlockIOQueue.Completion(tag: 1000, error: nil)])
            }
        }
        #expect(queue.occupied == 0)
        #expect(try await d.disk.read(sector: 0, count: size) == model, "\(name): the whole disk through the frontend")
        #expect(conformance.fileBytes(d.path, offset: 0, count: size) == model, "\(name): the whole backing file")
        await d.disk.close()
        #expect(d.host.tools.hypervisor.status.grantsMapped == 0, "\(name): nothing left mapped")
    }

    @Test("depth beyond the ring: 100 writes and a 1 MiB read through a one-page ring (32 slots) wait for room, all complete, every byte right")
    func backPressure() async throws {
        let d = try await conformance.disk(options: .minimal, pages: 4096)
        let queue = d.disk.makeIOQueue(depth: 101)
        var buffers: [BlockBuffer] = []
        for i in 0..<100 {
            let buffer = try await d.disk.makeBuffer(byteCount: 4096)
            buffer.bytes.initializeMemory(as: UInt8.self, repeating: UInt8(i + 1))
            buffers.append(buffer)
            try queue.write(at: UInt64(2048 + i * 8), from: buffer, tag: i)
        }
        // 256 pages: 24 requests of at most 11 segments on a ring already full of writes.
        let big = try await d.disk.makeBuffer(byteCount: 1 << 20)
        try queue.read(at: 0, into: big, tag: 100)
        queue.submit()
        var tags: [Int] = []
        while tags.count < 101 {
            for completion in try await queue.completions(atLeast: 101) {
                #expect(completion.error == nil)
                tags.append(completion.tag)
            }
        }
        #expect(tags.sorted() == Array(0...100), "each operation completed once")
        for i in 0..<100 {
            #expect(conformance.fileBytes(d.path, offset: (1 << 20) + i * 4096, count: 4096) == Array(repeating: UInt8(i + 1), count: 4096))
        }
        #expect(Array(big.bytes) == conformance.fileBytes(d.path, offset: 0, count: 1 << 20))
        await d.disk.close()
    }

    @Test("a full queue refuses another operation with queueFull; collecting completions frees the places")
    func queueFull() async throws {
        let d = try await conformance.disk()
        let queue = d.disk.makeIOQueue(depth: 2)
        let buffer = try await d.disk.makeBuffer(byteCount: 4096)
        try queue.read(at: 0, into: buffer, tag: 1)
        try queue.read(at: 8, into: buffer, tag: 2)
        #expect(throws: BlockFrontError.queueFull(depth: 2)) { try queue.read(at: 16, into: buffer, tag: 3) }
        queue.submit()
        let first = try await queue.completions(atLeast: 2)
        #expect(first.map(\.tag).sorted() == [1, 2], "\(first)")
        #expect(queue.occupied == 0)
        try queue.read(at: 16, into: buffer, tag: 3)
        queue.submit()
        #expect(try await queue.completions() == [BlockIOQueue.Completion(tag: 3, error: nil)])
        // The device's own checks apply.
        #expect(throws: BlockFrontError.self) { try queue.read(at: d.disk.info.sectors, into: buffer, tag: 4) }
        #expect(throws: BlockFrontError.self) { try queue.read(at: 0, into: buffer, byteOffset: 100, tag: 5) }
        #expect(queue.occupied == 0, "refused operations take no place")
        await d.disk.close()
    }

    @Test("a completion handler on the completion thread keeps 32 reads in flight by requeueing; 3000 reads, every byte right")
    func handler() async throws {
        var options = BlockFront.Options()
        options.queues = 1
        options.pollMicroseconds = 50
        var settings = BlockBackend.Settings()
        settings.pollMicroseconds = 50
        let d = try await conformance.disk(settings: settings, options: options, pages: 4096)
        let file = conformance.fileBytes(d.path, offset: 0, count: 4 << 20)
        var buffers: [BlockBuffer] = []
        for _ in 0..<32 { buffers.append(try await d.disk.makeBuffer(byteCount: 4096)) }
        struct State {
            var rng = SeededBytes(seed: 5)
            var blockOf: [Int] = Array(repeating: 0, count: 32)
            var issued = 0, completed = 0, wrong = 0, failed = 0
            var finished: CheckedContinuation<Void, Never>?
        }
        let state = Locked(State())
        let total = 3000
        await withCheckedContinuation { (finished: CheckedContinuation<Void, Never>) in
            state.withLock { $0.finished = finished }
            let queue = d.disk.makeIOQueue(depth: 32) { [buffers] queue, completions in
                let end: CheckedContinuation<Void, Never>? = state.withLock { state in
                    for completion in completions {
                        state.completed += 1
                        let block = state.blockOf[completion.tag]
                        if completion.error != nil { state.failed += 1 }
                        if Array(buffers[completion.tag].bytes) != Array(file[block * 4096..<(block + 1) * 4096]) { state.wrong += 1 }
                        guard state.issued < total else { continue }
                        let next = Int(state.rng.nextWord() % 1024)
                        state.blockOf[completion.tag] = next
                        if (try? queue.read(at: UInt64(next * 8), into: buffers[completion.tag], tag: completion.tag)) != nil { state.issued += 1 }
                    }
                    guard state.completed == state.issued else { return nil }
                    defer { state.finished = nil }
                    return state.finished
                }
                queue.submit()
                end?.resume()
            }
            state.withLock { state in
                for tag in 0..<32 {
                    let block = Int(state.rng.nextWord() % 1024)
                    state.blockOf[tag] = block
                    if (try? queue.read(at: UInt64(block * 8), into: buffers[tag], tag: tag)) != nil { state.issued += 1 }
                }
            }
            queue.submit()
        }
        let (completed, failed, wrong) = state.withLock { ($0.completed, $0.failed, $0.wrong) }
        #expect(completed == total)
        #expect(failed == 0)
        #expect(wrong == 0, "every buffer held its block when its completion arrived")
        await d.disk.close()
    }

    @Test("the device closes with operations queued and in flight: each completes with the device's error, no hang; later queueing throws")
    func closedUnderneath() async throws {
        var options = BlockFront.Options()
        options.queues = 1
        options.ringPageOrder = 0
        let d = try await conformance.disk(options: options, pages: 4096)
        let queue = d.disk.makeIOQueue(depth: 64)
        var buffers: [BlockBuffer] = []
        for tag in 0..<64 {
            buffers.append(try await d.disk.makeBuffer(byteCount: 64 << 10))
            try queue.read(at: UInt64(tag * 128), into: buffers[tag], tag: tag)
        }
        queue.submit()
        await d.disk.close()
        var completions: [BlockIOQueue.Completion] = []
        while completions.count < 64 { completions += try await queue.completions(atLeast: 64) }
        #expect(Set(completions.map(\.tag)) == Set(0..<64), "every operation completed, once")
        #expect(
            completions.allSatisfy { completion in
                guard let error = completion.error else { return true }
                if case .closed = error { return true }
                return false
            }, "finished before the close, or failed because the device closed: \(completions.compactMap(\.error))")
        #expect(throws: BlockFrontError.self) { try queue.read(at: 0, into: buffers[0], tag: 0) }
        #expect(d.host.tools.hypervisor.status.grantsMapped == 0)
    }

    @Test("cancelling a task waiting for completions: it ends with cancelled; the requests stay in flight and a later call collects them")
    func cancelledWait() async throws {
        var settings = BlockBackend.Settings()
        settings.hostile = .neverAnswer
        let d = try await conformance.disk(settings: settings)
        let queue = d.disk.makeIOQueue(depth: 4)
        let buffer = try await d.disk.makeBuffer(byteCount: 4096)
        try queue.read(at: 0, into: buffer, tag: 7)
        queue.submit()
        let waiting = Task { try await queue.completions() }
        try await Task.sleep(for: .milliseconds(50))
        waiting.cancel()
        await #expect(throws: BlockFrontError.cancelled) { _ = try await waiting.value }
        #expect(queue.occupied == 1, "still in flight")
        // The device closing ends it; the next call collects it.
        await d.disk.close()
        let collected = try await queue.completions()
        #expect(collected.map(\.tag) == [7])
        #expect(collected.first?.error != nil)
    }

    @Test(
        "blkback's mapped reads: the backing file cut short under it fails reads past the new end with an I/O error (SIGBUS caught); pvhost and the device live on"
    )
    func truncatedUnderMapping() async throws {
        let d = try await conformance.disk()
        let head = conformance.fileBytes(d.path, offset: 0, count: 4096)
        #expect(try await d.disk.read(sector: 4096, count: 4096).count == 4096, "2 MiB in: readable before")
        #expect(truncate(d.path, 1 << 20) == 0)
        await #expect(throws: BlockFrontError.ioError(sector: 4096)) { _ = try await d.disk.read(sector: 4096, count: 4096) }
        let buffer = try await d.disk.makeBuffer(byteCount: 4096)
        let queue = d.disk.makeIOQueue(depth: 1)
        try queue.read(at: 4096, into: buffer, tag: 0)
        queue.submit()
        #expect(try await queue.completions() == [BlockIOQueue.Completion(tag: 0, error: .ioError(sector: 4096))])
        #expect(try await d.disk.read(sector: 0, count: 4096) == head, "within the file: still served")
        await d.disk.close()
        #expect(d.host.tools.hypervisor.status.grantsMapped == 0)
    }

    @Test("the backend restarts with a queue's requests in flight: they are re-issued on the new rings, every operation completes once, every byte right")
    func backendRestart() async throws {
        // The first backend takes requests and never answers: all 16 are surely in flight.
        var silent = BlockBackend.Settings()
        silent.hostile = .neverAnswer
        let d = try await conformance.disk(settings: silent, pages: 4096)
        var buffers: [BlockBuffer] = []
        for n in 0..<16 {
            let buffer = try await d.disk.makeBuffer(byteCount: 8192)
            buffer.bytes.initializeMemory(as: UInt8.self, repeating: UInt8(n + 1))
            buffers.append(buffer)
        }
        let queue = d.disk.makeIOQueue(depth: 16)
        for block in 0..<16 { try queue.write(at: UInt64(block * 16), from: buffers[block], tag: block) }
        queue.submit()
        for _ in 0..<500 where d.backend.served < 16 { try await Task.sleep(for: .milliseconds(10)) }
        #expect(d.backend.served == 16, "the silent backend took every request")
        await d.backend.stop()
        // The new backend starts once the frontend has seen this one go (Closed): a backend
        // back in InitWait before the frontend looked is not this test's subject.
        let store = d.host.tools.toolstack.store
        for _ in 0..<500 where (try? await store.readString(XenStorePath(d.device.frontendPath + "/state"))) != "6" {
            try await Task.sleep(for: .milliseconds(10))
        }
        let again = try await BlockBackend.start(toolstack: d.host.tools.toolstack, device: d.device, path: d.path)
        var tags: [Int] = []
        while tags.count < 16 {
            for completion in try await queue.completions(atLeast: 16) {
                #expect(completion.error == nil, "block \(completion.tag)")
                tags.append(completion.tag)
            }
        }
        #expect(tags.sorted() == Array(0..<16), "each operation completed once")
        #expect(d.disk.statistics.connections == 2, "connected twice")
        #expect(d.disk.statistics.reissued == 16, "the 16 in flight went out again")
        // The queue works on with the new backend. Block b holds buffer b % 16's byte; the
        // buffers are only read, so several writes may use one at once.
        var next = 16, completed = 16
        while completed < 480 {
            while next < 480, queue.occupied < 16 {
                try queue.write(at: UInt64(next * 16), from: buffers[next % 16], tag: next)
                next += 1
            }
            queue.submit()
            for completion in try await queue.completions(atLeast: 4) {
                #expect(completion.error == nil, "block \(completion.tag)")
                completed += 1
            }
        }
        try await d.disk.flush()
        for block in 0..<480 {
            #expect(
                conformance.fileBytes(d.path, offset: block * 8192, count: 8192) == [UInt8](repeating: UInt8(block % 16 + 1), count: 8192), "block \(block)")
        }
        await d.disk.close()
        await again.stop()
    }

    @Test("trusted = 0: queued operations go through zeroed bounce pages (the backend never maps the buffers); data right both ways")
    func untrusted() async throws {
        let (host, guest, device, backend, path) = try await conformance.backend(pages: 4096)
        try await host.tools.toolstack.store.write(XenStorePath(device.frontendPath + "/trusted"), "0")
        let disk = try await BlockFront.connect(platform: guest, store: try guest.xenstore(), id: 51712)
        #expect(!disk.info.trusted)
        let out = try await disk.makeBuffer(byteCount: 64 << 10), back = try await disk.makeBuffer(byteCount: 64 << 10)
        for i in 0..<out.bytes.count { out.bytes[i] = UInt8(truncatingIfNeeded: i &* 7) }
        let queue = disk.makeIOQueue(depth: 2)
        try queue.write(at: 256, from: out, tag: 1)
        queue.submit()
        #expect(try await queue.completions() == [BlockIOQueue.Completion(tag: 1, error: nil)])
        try queue.read(at: 256, into: back, tag: 2)
        queue.submit()
        #expect(try await queue.completions() == [BlockIOQueue.Completion(tag: 2, error: nil)])
        #expect(Array(back.bytes) == Array(out.bytes))
        #expect(conformance.fileBytes(path, offset: 256 * 512, count: 64 << 10) == Array(out.bytes))
        for buffer in [out, back] {
            for page in stride(from: 0, to: buffer.bytes.count, by: 4096) {
                #expect(!BlockConformanceTests.backendMaps(buffer.bytes.baseAddress! + page, host: host, guest: guest), "the backend never mapped the buffers")
            }
        }
        await disk.close()
        await backend.stop()
    }

    @Test("a handler's queue submitting while the backend is down: the operations go out by themselves once it is back, and the handler gets them")
    func submittedWhileDown() async throws {
        let d = try await conformance.disk(pages: 4096)
        let buffer = try await d.disk.makeBuffer(byteCount: 4096)
        let collected = Collected()
        let queue = d.disk.makeIOQueue(depth: 4, handler: collected.take)
        await d.backend.stop()
        // The frontend has let go of its rings (it says Closed once it has, and waits).
        let store = d.host.tools.toolstack.store
        for _ in 0..<500 where (try? await store.readString(XenStorePath(d.device.frontendPath + "/state"))) != "6" {
            try await Task.sleep(for: .milliseconds(10))
        }
        let frontendState = try? await store.readString(XenStorePath(d.device.frontendPath + "/state"))
        #expect(frontendState == "6", "frontend state \(frontendState ?? "none")")
        try queue.read(at: 0, into: buffer, tag: 9)
        queue.submit()
        try await Task.sleep(for: .milliseconds(100))
        #expect(collected.all.isEmpty, "nothing completes while the backend is away")
        let again = try await BlockBackend.start(toolstack: d.host.tools.toolstack, device: d.device, path: d.path)
        for _ in 0..<500 where collected.all.isEmpty { try await Task.sleep(for: .milliseconds(10)) }
        #expect(collected.all == [BlockIOQueue.Completion(tag: 9, error: nil)])
        #expect(Array(buffer.bytes) == conformance.fileBytes(d.path, offset: 0, count: 4096))
        await d.disk.close()
        await again.stop()
    }

    @Test(
        "a lying backend under a queue (unknown id, garbage status, rsp_prod ahead): each operation completes once with the device's error, none hangs, the handler hears of all",
        arguments: [BlockBackend.HostileMode.unknownID, .garbageStatus, .responseProducerAhead])
    func lyingBackend(mode: BlockBackend.HostileMode) async throws {
        var settings = BlockBackend.Settings()
        settings.hostile = mode
        let d = try await conformance.disk(settings: settings, pages: 4096)
        var buffers: [BlockBuffer] = []
        for _ in 0..<8 { buffers.append(try await d.disk.makeBuffer(byteCount: 4096)) }
        let collected = Collected()
        let queue = d.disk.makeIOQueue(depth: 8, handler: collected.take)
        for (tag, buffer) in buffers.enumerated() { try queue.read(at: UInt64(tag * 8), into: buffer, tag: tag) }
        queue.submit()
        for _ in 0..<500 where collected.all.count < 8 { try await Task.sleep(for: .milliseconds(10)) }
        let all = collected.all
        #expect(all.map(\.tag).sorted() == Array(0..<8), "\(mode): each operation completed once: \(all)")
        #expect(
            all.contains { completion in
                if case .backendMisbehaved? = completion.error { return true }
                return false
            }, "\(mode): the lie was named: \(all.compactMap(\.error))")
        #expect(throws: BlockFrontError.self) { try queue.read(at: 0, into: buffers[0], tag: 9) }
        #expect(d.host.tools.hypervisor.domain(d.guest.domain) != nil, "the host lives on")
        await d.disk.close()
    }
}

/// Completions a queue's handler handed over, kept for the test to read.
private final class Collected: Sendable {
    private let completions = Locked<[BlockIOQueue.Completion]>([])
    var all: [BlockIOQueue.Completion] { completions.withLock { $0 } }
    /// The handler.
    @Sendable func take(_ queue: BlockIOQueue, _ batch: [BlockIOQueue.Completion]) { completions.withLock { $0 += batch } }
}
