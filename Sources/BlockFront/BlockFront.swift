import Foundation
import PVPlatform
import PVSystem
import Synchronization
import XenABI
import XenBus
import XenStore

/// A virtual disk seen through Xen's PV block protocol: the frontend of `device/vbd/<id>`.
///
/// It negotiates with the backend through XenBus as Linux's blkfront does and uses every
/// feature the backend offers (and ``Options`` allows): multi-page rings, several queues,
/// persistent grants, indirect descriptors, flush, barrier, discard. Data moves through pages
/// of this domain's memory granted to the backend — never the caller's memory — copied in
/// before a write and out after a read. Responses are copied out of the ring once and checked:
/// an id that is not in flight, an operation that is not the request's, a status outside the
/// protocol or a `rsp_prod` past what was requested closes the device with
/// ``BlockFrontError/backendMisbehaved(_:)``.
///
/// Back-pressure, not errors: a request waits for ring slots and for pages of its budget.
/// When the backend restarts, requests in flight are re-issued on the new rings.
///
/// ```swift
/// let disk = try await BlockFront.connect(platform: platform, store: store, id: 51712)
/// try await disk.write(sector: 0, Array(repeating: 7, count: 4096))
/// try await disk.flush()
/// ```
public final class BlockFront: Sendable {
    /// What this frontend asks for; the backend's offer may give less.
    public struct Options: Sendable, Equatable {
        /// Rings wanted (default: one per processor).
        public var queues = ProcessInfo.processInfo.activeProcessorCount
        /// Pages per ring wanted, as an order (4 = 16 pages = 512 slots).
        public var ringPageOrder = 4
        public var persistentGrants = true
        /// Segments per request wanted beyond 11 (indirect descriptors); ≤ 11 turns them off.
        /// Transfers through a ``BlockBuffer`` use up to this many (fewer requests per byte);
        /// copied transfers at most ``copiedRequestSegments``.
        public var indirectSegments = 128
        /// Data pages the device may hold at once (its memory budget, 4 KiB each).
        public var pages = 1024
        /// A request not answered within this fails the device (nil: wait forever, as Linux).
        public var requestTimeout: Duration?
        /// How long each ring's completion thread keeps looking for responses, while requests
        /// are in flight, before it asks for a notification and sleeps (0: never polls; at most
        /// 10 000).
        public var pollMicroseconds = 0
        /// The event loops the rings run on (ring `i` on loop `i` modulo their count); tasks
        /// that prefer one of them (`Task(executorPreference:)`) submit on its thread and
        /// resume there when their requests complete, with no hop.
        public var eventLoops: EventLoopGroup = .shared
        /// Re-issue requests on a backend that restarts (Closed, then InitWait again).
        public var reconnect = true
        /// How long requests wait for a restarted backend before they fail.
        public var reconnectTimeout: Duration = .seconds(30)

        public init() {}

        /// No optional feature: one page, one queue, 11 segments, grants per request.
        public static var minimal: Options {
            var o = Options()
            o.queues = 1
            o.ringPageOrder = 0
            o.persistentGrants = false
            o.indirectSegments = 0
            return o
        }
    }

    /// Segments per request of a copied transfer: a large transfer then spans several requests,
    /// so our copy-out of one overlaps the backend's read of the next (a single 1 MiB request
    /// serialises them).
    public static let copiedRequestSegments = 32

    /// The discard parameters the backend published.
    public struct Discard: Sendable, Equatable {
        public let granularity: Int
        public let alignment: Int
        public let secure: Bool
        public init(granularity: Int, alignment: Int, secure: Bool) {
            self.granularity = granularity
            self.alignment = alignment
            self.secure = secure
        }
    }

    /// What the backend told us about the disk, and what was negotiated.
    public struct Info: Sendable, Equatable {
        /// Size in 512-byte sectors (changes when the backend announces a new capacity).
        public internal(set) var sectors: UInt64
        /// Logical block size (alignment of every request, in bytes).
        public let sectorSize: Int
        public let physicalSectorSize: Int
        public let readOnly: Bool
        public let removable: Bool
        public let cdrom: Bool
        public let flush: Bool
        public let barrier: Bool
        public let discard: Discard?
        public let persistentGrants: Bool
        /// Segments per indirect request; 0 when indirect descriptors are not in use.
        public let indirectSegments: Int
        public let queues: Int
        /// Pages per ring.
        public let ringPages: Int
        /// False when our `trusted` key is "0": pages are zeroed before every reuse.
        public let trusted: Bool
        public var bytes: UInt64 { sectors * UInt64(Blkif.sectorSize) }
    }

