import Foundation
import PVPlatform
import Synchronization
import XenABI
import XenBus
import XenRing
import XenStore

/// A virtual disk seen through Xen's PV block protocol: the frontend of `device/vbd/<id>`.
/// It negotiates with the backend through XenBus, shares one ring page and an event channel,
/// and moves data through pages granted per request (zeroed before granting, revoked after
/// the response with try semantics). Responses are copied out of the ring once and checked:
/// an id that is not in flight, or a status outside the protocol, closes the device with
/// ``BlockFrontError/backendMisbehaved(_:)``.
///
/// ```swift
/// let disk = try await BlockFront.connect(platform: platform, store: store, id: 51712)
/// try await disk.write(sector: 0, Array(repeating: 7, count: 4096))
/// try await disk.flush()
/// ```
public final class BlockFront: Sendable {
    /// What the backend told us about the disk.
    public struct Info: Sendable, Equatable {
        /// Size in 512-byte sectors.
        public let sectors: UInt64
        /// Logical block size (alignment of every request, in bytes).
        public let sectorSize: Int
        public let readOnly: Bool
        public let flush: Bool
        public var bytes: UInt64 { sectors * UInt64(Blkif.sectorSize) }
    }

    public let info: Info
    private let core: Core
    private let xenbus: XenbusFrontend
    private let lifecycle: Task<Void, Never>

    /// Connects to the disk `device/vbd/<id>` of this domain (waits for the backend).
    public static func connect(platform: ReferencePlatform, store: XenStoreClient, id: Int) async throws(BlockFrontError) -> BlockFront {
        let core = Core(platform: platform, handle: UInt16(truncatingIfNeeded: id))
        let driver = Driver(core: core, store: store)
        let xenbus = XenbusFrontend(store: store, type: "vbd", id: id, driver: driver, connectsDirectly: false)
        let lifecycle = Task {
            do { try await xenbus.run() } catch { core.fail(.closed("\(error)")) }
            core.fail(.closed("the device was closed"))
        }
        let info = try await core.waitForConnection()
        return BlockFront(info: info, core: core, xenbus: xenbus, lifecycle: lifecycle)
    }

    private init(info: Info, core: Core, xenbus: XenbusFrontend, lifecycle: Task<Void, Never>) {
        self.info = info
        self.core = core
        self.xenbus = xenbus
        self.lifecycle = lifecycle
    }

    /// Reads `count` bytes at `sector` (both multiples of the sector size). Large reads go
    /// out as several requests at once (up to 11 pages each).
    public func read(sector: UInt64, count: Int) async throws(BlockFrontError) -> [UInt8] {
        try check(sector: sector, count: count)
        let chunks = Self.chunks(count)
        if chunks.count == 1 { return try await core.transfer(.read, sector: sector, bytes: count, data: nil) }
        let core = self.core
        do {
            let parts = try await withThrowingTaskGroup(of: (Int, [UInt8]).self) { group in
                var parts = [[UInt8]](repeating: [], count: chunks.count)
                var next = 0
                func start() {
                    guard next < chunks.count else { return }
                    let (index, (offset, length)) = (next, chunks[next])
                    next += 1
                    group.addTask { (index, try await core.transfer(.read, sector: sector + UInt64(offset / Blkif.sectorSize), bytes: length, data: nil)) }
                }
                for _ in 0..<Self.window { start() }
                while let (index, bytes) = try await group.next() {
                    parts[index] = bytes
                    start()
                }
                return parts
            }
            var result: [UInt8] = []
            result.reserveCapacity(count)
            for part in parts { result += part }
            return result
        } catch {
            throw error as? BlockFrontError ?? .closed("\(error)")
        }
    }

    /// Requests of one large transfer in flight at once (8 × 11 pages of this domain's memory).
    static let window = 8

    /// (offset, length) of each request a transfer of `count` bytes is split into.
    private static func chunks(_ count: Int) -> [(Int, Int)] {
        let most = Blkif.maxSegmentsPerRequest * XenPage.size
        return stride(from: 0, to: count, by: most).map { ($0, min(most, count - $0)) }
    }

    /// Writes `data` at `sector` (a multiple of the sector size long); the requests of a
    /// large write go out at once. Durable only after ``flush()``.
    public func write(sector: UInt64, _ data: [UInt8]) async throws(BlockFrontError) {
        guard !info.readOnly else { throw .readOnly }
        try check(sector: sector, count: data.count)
        let chunks = Self.chunks(data.count)
        if chunks.count == 1 {
            _ = try await core.transfer(.write, sector: sector, bytes: data.count, data: data)
            return
        }
        let core = self.core
        do {
            try await withThrowingTaskGroup(of: Void.self) { group in
                var next = 0
                func start() {
                    guard next < chunks.count else { return }
                    let (offset, length) = chunks[next]
                    next += 1
                    let part = Array(data[offset..<offset + length])
                    group.addTask { _ = try await core.transfer(.write, sector: sector + UInt64(offset / Blkif.sectorSize), bytes: length, data: part) }
                }
                for _ in 0..<Self.window { start() }
                while try await group.next() != nil { start() }
            }
        } catch {
            throw error as? BlockFrontError ?? .closed("\(error)")
        }
    }

    /// Commits the disk's volatile cache (BLKIF_OP_FLUSH_DISKCACHE); a no-op error when the
    /// backend offers no flush.
    public func flush() async throws(BlockFrontError) {
        guard info.flush else { throw .notSupported("flush") }
        _ = try await core.transfer(.flushDiskCache, sector: 0, bytes: 0, data: nil)
    }

    /// Closes the device (Closing → Closed); requests in flight fail.
    public func close() async {
        // Stop the handshake first, so its last state write (Connected) cannot land after
        // Closing and leave the backend connected.
        lifecycle.cancel()
        await lifecycle.value
        try? await xenbus.switchState(.closing)
        core.fail(.closed("closed by the frontend"))
    }

    private func check(sector: UInt64, count: Int) throws(BlockFrontError) {
        guard count > 0, count % info.sectorSize == 0, (sector * UInt64(Blkif.sectorSize)) % UInt64(info.sectorSize) == 0 else {
            throw .misaligned(sector: sector, count: count, sectorSize: info.sectorSize)
        }
        guard sector + UInt64(count / Blkif.sectorSize) <= info.sectors else { throw .outOfRange(sector: sector, count: count, sectors: info.sectors) }
    }
}

/// Why a block operation failed.
public enum BlockFrontError: Error, Equatable, Sendable, CustomStringConvertible {
    case misaligned(sector: UInt64, count: Int, sectorSize: Int)
    case outOfRange(sector: UInt64, count: Int, sectors: UInt64)
    case readOnly
    case notSupported(String)
    /// The backend answered BLKIF_RSP_ERROR.
    case ioError(sector: UInt64)
    /// The backend broke the protocol; the device is closed.
    case backendMisbehaved(String)
    /// The device is closed (by us, the backend, or the toolstack).
    case closed(String)
    case platform(String)

    public var description: String {
        switch self {
        case let .misaligned(sector, count, size): "\(count) bytes at sector \(sector) are not aligned to the \(size)-byte sector size"
        case let .outOfRange(sector, count, sectors): "\(count) bytes at sector \(sector) run past the disk's \(sectors) sectors"
        case .readOnly: "the disk is read-only"
        case let .notSupported(what): "the backend does not offer \(what)"
        case let .ioError(sector): "the backend reported an I/O error at sector \(sector)"
        case let .backendMisbehaved(what): "the backend broke the protocol (\(what)); the device is closed"
        case let .closed(why): "the device is closed: \(why)"
        case let .platform(what): what
        }
    }
}
