import Atomics
import CLinux
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import PVSystem
import XenABI
import XenRing

/// One ring of a connected disk and the thread that serves it: the ring pages mapped (side by
/// side when there are several), the bound event channel, and — with persistent grants — the
/// guest's data pages kept mapped across requests (Linux blkback's per-ring tree, a dictionary
/// here). With I/O threads (``BlockBackend/Settings/ioThreads``) the serving thread hands
/// reads and writes to them and each answers on the ring when its I/O is done; flush,
/// barrier and discard wait for those in progress.
final class ServedQueue: @unchecked Sendable {
    private unowned let backend: BlockBackend
    // The backend's constants, copied: read on every request, and an unowned reference to an
    // object with weak references costs a slow-path retain and release per access.
    private let settings: BlockBackend.Settings
    private let hypervisor: Hypervisor
    private let frontend: DomainID
    private let file: Int32
    private let bufferedFile: Int32
    private let sectors: UInt64
    /// The file mapped for reads (``BlockBackend/Settings/mappedReads``), or nil.
    private let mapped: MappedFile?
    let index: Int
    private let ringMappings: [GrantMapping]
    private let ringView: PageAlias?
    private let ringAddress: UnsafeMutableRawPointer
    private let ringBytes: Int
    private let port: EventChannelPort
    private let end: EventChannelPortEnd
    private let stopSignal: EventFD
    private let persistent: Bool
    /// Weak: a running Thread keeps itself alive, and its block holds this object; a strong
    /// reference here would keep both (and every descriptor this holds) after it ended.
    private weak var thread: Thread?
    private let servedCount = ManagedAtomic<Int>(0)
    /// Persistent grants, under `cacheLock` (the serving or I/O threads', then the disconnect's).
    private var cache: [GrantRef: GrantMapping] = [:]
    private let cacheLock = NSLock()
    /// The ring, under `ringLock` (requests taken by the serving thread, responses put by
    /// whichever thread finished the I/O).
    private let ringLock = NSLock()
    private var box: RingBox?
    private final class RingBox: @unchecked Sendable {
        var ring: BackRing<BlkifRing>
        init(_ ring: consuming BackRing<BlkifRing>) { self.ring = ring }
    }
    /// Reads and writes waiting for an I/O thread; `busy` counts those waiting or running.
    private let work = NSCondition()
    private var jobs: [BlkifRequest] = []
    /// The next job to take (the array is emptied when all are taken: no shifting per job).
    private var nextJob = 0
    private var busy = 0
    private var stopping = false
    /// Mappings handed to the hostile mode that keeps them: not unmapped by ``release()``.
    private var abandoned = false

    var served: Int { servedCount.load(ordering: .relaxed) }
    /// Responses served inline are published in groups of this many (a notification at most
    /// per group), so a long batch does not hold back the ones already done.
    static let publishEvery = 8
    var isFinished: Bool { thread?.isFinished ?? true }

    /// Maps the ring pages (writable, contiguous) and binds the frontend's port.
    init(backend: BlockBackend, index: Int, refs: [GrantRef], remotePort: EventChannelPort, persistent: Bool) throws {
        self.backend = backend
        settings = backend.settings
        hypervisor = backend.hypervisor
        frontend = backend.device.frontend
        file = backend.file
        bufferedFile = backend.bufferedFile
        sectors = backend.sectors
        mapped = backend.mapping
        self.index = index
        self.persistent = persistent
        var mappings: [GrantMapping] = []
        do {
            for ref in refs { mappings.append(try hypervisor.mapGrant(ref, of: frontend, by: .dom0, writable: true)) }
            if mappings.count > 1 {
                let view = try mappings[0].owner.memory.alias(pages: mappings.map { Int($0.frame) })
                ringView = view
                ringAddress = view.address
            } else {
                ringView = nil
                ringAddress = mappings[0].page
            }
            (port, end) = try hypervisor.bindInterdomain(.dom0, remote: frontend, remotePort: remotePort)
            stopSignal = try EventFD()
        } catch {
            for mapping in mappings { try? hypervisor.unmapGrant(mapping.handle, by: .dom0) }
            throw error
        }
        ringMappings = mappings
        ringBytes = refs.count * XenPage.size
    }

    func start() {
        let thread = Thread { [self] in serve() }
        thread.name = "blkback \(backend.device.frontend.rawValue)/\(backend.device.devid) q\(index)"
        self.thread = thread
        thread.start()
    }

    func stop() { try? stopSignal.notify() }

    /// For hostile mode `keepGrantsAfterClose`: the mappings ``release()`` will leave in place.
    func abandonMappings() -> [GrantMapping] {
        abandoned = true
        return ringMappings + cacheLock.withLock { Array(cache.values) }
    }

