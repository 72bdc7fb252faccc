import Foundation
import Logging
import PVSystem
import XenABI
import XenRing
import XenStore

/// pvhost's blkback for one virtual disk backed by a file or block device: it publishes the
/// disk and its features in the backend directory, follows the frontend's XenBus state, maps
/// the ring pages the frontend granted (one or several queues, one or several pages each),
/// binds their event channels, and serves each queue on a thread of its own with
/// `preadv`/`pwritev` straight into the guest's granted pages, `fdatasync` for flush and
/// barrier, `fallocate(PUNCH_HOLE)` for discard.
///
/// Every request is checked before any I/O (segment sectors inside the page, alignment to the
/// sector size, the range inside the disk, writes refused on a read-only disk); a bad request
/// gets BLKIF_RSP_ERROR, an operation not offered BLKIF_RSP_EOPNOTSUPP, and the backend
/// carries on. A slow device stalls only its own queues.
public final class BlockBackend: Sendable {
    /// What the backend offers; each feature can be switched off (for tests and benchmarks).
    public struct Settings: Sendable, Equatable {
        public var readOnly = false
        /// `info` bits besides read-only.
        public var removable = false
        public var cdrom = false
        public var flush = true
        public var barrier = true
        public var discard = true
        /// `discard-secure`: secure discards are punched like the others (a file has no
        /// remanence to scrub beyond that).
        public var discardSecure = false
        public var persistent = true
        /// `feature-max-indirect-segments`; 0 = no indirect descriptors.
        public var maxIndirectSegments = 256
        /// `max-ring-page-order` (pages per ring = 2^order).
        public var maxRingPageOrder = 4
        /// `multi-queue-max-queues`.
        public var maxQueues = 4
        /// Logical block size: every request's byte offset and length are multiples of it.
        public var sectorSize = 512
        /// `physical-sector-size`; nil = the sector size.
        public var physicalSectorSize: Int?
        /// Open the backing file with `O_DIRECT` (falls back to the page cache per request
        /// when the file system refuses an alignment).
        public var direct = false
        /// Threads per queue doing the reads and writes, so the device works on several
        /// requests of one ring at once. nil: 8 with `direct` (each request waits for the
        /// device), none otherwise (page-cache I/O is a memory copy; the queue's own thread
        /// does it, and more threads only add switches). Hostile modes always serve inline.
        public var ioThreads: Int?
        /// Serve reads by copying from a shared read-only mapping of the file (one copy, no
        /// system call per request) instead of `preadv`. Not with `direct`. A page the file
        /// no longer has (truncated under the backend, or a device read error) fails the
        /// request with an I/O error instead of the process.
        public var mappedReads = true
        /// How long a queue's thread keeps looking at its ring for new requests before it asks
        /// for a notification and sleeps (0: never polls).
        public var pollMicroseconds = 0
        /// Persistent grants kept mapped per queue (Linux blkback's `max_persistent_grants`).
        public var maxPersistentGrants = 1056
        /// Test-only: make the backend lie, to prove the frontend survives it.
        public var hostile: HostileMode?
        public init() {}

        /// Every feature off: the protocol's 1992 baseline (one page, one queue, 11 segments).
        public static var minimal: Settings {
            var s = Settings()
            s.flush = false
            s.barrier = false
            s.discard = false
            s.persistent = false
            s.maxIndirectSegments = 0
            s.maxRingPageOrder = 0
            s.maxQueues = 1
            return s
        }
    }

    /// Ways a broken or malicious backend behaves (for the conformance tests).
    public enum HostileMode: String, Sendable, CaseIterable {
        /// Responses carry an id no request had.
        case unknownID
        /// Responses carry a status outside BLKIF_RSP_*.
        case garbageStatus
        /// Responses name another operation than the request's.
        case wrongOperation
        /// Every response is published twice.
        case duplicateResponse
        /// `rsp_prod` is pushed past the requests the frontend published.
        case responseProducerAhead
        /// A response is rewritten (id and status) after it was published.
        case rewriteAfterPublish
        /// A burst of notifications with no work after every response.
        case eventStorm
        /// Requests are consumed and never answered.
        case neverAnswer
        /// The backend vanishes mid-request: stops serving and its directory is removed.
        case vanish
        /// Absurd limits in xenstore (ring order 99, 100 000 queues, 2^32−1 indirect
        /// segments): a frontend must clamp them and work.
        case absurdLimits
        /// `sectors` = 0: a frontend must refuse the disk.
        case zeroSectors
        /// Grants (ring and persistent pages) stay mapped after the device is closed.
        case keepGrantsAfterClose
    }

