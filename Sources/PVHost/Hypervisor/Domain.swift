import PVSystem
import XenABI
import XenGrants

/// A guest domain's resources, owned by pvhost: its memory (a memfd of pages addressed by
/// frame number), its grant-table frames (another memfd, written by the guest) and the page
/// that carries its xenstore ring. The guest maps the same memfds; nothing else is shared.
/// Mappings by backends keep the object (and so the memory) alive until they are unmapped.
public final class Domain: Sendable {
    public let id: DomainID
    public let name: String
    public let memory: SharedMemoryRegion
    public let grantFrames: SharedMemoryRegion
    public let grants: SharedGrantTable
    /// Pages of guest memory.
    public var pageCount: Int { memory.byteCount / XenPage.size }
    /// The frame holding the xenstore ring (the last page, like a small `store_mfn`).
    public var storeFrame: Int { pageCount - 1 }

    /// Limits of the domain, as xl's config sets them.
    public struct Limits: Sendable, Equatable {
        /// Guest memory pages (4 KiB each).
        public var pages = 256
        /// Grant-table frames (512 entries each). C/xl: `max_grant_frames` (default 32 in xl; small here).
        public var grantFrames = 4
        /// Event channel ports. C/xl: `max_event_channels` (default 1023).
        public var eventChannels = 1023
        public init() {}
    }
    public let limits: Limits

    init(id: DomainID, name: String, limits: Limits) throws(SystemError) {
        self.id = id
        self.name = name
        self.limits = limits
        memory = try SharedMemoryRegion(creating: "pvhost-dom\(id.rawValue)-memory", byteCount: limits.pages * XenPage.size)
        grantFrames = try SharedMemoryRegion(creating: "pvhost-dom\(id.rawValue)-grants", byteCount: limits.grantFrames * XenPage.size)
        grants = SharedGrantTable(base: grantFrames.baseAddress, frames: limits.grantFrames)
    }

    /// A guest frame's address in pvhost's mapping.
    public func page(_ frame: Int) -> UnsafeMutableRawPointer {
        precondition(frame >= 0 && frame < pageCount, "frame \(frame) is outside domain \(id.rawValue)'s memory")
        return memory.baseAddress + frame * XenPage.size
    }
}
