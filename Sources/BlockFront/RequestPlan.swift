import XenABI

/// How a transfer is cut into blkif requests, sans I/O: each request covers up to
/// `maxSegments` whole pages of the caller's buffer (the last page possibly partial), one
/// segment per page starting at sector 0 of its page; more than 11 segments go in indirect
/// pages. Pure, so the arithmetic is unit-tested without a backend.
public struct RequestPlan: Sendable, Equatable {
    /// One request: bytes `[offset, offset + length)` of the transfer, at `sector`.
    public struct Chunk: Sendable, Equatable {
        public let offset: Int
        public let length: Int
        public let sector: UInt64
        /// Data pages (= segments).
        public var pages: Int { (length + XenPage.size - 1) / XenPage.size }
        /// Indirect pages needed to describe the segments (0 when they fit in the request).
        public var indirectPages: Int { pages > Blkif.maxSegmentsPerRequest ? BlkifIndirectRequest.pagesNeeded(segments: pages) : 0 }
        /// Pages of the device's budget the request holds while in flight.
        public var budget: Int { pages + indirectPages }

        /// The segment of data page `index` (bytes of the chunk that page carries).
        public func segment(_ index: Int, gref: GrantRef) -> BlkifSegment {
            let bytes = min(XenPage.size, length - index * XenPage.size)
            return BlkifSegment(gref: gref, firstSector: 0, lastSector: UInt8(bytes / Blkif.sectorSize - 1))
        }
    }

    public let chunks: [Chunk]

    /// - Parameters:
    ///   - sector: first 512-byte sector.
    ///   - byteCount: a multiple of 512.
    ///   - maxSegments: pages per request (11, or the negotiated indirect segments).
    public init(sector: UInt64, byteCount: Int, maxSegments: Int) {
        precondition(byteCount % Blkif.sectorSize == 0 && maxSegments >= 1, "whole sectors, at least one segment")
        let most = maxSegments * XenPage.size
        chunks = stride(from: 0, to: byteCount, by: most).map {
            Chunk(offset: $0, length: min(most, byteCount - $0), sector: sector + UInt64($0 / Blkif.sectorSize))
        }
    }
}
