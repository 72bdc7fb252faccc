import XenABI

/// Groups tx request slots into packets, sans I/O, with Linux netback's checks on what a
/// frontend wrote: the first slot's `size` is the packet's length, extra-info slots follow it
/// when it says so (chained by their more flag), data slots follow while `more_data` says so;
/// every slot's data stays inside its page, the first slot holds at least an Ethernet header,
/// the packet is at most 64 KiB − 1 and uses at most 18 data slots, later slots do not claim
/// more than is left. A packet that breaks a rule is refused whole (each of its slots answered
/// with an error), and serving goes on.
struct TxAssembler {
    /// A data slot of a packet: where its bytes are in the granted page.
    struct Segment: Equatable {
        let id: UInt16
        let gref: GrantRef
        let offset: Int
        let length: Int
    }

    /// A whole packet, or one refused.
    enum Outcome: Equatable {
        case packet(Planned)
        /// Refused: the ids to answer with an error (extra slots get null responses), and why.
        case refused(ids: [UInt16], extras: Int, reason: Reason)
    }

    struct Planned: Equatable {
        /// The first data slot, then the others (kept apart: most packets have one slot, and
        /// then nothing is allocated).
        var first: Segment
        var rest: [Segment]
        var segments: [Segment] { [first] + rest }
        var length: Int
        var flags: NetTxFlags
        var gso: NetifExtraInfo.Payload?
        /// Extra-info slots the packet used (each gets a null response after the first).
        var extras: Int
    }

    enum Reason: String, CaseIterable {
        case outsidePage, tooShort, tooLong, tooManySlots, sizeMismatch, badExtra
    }

    /// Extra-info slots one packet may carry.
    static let maxExtras = 4

    private enum Expecting { case start, extra, more }
    private var expecting = Expecting.start
    private var first: NetifTxRequest?
    /// The data slots after the first.
    private var rest: [Segment] = []
    private var extras = 0
    private var gso: NetifExtraInfo.Payload?
    private var moreAfterExtras = false
    private var remaining = 0
    private var failure: Reason?

    /// Takes the next slot (12 bytes, copied out of the ring). Returns an outcome when the slot
    /// ended a packet.
    mutating func consume(_ slot: UnsafeRawBufferPointer) -> Outcome? {
        if expecting == .extra { return extra(slot) }
        guard case let .request(request)? = try? NetifTxRing().decodeRequest(slot) else {
            fail(.outsidePage)
            return end()
        }
        if expecting == .start {
            first = request
            remaining = Int(request.size)
            if request.size < 14 { fail(.tooShort) }
            // The first slot's own length is settled at the end (total minus later slots).
            if request.flags.contains(.extraInfo) {
                expecting = .extra
                moreAfterExtras = request.flags.contains(.moreData)
                return nil
            }
        } else {
            let size = Int(request.size)
            if size > remaining { fail(.sizeMismatch) }
            if Int(request.offset) + size > XenPage.size { fail(.outsidePage) }
            remaining -= min(size, remaining)
            rest.append(Segment(id: request.id, gref: request.gref, offset: Int(request.offset), length: size))
            if rest.count + 1 > Netif.minimumSlotsPerPacket { fail(.tooManySlots) }
        }
        if request.flags.contains(.moreData) && rest.count + 1 <= Netif.minimumSlotsPerPacket + 2 {
            expecting = .more
            return nil
        }
        return end()
    }

    private mutating func extra(_ slot: UnsafeRawBufferPointer) -> Outcome? {
        extras += 1
        let info = try? NetifExtraInfo.decode(slot)
        switch info?.payload {
        case let .gso(size, type, _)? where size > 0 && (type == .tcpv4 || type == .tcpv6) && gso == nil:
            gso = info!.payload
        case .multicastAdd?, .multicastDelete?:
            break  // multicast filter changes: accepted, the switch floods multicast anyway
        default:
            fail(.badExtra)
        }
        if let info, info.more, extras < Self.maxExtras { return nil }
        if info?.more == true { fail(.badExtra) }
        if moreAfterExtras {
            expecting = .more
            return nil
        }
        return end()
    }

    private mutating func fail(_ reason: Reason) {
        if failure == nil { failure = reason }
    }

    private mutating func end() -> Outcome {
        defer {
            expecting = .start
            first = nil
            rest = []
            extras = 0
            gso = nil
            moreAfterExtras = false
            failure = nil
        }
        guard let first else { return .refused(ids: [], extras: extras, reason: failure ?? .outsidePage) }
        // What the later slots did not claim is the first slot's.
        let head = Segment(id: first.id, gref: first.gref, offset: Int(first.offset), length: remaining)
        if failure == nil {
            if remaining < 14 { fail(.tooShort) }
            if Int(first.offset) + remaining > XenPage.size { fail(.outsidePage) }
            if Int(first.size) > Netif.maxTxPacketSize { fail(.tooLong) }
        }
        if let failure { return .refused(ids: [first.id] + rest.map(\.id), extras: extras, reason: failure) }
        return .packet(Planned(first: head, rest: rest, length: Int(first.size), flags: first.flags, gso: gso, extras: extras))
    }
}
