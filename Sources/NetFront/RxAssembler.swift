import XenABI

/// Rebuilds received frames from rx responses, sans I/O, trusting nothing the backend wrote.
///
/// The caller copies each response slot out of the ring once and hands it over in ring order
/// with the id of the buffer it posted in that slot (a backend must answer each rx request in
/// the slot of the request). A frame is a first data response, its extra-info slots (when it
/// says `extra_info`, chained by the extra's more flag), then further data responses while
/// `more_data` says so. Each data response must name the buffer posted in its slot and hold
/// `offset + status` within the page; extras must be of a negotiated kind; a frame may use no
/// more slots and bytes than the features allow. A frame that breaks a rule is dropped and
/// counted; every buffer its slots used is handed back either way, for posting again.
public struct RxAssembler: Sendable {
    /// A frame's piece: `length` bytes at `offset` of posted buffer `buffer`.
    public struct Fragment: Sendable, Equatable {
        public let buffer: UInt16
        public let offset: Int
        public let length: Int
    }

    /// A received frame.
    public struct Frame: Sendable, Equatable {
        public var fragments: [Fragment]
        public var length: Int { fragments.reduce(0) { $0 + $1.length } }
        /// The backend verified the checksum (`data_validated`).
        public var checksumValidated: Bool
        /// The L4 checksum is blank and must be filled in or trusted (`csum_blank`).
        public var checksumBlank: Bool
        /// A large segment, with its type and MSS.
        public var gso: (type: NetifGSOType, size: UInt16)?

        public static func == (a: Frame, b: Frame) -> Bool {
            a.fragments == b.fragments && a.checksumValidated == b.checksumValidated && a.checksumBlank == b.checksumBlank
                && a.gso?.type == b.gso?.type && a.gso?.size == b.gso?.size
        }
    }

    /// What a slot completed.
    public enum Event: Sendable, Equatable {
        /// A frame, whole and checked; its buffers are in its fragments and `buffers`.
        case frame(Frame, buffers: [UInt16])
        /// A frame dropped (the reason says what was wrong); `buffers` go back to the pool.
        case dropped(Reason, buffers: [UInt16])
    }

    /// Why a frame was dropped (counted in ``counts``).
    public enum Reason: String, Sendable, CaseIterable {
        /// The backend reported an error for it (status < 0).
        case backendError
        /// A response named another buffer than the one posted in its slot.
        case wrongID
        /// `offset + status` past the page, or an empty data response.
        case badLength
        /// An extra-info slot of an unknown or unnegotiated kind.
        case badExtra
        /// More slots than the features allow (no `feature-sg`: more than one).
        case tooManySlots
        /// More bytes than a frame can have.
        case tooLong
    }

    public let features: NetNegotiation.Features
    /// Frames dropped, by reason.
    public private(set) var counts: [Reason: Int] = [:]

    private enum Expecting { case start, extra, more }
    private var expecting = Expecting.start
    private var frame = Frame(fragments: [], checksumValidated: false, checksumBlank: false, gso: nil)
    private var buffers: [UInt16] = []
    private var dataSlots = 0
    private var extras = 0
    private var moreAfterExtras = false
    private var failure: Reason?

    public init(features: NetNegotiation.Features) { self.features = features }

    /// No frame is half assembled: the next slot starts one.
    public var isBetweenFrames: Bool { expecting == .start }

    /// Extra-info slots one frame may carry (GSO, and room for one more kind).
    public static let maxExtras = 2

    /// Takes the next response slot (8 bytes, copied out of the ring) and the id of the
    /// buffer posted in that slot. Returns an event when the slot ended a frame.
    public mutating func consume(slot: UnsafeRawBufferPointer, posted: UInt16) -> Event? {
        buffers.append(posted)
        if expecting == .extra { return extra(slot) }
        guard slot.count >= NetifRxResponse.wireSize,
            case let .response(response)? = try? NetifRxRing().decodeResponse(slot)
        else {
            fail(.badLength)
            return end()
        }
        if expecting == .start {
            frame = Frame(
                fragments: [], checksumValidated: response.flags.contains(.dataValidated),
                checksumBlank: response.flags.contains(.checksumBlank), gso: nil)
        }
        dataSlots += 1
        if response.id != posted {
            fail(.wrongID)
        } else if response.status < 0 {
            fail(.backendError)
        } else if response.status == 0 || Int(response.offset) + Int(response.status) > XenPage.size {
            fail(.badLength)
        } else if dataSlots > features.maxSlotsPerPacket {
            fail(.tooManySlots)
        } else {
            frame.fragments.append(Fragment(buffer: posted, offset: Int(response.offset), length: Int(response.status)))
            if frame.length > Netif.maxTxPacketSize { fail(.tooLong) }
        }
        let more = response.flags.contains(.moreData)
        // A chain longer than any frame can be is cut here: what follows starts a new frame.
        let cut = dataSlots > features.maxSlotsPerPacket
        if expecting == .start && response.flags.contains(.extraInfo) && !cut {
            expecting = .extra
            moreAfterExtras = more
            return nil
        }
        if more && !cut {
            expecting = .more
            return nil
        }
        return end()
    }

    private mutating func extra(_ slot: UnsafeRawBufferPointer) -> Event? {
        extras += 1
        let info = try? NetifExtraInfo.decode(slot)
        switch info?.payload {
        case let .gso(size, type, _)?:
            let allowed = type == .tcpv4 ? features.gsoTCPv4 : type == .tcpv6 ? features.gsoTCPv6 : false
            if allowed && size > 0 && frame.gso == nil { frame.gso = (type, size) } else { fail(.badExtra) }
        case .hash?:
            break  // a hash value: allowed, not used
        default:
            fail(.badExtra)
        }
        if extras > Self.maxExtras { fail(.badExtra) }
        if let info, info.more, extras <= Self.maxExtras { return nil }
        if moreAfterExtras {
            expecting = .more
            return nil
        }
        return end()
    }

    private mutating func fail(_ reason: Reason) {
        if failure == nil { failure = reason }
    }

    private mutating func end() -> Event {
        defer {
            expecting = .start
            buffers = []
            dataSlots = 0
            extras = 0
            moreAfterExtras = false
            failure = nil
        }
        if let failure {
            counts[failure, default: 0] += 1
            return .dropped(failure, buffers: buffers)
        }
        return .frame(frame, buffers: buffers)
    }
}