    /// After the thread finished: unmaps persistent grants and the ring, closes the port.
    func release() {
        let cached = cacheLock.withLock { defer { cache.removeAll() }; return Array(cache.values) }
        if !abandoned {
            for mapping in cached { try? hypervisor.unmapGrant(mapping.handle, by: .dom0) }
            for mapping in ringMappings { try? hypervisor.unmapGrant(mapping.handle, by: .dom0) }
        }
        try? hypervisor.closePort(.dom0, port)
    }

    // MARK: Serving

    private func serve() {
        let region = UnsafeMutableRawBufferPointer(start: ringAddress, count: ringBytes)
        guard let attached = try? BackRing(resuming: region, protocol: BlkifRing()) else { return }
        let box = RingBox(attached)
        self.box = box
        var fds = [pollfd(fd: end.delivery.fileDescriptor, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: stopSignal.fileDescriptor, events: Int16(POLLIN), revents: 0)]
        let hostile = settings.hostile
        let threads = hostile == nil ? settings.ioThreads ?? (settings.direct ? 8 : 0) : 0
        var workers: [Thread] = []
        for n in 0..<threads {
            let worker = Thread { [self] in ioThread() }
            worker.name = "blkback \(backend.device.frontend.rawValue)/\(backend.device.devid) q\(index) io\(n)"
            workers.append(worker)
            worker.start()
        }
        defer {
            // Let the I/O threads finish what they hold, then end them.
            work.withLock {
                stopping = true
                work.broadcast()
            }
            for worker in workers { while !worker.isFinished { usleep(100) } }
        }
        // Scratch reused by every batch.
        var taken: [BlkifRequest] = []
        var responses: [BlkifResponse] = []
        var vectors: [iovec] = []
        while true {
            taken.removeAll(keepingCapacity: true)
            responses.removeAll(keepingCapacity: true)
            var broken: RingError?
            ringLock.lock()
            do {
                while let request = try box.ring.nextRequest() { taken.append(request) }
            } catch {
                broken = error
            }
            ringLock.unlock()
            if let broken {
                // A frontend that broke the ring's rules: stop serving it.
                backend.logger.error("vbd \(backend.device.devid) of domain \(backend.device.frontend.rawValue): \(broken); closing")
                return
            }
            for request in taken {
                if hostile == .vanish {
                    backend.vanish()
                    return
                }
                if hostile == .neverAnswer { continue }
                if threads > 0, request.movesData {
                    work.withLock {
                        jobs.append(request)
                        busy += 1
                        work.signal()
                    }
                    continue
                }
                if threads > 0 { waitForIO() }
                let response = perform(request, vectors: &vectors)
                switch hostile {
                case .unknownID?: responses.append(BlkifResponse(id: response.id &+ 1000, operationCode: response.operationCode, status: response.status))
                case .garbageStatus?: responses.append(BlkifResponse(id: response.id, operationCode: response.operationCode, status: BlkifStatus(rawValue: 7)))
                case .wrongOperation?: responses.append(BlkifResponse(id: response.id, operationCode: 99, status: response.status))
                default: responses.append(response)
                }
                // Published a few at a time: the frontend reuses slots while the rest are served.
                if responses.count == Self.publishEvery {
                    answer(responses)
                    responses.removeAll(keepingCapacity: true)
                }
            }
            // Served inline: the rest of the batch's responses published together.
            answer(responses)
            if !taken.isEmpty { servedCount.wrappingIncrement(by: taken.count, ordering: .relaxed) }
            if settings.pollMicroseconds > 0, RingPolling.wait(nanoseconds: UInt64(settings.pollMicroseconds) * 1000, look: {
                ringLock.withLock { ((try? box.ring.availableRequests()) ?? 1) > 0 }
            }) { continue }
            if ringLock.withLock({ (try? box.ring.finalCheckForRequests()) == true }) { continue }
            fds[0].revents = 0
            fds[1].revents = 0
            _ = poll(&fds, 2, -1)
            if fds[1].revents != 0 { return }
            if fds[0].revents != 0 { _ = try? end.delivery.wait() }
        }
    }

    /// Puts responses on the ring, publishes them, and notifies when the frontend asked.
    private func answer(_ responses: some Collection<BlkifResponse>) {
        guard !responses.isEmpty, let box else { return }
        let (notify, geometry, published, now) = ringLock.withLock {
            let published = box.ring.publishedResponses
            for response in responses { box.ring.enqueueResponse(response) }
            let notify = box.ring.pushResponsesAndCheckNotify()
            return (notify, box.ring.geometry, published, box.ring.publishedResponses)
        }
        if notify { try? hypervisor.notify(.dom0, port) }
        misbehaveAfterPush(ring: geometry, published: published, now: now)
    }