    /// Counters for tools and tests.
    public struct Statistics: Sendable, Equatable {
        /// Connections made (more than one after a backend restart).
        public let connections: Int
        /// Requests sent again after a backend restart.
        public let reissued: Int
        /// Notifications sent to the backend on the current rings.
        public let notificationsSent: Int
        /// Wake-ups that found no response.
        public let spuriousWakeups: Int
        /// Pages (ring and data) whose grant the backend has not let go.
        public let pagesHeldByBackend: Int
    }

    let core: Core
    private let closer: FrontendCloser<BlockFrontError>

    /// The loops of the current connection's rings, one per ring (a ring's loop runs the
    /// tasks that prefer it: see ``Options/eventLoops``).
    public var eventLoops: [EventLoop] { core.currentRings.map(\.loop) }

    /// The disk as negotiated on the current connection.
    public var info: Info { core.currentInfo! }
    public var statistics: Statistics { core.statistics }

    /// Connects to the disk `device/vbd/<id>` of this domain (waits for the backend).
    public static func connect(
        platform: any PVPlatform, store: XenStoreClient, id: Int,
        options: Options = Options()
    ) async throws(BlockFrontError) -> BlockFront {
        let core = Core(platform: platform, handle: UInt16(truncatingIfNeeded: id), options: options)
        let driver = Driver(core: core, store: store)
        let xenbus = XenbusFrontend(
            store: store, type: "vbd", id: id, driver: driver, connectsDirectly: false,
            reconnects: options.reconnect)
        let lifecycle = Task {
            do { try await xenbus.run() } catch { core.fail(.closed("\(error)")) }
            core.fail(.closed("the device was closed"))
        }
        let closer = FrontendCloser<BlockFrontError>(
            xenbus: xenbus, lifecycle: lifecycle,
            fail: { core.fail($0 ?? .closed("closed by the frontend")) },
            release: {
                // The rings' teardowns (posted to their loops) first.
                await options.eventLoops.waitForPostedWork()
                _ = core.drain()
            })
        // A device that fails on its own (a lying backend, a timeout) closes as if asked to.
        // Weak: the closer's closures hold the core, and a strong reference back would keep
        // both (and the platform's pages and ports) alive forever.
        core.onFailure = { [weak closer] error in
            switch error {
            case .backendMisbehaved, .timedOut: Task { await closer?.close(reason: error) }
            default: break  // closed by the backend, the toolstack or us: the handshake handles it
            }
        }
        do {
            _ = try await core.waitForConnection()
        } catch {
            await closer.close(reason: error)
            throw error
        }
        return BlockFront(core: core, closer: closer)
    }

    private init(core: Core, closer: FrontendCloser<BlockFrontError>) {
        self.core = core
        self.closer = closer
    }

    /// Reads `buffer.count` bytes at `sector` into `buffer` (offset and length multiples of
    /// the sector size). The buffer must stay valid until the call returns.
    public func read(at sector: UInt64, into buffer: UnsafeMutableRawBufferPointer) async throws(BlockFrontError) {
        try check(sector: sector, count: buffer.count)
        try await core.run(.read, sector: sector, count: buffer.count, buffer: buffer.baseAddress)
    }

    /// Writes `buffer` at `sector`; durable after ``flush()``.
    public func write(at sector: UInt64, from buffer: UnsafeRawBufferPointer, barrier: Bool = false) async throws(BlockFrontError) {
        let info = self.info
        guard !info.readOnly else { throw .readOnly }
        if barrier && !info.barrier { throw .notSupported("barrier") }
        try check(sector: sector, count: buffer.count)
        try await core.run(barrier ? .writeBarrier : .write, sector: sector, count: buffer.count, buffer: UnsafeMutableRawPointer(mutating: buffer.baseAddress))
    }

