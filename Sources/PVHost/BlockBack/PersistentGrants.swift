import PVSystem
import Synchronization
import XenABI

/// A ring's persistent grants: the guest's data pages mapped once and kept across requests
/// (Linux blkback's per-ring tree, a dictionary here), at most `limit` of them. Used by the
/// ring's handler and its I/O threads; emptied (and unmapped) at disconnect.
final class PersistentGrants: Sendable {
    private let hypervisor: Hypervisor
    private let frontend: DomainID
    private let limit: Int
    private let cache = Locked<[GrantRef: GrantMapping]>([:])

    init(hypervisor: Hypervisor, frontend: DomainID, limit: Int) {
        self.hypervisor = hypervisor
        self.frontend = frontend
        self.limit = limit
    }

    /// The page of `ref`: kept from before, or mapped now (writable) and kept; nil when the
    /// cache is full or the grant cannot be mapped.
    func page(_ ref: GrantRef) -> UnsafeMutableRawPointer? {
        cache.withLock { cache in
            if let mapping = cache[ref] { return mapping.page }
            guard cache.count < limit, let mapping = try? hypervisor.mapGrant(ref, of: frontend, by: .dom0, writable: true) else { return nil }
            cache[ref] = mapping
            return mapping.page
        }
    }

    /// Every mapping, taken out of the cache (for the caller to unmap, or to keep).
    func removeAll() -> [GrantMapping] {
        cache.withLock { cache in
            defer { cache.removeAll() }
            return Array(cache.values)
        }
    }
}
