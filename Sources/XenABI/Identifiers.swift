/// A Xen domain id, C `domid_t` (`uint16_t`).
public struct DomainID: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
    public var rawValue: UInt16
    @inlinable public init(rawValue: UInt16) { self.rawValue = rawValue }
    @inlinable public init(_ value: UInt16) { self.rawValue = value }

    /// The control domain. C: domain 0.
    public static let dom0 = DomainID(0)
    /// The first id that names no real domain. C: `DOMID_FIRST_RESERVED`.
    public static let firstReserved = DomainID(0x7FF0)
    /// "The calling domain" in hypercall arguments. C: `DOMID_SELF`.
    public static let selfDomain = DomainID(0x7FF0)
    /// C: `DOMID_IO`.
    public static let io = DomainID(0x7FF1)
    /// C: `DOMID_XEN`.
    public static let xen = DomainID(0x7FF2)
    /// C: `DOMID_COW`.
    public static let cow = DomainID(0x7FF3)
    /// C: `DOMID_INVALID`.
    public static let invalid = DomainID(0x7FF4)
    /// C: `DOMID_IDLE`.
    public static let idle = DomainID(0x7FFF)

    /// True for ids that name a domain rather than a special value.
    public var isRegular: Bool { rawValue < Self.firstReserved.rawValue }

    public static func < (a: DomainID, b: DomainID) -> Bool { a.rawValue < b.rawValue }
    public var description: String { String(rawValue) }
}

/// An index into a domain's grant table, C `grant_ref_t` (`uint32_t`).
public struct GrantRef: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
    public var rawValue: UInt32
    @inlinable public init(rawValue: UInt32) { self.rawValue = rawValue }
    @inlinable public init(_ value: UInt32) { self.rawValue = value }
    public static func < (a: GrantRef, b: GrantRef) -> Bool { a.rawValue < b.rawValue }
    public var description: String { String(rawValue) }
}

/// An event-channel port, C `evtchn_port_t` (`uint32_t`).
public struct EventChannelPort: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
    public var rawValue: UInt32
    @inlinable public init(rawValue: UInt32) { self.rawValue = rawValue }
    @inlinable public init(_ value: UInt32) { self.rawValue = value }
    public static func < (a: EventChannelPort, b: EventChannelPort) -> Bool { a.rawValue < b.rawValue }
    public var description: String { String(rawValue) }
}
