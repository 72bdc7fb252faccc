/// XenBus device states, `xen/include/public/io/xenbus.h`.
///
/// Each end of a split device writes its state as a decimal string in its `state` node.
public enum XenbusState: UInt32, Sendable, CaseIterable, CustomStringConvertible {
    /// C: `XenbusStateUnknown`: node missing or unreadable; the peer is gone.
    case unknown = 0
    /// C: `XenbusStateInitialising`.
    case initialising = 1
    /// C: `XenbusStateInitWait`: early init done, waiting for the peer.
    case initWait = 2
    /// C: `XenbusStateInitialised`: transport published, waiting for the peer to connect.
    case initialised = 3
    /// C: `XenbusStateConnected`.
    case connected = 4
    /// C: `XenbusStateClosing`.
    case closing = 5
    /// C: `XenbusStateClosed`.
    case closed = 6
    /// C: `XenbusStateReconfiguring`.
    case reconfiguring = 7
    /// C: `XenbusStateReconfigured`.
    case reconfigured = 8

    /// Parses a `state` node's value: a decimal number, optionally NUL- or newline-terminated.
    /// Anything else is nil (the caller treats it as ``unknown``).
    public init?(nodeValue: some StringProtocol) {
        var text = Substring(nodeValue)
        while let last = text.last, last == "\0" || last == "\n" { text = text.dropLast() }
        guard !text.isEmpty, text.allSatisfy(\.isASCII), let raw = UInt32(text) else { return nil }
        self.init(rawValue: raw)
    }

    /// The decimal string written to a `state` node.
    public var nodeValue: String { String(rawValue) }

    public var description: String {
        switch self {
        case .unknown: "Unknown"
        case .initialising: "Initialising"
        case .initWait: "InitWait"
        case .initialised: "Initialised"
        case .connected: "Connected"
        case .closing: "Closing"
        case .closed: "Closed"
        case .reconfiguring: "Reconfiguring"
        case .reconfigured: "Reconfigured"
        }
    }
}