    /// An I/O thread: takes reads and writes in order, answers each when it is done.
    private func ioThread() {
        var vectors: [iovec] = []
        while true {
            let request: BlkifRequest? = work.withLock {
                while nextJob == jobs.count && !stopping { work.wait() }
                guard nextJob < jobs.count else { return nil }
                defer {
                    nextJob += 1
                    if nextJob == jobs.count {
                        jobs.removeAll(keepingCapacity: true)
                        nextJob = 0
                    }
                }
                return jobs[nextJob]
            }
            guard let request else { return }
            answer(CollectionOfOne(perform(request, vectors: &vectors)))
            work.withLock {
                busy -= 1
                if busy == 0 { work.broadcast() }
            }
        }
    }

    /// Waits until every read and write handed to the I/O threads has been answered.
    private func waitForIO() {
        work.withLock { while busy > 0 { work.wait() } }
    }

    /// The hostile modes that act on the shared ring after a push.
    private func misbehaveAfterPush(ring geometry: RingGeometry, published old: RingIndex, now: RingIndex) {
        guard old != now, let hostile = settings.hostile else { return }
        switch hostile {
        case .responseProducerAhead:
            (ringAddress + SharedRingHeader.responseProducer).storeBytes(of: now &+ 5, as: UInt32.self)
            try? hypervisor.notify(.dom0, port)
        case .duplicateResponse:
            // The last response again, in the next slot (BackRing itself refuses to answer
            // more than was asked, so this is done by hand).
            let source = ringAddress + geometry.slotOffset(now &- 1), target = ringAddress + geometry.slotOffset(now)
            target.copyMemory(from: source, byteCount: geometry.slotSize)
            atomicMemoryFence(ordering: .releasing)
            (ringAddress + SharedRingHeader.responseProducer).storeBytes(of: now &+ 1, as: UInt32.self)
            try? hypervisor.notify(.dom0, port)
        case .rewriteAfterPublish:
            let slot = ringAddress + geometry.slotOffset(now &- 1)
            let id = slot.loadUnaligned(as: UInt64.self)
            slot.storeBytes(of: id &+ 77, as: UInt64.self)
            (slot + BlkifLayout.x86_64.responseStatus).storeBytes(of: Int16(5), as: Int16.self)
        case .eventStorm:
            for _ in 0..<1000 { try? hypervisor.notify(.dom0, port) }
        default:
            break
        }
    }

    private func perform(_ request: BlkifRequest, vectors: inout [iovec]) -> BlkifResponse {
        switch request {
        case let .io(io):
            let status: BlkifStatus
            switch io.operation {
            case .read, .write: status = transfer(write: io.operation == .write, sector: io.sector, segments: io.segments, vectors: &vectors)
            case .flushDiskCache: status = settings.flush ? (fdatasync(file) == 0 ? .okay : .error) : .notSupported
            case .writeBarrier:
                // Everything before it on this ring is done (served in order); the frontend
                // drains other rings first. Durable before and after.
                guard settings.barrier else { status = .notSupported; break }
                guard fdatasync(file) == 0 else { status = .error; break }
                let written = transfer(write: true, sector: io.sector, segments: io.segments, vectors: &vectors)
                status = written == .okay && fdatasync(file) == 0 ? .okay : (written == .okay ? .error : written)
            default: status = .notSupported
            }
            return BlkifResponse(id: io.id, operation: io.operation, status: status)
        case let .discard(discard):
            return BlkifResponse(id: discard.id, operation: .discard, status: self.discard(discard))
        case let .indirect(indirect):
            return BlkifResponse(id: indirect.id, operationCode: indirect.operation.rawValue, status: self.indirect(indirect, vectors: &vectors))
        }
    }

    private func discard(_ request: BlkifDiscardRequest) -> BlkifStatus {
        guard settings.discard else { return .notSupported }
        guard !settings.readOnly else { return .error }
        guard request.sectorCount > 0, request.sector < sectors, request.sectorCount <= sectors - request.sector else { return .error }
        let offset = off_t(request.sector * UInt64(Blkif.sectorSize)), length = off_t(request.sectorCount * UInt64(Blkif.sectorSize))
        return fallocate(file, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) == 0 ? .okay : .error
    }