    public let device: Toolstack.Device
    public let path: String
    public let settings: Settings
    /// Disk size in 512-byte sectors.
    public let sectors: UInt64
    private let toolstack: Toolstack
    let file: BackingFile
    /// The file mapped read-only (``Settings/mappedReads``), `sectors` long.
    let mapping: GuardedMapping?
    let logger = Logger(label: "pvhost.blkback")
    private struct State {
        var connection: [ServedQueue]?
        var watcher: Task<Void, Never>?
        /// Grant mappings left behind on purpose (hostile mode `keepGrantsAfterClose`).
        var abandoned: [[GrantMapping]] = []
        /// Requests served by connections that ended.
        var servedBefore = 0
    }

    private let state = Locked(State())

    /// Requests served (for status and benchmarks).
    public var served: Int {
        let (before, queues) = state.withLock { ($0.servedBefore, $0.connection ?? []) }
        return queues.reduce(before) { $0 + $1.served }
    }

    /// Why the backend could not start.
    public enum Failure: Error, CustomStringConvertible {
        /// The backing file could not be opened or sized.
        case file(SystemError)
        case settings(String)
        case toolstack(Toolstack.Failure)
        public var description: String {
            switch self {
            case let .file(error): "backing file: \(error)"
            case let .settings(what): "bad disk settings: \(what)"
            case let .toolstack(error): "\(error)"
            }
        }
    }

    /// Opens the backing file, publishes the disk (size, sector size, features) and goes to
    /// InitWait, then follows the frontend.
    public static func start(toolstack: Toolstack, device: Toolstack.Device, path: String, settings: Settings = Settings()) async throws(Failure)
        -> BlockBackend
    {
        let size = settings.sectorSize
        guard size >= 512, size <= 65536, size & (size - 1) == 0 else { throw .settings("sector size \(size) is not a power of two from 512 to 64 KiB") }
        guard (0...8).contains(settings.maxRingPageOrder), settings.maxQueues >= 1, settings.maxIndirectSegments >= 0,
            settings.maxIndirectSegments <= Blkif.maxIndirectSegments
        else {
            throw .settings("ring order 0…8, at least one queue, at most \(Blkif.maxIndirectSegments) indirect segments")
        }
        if let threads = settings.ioThreads, !(0...64).contains(threads) { throw .settings("\(threads) I/O threads per queue (0…64)") }
        guard (0...10_000).contains(settings.pollMicroseconds) else { throw .settings("polling for \(settings.pollMicroseconds) µs (0…10 000)") }
        let file: BackingFile
        do { file = try BackingFile(path: path, readOnly: settings.readOnly, direct: settings.direct) } catch { throw .file(error) }
        let sectors = file.byteCount / UInt64(size) * UInt64(size / Blkif.sectorSize)
        // A file that cannot be mapped is read with preadv.
        let mapping = settings.mappedReads && !settings.direct ? file.mapForReading(byteCount: Int(sectors) * Blkif.sectorSize) : nil
        let backend = BlockBackend(
            toolstack: toolstack, device: device, path: path, file: file, settings: settings,
            sectors: sectors, mapping: mapping)
        do {
            try await backend.publish()
        } catch {
            throw .toolstack(error)
        }
        backend.follow()
        return backend
    }

    private init(
        toolstack: Toolstack, device: Toolstack.Device, path: String, file: BackingFile, settings: Settings, sectors: UInt64,
        mapping: GuardedMapping?
    ) {
        self.mapping = mapping
        self.toolstack = toolstack
        self.device = device
        self.path = path
        self.file = file
        self.settings = settings
        self.sectors = sectors
    }

