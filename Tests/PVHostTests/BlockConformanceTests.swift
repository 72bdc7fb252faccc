import BlockFront
import Foundation
#if canImport(Glibc)
    import Glibc
#endif
import PVHost
import PVPlatform
import Testing
import XenABI
import XenStore

/// BlockFront in a guest against pvhost's file-backed BlockBack, end to end: real ring pages,
/// real grants, real event channels, a real file.
@Suite("blkfront ↔ blkback on pvhost", .serialized, .timeLimit(.minutes(5)))
struct BlockConformanceTests {
    struct Disk {
        let host: ReferencePlatformTests.Host
        let guest: ReferencePlatform
        let device: Toolstack.Device
        let backend: BlockBackend
        let disk: BlockFront
        let path: String
    }

    /// A file of seeded bytes (4 MiB unless said), served as vbd 51712 of a new guest.
    static func image(_ path: String, bytes: Int = 4 << 20, seed: UInt64 = 42) {
        var generator = SeededBytes(seed: seed)
        var words = [UInt64](repeating: 0, count: bytes / 8)
        for i in words.indices { words[i] = generator.nextWord() }
        _ = FileManager.default.createFile(atPath: path, contents: words.withUnsafeBytes { Data($0) })
    }

    /// The guest, device and backend, without connecting a frontend.
    func backend(settings: BlockBackend.Settings = .init(), pages: Int? = nil, bytes: Int = 4 << 20)
        async throws -> (ReferencePlatformTests.Host, ReferencePlatform, Toolstack.Device, BlockBackend, String)
    {
        let host = try ReferencePlatformTests.Host()
        let path = host.tools.directory + "/disk.img"
        Self.image(path, bytes: bytes)
        let guest = try ReferencePlatform.attach(socket: host.control, name: "g", pages: pages)
        let device = Toolstack.Device(type: "vbd", frontend: guest.domain, devid: 51712)
        try await host.tools.toolstack.addDevice(
            device, frontendKeys: ["virtual-device": "51712", "device-type": "disk"],
            backendKeys: ["params": path, "type": "file"])
        let backend = try await BlockBackend.start(toolstack: host.tools.toolstack, device: device, path: path, settings: settings)
        return (host, guest, device, backend, path)
    }

    func disk(settings: BlockBackend.Settings = .init(), options: BlockFront.Options = .init(), pages: Int? = nil, bytes: Int = 4 << 20) async throws -> Disk {
        let (host, guest, device, backend, path) = try await backend(settings: settings, pages: pages, bytes: bytes)
        let disk = try await BlockFront.connect(platform: guest, store: try guest.xenstore(), id: 51712, options: options)
        return Disk(host: host, guest: guest, device: device, backend: backend, disk: disk, path: path)
    }

    static func fileBytes(_ path: String, offset: Int, count: Int) -> [UInt8] {
        let handle = FileHandle(forReadingAtPath: path)!
        defer { try? handle.close() }
        try? handle.seek(toOffset: UInt64(offset))
        return Array(handle.readData(ofLength: count))
    }

    func fileBytes(_ path: String, offset: Int, count: Int) -> [UInt8] { Self.fileBytes(path, offset: offset, count: count) }

    /// Waits (up to 10 s) for a backend state.
    func backendState(_ d: Disk, is state: String) async throws -> Bool {
        let store = d.host.tools.toolstack.store
        for _ in 0..<1000 {
            if (try? await store.readString(XenStorePath(d.device.backendPath + "/state"))) == state { return true }
            try await Task.sleep(for: .milliseconds(10))
        }
        return false
    }