    /// Reads `count` bytes at `sector` into a new array.
    public func read(sector: UInt64, count: Int) async throws(BlockFrontError) -> [UInt8] {
        try check(sector: sector, count: count)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: count, alignment: XenPage.size)
        defer { buffer.deallocate() }
        try await read(at: sector, into: buffer)
        return Array(buffer)
    }

    /// Writes `data` at `sector` (a multiple of the sector size long). With `barrier`, every
    /// write that completed before it is durable before it, and later requests start after
    /// it (BLKIF_OP_WRITE_BARRIER; needs the backend's `feature-barrier`).
    public func write(sector: UInt64, _ data: [UInt8], barrier: Bool = false) async throws(BlockFrontError) {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(data.count, 1), alignment: XenPage.size)
        defer { buffer.deallocate() }
        buffer.copyBytes(from: data)
        try await write(at: sector, from: UnsafeRawBufferPointer(rebasing: buffer[0..<data.count]), barrier: barrier)
    }

    /// Memory for ``read(at:into:byteOffset:count:)`` and ``write(at:from:byteOffset:count:barrier:)``
    /// without copies: its pages are granted to the backend once, and the backend reads and
    /// writes them in place (the way Linux's blkfront grants a bio's own pages). Made for
    /// large or frequent transfers; ordinary memory works with the other calls.
    ///
    /// The backend can see and change these pages while the buffer lives, so a backend that
    /// is not trusted (`trusted` = 0) never gets them: transfers then go through zeroed
    /// bounce pages as the other calls do.
    public func makeBuffer(byteCount: Int) async throws(BlockFrontError) -> BlockBuffer {
        guard byteCount > 0 else { throw .badBuffer("a buffer of \(byteCount) bytes") }
        let pages = try await core.grantBuffer(pages: (byteCount + XenPage.size - 1) / XenPage.size)
        return BlockBuffer(core: core, pages: pages, byteCount: byteCount)
    }

    /// Reads `count` bytes (default: to the end of the buffer) at `sector` into `buffer`
    /// from `byteOffset`, a multiple of the page size; the backend writes them in place.
    public func read(at sector: UInt64, into buffer: BlockBuffer, byteOffset: Int = 0, count: Int? = nil) async throws(BlockFrontError) {
        let bytes = try window(buffer, byteOffset, count)
        try check(sector: sector, count: bytes.count)
        try await core.run(
            .read, sector: sector, count: bytes.count, buffer: bytes.baseAddress,
            granted: core.trustsBackend ? buffer.pages.pages[(byteOffset / XenPage.size)...] : nil)
    }

    /// Writes `count` bytes (default: to the end of the buffer) of `buffer` from `byteOffset`
    /// at `sector`; the backend reads them in place. Durable after ``flush()``.
    public func write(
        at sector: UInt64, from buffer: BlockBuffer, byteOffset: Int = 0, count: Int? = nil,
        barrier: Bool = false
    ) async throws(BlockFrontError) {
        let info = self.info
        guard !info.readOnly else { throw .readOnly }
        if barrier && !info.barrier { throw .notSupported("barrier") }
        let bytes = try window(buffer, byteOffset, count)
        try check(sector: sector, count: bytes.count)
        // A barrier goes through pool pages: ordered on its ring without indirect segments.
        try await core.run(
            barrier ? .writeBarrier : .write, sector: sector, count: bytes.count, buffer: bytes.baseAddress,
            granted: core.trustsBackend && !barrier ? buffer.pages.pages[(byteOffset / XenPage.size)...] : nil)
    }

    func window(_ buffer: BlockBuffer, _ offset: Int, _ count: Int?) throws(BlockFrontError) -> UnsafeMutableRawBufferPointer {
        guard buffer.core === core else { throw .badBuffer("the buffer was made by another device") }
        let count = count ?? buffer.bytes.count - offset
        guard offset >= 0, offset % XenPage.size == 0, count >= 0, offset <= buffer.bytes.count, count <= buffer.bytes.count - offset else {
            throw .badBuffer("\(count) bytes from byte \(offset) of a \(buffer.bytes.count)-byte buffer (the offset must be a multiple of \(XenPage.size))")
        }
        return UnsafeMutableRawBufferPointer(rebasing: buffer.bytes[offset..<offset + count])
    }

    /// Commits the disk's volatile cache (BLKIF_OP_FLUSH_DISKCACHE): every write that
    /// completed before the call is durable when it returns.
    public func flush() async throws(BlockFrontError) {
        guard info.flush else { throw .notSupported("flush") }
        try await core.run(.flushDiskCache, sector: 0, count: 0, buffer: nil)
    }

    /// Tells the backend the bytes are no longer needed (BLKIF_OP_DISCARD); they read back
    /// as zeros from pvhost's file-backed disks. `secure` asks for a secure erase when offered.
    public func discard(sector: UInt64, count: Int, secure: Bool = false) async throws(BlockFrontError) {
        let info = self.info
        guard let discard = info.discard else { throw .notSupported("discard") }
        guard !info.readOnly else { throw .readOnly }
        try check(sector: sector, count: count)
        try await core.run(
            .discard, sector: sector, count: 0, buffer: nil,
            discard: (UInt64(count / Blkif.sectorSize), secure && discard.secure))
    }

    /// Closes the device: requests in flight fail; Closing, then waits (up to 5 s) for the
    /// backend to let go before revoking the pages (those it still maps are kept, see
    /// ``Statistics/pagesHeldByBackend``); Closed.
    public func close() async { await closer.close(reason: nil) }

    func check(sector: UInt64, count: Int, info: Info? = nil) throws(BlockFrontError) {
        let info = info ?? self.info
        guard count > 0, count % info.sectorSize == 0, (sector * UInt64(Blkif.sectorSize)) % UInt64(info.sectorSize) == 0 else {
            throw .misaligned(sector: sector, count: count, sectorSize: info.sectorSize)
        }
        guard sector < info.sectors, UInt64(count / Blkif.sectorSize) <= info.sectors - sector else {
            throw .outOfRange(sector: sector, count: count, sectors: info.sectors)
        }
    }
}

