import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Logging
import SharedMemory
import XenABI
import XenRing
import XenStore

/// pvhost's blkback for one virtual disk backed by a file: it publishes the disk and its
/// features in the backend directory, follows the frontend's XenBus state, maps the ring the
/// frontend granted, binds its event channel, and serves read, write and flush requests on a
/// thread of its own with `pread`/`pwrite`/`fdatasync` straight into the guest's granted pages.
///
/// Every request is checked before any I/O (segment sectors inside the page, the range inside
/// the disk, writes refused on a read-only disk); a bad request gets BLKIF_RSP_ERROR, an
/// unknown operation BLKIF_RSP_EOPNOTSUPP, and the backend carries on.
public final class BlockBackend: @unchecked Sendable {
    /// What the backend offers (each can be switched off, for tests).
    public struct Settings: Sendable, Equatable {
        public var readOnly = false
        public var flush = true
        /// Test-only: make the backend lie, to prove the frontend survives it.
        public var hostile: HostileMode?
        public init() {}
    }

    /// Ways a broken or malicious backend answers (for the conformance tests).
    public enum HostileMode: String, Sendable, CaseIterable {
        /// Responses carry an id no request had.
        case unknownID
        /// Responses carry a status outside BLKIF_RSP_*.
        case garbageStatus
        /// Responses name another operation than the request's.
        case wrongOperation
        /// The same response is published twice.
        case duplicateResponse
    }

    public let device: Toolstack.Device
    public let path: String
    public let settings: Settings
    /// Disk size in 512-byte sectors.
    public let sectors: UInt64
    private let toolstack: Toolstack
    private let file: Int32
    private let logger = Logger(label: "pvhost.blkback")
    private let lock = NSLock()
    private var connection: Connection?
    private var watcher: Task<Void, Never>?

    /// Requests served (for status and benchmarks).
    public var served: Int { lock.withLock { servedCount } }
    private var servedCount = 0

    private final class Connection: @unchecked Sendable {
        let ringMapping: GrantMapping
        let port: EventChannelPort
        let end: EventChannelPortEnd
        let stop: EventFD
        var thread: Thread?
        init(ringMapping: GrantMapping, port: EventChannelPort, end: EventChannelPortEnd, stop: EventFD) {
            self.ringMapping = ringMapping
            self.port = port
            self.end = end
            self.stop = stop
        }
    }

    /// Why the backend could not start.
    public enum Failure: Error, CustomStringConvertible {
        case file(String, Int32)
        case toolstack(Toolstack.Failure)
        public var description: String {
            switch self {
            case let .file(path, code): "\(path): \(String(cString: strerror(code)))"
            case let .toolstack(error): "\(error)"
            }
        }
    }

