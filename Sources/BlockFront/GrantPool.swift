import Foundation
import PVPlatform
import XenABI

/// The data pages of one device, within a budget: with persistent grants, pages granted once
/// and reused last-in first-out (the most recently used grant is the one the backend most
/// likely still has mapped); without, pages granted (zeroed) per request and revoked after it
/// with Xen's try semantics. A page whose revoke the backend refuses is kept and retried,
/// never reused and never freed while mapped.
///
/// The budget is an ``AsyncSemaphore``: a request reserves its pages before it takes a ring
/// slot, so running out of memory is back-pressure, not an error.
final class GrantPool: @unchecked Sendable {  // @unchecked: the free list is under `lock`; the rest is immutable
    let platform: any PVPlatform
    let backend: DomainID
    let persistent: Bool
    /// Zero each page before it carries a new request (`trusted` = 0).
    let zeroOnReuse: Bool
    /// Pages a request may reserve.
    let budget: AsyncSemaphore
    let limit: Int
    private let lock = NSLock()
    private var free: [SharedPage] = []
    /// Pages the backend still maps after we tried to revoke them.
    private var held: [SharedPage] = []

    init(platform: any PVPlatform, backend: DomainID, persistent: Bool, zeroOnReuse: Bool, pages: Int) {
        self.platform = platform
        self.backend = backend
        self.persistent = persistent
        self.zeroOnReuse = zeroOnReuse
        limit = pages
        budget = AsyncSemaphore(units: pages)
    }

    /// `count` pages for a request already holding `count` units of the budget.
    /// `readOnly` applies to fresh per-request grants (the backend only reads them).
    func take(_ count: Int, readOnly: Bool) throws(BlockFrontError) -> [SharedPage] {
        guard count > 0 else { return [] }
        var pages: [SharedPage] = []
        pages.reserveCapacity(count)
        if persistent {
            lock.withLock {
                while pages.count < count, let page = free.popLast() { pages.append(page) }
            }
            if zeroOnReuse { for page in pages { page.address.initializeMemory(as: UInt8.self, repeating: 0, count: XenPage.size) } }
        }
        while pages.count < count {
            do {
                // Persistent pages serve reads and writes alike: writable.
                pages.append(try platform.grantPage(to: backend, readOnly: readOnly && !persistent))
            } catch {
                give(pages)
                throw .platform("\(error)")
            }
        }
        return pages
    }

    /// Pages back from a finished request (kept granted, or revoked).
    func give(_ pages: [SharedPage]) {
        guard !pages.isEmpty else { return }
        if persistent {
            lock.withLock { free += pages }
        } else {
            revoke(pages)
        }
    }

    private func revoke(_ pages: [SharedPage]) {
        var kept: [SharedPage] = []
        for page in pages where !platform.revoke(page) { kept.append(page) }
        if !kept.isEmpty { lock.withLock { held += kept } }
    }

    /// Revokes every page this pool granted (on close and before a reconnect), and retries
    /// the ones held before. Returns how many the backend still maps.
    @discardableResult
    func drain() -> Int {
        let pages = lock.withLock {
            defer { free.removeAll(); held.removeAll() }; return free + held
        }
        revoke(pages)
        return pagesHeldByBackend
    }

    /// Pages whose grant the backend has not let go (kept allocated, retried by ``drain()``).
    var pagesHeldByBackend: Int { lock.withLock { held.count } }
}