    private func indirect(_ request: BlkifIndirectRequest, vectors: inout [iovec]) -> BlkifStatus {
        let limit = settings.maxIndirectSegments
        guard limit > 0 else { return .notSupported }
        guard request.operation == .read || request.operation == .write else { return .error }
        let count = Int(request.segmentCount)
        guard count >= 1, count <= limit, request.pageCount <= Blkif.maxIndirectPagesPerRequest else { return .error }
        // The segment pages, copied out once (the frontend could rewrite them meanwhile).
        var segments: [BlkifSegment] = []
        segments.reserveCapacity(count)
        for page in 0..<request.pageCount {
            let inPage = min(Blkif.segmentsPerIndirectPage, count - page * Blkif.segmentsPerIndirectPage)
            var transient: [GrantMapping] = []
            defer { unmap(transient) }
            guard let pointer = self.page(request.indirectGrant(page), writable: false, transient: &transient),
                  let decoded = try? BlkifSegment.decodeIndirectPage(UnsafeRawBufferPointer(start: pointer, count: XenPage.size), count: inPage) else {
                return .error
            }
            segments += decoded
        }
        return transfer(write: request.operation == .write, sector: request.sector, segments: segments, vectors: &vectors)
    }

    /// The granted page `ref`: from the persistent cache (mapped writable and kept), or
    /// mapped now with the access asked and added to `transient` (unmapped by the caller).
    /// nil when the grant cannot be mapped.
    private func page(_ ref: GrantRef, writable: Bool, transient: inout [GrantMapping]) -> UnsafeMutableRawPointer? {
        if persistent {
            let cached: UnsafeMutableRawPointer? = cacheLock.withLock {
                if let mapping = cache[ref] { return mapping.page }
                guard cache.count < settings.maxPersistentGrants,
                      let mapping = try? hypervisor.mapGrant(ref, of: frontend, by: .dom0, writable: true) else { return nil }
                cache[ref] = mapping
                return mapping.page
            }
            if let cached { return cached }
        }
        guard let mapping = try? hypervisor.mapGrant(ref, of: frontend, by: .dom0, writable: writable) else { return nil }
        transient.append(mapping)
        return mapping.page
    }

    private func unmap(_ transient: [GrantMapping]) {
        for mapping in transient { try? hypervisor.unmapGrant(mapping.handle, by: .dom0) }
    }

    /// Reads or writes the segments' bytes at `sector`: every segment and the range checked
    /// first, then one `preadv`/`pwritev` over the guest's pages (`vectors`: the caller's
    /// scratch, reused across requests).
    private func transfer(write: Bool, sector: UInt64, segments: some RandomAccessCollection<BlkifSegment>, vectors: inout [iovec]) -> BlkifStatus {
        if write && settings.readOnly { return .error }
        guard !segments.isEmpty else { return .error }
        let alignment = UInt64(settings.sectorSize)
        var total: UInt64 = 0
        for segment in segments {
            guard segment.firstSector <= segment.lastSector, segment.lastSector < 8,
                  UInt64(segment.byteOffset) % alignment == 0, UInt64(segment.byteCount) % alignment == 0 else { return .error }
            total += UInt64(segment.byteCount)
        }
        let start = sector &* UInt64(Blkif.sectorSize)
        let diskBytes = sectors * UInt64(Blkif.sectorSize)
        guard sector < sectors, start % alignment == 0, total <= diskBytes - start else { return .error }

        // Map what the cache lacks; keep the transient mappings until the I/O is done.
        var transient: [GrantMapping] = []
        defer { unmap(transient) }
        vectors.removeAll(keepingCapacity: true)
        for segment in segments {
            // Reading the disk writes the guest's page, and the other way round.
            guard var page = self.page(segment.gref, writable: !write, transient: &transient) else { return .error }
            page += segment.byteOffset
            if let last = vectors.last, last.iov_base! + last.iov_len == page {
                vectors[vectors.count - 1].iov_len += segment.byteCount
            } else {
                vectors.append(iovec(iov_base: page, iov_len: segment.byteCount))
            }
        }
        if !write, let mapped {
            // One copy from the page cache, as preadv would make, without the system call.
            var at = Int(start)
            for vector in vectors {
                guard mapped.copy(from: at, to: vector.iov_base, count: vector.iov_len) else { return .error }
                at += vector.iov_len
            }
            return .okay
        }
        func move(_ fd: Int32) -> Int {
            vectors.withUnsafeBufferPointer { v in
                write ? pwritev(fd, v.baseAddress, Int32(v.count), off_t(start)) : preadv(fd, v.baseAddress, Int32(v.count), off_t(start))
            }
        }
        var done = move(file)
        if done < 0 && errno == EINVAL && file != bufferedFile { done = move(bufferedFile) }
        return done == Int(total) ? .okay : .error
    }
}

extension BlkifRequest {
    /// A read or write (direct or indirect): what I/O threads take. Barriers, flushes and
    /// discards are served in order by the queue's thread.
    var movesData: Bool {
        switch self {
        case let .io(io): io.operation == .read || io.operation == .write
        case .indirect: true
        case .discard: false
        }
    }
}