    /// Opens the backing file, publishes the disk (size, sector size, features) and goes to
    /// InitWait, then follows the frontend.
    public static func start(toolstack: Toolstack, device: Toolstack.Device, path: String, settings: Settings = Settings()) async throws(Failure) -> BlockBackend {
        let fd = open(path, (settings.readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC)
        guard fd >= 0 else { throw .file(path, errno) }
        var status = stat()
        guard fstat(fd, &status) == 0 else { let e = errno; close(fd); throw .file(path, e) }
        let backend = BlockBackend(toolstack: toolstack, device: device, path: path, file: fd, settings: settings,
                                   sectors: UInt64(status.st_size) / UInt64(Blkif.sectorSize))
        do {
            try await backend.publish()
        } catch {
            throw .toolstack(error)
        }
        backend.follow()
        return backend
    }

    private init(toolstack: Toolstack, device: Toolstack.Device, path: String, file: Int32, settings: Settings, sectors: UInt64) {
        self.toolstack = toolstack
        self.device = device
        self.path = path
        self.file = file
        self.settings = settings
        self.sectors = sectors
    }

    deinit { close(file) }

    private var store: XenStoreClient { toolstack.store }
    private func node(_ key: String) -> XenStorePath { try! XenStorePath(device.backendPath + "/" + key) }

    private func publish() async throws(Toolstack.Failure) {
        let keys: [(String, String)] = [
            ("sectors", "\(sectors)"), ("sector-size", "512"), ("physical-sector-size", "512"),
            ("info", "\(settings.readOnly ? Blkif.vdiskReadOnly : 0)"), ("mode", settings.readOnly ? "r" : "w"),
            ("feature-flush-cache", settings.flush ? "1" : "0"), ("feature-barrier", "0"), ("feature-persistent", "0"),
            ("feature-discard", "0"), ("max-ring-page-order", "0"), ("multi-queue-max-queues", "1"),
            ("state", XenbusState.initWait.nodeValue),
        ]
        do {
            let nodes = keys.map { (node($0.0), $0.1) }
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
        let frontendState = try! XenStorePath(device.frontendPath + "/state")
        let store = self.store
        watcher = Task { [weak self] in
            guard let events = try? await store.watch(frontendState) else { return }
            for await _ in events {
                guard let self else { return }
                let text = (try? await store.readString(frontendState)) ?? ""
                let state = XenbusState(nodeValue: text) ?? .unknown
                switch state {
                case .initialised, .connected:
                    if !self.isConnected { await self.connect() }
                case .closing, .closed, .unknown:
                    if self.isConnected || state == .closed { await self.disconnect() }
                    if state == .unknown { return }
                default:
                    break
                }
            }
        }
    }

    private var isConnected: Bool { lock.withLock { connection != nil } }

    /// Writes our state only while the node exists (as Linux's xenbus_switch_state): a watcher
    /// acting late must not recreate a directory the toolstack removed.
    private func setState(_ state: XenbusState) async {
        let path = node("state")
        try? await store.transaction { tx in
            if try await tx.exists(path) { try await tx.write(path, state.nodeValue) }
        }
    }

    private func connect() async {
        do {
            let ringRef = try await store.readString(XenStorePath(device.frontendPath + "/ring-ref"))
            let portText = try await store.readString(XenStorePath(device.frontendPath + "/event-channel"))
            let protocolName = (try? await store.readString(XenStorePath(device.frontendPath + "/protocol"))) ?? BlkifABI.x86_64.rawValue
            guard let ref = UInt32(ringRef), let remotePort = UInt32(portText) else { throw BlockBackendError("ring-ref \"\(ringRef)\" or event-channel \"\(portText)\" is not a number") }
            guard protocolName == BlkifABI.x86_64.rawValue else { throw BlockBackendError("protocol \(protocolName) is not served (x86_64-abi only)") }
            let hypervisor = toolstack.hypervisor
            let mapping = try hypervisor.mapGrant(GrantRef(ref), of: device.frontend, by: .dom0, writable: true)
            let (port, end): (EventChannelPort, EventChannelPortEnd)
            do { (port, end) = try hypervisor.bindInterdomain(.dom0, remote: device.frontend, remotePort: EventChannelPort(remotePort)) } catch {
                try? hypervisor.unmapGrant(mapping.handle, by: .dom0)
                throw error
            }
            let connection = Connection(ringMapping: mapping, port: port, end: end, stop: try EventFD())
            lock.withLock { self.connection = connection }
            let thread = Thread { [self] in serve(connection) }
            connection.thread = thread
            thread.start()
            await setState(.connected)
            logger.info("vbd \(device.devid) of domain \(device.frontend.rawValue) connected", metadata: ["file": "\(path)", "sectors": "\(sectors)"])
        } catch {
            logger.error("vbd \(device.devid) of domain \(device.frontend.rawValue): cannot connect: \(error)")
            try? await store.write(XenStorePath("/local/domain/0/error/backend/vbd/\(device.frontend.rawValue)/\(device.devid)/error"), "5 \(error)")
            await setState(.closing)
        }
    }

    /// Stops serving, unmaps the ring, closes the port, and says Closed.
    public func disconnect() async {
        let old: Connection? = lock.withLock { defer { connection = nil }; return connection }
        if let old {
            try? old.stop.notify()
            while let thread = old.thread, !thread.isFinished { try? await Task.sleep(for: .milliseconds(1)) }
            try? toolstack.hypervisor.unmapGrant(old.ringMapping.handle, by: .dom0)
            try? toolstack.hypervisor.closePort(.dom0, old.port)
        }
        await setState(.closed)
    }

    /// Stops following the frontend (pvhost removing the device or shutting down).
    public func stop() async {
        watcher?.cancel()
        await disconnect()
    }

    // MARK: Serving

    private func serve(_ connection: Connection) {
        let page = UnsafeMutableRawBufferPointer(start: connection.ringMapping.page, count: XenPage.size)
        guard var ring = try? BackRing(attaching: page, protocol: BlkifRing()) else { return }
        var fds = [pollfd(fd: connection.end.delivery.fileDescriptor, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: connection.stop.fileDescriptor, events: Int16(POLLIN), revents: 0)]
        var firstResponse: BlkifResponse?
        while true {
            do {
                var count = 0
                while let request = try ring.nextRequest() {
                    let response = handle(request)
                    switch settings.hostile {
                    case nil: ring.enqueueResponse(response)
                    case .unknownID?: ring.enqueueResponse(BlkifResponse(id: response.id &+ 1000, operationCode: response.operationCode, status: response.status))
                    case .garbageStatus?: ring.enqueueResponse(BlkifResponse(id: response.id, operationCode: response.operationCode, status: BlkifStatus(rawValue: 7)))
                    case .wrongOperation?: ring.enqueueResponse(BlkifResponse(id: response.id, operationCode: 99, status: response.status))
                    case .duplicateResponse?:
                        // Every request after the first is answered with the first's response.
                        ring.enqueueResponse(firstResponse ?? response)
                        if firstResponse == nil { firstResponse = response }
                    }
                    count += 1
                }
                if count > 0 { lock.withLock { servedCount += count } }
            } catch {
                // A frontend that broke the ring's rules: stop serving it.
                logger.error("vbd \(device.devid) of domain \(device.frontend.rawValue): \(error); closing")
                return
            }
            if ring.pushResponsesAndCheckNotify() { try? toolstack.hypervisor.notify(.dom0, connection.port) }
            if (try? ring.finalCheckForRequests()) == true { continue }
            fds[0].revents = 0
            fds[1].revents = 0
            _ = poll(&fds, 2, -1)
            if fds[1].revents != 0 { return }
            if fds[0].revents != 0 { _ = try? connection.end.delivery.wait() }
        }
    }

    private func handle(_ request: BlkifRequest) -> BlkifResponse {
        switch request {
        case let .io(io):
            return BlkifResponse(id: io.id, operation: io.operation, status: transfer(io))
        case let .discard(discard):
            return BlkifResponse(id: discard.id, operation: .discard, status: .notSupported)
        case let .indirect(indirect):
            return BlkifResponse(id: indirect.id, operationCode: indirect.operation.rawValue, status: .notSupported)
        }
    }

    private func transfer(_ io: BlkifIORequest) -> BlkifStatus {
        switch io.operation {
        case .flushDiskCache:
            guard settings.flush else { return .notSupported }
            return fdatasync(file) == 0 ? .okay : .error
        case .read, .write:
            break
        default:
            return .notSupported
        }
        let writing = io.operation == .write
        if writing && settings.readOnly { return .error }
        guard io.segments.count > 0, io.segments.count <= Blkif.maxSegmentsPerRequest else { return .error }
        var total: UInt64 = 0
        for segment in io.segments {
            guard segment.firstSector <= segment.lastSector, segment.lastSector < 8 else { return .error }
            total += UInt64(segment.byteCount)
        }
        let start = io.sector &* UInt64(Blkif.sectorSize)
        guard io.sector < sectors, start + total <= sectors * UInt64(Blkif.sectorSize) else { return .error }
        var offset = off_t(start)
        let hypervisor = toolstack.hypervisor
        for segment in io.segments {
            // Reading the disk writes the guest's page, and the other way round.
            guard let mapping = try? hypervisor.mapGrant(segment.gref, of: device.frontend, by: .dom0, writable: !writing) else { return .error }
            defer { try? hypervisor.unmapGrant(mapping.handle, by: .dom0) }
            let data = mapping.page + segment.byteOffset
            let count = segment.byteCount
            let done = writing ? pwrite(file, data, count, offset) : pread(file, data, count, offset)
            guard done == count else { return .error }
            offset += off_t(count)
        }
        return .okay
    }
}

struct BlockBackendError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