    deinit { mapping?.unmap() }

    var hypervisor: Hypervisor { toolstack.hypervisor }
    private var store: XenStoreClient { toolstack.store }
    private func node(_ key: String) -> XenStorePath { xenbus.node(key) }
    private func frontendNode(_ key: String) throws -> XenStorePath { try XenStorePath(device.frontendPath + "/" + key) }

    /// The backend directory's keys, as Linux blkback writes them (all at probe here).
    var publishedKeys: [(String, String)] {
        let s = settings
        var info: UInt32 = 0
        if s.readOnly { info |= Blkif.vdiskReadOnly }
        if s.removable { info |= Blkif.vdiskRemovable }
        if s.cdrom { info |= Blkif.vdiskCDROM }
        var keys: [(String, String)] = [
            ("sectors", s.hostile == .zeroSectors ? "0" : "\(sectors)"), ("sector-size", "\(s.sectorSize)"),
            ("physical-sector-size", "\(s.physicalSectorSize ?? s.sectorSize)"),
            ("info", "\(info)"), ("mode", s.readOnly ? "r" : "w"),
            ("feature-flush-cache", s.flush ? "1" : "0"), ("feature-barrier", s.barrier ? "1" : "0"),
            ("feature-persistent", s.persistent ? "1" : "0"), ("feature-discard", s.discard ? "1" : "0"),
            ("max-ring-page-order", "\(s.maxRingPageOrder)"), ("multi-queue-max-queues", "\(s.maxQueues)")
        ]
        if s.discard {
            keys += [("discard-granularity", "\(max(4096, s.sectorSize))"), ("discard-alignment", "0"), ("discard-secure", s.discardSecure ? "1" : "0")]
        }
        if s.maxIndirectSegments > 0 { keys.append(("feature-max-indirect-segments", "\(s.maxIndirectSegments)")) }
        if s.hostile == .absurdLimits {
            keys += [("max-ring-page-order", "99"), ("multi-queue-max-queues", "100000"), ("feature-max-indirect-segments", "4294967295")]
        }
        return keys + [("state", XenbusState.initWait.nodeValue)]
    }

    private func publish() async throws(Toolstack.Failure) {
        do {
            let nodes = publishedKeys.map { (node($0.0), $0.1) }
            try await store.transaction { tx in
                for (key, value) in nodes { try await tx.write(key, value) }
            }
        } catch {
            throw .store(error as? XenStoreError ?? .badReply("\(error)"))
        }
        try await toolstack.reportHotplug(device)
    }

    /// Watches the frontend's state and connects or disconnects as it moves.
    private func follow() {
        let watcher = xenbus.follow(
            connectOn: [.initialised, .connected], isConnected: { [weak self] in self?.isConnected },
            connect: { [weak self] in await self?.connect() }, disconnect: { [weak self] in await self?.disconnect() })
        state.withLock { $0.watcher = watcher }
    }

    private var isConnected: Bool { state.withLock { $0.connection != nil } }
    private var xenbus: BackendXenbus { BackendXenbus(store: store, device: device) }
    private func setState(_ state: XenbusState) async { await xenbus.setState(state) }

    /// What the frontend asked for, read and checked (never trusted).
    struct Request {
        var queues = 1
        var ringOrder = 0
        var persistent = false
        /// Per queue: ring grant refs and the event channel.
        var rings: [(refs: [GrantRef], port: EventChannelPort)] = []
    }

