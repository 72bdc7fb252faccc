import PVSystem
import XenABI
import XenGrants

/// A grant mapped by a backend: the granting domain's page, reachable while the mapping lives.
/// Sendable by hand: `page` points into shared memory that `owner` keeps mapped, and the page
/// is the peer's to write at any time (readers copy out once, then check).
public struct GrantMapping: Sendable {
    /// What ``Hypervisor/unmapGrant(_:)`` takes back. C: `grant_handle_t`.
    public let handle: UInt32
    public let granter: DomainID
    public let ref: GrantRef
    public let frame: UInt32
    public let writable: Bool
    /// The granted page (4 KiB) in pvhost's mapping of the granter's memory.
    public var page: UnsafeMutableRawPointer { location.pointer }
    let location: MemoryAddress
    public let mapper: DomainID
    /// Keeps the granter's memory mapped as long as this mapping value exists.
    let owner: Domain
}

/// The hypervisor's book of active grants, sans I/O: pin counts per (granter, ref), and each
/// mapping by handle. The shared entry's `GTF_reading`/`GTF_writing` bits are set on the first
/// pin of each kind and cleared on the last, so a guest's revoke fails exactly while some
/// mapping of that kind exists.
struct GrantBook {
    struct Key: Hashable { let granter: DomainID; let ref: GrantRef }
    struct Pins { var readers = 0; var writers = 0 }
    private(set) var pins: [Key: Pins] = [:]
    private(set) var mappings: [UInt32: GrantMapping] = [:]
    private var nextHandle: UInt32 = 1

    /// Active mappings (for status).
    var count: Int { mappings.count }

    mutating func map(_ ref: GrantRef, of granter: Domain, by mapper: DomainID, writable: Bool) throws(GrantStatus) -> GrantMapping {
        let key = Key(granter: granter.id, ref: ref)
        var pin = pins[key] ?? Pins()
        // Pin the shared entry when this kind of use starts; the check is atomic with it.
        let needsPin = pin.readers == 0 || (writable && pin.writers == 0)
        var frame: UInt32
        if needsPin {
            frame = try granter.grants.pin(ref, for: mapper, writable: writable)
        } else {
            guard let existing = mappings.values.first(where: { $0.granter == granter.id && $0.ref == ref }) else { throw .generalError }
            // Re-validate the entry for this mapper: another domain's pins do not make it ours.
            guard granter.grants.entry(ref).domid == mapper else { throw .generalError }
            frame = existing.frame
        }
        guard Int(frame) < granter.pageCount else {
            if needsPin { granter.grants.unpin(ref, writing: writable && pin.writers == 0, reading: pin.readers == 0) }
            throw .badPage
        }
        pin.readers += 1
        if writable { pin.writers += 1 }
        pins[key] = pin
        let handle = nextHandle
        nextHandle = nextHandle &+ 1 == 0 ? 1 : nextHandle &+ 1
        let mapping = GrantMapping(
            handle: handle, granter: granter.id, ref: ref, frame: frame, writable: writable,
            location: MemoryAddress(granter.page(Int(frame))), mapper: mapper, owner: granter)
        mappings[handle] = mapping
        return mapping
    }

    /// Drops a mapping; returns it, or throws `.badHandle` for a handle that is not `mapper`'s.
    mutating func unmap(_ handle: UInt32, by mapper: DomainID, granter: Domain?) throws(GrantStatus) -> GrantMapping {
        guard let mapping = mappings[handle], mapping.mapper == mapper else { throw .badHandle }
        mappings[handle] = nil
        let key = Key(granter: mapping.granter, ref: mapping.ref)
        var pin = pins[key] ?? Pins()
        pin.readers -= 1
        if mapping.writable { pin.writers -= 1 }
        granter?.grants.unpin(mapping.ref, writing: mapping.writable && pin.writers == 0, reading: pin.readers == 0)
        pins[key] = pin.readers == 0 ? nil : pin
        return mapping
    }

    /// One grant copy (see ``Hypervisor/copyGrants(_:of:by:)``): pins the entry unless a
    /// mapping already holds the pin this copy needs (then checks it is still `mapper`'s),
    /// copies, unpins what it pinned.
    func copy(_ op: Hypervisor.GrantCopy, of granter: Domain, by mapper: DomainID) -> GrantStatus {
        guard op.offset >= 0, op.length >= 0, op.offset + op.length <= XenPage.size else { return .badCopyArg }
        let key = Key(granter: granter.id, ref: op.ref)
        let pin = pins[key]
        let pinned = pin.map { op.toGrant ? $0.writers > 0 : $0.readers > 0 } ?? false
        let frame: UInt32
        if pinned {
            guard granter.grants.entry(op.ref).domid == mapper,
                let existing = mappings.values.first(where: { $0.granter == granter.id && $0.ref == op.ref })
            else { return .generalError }
            frame = existing.frame
        } else {
            do { frame = try granter.grants.pin(op.ref, for: mapper, writable: op.toGrant) } catch { return error }
        }
        defer {
            if !pinned {
                granter.grants.unpin(op.ref, writing: op.toGrant && (pin?.writers ?? 0) == 0, reading: (pin?.readers ?? 0) == 0)
            }
        }
        guard Int(frame) < granter.pageCount else { return .badPage }
        let page = granter.page(Int(frame)) + op.offset
        if op.toGrant { page.copyMemory(from: op.local, byteCount: op.length) } else { op.local.copyMemory(from: page, byteCount: op.length) }
        return .okay
    }

    /// Handles of mappings made by `mapper`, or of `granter`'s grants.
    func handles(mappedBy mapper: DomainID) -> [UInt32] { mappings.values.filter { $0.mapper == mapper }.map(\.handle) }
    func handles(grantedBy granter: DomainID) -> [UInt32] { mappings.values.filter { $0.granter == granter }.map(\.handle) }
}
