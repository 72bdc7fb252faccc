import Atomics
import XenABI

/// A domain's v1 grant table in shared memory (`grant_entry_v1_t[]`, 512 per frame), with both
/// halves of Xen's protocol on it:
///
/// - the **granting guest** writes `domid` and `frame`, then makes the entry live by storing
///   `flags` with release order (Xen: "write barrier, then flags"); it revokes with a
///   compare-and-swap that fails while `GTF_reading`/`GTF_writing` is set (the peer still
///   has it mapped) — *try* semantics: a refused revoke means the page must not be reused;
/// - the **hypervisor** pins an entry for a mapper by compare-and-swapping the 32-bit word
///   that holds `flags` and `domid` together (so the guest cannot change the domid between
///   the check and the pin), setting `GTF_reading` (and `GTF_writing` for a writable map),
///   then reads `frame` once; unpinning clears the bits the same way.
///
/// Every access goes through atomics on the shared page; the guest side can be hostile, so
/// the host side validates every field it reads.
public struct SharedGrantTable: @unchecked Sendable {  // @unchecked: entries in shared memory, changed only with atomics
    public let base: UnsafeMutableRawPointer
    /// Entries in the table (frames × 512).
    public let count: Int

    public init(base: UnsafeMutableRawPointer, frames: Int) {
        self.base = base
        count = frames * GrantEntryV1.perFrame
    }

    /// `flags` and `domid` as one little-endian word: flags in the low half.
    private func word(_ ref: GrantRef) -> UnsafeAtomic<UInt32> {
        UnsafeAtomic(at: (base + Int(ref.rawValue) * GrantEntryV1.wireSize).bindMemory(to: UInt32.AtomicRepresentation.self, capacity: 1))
    }

    private func flags(_ ref: GrantRef) -> UnsafeAtomic<UInt16> {
        UnsafeAtomic(at: (base + Int(ref.rawValue) * GrantEntryV1.wireSize).bindMemory(to: UInt16.AtomicRepresentation.self, capacity: 1))
    }

    private func frameWord(_ ref: GrantRef) -> UnsafeAtomic<UInt32> {
        UnsafeAtomic(
            at: (base + Int(ref.rawValue) * GrantEntryV1.wireSize + GrantEntryV1.frameOffset).bindMemory(to: UInt32.AtomicRepresentation.self, capacity: 1))
    }

    public func contains(_ ref: GrantRef) -> Bool { Int(ref.rawValue) < count }

    /// The entry as it is now (for status and tests).
    public func entry(_ ref: GrantRef) -> GrantEntryV1 {
        let w = word(ref).load(ordering: .acquiring)
        return GrantEntryV1(
            flags: GrantFlags(rawValue: UInt16(truncatingIfNeeded: w)), domid: DomainID(UInt16(w >> 16)),
            frame: frameWord(ref).load(ordering: .relaxed))
    }

    // MARK: The granting guest

    /// Grants `domain` access to `frame` through `ref` (which must be free: invalid and not in
    /// use). C (Linux): `gnttab_grant_foreign_access_ref`.
    public func grant(_ ref: GrantRef, to domain: DomainID, frame: UInt32, readOnly: Bool) {
        precondition(contains(ref), "grant ref \(ref.rawValue) is outside the table")
        let entry = base + Int(ref.rawValue) * GrantEntryV1.wireSize
        entry.storeBytes(of: domain.rawValue.littleEndian, toByteOffset: GrantEntryV1.domidOffset, as: UInt16.self)
        frameWord(ref).store(frame.littleEndian, ordering: .relaxed)
        let live = GrantFlags.permitAccess.rawValue | (readOnly ? GrantFlags.readOnly.rawValue : 0)
        flags(ref).store(live, ordering: .releasing)  // wmb, then the flags make it live
    }

    /// Ends access if nobody has the entry mapped; false (and the entry untouched) while the
    /// peer still uses it. C (Linux): `gnttab_end_foreign_access_ref`.
    public func revoke(_ ref: GrantRef) -> Bool {
        let f = flags(ref)
        var current = f.load(ordering: .acquiring)
        while true {
            if current & (GrantFlags.reading.rawValue | GrantFlags.writing.rawValue) != 0 { return false }
            let (exchanged, original) = f.compareExchange(expected: current, desired: 0, ordering: .acquiringAndReleasing)
            if exchanged { return true }
            current = original
        }
    }

    /// Whether the peer has the entry mapped now.
    public func isInUse(_ ref: GrantRef) -> Bool { GrantFlags(rawValue: flags(ref).load(ordering: .acquiring)).inUse }

    // MARK: The hypervisor

    /// Pins `ref` for `mapper`: checks the entry permits access to exactly that domain (and
    /// writing, if asked), sets `GTF_reading` (+ `GTF_writing`) atomically with that check,
    /// and returns the frame read after the pin. Called only when the entry's pin count for
    /// the bit goes from zero.
    /// - Throws: `.badGntref` outside the table, `.generalError` for an entry that is not
    ///   `GTF_permit_access` to `mapper` or is read-only for a writable pin (Xen's statuses).
    public func pin(_ ref: GrantRef, for mapper: DomainID, writable: Bool) throws(GrantStatus) -> UInt32 {
        guard contains(ref) else { throw .badGntref }
        let w = word(ref)
        var current = w.load(ordering: .acquiring)
        while true {
            let flagBits = UInt16(truncatingIfNeeded: current)
            let domid = UInt16(current >> 16)
            guard flagBits & GrantFlags.typeMask == GrantFlags.permitAccess.rawValue, domid == mapper.rawValue else { throw .generalError }
            if writable && flagBits & GrantFlags.readOnly.rawValue != 0 { throw .generalError }
            let pinned = flagBits | GrantFlags.reading.rawValue | (writable ? GrantFlags.writing.rawValue : 0)
            let desired = UInt32(pinned) | (UInt32(domid) << 16)
            if desired == current { break }
            let (exchanged, original) = w.compareExchange(expected: current, desired: desired, ordering: .acquiringAndReleasing)
            if exchanged { break }
            current = original
        }
        return UInt32(littleEndian: frameWord(ref).load(ordering: .acquiring))
    }

    /// Clears `GTF_writing` (and `GTF_reading` when `reading` is true): the last writable (or
    /// any) mapping of the entry went away.
    public func unpin(_ ref: GrantRef, writing: Bool, reading: Bool) {
        guard contains(ref), writing || reading else { return }
        let clear = (writing ? GrantFlags.writing.rawValue : 0) | (reading ? GrantFlags.reading.rawValue : 0)
        let f = flags(ref)
        var current = f.load(ordering: .acquiring)
        while true {
            let (exchanged, original) = f.compareExchange(expected: current, desired: current & ~clear, ordering: .acquiringAndReleasing)
            if exchanged { return }
            current = original
        }
    }
}