/// Memory granted to a device's backend, for transfers without copies (see
/// ``BlockFront/makeBuffer(byteCount:)``). Its pages are revoked when the buffer goes away
/// (kept, and retried at the device's close, while the backend still maps them).
public final class BlockBuffer: @unchecked Sendable {  // @unchecked: granted memory; the caller owns its bytes between transfers, as with any buffer
    /// The memory, page-aligned.
    public let bytes: UnsafeMutableRawBufferPointer
    let core: Core
    let pages: SharedPages

    init(core: Core, pages: SharedPages, byteCount: Int) {
        self.core = core
        self.pages = pages
        bytes = UnsafeMutableRawBufferPointer(start: pages.address, count: byteCount)
    }

    deinit { core.releasePages(pages) }
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
    /// A request went unanswered past ``BlockFront/Options/requestTimeout``; the device is closed.
    case timedOut(seconds: Double)
    /// The calling task was cancelled before its requests went out (none were left behind).
    case cancelled
    /// The device is closed (by us, the backend, or the toolstack).
    case closed(String)
    /// Pages, grants or event channels could not be had (what was being done, and the
    /// platform's error when there was one).
    case platform(String, cause: PlatformError? = nil)
    /// A ``BlockBuffer`` used wrongly (another device's, or a range outside it).
    case badBuffer(String)
    /// A ``BlockIOQueue`` already holds `depth` operations (collect completions first).
    case queueFull(depth: Int)

    public var description: String {
        switch self {
        case let .misaligned(sector, count, size): "\(count) bytes at sector \(sector) are not aligned to the \(size)-byte sector size"
        case let .outOfRange(sector, count, sectors): "\(count) bytes at sector \(sector) run past the disk's \(sectors) sectors"
        case .readOnly: "the disk is read-only"
        case let .notSupported(what): "the backend does not offer \(what)"
        case let .ioError(sector): "the backend reported an I/O error at sector \(sector)"
        case let .backendMisbehaved(what): "the backend broke the protocol (\(what)); the device is closed"
        case let .timedOut(seconds): "a request went unanswered for \(seconds) s; the device is closed"
        case .cancelled: "cancelled"
        case let .closed(why): "the device is closed: \(why)"
        case let .platform(what, cause): cause.map { "\(what): \($0)" } ?? what
        case let .badBuffer(what): "unusable buffer: \(what)"
        case let .queueFull(depth): "the I/O queue already holds its \(depth) operations; collect completions first"
        }
    }
}
