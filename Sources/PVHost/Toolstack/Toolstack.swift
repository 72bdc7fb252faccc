import PVSystem
import Synchronization
import XenABI
import XenStore

/// pvhost's toolstack: creates and destroys domains and devices by writing the xenstore nodes,
/// permissions and states that libxl writes, so a frontend cannot tell pvhost from xl. Domain
/// 0 is pvhost itself; the toolstack talks to xenstored as a dom0 client.
public final class Toolstack: Sendable {
    public let hypervisor: Hypervisor
    public let xenstored: XenStoreDaemon
    /// pvhost's own xenstore connection (dom0, privileged).
    public let store: XenStoreClient
    /// dom0's end of each guest's xenstore event channel, closed when the guest goes.
    private let storePorts = Locked<[DomainID: EventChannelPort]>([:])

    public init(hypervisor: Hypervisor, xenstored: XenStoreDaemon, store: XenStoreClient) {
        self.hypervisor = hypervisor
        self.xenstored = xenstored
        self.store = store
    }

    /// A created guest: its domain and its side of the xenstore event channel.
    public struct Guest: Sendable {
        public let domain: Domain
        /// The guest's port for xenstore (`start_info.store_evtchn`).
        public let storePort: EventChannelPort
        /// The guest's ends of that channel: it waits on `delivery`, notifies `peer`.
        public let storeChannel: EventChannelPortEnd
        public let uuid: String
    }

    /// Why the toolstack could not do something.
    public enum Failure: Error, Sendable, CustomStringConvertible {
        case hypervisor(String)
        case store(XenStoreError)
        public var description: String {
            switch self {
            case let .hypervisor(what): "hypervisor: \(what)"
            case let .store(error): "xenstore: \(error)"
            }
        }
    }

    /// Creates a domain: memory, grant table, the xenstore ring on its last page with an event
    /// channel to dom0, the nodes libxl writes for a domain (home `[n0, r<id>]`, the
    /// guest-writable `data`, `drivers`, `feature`, `attr`, `error`, `messages`,
    /// `control/shutdown` and `control/feature-*` owned by the guest), then introduces it to
    /// xenstored (`@introduceDomain`).
    public func createDomain(name: String, limits: Domain.Limits = Domain.Limits()) async throws(Failure) -> Guest {
        let domain: Domain
        let guestPort: EventChannelPort, guestEnd: EventChannelPortEnd, daemonEnd: EventChannelPortEnd
        do {
            domain = try hypervisor.createDomain(name: name, limits: limits)
            (guestPort, guestEnd) = try hypervisor.allocUnbound(domain.id, remote: .dom0)
            let daemonPort: EventChannelPort
            (daemonPort, daemonEnd) = try hypervisor.bindInterdomain(.dom0, remote: domain.id, remotePort: guestPort)
            storePorts.withLock { $0[domain.id] = daemonPort }
        } catch {
            throw .hypervisor("\(error)")
        }
        let id = domain.id.rawValue
        let uuid = Self.uuid(for: domain.id)
        let home = XenStorePath.home(of: domain.id).rawValue
        do {
            let readOnly = try! XenStorePermissions([XenStorePermission(.none, .dom0), XenStorePermission(.read, domain.id)])
            let guestOwned = try! XenStorePermissions([XenStorePermission(.none, domain.id)])
            let values: [(String, String)] = [
                ("name", name), ("domid", "\(id)"), ("vm", "/vm/\(uuid)"),
                ("memory/static-max", "\(domain.pageCount * 4)"), ("memory/target", "\(domain.pageCount * 4)"),
                ("store/port", "\(guestPort.rawValue)"), ("store/ring-ref", "\(domain.storeFrame)")
            ]
            let guestWritable = [
                "data", "drivers", "feature", "attr", "error", "messages", "control/shutdown",
                "control/feature-poweroff", "control/feature-reboot", "control/feature-suspend",
                "control/sysrq", "device/suspend/event-channel"
            ]
            _ = try await store.transaction { tx in
                try await tx.mkdir(XenStorePath(home))
                try await tx.setPermissions(XenStorePath(home), readOnly)
                for directory in ["device", "control", "memory", "store"] {
                    try await tx.mkdir(XenStorePath(home + "/" + directory))
                    try await tx.setPermissions(XenStorePath(home + "/" + directory), readOnly)
                }
                for (key, value) in values { try await tx.write(XenStorePath(home + "/" + key), value) }
                for key in guestWritable {
                    try await tx.mkdir(XenStorePath(home + "/" + key))
                    try await tx.setPermissions(XenStorePath(home + "/" + key), guestOwned)
                }
                try await tx.write(XenStorePath("/vm/\(uuid)/name"), name)
                try await tx.write(XenStorePath("/vm/\(uuid)/uuid"), uuid)
            }
        } catch {
            closeStorePort(of: domain.id)
            hypervisor.destroyDomain(domain.id)
            throw Self.failure(error)
        }
        _ = xenstored.attachRing(
            domain: domain.id, page: domain.page(domain.storeFrame), fromGuest: daemonEnd.delivery,
            toGuest: daemonEnd.peer, keepAlive: domain,
            introduce: (gfn: UInt64(domain.storeFrame), port: guestPort))
        return Guest(domain: domain, storePort: guestPort, storeChannel: guestEnd, uuid: uuid)
    }

