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

/// BlockFront in a guest against pvhost's file-backed BlockBack, end to end: real ring page,
/// real grants, real event channels, a real file.
@Suite("blkfront ↔ blkback on pvhost", .serialized)
struct BlockConformanceTests {
    struct Disk {
        let host: ReferencePlatformTests.Host
        let guest: ReferencePlatform
        let backend: BlockBackend
        let disk: BlockFront
        let path: String
    }

    /// A 4 MiB file of seeded bytes, served as vbd 51712 of a new guest.
    func disk(settings: BlockBackend.Settings = BlockBackend.Settings()) async throws -> Disk {
        let host = try ReferencePlatformTests.Host()
        let path = host.tools.directory + "/disk.img"
        var generator = SeededBytes(seed: 42)
        var words = [UInt64](repeating: 0, count: (4 << 20) / 8)
        for i in words.indices { words[i] = generator.nextWord() }
        FileManager.default.createFile(atPath: path, contents: words.withUnsafeBytes { Data($0) })
        let guest = try ReferencePlatform.attach(socket: host.control, name: "g")
        let device = Toolstack.Device(type: "vbd", frontend: guest.domain, devid: 51712)
        try await host.tools.toolstack.addDevice(device, frontendKeys: ["virtual-device": "51712", "device-type": "disk"],
                                                 backendKeys: ["params": path, "type": "file"])
        let backend = try await BlockBackend.start(toolstack: host.tools.toolstack, device: device, path: path, settings: settings)
        let disk = try await BlockFront.connect(platform: guest, store: try guest.xenstore(), id: 51712)
        return Disk(host: host, guest: guest, backend: backend, disk: disk, path: path)
    }

    func fileBytes(_ path: String, offset: Int, count: Int) -> [UInt8] {
        let handle = FileHandle(forReadingAtPath: path)!
        defer { try? handle.close() }
        try? handle.seek(toOffset: UInt64(offset))
        return Array(handle.readData(ofLength: count))
    }

    @Test("the disk's size and features; reads equal the file; writes land in the file; flush")
    func readWrite() async throws {
        let d = try await disk()
        #expect(d.disk.info.sectors == 8192 && d.disk.info.sectorSize == 512 && d.disk.info.flush && !d.disk.info.readOnly)
        #expect(try await d.disk.read(sector: 0, count: 8192) == fileBytes(d.path, offset: 0, count: 8192))
        // 100 KiB spans several requests of 11 segments.
        let data = (0..<102_400).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }
        try await d.disk.write(sector: 100, data)
        try await d.disk.flush()
        #expect(fileBytes(d.path, offset: 100 * 512, count: data.count) == data, "in the backing file after flush")
        #expect(try await d.disk.read(sector: 100, count: data.count) == data)
        #expect(try await d.disk.read(sector: 8191, count: 512) == fileBytes(d.path, offset: 8191 * 512, count: 512), "the last sector")
    }

    @Test("a transfer three times the guest's own memory: requests windowed, pages reused, every byte right")
    func largerThanMemory() async throws {
        let d = try await disk()
        #expect(d.guest.info.pages * 4096 < 3 << 20, "the guest has 1 MiB")
        let data = (0..<(3 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ ($0 >> 12)) }
        try await d.disk.write(sector: 0, data)
        try await d.disk.flush()
        #expect(fileBytes(d.path, offset: 0, count: data.count) == data)
        #expect(try await d.disk.read(sector: 0, count: data.count) == data)
    }

    @Test("64 requests at once through a 32-slot ring: back-pressure, every byte where it belongs")
    func concurrent() async throws {
        let d = try await disk()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for i in 0..<64 {
                group.addTask { try await d.disk.write(sector: UInt64(i * 8), Array(repeating: UInt8(i), count: 4096)) }
            }
            try await group.waitForAll()
        }
        for i in 0..<64 { #expect(fileBytes(d.path, offset: i * 4096, count: 4096) == Array(repeating: UInt8(i), count: 4096)) }
        #expect(d.backend.served >= 64)
    }

    @Test("bad requests are refused before they reach the backend: misaligned, past the end")
    func refusals() async throws {
        let d = try await disk()
        await #expect(throws: BlockFrontError.misaligned(sector: 0, count: 100, sectorSize: 512)) { _ = try await d.disk.read(sector: 0, count: 100) }
        await #expect(throws: BlockFrontError.outOfRange(sector: 8190, count: 4096, sectors: 8192)) { _ = try await d.disk.read(sector: 8190, count: 4096) }
    }

    @Test("a read-only disk: the frontend refuses writes; reads work")
    func readOnly() async throws {
        var settings = BlockBackend.Settings()
        settings.readOnly = true
        let d = try await disk(settings: settings)
        #expect(d.disk.info.readOnly)
        await #expect(throws: BlockFrontError.readOnly) { try await d.disk.write(sector: 0, Array(repeating: 0, count: 512)) }
        #expect(try await d.disk.read(sector: 0, count: 512) == fileBytes(d.path, offset: 0, count: 512))
    }

    @Test("closing: the backend disconnects (Closed) and unmaps everything; later I/O fails cleanly")
    func close() async throws {
        let d = try await disk()
        await d.disk.close()
        let store = d.host.tools.toolstack.store
        var closed = false
        for _ in 0..<1000 where !closed {  // up to 10 s on a loaded machine
            closed = (try? await store.readString(XenStorePath("/local/domain/0/backend/vbd/\(d.guest.domain.rawValue)/51712/state"))) == "6"
            if !closed { try await Task.sleep(for: .milliseconds(10)) }
        }
        #expect(closed)
        #expect(d.host.tools.hypervisor.status.grantsMapped == 0, "no grant left mapped")
        await #expect(throws: BlockFrontError.self) { _ = try await d.disk.read(sector: 0, count: 512) }
    }

    @Test("a lying backend closes the device with a clear error; pvhost and the frontend survive", arguments: BlockBackend.HostileMode.allCases)
    func hostileBackend(mode: BlockBackend.HostileMode) async throws {
        var settings = BlockBackend.Settings()
        settings.hostile = mode
        let d = try await disk(settings: settings)
        var failure: BlockFrontError?
        // Two reads: the duplicate mode lies from the second response on.
        for sector: UInt64 in [0, 8] where failure == nil {
            do { _ = try await d.disk.read(sector: sector, count: 4096) } catch { failure = error }
        }
        guard case .backendMisbehaved? = failure else { Issue.record("\(mode): expected backendMisbehaved, got \(String(describing: failure))"); return }
        await #expect(throws: BlockFrontError.self) { _ = try await d.disk.read(sector: 0, count: 512) }
        #expect(d.host.tools.hypervisor.domain(d.guest.domain) != nil, "the host lives on")
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
