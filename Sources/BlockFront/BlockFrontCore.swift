import Foundation
#if canImport(Glibc)
import Glibc
#endif
import PVPlatform
import SharedMemory
import XenABI
import XenBus
import XenRing
import XenStore

/// The ring, the requests in flight and the completion thread of one BlockFront.
final class Core: @unchecked Sendable {
    let platform: ReferencePlatform
    let handle: UInt16
    private let lock = NSLock()

    /// The ring, touched only under `lock`.
    private final class RingBox: @unchecked Sendable {
        var ring: FrontRing<BlkifRing>
        init(_ ring: consuming FrontRing<BlkifRing>) { self.ring = ring }
    }

    private struct Pending {
        let continuation: CheckedContinuation<Result<[UInt8], BlockFrontError>?, Never>
        let operation: BlkifOperation
        let sector: UInt64
        let bytes: Int
        let pages: [SharedPage]
    }

    private struct Transport: @unchecked Sendable {
        let ringPage: SharedPage
        let box: RingBox
        let channel: EventChannel
        let backend: DomainID
        let stop: EventFD
    }

    private var transport: Transport?
    private var pending: [UInt64: Pending] = [:]
    private var nextID: UInt64 = 1
    private var failure: BlockFrontError?
    private var info: BlockFront.Info?
    private var connectWaiters: [CheckedContinuation<Result<BlockFront.Info, BlockFrontError>, Never>] = []
    /// Pages whose revoke the backend refused (still mapped): kept, retried later.
    private var deferred: [SharedPage] = []

    init(platform: ReferencePlatform, handle: UInt16) {
        self.platform = platform
        self.handle = handle
    }

    // MARK: Lifecycle (called by the XenBus driver)

    /// The ring page and event channel, made once per connection (publish may be retried).
    func transport(for backend: DomainID) throws(BlockFrontError) -> (ringRef: GrantRef, port: EventChannelPort) {
        if let existing = lock.withLock({ transport }) { return (existing.ringPage.ref, existing.channel.port) }
        let page: SharedPage
        let channel: EventChannel
        let stop: EventFD
        do {
            page = try platform.grantPage(to: backend, readOnly: false)
            channel = try platform.allocateUnboundPort(remote: backend)
            stop = try EventFD()
        } catch {
            throw .platform("\(error)")
        }
        let ring: FrontRing<BlkifRing>
        do { ring = try FrontRing(initializing: UnsafeMutableRawBufferPointer(start: page.address, count: XenPage.size), protocol: BlkifRing()) } catch {
            throw .platform("\(error)")
        }
        let made = Transport(ringPage: page, box: RingBox(ring), channel: channel, backend: backend, stop: stop)
        lock.withLock { transport = made }
        Thread { [self] in completions(made) }.start()
        return (page.ref, channel.port)
    }

    func connected(_ info: BlockFront.Info) {
        let waiters = lock.withLock { () -> [CheckedContinuation<Result<BlockFront.Info, BlockFrontError>, Never>] in
            self.info = info
            defer { connectWaiters.removeAll() }
            return connectWaiters
        }
        for waiter in waiters { waiter.resume(returning: .success(info)) }
    }

    func waitForConnection() async throws(BlockFrontError) -> BlockFront.Info {
        let result: Result<BlockFront.Info, BlockFrontError> = await withCheckedContinuation { continuation in
            let immediate: Result<BlockFront.Info, BlockFrontError>? = lock.withLock {
                if let info { return .success(info) }
                if let failure { return .failure(failure) }
                connectWaiters.append(continuation)
                return nil
            }
            if let immediate { continuation.resume(returning: immediate) }
        }
        return try result.get()
    }

    /// Everything in flight fails with `error`; the completion thread stops; the ring page and
    /// data pages are revoked (kept if the backend still maps them).
    func fail(_ error: BlockFrontError) {
        let (requests, waiters, old) = lock.withLock { () -> ([Pending], [CheckedContinuation<Result<BlockFront.Info, BlockFrontError>, Never>], Transport?) in
            if failure == nil { failure = error }
            defer { pending.removeAll(); connectWaiters.removeAll(); transport = nil }
            return (Array(pending.values), connectWaiters, transport)
        }
        if let old {
            try? old.stop.notify()
            old.channel.close()
            if !platform.revoke(old.ringPage) { lock.withLock { deferred.append(old.ringPage) } }
        }
        for request in requests {
            release(request.pages)
            request.continuation.resume(returning: .failure(error))
        }
        for waiter in waiters { waiter.resume(returning: .failure(error)) }
    }

    private func release(_ pages: [SharedPage]) {
        var kept: [SharedPage] = []
        for page in pages where !platform.revoke(page) { kept.append(page) }
        let retry = lock.withLock { () -> [SharedPage] in
            deferred += kept
            defer { deferred.removeAll() }
            return deferred
        }
        var still: [SharedPage] = []
        for page in retry where !platform.revoke(page) { still.append(page) }
        if !still.isEmpty { lock.withLock { deferred += still } }
    }

    // MARK: I/O