    @Test("negotiation uses every feature offered: 16-page rings, 2 queues, persistent grants, 128 indirect segments, flush, barrier, discard")
    func negotiated() async throws {
        var options = BlockFront.Options()
        options.queues = 2
        let d = try await disk(options: options)
        let i = d.disk.info
        #expect(i.sectors == 8192 && i.sectorSize == 512 && i.physicalSectorSize == 512 && !i.readOnly && i.trusted)
        #expect(i.ringPages == 16 && i.queues == 2 && i.persistentGrants && i.flush && i.barrier)
        #expect(i.indirectSegments == 128 && i.discard == BlockFront.Discard(granularity: 4096, alignment: 0, secure: false))
        let store = d.host.tools.toolstack.store
        let fe = d.device.frontendPath
        #expect(try await store.readString(XenStorePath(fe + "/ring-page-order")) == "4")
        #expect(try await store.readString(XenStorePath(fe + "/multi-queue-num-queues")) == "2")
        #expect(try await store.readString(XenStorePath(fe + "/queue-1/ring-ref15")) != "")
        #expect(try await store.readString(XenStorePath(fe + "/queue-1/event-channel")) != "")
        await #expect(throws: XenStoreError.noEntry(fe + "/ring-ref"), "no top-level ring-ref with queues") {
            try await store.readString(XenStorePath(fe + "/ring-ref"))
        }
        #expect(try await store.readString(XenStorePath(fe + "/feature-persistent")) == "1")
        await d.disk.close()
    }

    @Test("a new frontend on a device an earlier one closed: connects again with fewer queues, no stale queue keys left (found on real Xen)")
    func secondFrontend() async throws {
        var options = BlockFront.Options()
        options.queues = 2
        let d = try await disk(options: options)
        try await d.disk.write(sector: 0, Array(repeating: 9, count: 4096))
        await d.disk.close()
        options.queues = 1
        options.ringPageOrder = 0
        let again = try await BlockFront.connect(platform: d.guest, store: try d.guest.xenstore(), id: 51712, options: options)
        #expect(again.info.queues == 1 && again.info.ringPages == 1)
        #expect(try await again.read(sector: 0, count: 4096) == Array(repeating: 9, count: 4096))
        let store = d.host.tools.toolstack.store
        let keys = try await store.directory(XenStorePath(d.device.frontendPath))
        #expect(!keys.contains("queue-1") && !keys.contains("multi-queue-num-queues") && !keys.contains("ring-ref3"), "\(keys)")
        await again.close()
    }

    @Test("with every feature off on the backend: one page, one queue, 11 segments, grants per request")
    func minimalBackend() async throws {
        let d = try await disk(settings: .minimal)
        let i = d.disk.info
        #expect(i.ringPages == 1 && i.queues == 1 && !i.persistentGrants && i.indirectSegments == 0 && !i.flush && !i.barrier && i.discard == nil)
        let store = d.host.tools.toolstack.store
        #expect(try await store.readString(XenStorePath(d.device.frontendPath + "/ring-ref")) != "")
        await #expect(throws: XenStoreError.noEntry(d.device.frontendPath + "/ring-page-order"), "one page: no ring-page-order") {
            try await store.readString(XenStorePath(d.device.frontendPath + "/ring-page-order"))
        }
        await #expect(throws: BlockFrontError.notSupported("flush")) { try await d.disk.flush() }
        await #expect(throws: BlockFrontError.notSupported("discard")) { try await d.disk.discard(sector: 0, count: 4096) }
        await #expect(throws: BlockFrontError.notSupported("barrier")) { try await d.disk.write(sector: 0, Array(repeating: 1, count: 512), barrier: true) }
        let data = (0..<200_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        try await d.disk.write(sector: 9, Array(data.prefix(199_680)))
        #expect(try await d.disk.read(sector: 9, count: 199_680) == Array(data.prefix(199_680)))
        await d.disk.close()
    }

    /// Backend settings × frontend options, each run through the same random workload.
    static let combinations: [(String, BlockBackend.Settings, BlockFront.Options)] = {
        var rows: [(String, BlockBackend.Settings, BlockFront.Options)] = []
        rows.append(("everything", .init(), .init()))
        rows.append(("nothing", .minimal, .minimal))
        var s = BlockBackend.Settings()
        s.persistent = false
        rows.append(("no persistent grants", s, .init()))
        s = .init(); s.maxIndirectSegments = 0
        rows.append(("no indirect", s, .init()))
        var o = BlockFront.Options(); o.queues = 4
        rows.append(("4 queues", .init(), o))
        o = .init(); o.queues = 1; o.ringPageOrder = 0
        rows.append(("1 queue, 1 page", .init(), o))
        s = .init(); s.sectorSize = 4096; s.physicalSectorSize = 4096
        rows.append(("4 KiB sectors", s, .init()))
        s = .init(); s.direct = true
        rows.append(("O_DIRECT (8 I/O threads per queue)", s, .init()))
        s = .init(); s.ioThreads = 4
        rows.append(("page cache, 4 I/O threads per queue", s, .init()))
        o = .init(); o.indirectSegments = 32; o.pages = 96
        rows.append(("32 segments, 96-page budget", .init(), o))
        return rows
    }()

    @Test("random writes, reads and flushes match a model and the backing file byte for byte", arguments: 0..<combinations.count)
    func dataSafety(row: Int) async throws {
        let (name, settings, options) = Self.combinations[row]
        let d = try await disk(settings: settings, options: options)
        let size = 4 << 20
        var model = fileBytes(d.path, offset: 0, count: size)
        var rng = SeededBytes(seed: UInt64(row) + 7)
        let unit = settings.sectorSize
        for round in 0..<60 {
            let blocks = Int(rng.nextWord() % 160) + 1
            let offset = Int(rng.nextWord() % UInt64(size / unit - blocks)) * unit
            let count = blocks * unit
            switch rng.nextWord() % 3 {
            case 0:
                let got = try await d.disk.read(sector: UInt64(offset / 512), count: count)
                #expect(got == Array(model[offset..<offset + count]), "\(name): read \(count) at \(offset), round \(round)")
            default:
                let data = (0..<count).map { _ in UInt8(truncatingIfNeeded: rng.nextWord()) }
                try await d.disk.write(sector: UInt64(offset / 512), data)
                model.replaceSubrange(offset..<offset + count, with: data)
            }
            if round % 20 == 19, d.disk.info.flush { try await d.disk.flush() }
        }
        // Concurrent writers on disjoint ranges, then everything read back at once.
        try await withThrowingTaskGroup(of: Void.self) { group in
            for i in 0..<16 {
                let data = [UInt8](repeating: UInt8(i + 1), count: 64 * 1024)
                model.replaceSubrange(i * 65536..<(i + 1) * 65536, with: data)
                group.addTask { try await d.disk.write(sector: UInt64(i * 128), data) }
            }
            try await group.waitForAll()
        }
        if d.disk.info.flush { try await d.disk.flush() }
        #expect(try await d.disk.read(sector: 0, count: size) == model, "\(name): the whole disk through the frontend")
        #expect(fileBytes(d.path, offset: 0, count: size) == model, "\(name): the whole backing file")
        await d.disk.close()
        #expect(d.host.tools.hypervisor.status.grantsMapped == 0, "\(name): nothing left mapped")
        #expect(d.disk.statistics.pagesHeldByBackend == 0)
    }

    @Test("a transfer three times the guest's memory: the page budget is back-pressure, every byte right")
    func largerThanMemory() async throws {
        let d = try await disk()
        #expect(d.guest.info.pages * 4096 < 3 << 20, "the guest has 1 MiB")
        let data = (0..<(3 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ ($0 >> 12)) }
        try await d.disk.write(sector: 0, data)
        try await d.disk.flush()
        #expect(fileBytes(d.path, offset: 0, count: data.count) == data)
        #expect(try await d.disk.read(sector: 0, count: data.count) == data)
        await d.disk.close()
    }

    @Test("100 requests at once through a one-page ring (32 slots): back-pressure, every byte where it belongs")
    func concurrent() async throws {
        let d = try await disk(options: .minimal)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for i in 0..<100 {
                group.addTask { try await d.disk.write(sector: UInt64(i * 8), Array(repeating: UInt8(i), count: 4096)) }
            }
            try await group.waitForAll()
        }
        for i in 0..<100 { #expect(fileBytes(d.path, offset: i * 4096, count: 4096) == Array(repeating: UInt8(i), count: 4096)) }
        #expect(d.backend.served >= 100)
        await d.disk.close()
    }

    @Test("bad requests are refused before they reach the backend: misaligned, past the end, a 4 KiB disk's 512-byte write")
    func refusals() async throws {
        let d = try await disk()
        await #expect(throws: BlockFrontError.misaligned(sector: 0, count: 100, sectorSize: 512)) { _ = try await d.disk.read(sector: 0, count: 100) }
        await #expect(throws: BlockFrontError.outOfRange(sector: 8190, count: 4096, sectors: 8192)) { _ = try await d.disk.read(sector: 8190, count: 4096) }
        await #expect(throws: BlockFrontError.outOfRange(sector: 9000, count: 512, sectors: 8192)) { _ = try await d.disk.read(sector: 9000, count: 512) }
        await d.disk.close()
        var settings = BlockBackend.Settings()
        settings.sectorSize = 4096
        let big = try await disk(settings: settings)
        #expect(big.disk.info.sectorSize == 4096 && big.disk.info.sectors == 8192, "sectors stay in 512-byte units")
        await #expect(throws: BlockFrontError.misaligned(sector: 1, count: 4096, sectorSize: 4096)) { _ = try await big.disk.read(sector: 1, count: 4096) }
        await #expect(throws: BlockFrontError.misaligned(sector: 0, count: 512, sectorSize: 4096)) {
            try await big.disk.write(sector: 0, Array(repeating: 0, count: 512))
        }
        await big.disk.close()
    }

    @Test("blkback refuses impossible settings with a message: -1 I/O threads, polling for −5 µs, a 1000-byte sector, ring order 9")
    func badSettings() async throws {
        for (change, words) in [
            ({ (s: inout BlockBackend.Settings) in s.ioThreads = -1 }, "I/O threads"),
            ({ (s: inout BlockBackend.Settings) in s.pollMicroseconds = -5 }, "polling"),
            ({ (s: inout BlockBackend.Settings) in s.sectorSize = 1000 }, "sector size"),
            ({ (s: inout BlockBackend.Settings) in s.maxRingPageOrder = 9 }, "ring order")
        ] {
            var settings = BlockBackend.Settings()
            change(&settings)
            do {
                _ = try await backend(settings: settings)
                Issue.record("accepted: \(words)")
            } catch {
                #expect("\(error)".contains(words), "\(error)")
            }
        }
    }

    @Test("read-only and removable disks: info bits; the frontend refuses writes and discards; reads work")
    func readOnly() async throws {
        var settings = BlockBackend.Settings()
        settings.readOnly = true
        settings.removable = true
        let d = try await disk(settings: settings)
        #expect(d.disk.info.readOnly && d.disk.info.removable && !d.disk.info.cdrom)
        await #expect(throws: BlockFrontError.readOnly) { try await d.disk.write(sector: 0, Array(repeating: 0, count: 512)) }
        await #expect(throws: BlockFrontError.readOnly) { try await d.disk.discard(sector: 0, count: 4096) }
        #expect(try await d.disk.read(sector: 0, count: 512) == fileBytes(d.path, offset: 0, count: 512))
        await d.disk.close()
    }

    @Test("discard punches a hole: the range reads back as zeros and the file gives the blocks back")
    func discard() async throws {
        let d = try await disk()
        func blocks() -> Int { var s = stat(); stat(d.path, &s); return Int(s.st_blocks) }
        let before = blocks()
        try await d.disk.discard(sector: 2048, count: 1 << 20)
        #expect(try await d.disk.read(sector: 2048, count: 1 << 20) == [UInt8](repeating: 0, count: 1 << 20))
        #expect(fileBytes(d.path, offset: 1 << 20, count: 1 << 20) == [UInt8](repeating: 0, count: 1 << 20))
        #expect(blocks() <= before - 2048 + 16, "about 1 MiB of blocks freed (\(before) → \(blocks()))")
        #expect(try await d.disk.read(sector: 0, count: 4096) == fileBytes(d.path, offset: 0, count: 4096), "around it, untouched")
        await d.disk.close()
    }

    @Test("a barrier write waits for the writes before it and holds back the ones after it")
    func barrier() async throws {
        let d = try await disk()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for i in 0..<8 { group.addTask { try await d.disk.write(sector: UInt64(i * 64), [UInt8](repeating: 0xA0 | UInt8(i), count: 32768)) } }
            group.addTask { try await d.disk.write(sector: 4000, [UInt8](repeating: 0xBB, count: 8192), barrier: true) }
            for i in 0..<8 { group.addTask { try await d.disk.write(sector: UInt64(5000 + i * 64), [UInt8](repeating: 0xC0 | UInt8(i), count: 32768)) } }
            try await group.waitForAll()
        }
        #expect(fileBytes(d.path, offset: 4000 * 512, count: 8192) == [UInt8](repeating: 0xBB, count: 8192))
        for i in 0..<8 {
            #expect(fileBytes(d.path, offset: i * 32768, count: 32768) == [UInt8](repeating: 0xA0 | UInt8(i), count: 32768))
            #expect(fileBytes(d.path, offset: (5000 + i * 64) * 512, count: 32768) == [UInt8](repeating: 0xC0 | UInt8(i), count: 32768))
        }
        await d.disk.close()
    }

    @Test("trusted = 0: pages carry nothing of an earlier request (zeroed before reuse)")
    func untrusted() async throws {
        let (host, guest, device, backend, path) = try await backend()
        try await host.tools.toolstack.store.write(XenStorePath(device.frontendPath + "/trusted"), "0")
        let disk = try await BlockFront.connect(platform: guest, store: try guest.xenstore(), id: 51712)
        #expect(!disk.info.trusted)
        // A full page written, then a 512-byte write: with zeroing, the rest of its page (seen
        // by the backend through the persistent grant) is zeros, not the earlier data.
        try await disk.write(sector: 0, [UInt8](repeating: 0xEE, count: 4096 * 8))
        try await disk.write(sector: 100, [UInt8](repeating: 0x11, count: 512))
        #expect(Self.fileBytes(path, offset: 100 * 512, count: 512) == [UInt8](repeating: 0x11, count: 512))
        let held = host.tools.hypervisor.mappedPages(of: guest.domain, by: .dom0)
        #expect(!held.isEmpty, "persistent grants are mapped by the backend")
        let leaked = held.contains { page in
            UnsafeRawBufferPointer(start: page, count: 4096).contains(0xEE) && UnsafeRawBufferPointer(start: page, count: 4096).contains(0x11)
        }
        #expect(!leaked, "no page holds bytes of both requests")
        await disk.close()
        await backend.stop()
    }

    /// Whether some page the backend maps is `page` itself (same memory, not a copy): a marker
    /// written here shows up there.
    static func backendMaps(_ page: UnsafeMutableRawPointer, host: ReferencePlatformTests.Host, guest: ReferencePlatform) -> Bool {
        let saved = page.loadUnaligned(as: UInt64.self)
        defer { page.storeBytes(of: saved, as: UInt64.self) }
        page.storeBytes(of: 0x5EED_CAFE_F00D_D00D, as: UInt64.self)
        return host.tools.hypervisor.mappedPages(of: guest.domain, by: .dom0).contains { $0.loadUnaligned(as: UInt64.self) == 0x5EED_CAFE_F00D_D00D }
    }

    @Test(
        "BlockBuffer: the backend reads and writes its pages in place; data right at every offset, with and without persistent grants and indirect segments",
        arguments: [0, 1, 2])
    func blockBuffer(row: Int) async throws {
        var settings = BlockBackend.Settings()
        if row == 1 { settings.persistent = false }
        if row == 2 { settings.maxIndirectSegments = 0 }
        let d = try await disk(settings: settings, pages: 2048)
        let buffer = try await d.disk.makeBuffer(byteCount: 1 << 20)
        #expect(buffer.bytes.count == 1 << 20 && Int(bitPattern: buffer.bytes.baseAddress) % 4096 == 0)
        // Reads: the whole buffer, and a window of it.
        try await d.disk.read(at: 64, into: buffer)
        #expect(Array(buffer.bytes) == fileBytes(d.path, offset: 64 * 512, count: 1 << 20))
        try await d.disk.read(at: 3, into: buffer, byteOffset: 8192, count: 5 * 512)
        #expect(Array(buffer.bytes[8192..<8192 + 2560]) == fileBytes(d.path, offset: 3 * 512, count: 2560))
        // Writes from a window, then the whole buffer; the file and a copied read agree.
        for i in 0..<buffer.bytes.count { buffer.bytes[i] = UInt8(truncatingIfNeeded: i &* 7 &+ row) }
        try await d.disk.write(at: 2048, from: buffer, byteOffset: 4096 * 3, count: 4096 * 40)
        #expect(fileBytes(d.path, offset: 2048 * 512, count: 4096 * 40) == Array(buffer.bytes[4096 * 3..<4096 * 43]))
        try await d.disk.write(at: 4096, from: buffer)
        #expect(fileBytes(d.path, offset: 4096 * 512, count: 1 << 20) == Array(buffer.bytes))
        #expect(try await d.disk.read(sector: 4096, count: 1 << 20) == Array(buffer.bytes))
        if settings.persistent {
            #expect(Self.backendMaps(buffer.bytes.baseAddress!, host: d.host, guest: d.guest), "the backend maps the buffer itself")
        }
        await d.disk.close()
        #expect(d.host.tools.hypervisor.status.grantsMapped == 0, "nothing left mapped after close")
    }

    @Test("BlockBuffer misuse is refused with badBuffer: an offset not on a page, a range past its end, another device's buffer")
    func blockBufferMisuse() async throws {
        let d = try await disk(pages: 2048)
        let buffer = try await d.disk.makeBuffer(byteCount: 16384)
        /// The error must be `.badBuffer` (not some other refusal).
        func expectBadBuffer(_ body: () async throws(BlockFrontError) -> Void) async {
            do {
                try await body()
                Issue.record("accepted")
            } catch {
                guard case .badBuffer = error else { Issue.record("\(error)"); return }
            }
        }
        await expectBadBuffer { () throws(BlockFrontError) in try await d.disk.read(at: 0, into: buffer, byteOffset: 512, count: 512) }
        await expectBadBuffer { () throws(BlockFrontError) in try await d.disk.read(at: 0, into: buffer, byteOffset: 8192, count: 12288) }
        await expectBadBuffer { () throws(BlockFrontError) in _ = try await d.disk.makeBuffer(byteCount: 0) }
        // A second device of the same guest.
        let device = Toolstack.Device(type: "vbd", frontend: d.guest.domain, devid: 51728)
        try await d.host.tools.toolstack.addDevice(device)
        let backend = try await BlockBackend.start(toolstack: d.host.tools.toolstack, device: device, path: d.path, settings: .init())
        let other = try await BlockFront.connect(platform: d.guest, store: try d.guest.xenstore(), id: 51728)
        do {
            try await other.read(at: 0, into: buffer)
            Issue.record("another device's buffer was accepted")
        } catch {
            guard case .badBuffer = error else { Issue.record("\(error)"); return }
        }
        await other.close()
        await backend.stop()
        await d.disk.close()
    }

    @Test("a BlockBuffer whose pages a backend keeps mapped after it goes away: kept, counted, never given out again")
    func blockBufferHeld() async throws {
        var settings = BlockBackend.Settings()
        settings.hostile = .keepGrantsAfterClose
        let d = try await disk(settings: settings, pages: 1024)
        do {
            let buffer = try await d.disk.makeBuffer(byteCount: 16 * 4096)
            try await d.disk.read(at: 0, into: buffer)
            #expect(Array(buffer.bytes) == fileBytes(d.path, offset: 0, count: 16 * 4096))
        }
        await d.disk.close()
        let held = d.disk.statistics.pagesHeldByBackend
        #expect(held >= 16, "the buffer's 16 pages are among those held")
        #expect(d.host.tools.hypervisor.status.grantsMapped == held, "exactly the ones the backend maps")
        #expect(d.guest.availablePages == d.guest.info.pages - 1 - held, "and not given out again")
        await d.backend.stop()
    }

    @Test("a BlockBuffer's pages are revoked when it goes away; with trusted = 0 the backend never gets them (bounce pages)")
    func blockBufferLifetime() async throws {
        let (host, guest, device, backend, path) = try await backend()
        try await host.tools.toolstack.store.write(XenStorePath(device.frontendPath + "/trusted"), "0")
        let disk = try await BlockFront.connect(platform: guest, store: try guest.xenstore(), id: 51712)
        let before = guest.availablePages
        let during: Int
        do {
            let buffer = try await disk.makeBuffer(byteCount: 64 * 4096)
            #expect(guest.availablePages == before - 64)
            try await disk.read(at: 8, into: buffer)
            #expect(Array(buffer.bytes) == Self.fileBytes(path, offset: 8 * 512, count: 64 * 4096))
            #expect(!Self.backendMaps(buffer.bytes.baseAddress!, host: host, guest: guest), "an untrusted backend does not map the buffer")
            for i in 0..<buffer.bytes.count { buffer.bytes[i] = UInt8(truncatingIfNeeded: i >> 3) }
            try await disk.write(at: 800, from: buffer)
            #expect(Self.fileBytes(path, offset: 800 * 512, count: 64 * 4096) == Array(buffer.bytes))
            // The bounce pages stay granted (persistent); the buffer's own pages come back.
            during = guest.availablePages
        }
        #expect(guest.availablePages == during + 64, "the buffer's pages are back")
        await disk.close()
        await backend.stop()
    }

    @Test("closing: the backend disconnects (Closed) and unmaps everything; every page revoked; later I/O fails cleanly")
    func close() async throws {
        let d = try await disk()
        _ = try await d.disk.read(sector: 0, count: 1 << 20)
        await d.disk.close()
        #expect(try await backendState(d, is: "6"))
        #expect(d.host.tools.hypervisor.status.grantsMapped == 0, "no grant left mapped")
        #expect(d.disk.statistics.pagesHeldByBackend == 0)
        #expect(d.guest.availablePages == d.guest.info.pages - 1, "every page back (all but the xenstore ring)")
        await #expect(throws: BlockFrontError.self) { _ = try await d.disk.read(sector: 0, count: 512) }
    }

    @Test("cancelling a task while its requests wait for pages: it ends with cancelled, nothing is left granted, the rest completes")
    func cancellation() async throws {
        var options = BlockFront.Options()
        options.pages = 24  // two requests of 11 pages in flight at most
        options.indirectSegments = 0
        let d = try await disk(options: options)
        let big = Task { try await d.disk.read(sector: 0, count: 4 << 20) }
        let small = Task { try await d.disk.read(sector: 0, count: 4096) }
        try await Task.sleep(for: .milliseconds(2))
        big.cancel()
        let outcome = await big.result
        if case let .failure(error) = outcome {
            #expect(error as? BlockFrontError == .cancelled)
        } else {
            Issue.record("the 4 MiB read finished before the cancel landed; nothing to check")
        }
        #expect(try await small.value == fileBytes(d.path, offset: 0, count: 4096))
        #expect(try await d.disk.read(sector: 8, count: 4096) == fileBytes(d.path, offset: 4096, count: 4096), "the device works on")
        await d.disk.close()
        #expect(d.guest.availablePages == d.guest.info.pages - 1, "every page back")
    }

    @Test("the backend restarts mid-workload: requests in flight are re-issued on the new rings; nothing lost, nothing out of place")
    func reconnect() async throws {
        let d = try await disk()
        let done = Counter()
        // 16 writers, each writing its own blocks in turn: requests are in flight all the time.
        let writers = Task {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for w in 0..<16 {
                    group.addTask {
                        for i in 0..<30 {
                            let block = w * 30 + i
                            try await d.disk.write(sector: UInt64(block * 16), [UInt8](repeating: UInt8(block % 251 + 1), count: 8192))
                            _ = done.increment()
                        }
                    }
                }
                try await group.waitForAll()
            }
        }
        while done.value < 100 { try await Task.sleep(for: .milliseconds(1)) }
        await d.backend.stop()
        // Started again once the frontend has seen it go (Closed); see NetLifecycleTests.
        let store = d.host.tools.toolstack.store
        for _ in 0..<500 where (try? await store.readString(XenStorePath(d.device.frontendPath + "/state"))) != "6" {
            try await Task.sleep(for: .milliseconds(10))
        }
        let again = try await BlockBackend.start(toolstack: d.host.tools.toolstack, device: d.device, path: d.path)
        try await writers.value
        #expect(d.disk.statistics.connections == 2, "connected twice")
        #expect(d.disk.statistics.reissued > 0, "requests were in flight at the restart and went out again")
        try await d.disk.flush()
        for block in 0..<480 {
            #expect(fileBytes(d.path, offset: block * 8192, count: 8192) == [UInt8](repeating: UInt8(block % 251 + 1), count: 8192), "block \(block)")
        }
        await d.disk.close()
        await again.stop()
    }

    @Test(
        "a lying backend closes the device with a typed error; pvhost and the frontend survive",
        arguments: [BlockBackend.HostileMode.unknownID, .garbageStatus, .wrongOperation, .duplicateResponse, .responseProducerAhead])
    func lyingBackend(mode: BlockBackend.HostileMode) async throws {
        var settings = BlockBackend.Settings()
        settings.hostile = mode
        let d = try await disk(settings: settings)
        var failure: BlockFrontError?
        for sector: UInt64 in [0, 8, 16, 24, 32] where failure == nil {
            do { _ = try await d.disk.read(sector: sector, count: 4096) } catch { failure = error }
        }
        guard case .backendMisbehaved? = failure else { Issue.record("\(mode): expected backendMisbehaved, got \(String(describing: failure))"); return }
        await #expect(throws: BlockFrontError.self) { _ = try await d.disk.read(sector: 0, count: 512) }
        #expect(d.host.tools.hypervisor.domain(d.guest.domain) != nil, "the host lives on")
        // The device closes itself: the backend is told (Closing) and lets go.
        #expect(try await backendState(d, is: "6"), "the backend closed too")
        let error = try? await d.host.tools.toolstack.store.readString(XenStorePath("/local/domain/\(d.guest.domain.rawValue)/error/device/vbd/51712/error"))
        #expect(error?.contains("broke the protocol") == true, "the reason is in xenstore: \(error ?? "nothing")")
    }

    @Test("a response rewritten after publishing: each response is read once; the data stays right or the device closes")
    func rewrittenResponse() async throws {
        var settings = BlockBackend.Settings()
        settings.hostile = .rewriteAfterPublish
        let d = try await disk(settings: settings)
        for sector: UInt64 in stride(from: 0, to: 400, by: 8) {
            do {
                #expect(try await d.disk.read(sector: sector, count: 4096) == fileBytes(d.path, offset: Int(sector) * 512, count: 4096))
            } catch {
                guard case .backendMisbehaved = error else { Issue.record("unexpected \(error)"); return }
                break
            }
        }
        await d.disk.close()
    }

    @Test("an event storm (1000 notifications per response) is absorbed: data right, the frontend unharmed")
    func eventStorm() async throws {
        var settings = BlockBackend.Settings()
        settings.hostile = .eventStorm
        let d = try await disk(settings: settings)
        for sector: UInt64 in stride(from: 0, to: 800, by: 8) {
            #expect(try await d.disk.read(sector: sector, count: 4096) == fileBytes(d.path, offset: Int(sector) * 512, count: 4096))
        }
        await d.disk.close()
    }

    @Test("a backend that never answers: the request timeout closes the device; no hang")
    func neverAnswers() async throws {
        var settings = BlockBackend.Settings()
        settings.hostile = .neverAnswer
        var options = BlockFront.Options()
        options.requestTimeout = .milliseconds(300)
        let d = try await disk(settings: settings, options: options)
        await #expect(throws: BlockFrontError.timedOut(seconds: 0.3)) { _ = try await d.disk.read(sector: 0, count: 4096) }
        await #expect(throws: BlockFrontError.self) { _ = try await d.disk.read(sector: 0, count: 512) }
        #expect(try await backendState(d, is: "6"))
    }

    @Test("a backend that vanishes mid-request: requests fail when it does not come back; no hang")
    func vanishes() async throws {
        var settings = BlockBackend.Settings()
        settings.hostile = .vanish
        var options = BlockFront.Options()
        options.reconnectTimeout = .milliseconds(500)
        let d = try await disk(settings: settings, options: options)
        do {
            _ = try await d.disk.read(sector: 0, count: 4096)
            Issue.record("the read succeeded against a backend that vanished")
        } catch {
            guard case .closed = error else { Issue.record("expected closed, got \(error)"); return }
        }
    }

    @Test("absurd limits in xenstore (ring order 99, 100 000 queues, 2^32−1 segments) are clamped; the disk works")
    func absurdLimits() async throws {
        var settings = BlockBackend.Settings()
        settings.hostile = .absurdLimits
        var options = BlockFront.Options()
        options.queues = 2
        let d = try await disk(settings: settings, options: options)
        #expect(d.disk.info.ringPages == 16 && d.disk.info.queues == 2 && d.disk.info.indirectSegments == 128)
        #expect(try await d.disk.read(sector: 0, count: 1 << 20) == fileBytes(d.path, offset: 0, count: 1 << 20))
        await d.disk.close()
    }

    @Test("sectors = 0: the frontend refuses the disk with a clear error")
    func zeroSectors() async throws {
        var settings = BlockBackend.Settings()
        settings.hostile = .zeroSectors
        let (host, guest, _, backend, _) = try await backend(settings: settings)
        await #expect(throws: BlockFrontError.backendMisbehaved("sectors is missing or 0")) {
            _ = try await BlockFront.connect(platform: guest, store: try guest.xenstore(), id: 51712)
        }
        #expect(host.tools.hypervisor.domain(guest.domain) != nil)
        await backend.stop()
    }

    @Test("a backend that keeps grants mapped after close: the frontend keeps those pages (never reused), reports them, survives")
    func grantsKept() async throws {
        var settings = BlockBackend.Settings()
        settings.hostile = .keepGrantsAfterClose
        // One ring: each ring of blkback keeps its own persistent grants, so with two a page
        // the device reused on both is mapped twice and the counts below would differ.
        var options = BlockFront.Options()
        options.queues = 1
        let d = try await disk(settings: settings, options: options)
        _ = try await d.disk.read(sector: 0, count: 256 * 1024)
        await d.disk.close()
        let held = d.disk.statistics.pagesHeldByBackend
        #expect(held > 0, "pages the backend still maps are held")
        #expect(d.host.tools.hypervisor.status.grantsMapped == held, "exactly the ones it maps")
        #expect(d.guest.availablePages == d.guest.info.pages - 1 - held, "and not given out again")
        await d.backend.stop()
        #expect(d.host.tools.hypervisor.status.grantsMapped == 0)
    }
}

/// A small deterministic byte generator (xorshift).
struct SeededBytes {
    var state: UInt64
    init(seed: UInt64) { state = seed | 1 }
    mutating func nextWord() -> UInt64 {
        state ^= state << 13
        state ^= state >> 7
        state ^= state << 17
        return state
    }
}
