import PVSystem
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
final class GrantPool: Sendable {
    let platform: any PVPlatform
    let backend: DomainID
    let persistent: Bool
    /// Zero each page before it carries a new request (`trusted` = 0).
    let zeroOnReuse: Bool
    /// Pages a request may reserve.
    let budget: AsyncSemaphore
    let limit: Int
    /// Granted pages ready for reuse, and pages the backend still maps after we tried to
    /// revoke them.
    private let pages = Locked<(free: [SharedPage], held: [SharedPage])>(([], []))

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
            pages = self.pages.withLock { state in
                var taken = pages
                while taken.count < count, let page = state.free.popLast() { taken.append(page) }
                return taken
            }
            if zeroOnReuse { for page in pages { page.address.initializeMemory(as: UInt8.self, repeating: 0, count: XenPage.size) } }
        }
        while pages.count < count {
            do {
                // Persistent pages serve reads and writes alike: writable.
                pages.append(try platform.grantPage(to: backend, readOnly: readOnly && !persistent))
            } catch {
                give(pages)
                throw .platform("granting a data page", cause: error)
            }
        }
        return pages
    }

    /// Pages back from a finished request (kept granted, or revoked).
    func give(_ pages: [SharedPage]) {
        guard !pages.isEmpty else { return }
        if persistent {
            self.pages.withLock { $0.free += pages }
        } else {
            revoke(pages)
        }
    }

    private func revoke(_ pages: [SharedPage]) {
        var kept: [SharedPage] = []
        for page in pages where !platform.revoke(page) { kept.append(page) }
        if !kept.isEmpty { self.pages.withLock { $0.held += kept } }
    }

    /// Revokes every page this pool granted (on close and before a reconnect), and retries
    /// the ones held before. Returns how many the backend still maps.
    @discardableResult
    func drain() -> Int {
        let all = pages.withLock { state in
            defer {
                state.free.removeAll()
                state.held.removeAll()
            }
            return state.free + state.held
        }
        revoke(all)
        return pagesHeldByBackend
    }

    /// Pages whose grant the backend has not let go (kept allocated, retried by ``drain()``).
    var pagesHeldByBackend: Int { pages.withLock { $0.held.count } }
}
