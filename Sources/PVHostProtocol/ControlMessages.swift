import Foundation

/// pvhost's control channel (a UNIX seqpacket socket): what a guest process or a tool asks —
/// small "hypercalls" — and what pvhost answers, with file descriptors attached where noted.
/// JSON, because these messages are rare and should be readable in a trace; ring data and
/// granted pages never travel here.
public enum ControlRequest: Codable, Sendable, Equatable {
    /// Become the domain `name` (created now). Reply: ``ControlReply/attached(_:)`` with
    /// descriptors [memory memfd, grant-table memfd, xenstore event in, xenstore event out].
    case attach(name: String, pages: Int?)
    /// `EVTCHNOP_alloc_unbound` for `remote`. Reply: ``ControlReply/port(_:)`` with
    /// descriptors [delivery (wait on it), peer (notify it)].
    case allocUnbound(remote: UInt16)
    /// `EVTCHNOP_bind_interdomain`. Reply as for allocUnbound.
    case bindInterdomain(remote: UInt16, port: UInt32)
    /// `EVTCHNOP_close`.
    case closePort(UInt32)
    /// `GNTTABOP_map_grant_ref` by a guest backend: `granter`'s `ref`. Reply:
    /// ``ControlReply/mapped(handle:frame:)`` with one descriptor, the granter's memory, to map
    /// at `frame × 4096` (one page).
    case mapGrant(granter: UInt16, ref: UInt32, writable: Bool)
    /// `GNTTABOP_unmap_grant_ref` (unmap the page first).
    case unmapGrant(handle: UInt32)
    /// `GNTTABOP_copy`: pvhost copies `length` bytes between `granter`'s granted page (at
    /// `offset`) and the caller's own frame (at `localOffset`); nothing crosses the socket.
    case copyGrant(granter: UInt16, ref: UInt32, offset: Int, localFrame: Int, localOffset: Int, length: Int, toGrant: Bool)
    /// This domain's start info again.
    case domainInfo
    /// The host's state, for `pvhost status`.
    case status
    /// Start writing every frame a switch port (`vif1.0`, `tap:pvtap0`) sends or receives to
    /// `path` as a pcap file (written by pvhost). Reply: ``ControlReply/ok``.
    case capture(port: String, path: String)
    /// Stop that capture (the file is complete). Reply: ``ControlReply/ok``.
    case stopCapture(port: String)
}

/// pvhost's answers.
public enum ControlReply: Codable, Sendable, Equatable {
    case attached(AttachedDomain)
    case port(UInt32)
    case mapped(handle: UInt32, frame: UInt32)
    /// A grant operation refused, with Xen's `GNTST_*` value and name.
    case grantStatus(Int16, String)
    case ok
    case status(HostStatus)
    /// What failed, where, and what to do.
    case error(String)
}

/// What a guest learns when it attaches (its `start_info`, in effect).
public struct AttachedDomain: Codable, Sendable, Equatable {
    public let domid: UInt16
    public let pages: Int
    public let grantFrames: Int
    /// The page with the xenstore ring (`store_mfn`) and the guest's port for it (`store_evtchn`).
    public let storeFrame: Int
    public let storePort: UInt32

    public init(domid: UInt16, pages: Int, grantFrames: Int, storeFrame: Int, storePort: UInt32) {
        self.domid = domid
        self.pages = pages
        self.grantFrames = grantFrames
        self.storeFrame = storeFrame
        self.storePort = storePort
    }
}

/// `pvhost status`.
public struct HostStatus: Codable, Sendable, Equatable {
    public struct DomainEntry: Codable, Sendable, Equatable {
        public let domid: UInt16
        public let name: String
        public let pages: Int
        public let ports: Int
        public init(domid: UInt16, name: String, pages: Int, ports: Int) {
            self.domid = domid
            self.name = name
            self.pages = pages
            self.ports = ports
        }
    }
    public struct DeviceEntry: Codable, Sendable, Equatable {
        public let type: String
        public let frontend: UInt16
        public let devid: String
        /// The backend's and the frontend's XenBus states.
        public let backendState: String
        public let frontendState: String
        public init(type: String, frontend: UInt16, devid: String, backendState: String, frontendState: String) {
            self.type = type
            self.frontend = frontend
            self.devid = devid
            self.backendState = backendState
            self.frontendState = frontendState
        }
    }
    public let domains: [DomainEntry]
    public var devices: [DeviceEntry] = []
    public let grantsMapped: Int
    public let grantMapsTotal: Int
    public let grantCopiesTotal: Int
    public let notificationsSent: Int

    public init(domains: [DomainEntry], grantsMapped: Int, grantMapsTotal: Int, grantCopiesTotal: Int, notificationsSent: Int) {
        self.domains = domains
        self.grantsMapped = grantsMapped
        self.grantMapsTotal = grantMapsTotal
        self.grantCopiesTotal = grantCopiesTotal
        self.notificationsSent = notificationsSent
    }
}

/// Encoding both ways.
public enum ControlCoding {
    public static func encode(_ value: some Encodable) -> [UInt8] {
        (try? Array(JSONEncoder().encode(value))) ?? []
    }

    public static func decode<T: Decodable>(_ type: T.Type, _ bytes: [UInt8]) -> T? {
        try? JSONDecoder().decode(type, from: Data(bytes))
    }
}
