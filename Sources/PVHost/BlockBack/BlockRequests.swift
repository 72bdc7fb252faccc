import PVSystem
import XenABI

/// Carries out blkif requests against the backing file, for a ring's handler or its I/O
/// threads: every segment and the range checked first, the guest's pages taken from the
/// persistent grants or mapped for the request, then one vectored read or write (or one
/// guarded copy out of the file's mapping per segment run). Nothing here touches the ring.
struct BlockRequests: Sendable {
    let settings: BlockBackend.Settings
    let hypervisor: Hypervisor
    let frontend: DomainID
    let file: BackingFile
    let sectors: UInt64
    /// The file mapped for reads (``BlockBackend/Settings/mappedReads``), or nil.
    let mapped: GuardedMapping?
    /// Persistent grants of the ring, when negotiated.
    let grants: PersistentGrants?

    /// The response to `request`. `vectors` is the caller's scratch, reused across requests.
    func perform(_ request: BlkifRequest, vectors: inout IOVectors) -> BlkifResponse {
        switch request {
        case let .io(io):
            let status: BlkifStatus
            switch io.operation {
            case .read, .write: status = transfer(write: io.operation == .write, sector: io.sector, segments: io.segments, vectors: &vectors)
            case .flushDiskCache: status = settings.flush ? (file.sync() ? .okay : .error) : .notSupported
            case .writeBarrier:
                // Everything before it on this ring is done (served in order); the frontend
                // drains other rings first. Durable before and after.
                guard settings.barrier else { status = .notSupported; break }
                guard file.sync() else { status = .error; break }
                let written = transfer(write: true, sector: io.sector, segments: io.segments, vectors: &vectors)
                status = written == .okay && file.sync() ? .okay : (written == .okay ? .error : written)
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
        return file.punchHole(at: request.sector * UInt64(Blkif.sectorSize), count: request.sectorCount * UInt64(Blkif.sectorSize)) ? .okay : .error
    }

    private func indirect(_ request: BlkifIndirectRequest, vectors: inout IOVectors) -> BlkifStatus {
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
                let decoded = try? BlkifSegment.decodeIndirectPage(UnsafeRawBufferPointer(start: pointer, count: XenPage.size), count: inPage)
            else {
                return .error
            }
            segments += decoded
        }
        return transfer(write: request.operation == .write, sector: request.sector, segments: segments, vectors: &vectors)
    }

    /// The granted page `ref`: from the persistent grants (mapped writable and kept), or
    /// mapped now with the access asked and added to `transient` (unmapped by the caller).
    /// nil when the grant cannot be mapped.
    private func page(_ ref: GrantRef, writable: Bool, transient: inout [GrantMapping]) -> UnsafeMutableRawPointer? {
        if let grants, let page = grants.page(ref) { return page }
        guard let mapping = try? hypervisor.mapGrant(ref, of: frontend, by: .dom0, writable: writable) else { return nil }
        transient.append(mapping)
        return mapping.page
    }

    private func unmap(_ transient: [GrantMapping]) {
        for mapping in transient { try? hypervisor.unmapGrant(mapping.handle, by: .dom0) }
    }

    /// Reads or writes the segments' bytes at `sector`: every segment and the range checked
    /// first, then one `preadv`/`pwritev` over the guest's pages.
    private func transfer(write: Bool, sector: UInt64, segments: some RandomAccessCollection<BlkifSegment>, vectors: inout IOVectors) -> BlkifStatus {
        if write && settings.readOnly { return .error }
        guard !segments.isEmpty else { return .error }
        let alignment = UInt64(settings.sectorSize)
        var total: UInt64 = 0
        for segment in segments {
            guard segment.firstSector <= segment.lastSector, segment.lastSector < 8,
                UInt64(segment.byteOffset) % alignment == 0, UInt64(segment.byteCount) % alignment == 0
            else { return .error }
            total += UInt64(segment.byteCount)
        }
        let start = sector &* UInt64(Blkif.sectorSize)
        let diskBytes = sectors * UInt64(Blkif.sectorSize)
        guard sector < sectors, start % alignment == 0, total <= diskBytes - start else { return .error }

        // Map what the cache lacks; keep the transient mappings until the I/O is done.
        var transient: [GrantMapping] = []
        defer { unmap(transient) }
        vectors.removeAll()
        for segment in segments {
            // Reading the disk writes the guest's page, and the other way round.
            guard let page = self.page(segment.gref, writable: !write, transient: &transient) else { return .error }
            vectors.append(page + segment.byteOffset, count: segment.byteCount)
        }
        if !write, let mapped {
            // One copy from the page cache, as preadv would make, without the system call.
            var at = Int(start)
            return vectors.forEach { pointer, count in
                defer { at += count }
                return mapped.copy(from: at, to: pointer, count: count)
            } ? .okay : .error
        }
        return (write ? file.write(vectors, at: start) : file.read(vectors, at: start)) ? .okay : .error
    }
}

extension BlkifRequest {
    /// A read or write (direct or indirect): what I/O threads take. Barriers, flushes and
    /// discards are served in order by the ring's handler.
    var movesData: Bool {
        switch self {
        case let .io(io): io.operation == .read || io.operation == .write
        case .indirect: true
        case .discard: false
        }
    }
}