    /// Destroys a domain: xenstored forgets it (its ring, watches and nodes; `@releaseDomain`
    /// fires), `/vm/<uuid>` and its devices' backend directories go, and the hypervisor
    /// reclaims its mappings, ports and memory.
    @discardableResult
    public func destroyDomain(_ id: DomainID) async -> Hypervisor.Reclaimed {
        xenstored.releaseDomain(id)
        try? await store.remove(XenStorePath("/vm/\(Self.uuid(for: id))"))
        // The backend halves of its devices live in dom0's tree: they go too, as with xl destroy.
        for type in (try? await store.directory("/local/domain/0/backend")) ?? [] {
            if let path = try? XenStorePath("/local/domain/0/backend/\(type)/\(id.rawValue)") { try? await store.remove(path) }
        }
        closeStorePort(of: id)
        return hypervisor.destroyDomain(id)
    }

    private func closeStorePort(of id: DomainID) {
        if let port = storePorts.withLock({ $0.removeValue(forKey: id) }) { try? hypervisor.closePort(.dom0, port) }
    }

    private static func failure(_ error: any Error) -> Failure {
        switch error {
        case let error as XenStoreError: .store(error)
        case let error as XenStoreWireError: .store(.invalidRequest(error))
        default: .hypervisor("\(error)")
        }
    }

    /// A stable UUID-shaped name for a domain's `/vm` node.
    static func uuid(for domain: DomainID) -> String {
        let hex = String(domain.rawValue, radix: 16)
        return "00000000-0000-4000-8000-" + String(repeating: "0", count: 12 - hex.count) + hex
    }

    // MARK: Devices

    /// A device as libxl lays it out: the frontend directory in the guest, the backend
    /// directory in the backend domain, each readable by the other side.
    public struct Device: Sendable, Equatable {
        public let type: String
        public let frontend: DomainID
        public let backend: DomainID
        public let devid: Int
        public var frontendPath: String { "/local/domain/\(frontend.rawValue)/device/\(type)/\(devid)" }
        public var backendPath: String { "/local/domain/\(backend.rawValue)/backend/\(type)/\(frontend.rawValue)/\(devid)" }

        public init(type: String, frontend: DomainID, backend: DomainID = .dom0, devid: Int) {
            self.type = type
            self.frontend = frontend
            self.backend = backend
            self.devid = devid
        }
    }

    /// Adds a device in one transaction, as libxl does: frontend dir `[n<guest>, r<backend>]`
    /// with `backend`, `backend-id`, `state`=1 and `frontendKeys`; backend dir
    /// `[n<backend>, r<guest>]` with `frontend`, `frontend-id`, `online`=1, `state`=1 and
    /// `backendKeys`.
    public func addDevice(_ device: Device, frontendKeys: [String: String] = [:], backendKeys: [String: String] = [:]) async throws(Failure) {
        let frontendPermissions = try! XenStorePermissions([XenStorePermission(.none, device.frontend), XenStorePermission(.read, device.backend)])
        let backendPermissions = try! XenStorePermissions([XenStorePermission(.none, device.backend), XenStorePermission(.read, device.frontend)])
        let front = ["backend": device.backendPath, "backend-id": "\(device.backend.rawValue)", "state": "1"].merging(frontendKeys) { $1 }
        var back = ["frontend": device.frontendPath, "frontend-id": "\(device.frontend.rawValue)", "online": "1", "state": "1"].merging(backendKeys) { $1 }
        // libxl pre-creates an empty hotplug-status for vifs; the "script" fills it in.
        if device.type == "vif", back["hotplug-status"] == nil { back["hotplug-status"] = "" }
        do {
            _ = try await store.transaction { tx in
                for (directory, permissions, keys) in [(device.frontendPath, frontendPermissions, front), (device.backendPath, backendPermissions, back)] {
                    try await tx.mkdir(XenStorePath(directory))
                    try await tx.setPermissions(XenStorePath(directory), permissions)
                    for (key, value) in keys.sorted(by: { $0.key < $1.key }) {
                        try await tx.write(XenStorePath(directory + "/" + key), value)
                        try await tx.setPermissions(XenStorePath(directory + "/" + key), permissions)
                    }
                }
            }
        } catch {
            throw Self.failure(error)
        }
    }

    /// What libxl's hotplug script reports once the backend's resource (file, tap) is attached:
    /// `hotplug-status` = `connected` (netback waits for it before Connected), or `error` with
    /// `hotplug-error`.
    public func reportHotplug(_ device: Device, error: String? = nil) async throws(Failure) {
        do {
            try await store.transaction { tx in
                try await tx.write(XenStorePath(device.backendPath + "/hotplug-status"), error == nil ? "connected" : "error")
                if let error { try await tx.write(XenStorePath(device.backendPath + "/hotplug-error"), error) }
            }
        } catch {
            throw Self.failure(error)
        }
    }

    /// Removes a device as libxl does: `online`=0 and backend `state`=5 (unless already 6) in
    /// one transaction, then waits up to `timeout` for the backend to reach Closed (6), then
    /// deletes both directories. Returns whether the backend closed in time.
    @discardableResult
    public func removeDevice(_ device: Device, timeout: Duration = .seconds(5)) async throws(Failure) -> Bool {
        do {
            let statePath = try XenStorePath(device.backendPath + "/state")
            try await store.transaction { tx in
                try await tx.write(XenStorePath(device.backendPath + "/online"), "0")
                if try await tx.readString(statePath) != "6" { try await tx.write(statePath, "5") }
            }
            let clock = ContinuousClock()
            let deadline = clock.now.advanced(by: timeout)
            var closed = false
            while clock.now < deadline {
                if (try? await store.readString(statePath)) == "6" { closed = true; break }
                try? await Task.sleep(for: .milliseconds(20))
            }
            try await store.remove(XenStorePath(device.backendPath))
            try await store.remove(XenStorePath(device.frontendPath))
            return closed
        } catch {
            throw Self.failure(error)
        }
    }
}