    func transfer(_ operation: BlkifOperation, sector: UInt64, bytes: Int, data: [UInt8]?) async throws(BlockFrontError) -> [UInt8] {
        guard let backend = lock.withLock({ transport?.backend }) else { throw lock.withLock { failure } ?? .closed("not connected") }
        // Grant the data pages: writable for a read (the backend writes them).
        var pages: [SharedPage] = []
        var segments = BlkifSegmentList()
        var remaining = bytes
        while remaining > 0 {
            let page: SharedPage
            do { page = try platform.grantPage(to: backend, readOnly: operation == .write) } catch {
                release(pages)
                throw .platform("\(error)")
            }
            let length = min(remaining, XenPage.size)
            if let data { data.withUnsafeBytes { page.address.copyMemory(from: $0.baseAddress! + (bytes - remaining), byteCount: length) } }
            segments.append(BlkifSegment(gref: page.ref, firstSector: 0, lastSector: UInt8(length / Blkif.sectorSize - 1)))
            pages.append(page)
            remaining -= length
        }
        // A full ring is back-pressure: the request waits for responses to free a slot.
        while true {
            let outcome: Result<[UInt8], BlockFrontError>? = await withCheckedContinuation { continuation in
                var notify: EventChannel?
                let immediate: Result<[UInt8], BlockFrontError>?? = lock.withLock {
                    if let failure { return .some(.failure(failure)) }
                    guard let transport else { return .some(.failure(.closed("not connected"))) }
                    guard !transport.box.ring.isFull else { return .some(nil) }
                    let id = nextID
                    nextID &+= 1
                    let request = BlkifIORequest(operation: operation, handle: handle, id: id, sector: sector, segments: segments)
                    _ = transport.box.ring.enqueueRequest(.io(request))
                    pending[id] = Pending(continuation: continuation, operation: operation, sector: sector, bytes: bytes, pages: pages)
                    if transport.box.ring.pushRequestsAndCheckNotify() { notify = transport.channel }
                    return .none
                }
                if let immediate {
                    // Not queued: the pages are still ours to give back.
                    if case .failure = immediate { release(pages) }
                    continuation.resume(returning: immediate)
                }
                notify?.notify()
            }
            guard let outcome else {
                try? await Task.sleep(for: .microseconds(100))
                continue
            }
            return try outcome.get()
        }
    }

    /// The completion thread: waits for the backend's notifications, copies each response out
    /// once, checks it, and completes the request.
    private func completions(_ transport: Transport) {
        var fds = [pollfd(fd: transport.channel.delivery.fileDescriptor, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: transport.stop.fileDescriptor, events: Int16(POLLIN), revents: 0)]
        while true {
            fds[0].revents = 0
            fds[1].revents = 0
            _ = poll(&fds, 2, -1)
            if fds[1].revents != 0 { return }
            _ = try? transport.channel.delivery.wait()
            var done: [(Pending, BlkifStatus)] = []
            var broken: String?
            lock.withLock {
                guard self.transport?.box === transport.box else { return }
                do {
                    repeat {
                        while let response = try transport.box.ring.nextResponse() {
                            guard let request = pending.removeValue(forKey: response.id) else {
                                broken = "a response for id \(response.id), which is not in flight"
                                return
                            }
                            guard response.operation == request.operation, response.status.isDefined else {
                                broken = "response \(response.id): operation \(response.operationCode), status \(response.status.rawValue)"
                                pending[response.id] = request  // failed below with everything in flight
                                return
                            }
                            done.append((request, response.status))
                        }
                    } while try transport.box.ring.finalCheckForResponses()
                } catch {
                    broken = "\(error)"
                }
            }
            for (request, status) in done {
                let result: Result<[UInt8], BlockFrontError>
                switch status {
                case .okay:
                    var bytes: [UInt8] = []
                    if request.operation == .read {
                        bytes.reserveCapacity(request.bytes)
                        var left = request.bytes
                        for page in request.pages {
                            let length = min(left, XenPage.size)
                            bytes.append(contentsOf: UnsafeRawBufferPointer(start: page.address, count: length))
                            left -= length
                        }
                    }
                    result = .success(bytes)
                case .notSupported: result = .failure(.notSupported("\(request.operation)"))
                default: result = .failure(.ioError(sector: request.sector))
                }
                release(request.pages)
                request.continuation.resume(returning: result)
            }
            if let broken {
                fail(.backendMisbehaved(broken))
                return
            }
        }
    }
}

/// BlockFront's part in the XenBus handshake.
struct Driver: XenbusFrontendDriver {
    let core: Core
    let store: XenStoreClient

    func publish(_ transaction: XenStoreTransaction, frontend: String, backend: String, backendID: DomainID) async throws {
        let (ref, port) = try core.transport(for: backendID)
        try await transaction.write(XenStorePath(frontend + "/ring-ref"), "\(ref.rawValue)")
        try await transaction.write(XenStorePath(frontend + "/event-channel"), "\(port.rawValue)")
        try await transaction.write(XenStorePath(frontend + "/protocol"), BlkifABI.x86_64.rawValue)
    }

    func connect(frontend: String, backend: String) async throws {
        // Never trust the backend: every value parsed and checked.
        func number(_ key: String) async throws -> UInt64? {
            guard let text = try? await store.readString(XenStorePath(backend + "/" + key)) else { return nil }
            guard let value = UInt64(text) else { throw BlockFrontError.backendMisbehaved("\(key) = \"\(text)\" is not a number") }
            return value
        }
        guard let sectors = try await number("sectors"), sectors > 0 else { throw BlockFrontError.backendMisbehaved("sectors missing or 0") }
        let sectorSize = Int(try await number("sector-size") ?? 512)
        guard sectorSize >= 512, sectorSize <= 65536, sectorSize & (sectorSize - 1) == 0 else {
            throw BlockFrontError.backendMisbehaved("sector-size \(sectorSize) is not a power of two from 512 to 64 KiB")
        }
        let info = try await number("info") ?? 0
        let flush = try await number("feature-flush-cache") ?? 0
        core.connected(BlockFront.Info(sectors: sectors, sectorSize: sectorSize, readOnly: info & UInt64(Blkif.vdiskReadOnly) != 0, flush: flush == 1))
    }

    func refresh(frontend: String, backend: String) async throws {}

    func disconnect() async { core.fail(.closed("the backend closed the device")) }
}