    private func readRequest() async throws -> Request {
        func value(_ key: String) async -> String? { try? await store.readString(frontendNode(key)) }
        func number(_ key: String, default fallback: UInt32? = nil) async throws -> UInt32 {
            guard let text = await value(key) else {
                if let fallback { return fallback }
                throw BlockBackendError("\(device.frontendPath)/\(key) is missing")
            }
            guard let n = UInt32(text) else { throw BlockBackendError("\(device.frontendPath)/\(key) = \"\(text)\" is not a number") }
            return n
        }
        var request = Request()
        request.queues = Int(try await number("multi-queue-num-queues", default: 1))
        guard (1...settings.maxQueues).contains(request.queues) else {
            throw BlockBackendError("\(request.queues) queues asked, at most \(settings.maxQueues) offered")
        }
        request.ringOrder = Int(try await number("ring-page-order", default: 0))
        guard request.ringOrder <= settings.maxRingPageOrder else {
            throw BlockBackendError("ring order \(request.ringOrder) asked, at most \(settings.maxRingPageOrder) offered")
        }
        let frontendPersistent = try await number("feature-persistent", default: 0)
        request.persistent = settings.persistent && frontendPersistent == 1
        let protocolName = await value("protocol") ?? BlkifABI.x86_64.rawValue
        guard protocolName == BlkifABI.x86_64.rawValue else { throw BlockBackendError("protocol \(protocolName) is not served (x86_64-abi only)") }
        for queue in 0..<request.queues {
            let prefix = request.queues > 1 ? "queue-\(queue)/" : ""
            var refs: [GrantRef] = []
            if request.ringOrder == 0 {
                refs.append(GrantRef(try await number(prefix + "ring-ref")))
            } else {
                for page in 0..<(1 << request.ringOrder) { refs.append(GrantRef(try await number(prefix + "ring-ref\(page)"))) }
            }
            request.rings.append((refs, EventChannelPort(try await number(prefix + "event-channel"))))
        }
        return request
    }

    private func connect() async {
        var made: [ServedQueue] = []
        do {
            let request = try await readRequest()
            for (index, ring) in request.rings.enumerated() {
                made.append(try ServedQueue(backend: self, index: index, refs: ring.refs, remotePort: ring.port, persistent: request.persistent))
            }
            for queue in made { try queue.start() }
            let queues = made
            state.withLock { $0.connection = queues }
            await setState(.connected)
            logger.info(
                "vbd \(device.devid) of domain \(device.frontend.rawValue) connected",
                metadata: [
                    "file": "\(path)", "sectors": "\(sectors)", "queues": "\(request.queues)",
                    "ring-pages": "\(1 << request.ringOrder)", "persistent": "\(request.persistent)"
                ])
        } catch {
            for queue in made {
                await queue.stop()
                queue.release()
            }
            logger.error("vbd \(device.devid) of domain \(device.frontend.rawValue): cannot connect: \(error)")
            await xenbus.reportError("\(error)")
            await setState(.closing)
        }
    }

    /// Stops serving, unmaps the rings and persistent grants, closes the ports (the xenbus state is the caller's).
    private func disconnect() async {
        let old: [ServedQueue]? = state.withLock { state in
            defer { state.connection = nil }
            return state.connection
        }
        if let old {
            for queue in old { await queue.stop() }
            let count = old.reduce(0) { $0 + $1.served }
            if settings.hostile == .keepGrantsAfterClose {
                let kept = old.map { $0.abandonMappings() }
                state.withLock { $0.abandoned += kept }
            }
            for queue in old { queue.release() }
            state.withLock { $0.servedBefore += count }
        }
    }

    /// Called by a queue that stopped on its own (hostile `vanish`): the backend's
    /// directory goes, as if its driver had been unloaded.
    func vanish() { xenbus.vanish() }

    /// Stops following the frontend (pvhost removing the device or shutting down); mappings
    /// kept by the hostile mode are released now.
    public func stop() async {
        // Ended, not only cancelled: an event it was acting on could otherwise write our old
        // state over a new backend's (a restart right after this returns).
        let watcher = state.withLock { $0.watcher }
        watcher?.cancel()
        await watcher?.value
        await disconnect()
        await setState(.closed)
        let kept = state.withLock { state in
            defer { state.abandoned.removeAll() }
            return state.abandoned
        }
        for mappings in kept { for mapping in mappings { try? hypervisor.unmapGrant(mapping.handle, by: .dom0) } }
    }
}

struct BlockBackendError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
