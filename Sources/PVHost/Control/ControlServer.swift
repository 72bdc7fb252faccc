import Foundation
import Logging
#if canImport(Glibc)
import Glibc
#endif
import PVHostProtocol
import PVSystem
import XenABI
import XenStore

/// pvhost's control socket: guest processes attach here and become domains; their few
/// hypercalls (event channels) come here; tools ask for the status. One thread per
/// connection (there are few). When a guest's connection ends — it exited, crashed or was
/// killed — its domain is destroyed and everything it held reclaimed.
public final class ControlServer: @unchecked Sendable {
    public let path: String
    public let toolstack: Toolstack
    /// With a configuration, only its domains may attach, with its limits.
    public let config: PVHostConfig?
    private let listener: Int32
    private let logger: Logger
    private let lock = NSLock()
    private var stopping = false
    /// The guests' connections being served (ended by ``stop()``).
    private var live: Set<Int32> = []
    /// The disks served for each attached domain.
    private var disks: [DomainID: [BlockBackend]] = [:]
    /// The network interfaces served for each attached domain.
    private var nics: [DomainID: [NetBackend]] = [:]
    /// The switch every vif and TAP is a port of.
    public let network = VirtualSwitch()
    /// The configuration's TAP devices.
    public private(set) var taps: [TapPort] = []

    /// Why the server could not start.
    public struct StartFailure: Error, CustomStringConvertible { public let description: String }

    /// Listens on `path`; opens the configuration's TAP devices (needs CAP_NET_ADMIN when there are any).
    public init(path: String, toolstack: Toolstack, config: PVHostConfig? = nil, logger: Logger = Logger(label: "pvhost.control")) throws(StartFailure) {
        self.path = path
        self.logger = logger
        self.toolstack = toolstack
        self.config = config
        for tap in config?.taps ?? [] {
            do { taps.append(try TapPort.open(name: tap.name, namespace: tap.netns, network: network)) } catch {
                for opened in taps { opened.stop() }
                throw StartFailure(description: "\(error)")
            }
        }
        do { listener = try SeqpacketSocket.listen(at: path) } catch {
            for opened in taps { opened.stop() }
            throw StartFailure(description: "control socket \(path): \(error)")
        }
    }

    deinit {
        for tap in taps { tap.stop() }
        executor.shutdown()
        close(listener)
        unlink(path)
    }

    /// Accepts connections until ``stop()``; each is served on its own thread.
    public func run() {
        while true {
            var entry = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
            let ready = poll(&entry, 1, 200)
            if lock.withLock({ stopping }) { return }
            guard ready > 0 else { continue }
            let fd = accept(listener, nil, nil)
            guard fd >= 0 else { continue }
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            let connection = SeqpacketSocket(adopting: fd)
            lock.withLock { _ = live.insert(fd) }
            Thread { [self] in serve(connection, fd: fd) }.start()
        }
    }

    /// Stops accepting and ends every guest's connection: each guest is detached and
    /// destroyed as if its process had ended.
    public func stop() {
        let connections = lock.withLock { stopping = true; return live }
        for fd in connections { shutdown(fd, Int32(SHUT_RDWR)) }
    }

    /// Runs an async toolstack call from a connection thread, on pvhost's own executor thread
    /// (not Swift's cooperative pool, which a guest in the same process may be blocking in a
    /// synchronous hypercall to us).
    private func blocking<T: Sendable>(_ body: @escaping @Sendable () async -> T) -> T {
        let box = ResultBox<T>()
        let done = DispatchSemaphore(value: 0)
        Task(executorPreference: executor) {
            box.value = await body()
            done.signal()
        }
        done.wait()
        return box.value!
    }

    private let executor = ThreadExecutor(name: "pvhost.control")

    private final class ResultBox<T>: @unchecked Sendable { var value: T? }

    private struct Failure: Error, CustomStringConvertible { let description: String }

    private func serve(_ connection: SeqpacketSocket, fd: Int32) {
        var domain: DomainID?
        var info: AttachedDomain?
        defer {
            lock.withLock { _ = live.remove(fd) }
            if let domain {
                let backends = lock.withLock { disks.removeValue(forKey: domain) } ?? []
                if !backends.isEmpty { blocking { for backend in backends { await backend.stop() } } }
                let interfaces = lock.withLock { nics.removeValue(forKey: domain) } ?? []
                if !interfaces.isEmpty { blocking { for nic in interfaces { await nic.stop() } } }
                let toolstack = self.toolstack
                let reclaimed = blocking { await toolstack.destroyDomain(domain) }
                logger.info("domain \(domain.rawValue) detached and destroyed", metadata: [
                    "mappings-by-it": "\(reclaimed.mappingsByIt)", "mappings-of-it": "\(reclaimed.mappingsOfIt)", "ports": "\(reclaimed.ports)"])
            }
        }
        while let (bytes, descriptors) = try? connection.receive() {
            for fd in descriptors { close(fd) }  // guests send none
            guard let request = ControlCoding.decode(ControlRequest.self, bytes) else {
                try? connection.send(ControlCoding.encode(ControlReply.error("malformed control message (\(bytes.count) bytes): expected a JSON ControlRequest")))
                continue
            }
            if request == .domainInfo, let info {
                try? connection.send(ControlCoding.encode(ControlReply.attached(info)))
                continue
            }
            let (reply, attached) = handle(request, domain: domain)
            if case let .attached(started) = reply, domain == nil {
                domain = DomainID(started.domid)
                info = started
                logger.info("domain \(started.domid) attached", metadata: ["pages": "\(started.pages)", "store-port": "\(started.storePort)"])
            } else if case let .error(why) = reply {
                logger.notice("refused: \(why)", metadata: ["domain": "\(domain.map { String($0.rawValue) } ?? "-")"])
            }
            do {
                try connection.send(ControlCoding.encode(reply), descriptors: attached.map(\.fileDescriptor))
            } catch {
                return
            }
            withExtendedLifetime(attached) {}
        }
    }

    /// Every device under dom0's backend directory, with both ends' states.
    private static func devices(_ store: XenStoreClient) async -> [HostStatus.DeviceEntry] {
        var devices: [HostStatus.DeviceEntry] = []
        func read(_ path: String) async -> String {
            guard let node = try? XenStorePath(path), let value = try? await store.readString(node) else { return "-" }
            return value
        }
        guard let types = try? await store.directory("/local/domain/0/backend") else { return [] }
        for type in types {
            for frontend in (try? await store.directory(XenStorePath("/local/domain/0/backend/\(type)"))) ?? [] {
                for devid in (try? await store.directory(XenStorePath("/local/domain/0/backend/\(type)/\(frontend)"))) ?? [] {
                    let backend = "/local/domain/0/backend/\(type)/\(frontend)/\(devid)"
                    let frontendPath = await read(backend + "/frontend")
                    devices.append(.init(type: type, frontend: UInt16(frontend) ?? 0, devid: devid,
                                         backendState: await read(backend + "/state"), frontendState: await read(frontendPath + "/state")))
                }
            }
        }
        return devices
    }

    /// Objects whose descriptors go with a reply (kept alive until it is sent).
    private struct Attachment { let fileDescriptor: Int32; let owner: AnyObject }

    private func handle(_ request: ControlRequest, domain: DomainID?) -> (ControlReply, [Attachment]) {
        let hypervisor = toolstack.hypervisor
        switch request {
        case let .attach(name, pages):
            guard domain == nil else { return (.error("this connection is already domain \(domain!.rawValue)"), []) }
            var wanted = Domain.Limits()
            if let config {
                guard let entry = config.domain(named: name) else {
                    return (.error("no domain named \"\(name)\" in pvhost's configuration (known: \(config.domains.map(\.name).joined(separator: ", ")))"), [])
                }
                guard !toolstack.hypervisor.domains.contains(where: { $0.name == name }) else {
                    return (.error("domain \"\(name)\" is already running"), [])
                }
                wanted = entry.limits
            } else if let pages {
                wanted.pages = max(pages, 16)
            }
            let limits = wanted, toolstack = self.toolstack
            let created: Result<Toolstack.Guest, Toolstack.Failure> = blocking {
                do throws(Toolstack.Failure) { return .success(try await toolstack.createDomain(name: name, limits: limits)) } catch { return .failure(error) }
            }
            switch created {
            case let .failure(error): return (.error("creating domain \"\(name)\": \(error)"), [])
            case let .success(guest):
                let d = guest.domain
                if let configured = config?.domain(named: name)?.disks, !configured.isEmpty {
                    let toolstack = self.toolstack
                    let started: Result<[BlockBackend], Failure> = blocking {
                        var backends: [BlockBackend] = []
                        for disk in configured {
                            let device = Toolstack.Device(type: "vbd", frontend: d.id, devid: disk.devid)
                            let settings = disk.settings
                            do {
                                try await toolstack.addDevice(device, frontendKeys: ["virtual-device": "\(disk.devid)", "device-type": "disk"],
                                                              backendKeys: ["params": disk.path, "type": "file", "mode": settings.readOnly ? "r" : "w"])
                                backends.append(try await BlockBackend.start(toolstack: toolstack, device: device, path: disk.path, settings: settings))
                            } catch {
                                for backend in backends { await backend.stop() }
                                return .failure(Failure(description: "disk \(disk.devid) (\(disk.path)): \(error)"))
                            }
                        }
                        return .success(backends)
                    }
                    switch started {
                    case let .success(backends): lock.withLock { disks[d.id] = backends }
                    case let .failure(error):
                        _ = blocking { await toolstack.destroyDomain(d.id) }
                        return (.error("creating domain \"\(name)\": \(error)"), [])
                    }
                }
                if let configured = config?.domain(named: name)?.nics, !configured.isEmpty {
                    let toolstack = self.toolstack, network = self.network
                    let started: Result<[NetBackend], Failure> = blocking {
                        var backends: [NetBackend] = []
                        for nic in configured {
                            let device = Toolstack.Device(type: "vif", frontend: d.id, devid: nic.devid)
                            do {
                                try await toolstack.addDevice(device, backendKeys: ["script": "pvhost-switch", "type": "vif"])
                                backends.append(try await NetBackend.start(toolstack: toolstack, device: device, network: network, settings: nic.settings))
                            } catch {
                                for backend in backends { await backend.stop() }
                                return .failure(Failure(description: "nic \(nic.devid): \(error)"))
                            }
                        }
                        return .success(backends)
                    }
                    switch started {
                    case let .success(backends): lock.withLock { nics[d.id] = backends }
                    case let .failure(error):
                        let disksStarted = lock.withLock { disks.removeValue(forKey: d.id) } ?? []
                        _ = blocking {
                            for backend in disksStarted { await backend.stop() }
                            return await toolstack.destroyDomain(d.id)
                        }
                        return (.error("creating domain \"\(name)\": \(error)"), [])
                    }
                }
                let info = AttachedDomain(domid: d.id.rawValue, pages: d.pageCount, grantFrames: d.limits.grantFrames,
                                          storeFrame: d.storeFrame, storePort: guest.storePort.rawValue)
                return (.attached(info), [Attachment(fileDescriptor: d.memory.fileDescriptor, owner: d.memory),
                                          Attachment(fileDescriptor: d.grantFrames.fileDescriptor, owner: d.grantFrames),
                                          Attachment(fileDescriptor: guest.storeChannel.delivery.fileDescriptor, owner: guest.storeChannel.delivery),
                                          Attachment(fileDescriptor: guest.storeChannel.peer.fileDescriptor, owner: guest.storeChannel.peer)])
            }
        case let .allocUnbound(remote):
            guard let domain else { return (.error("attach first"), []) }
            do {
                let (port, end) = try hypervisor.allocUnbound(domain, remote: DomainID(remote))
                return (.port(port.rawValue), [Attachment(fileDescriptor: end.delivery.fileDescriptor, owner: end.delivery),
                                               Attachment(fileDescriptor: end.peer.fileDescriptor, owner: end.peer)])
            } catch {
                return (.error("\(error)"), [])
            }
        case let .bindInterdomain(remote, port):
            guard let domain else { return (.error("attach first"), []) }
            do {
                let (local, end) = try hypervisor.bindInterdomain(domain, remote: DomainID(remote), remotePort: EventChannelPort(port))
                return (.port(local.rawValue), [Attachment(fileDescriptor: end.delivery.fileDescriptor, owner: end.delivery),
                                                Attachment(fileDescriptor: end.peer.fileDescriptor, owner: end.peer)])
            } catch {
                return (.error("\(error)"), [])
            }
        case let .closePort(port):
            guard let domain else { return (.error("attach first"), []) }
            do {
                try hypervisor.closePort(domain, EventChannelPort(port))
                return (.ok, [])
            } catch {
                return (.error("\(error)"), [])
            }
        case let .mapGrant(granter, ref, writable):
            guard let domain else { return (.error("attach first"), []) }
            do {
                let mapping = try hypervisor.mapGrant(GrantRef(ref), of: DomainID(granter), by: domain, writable: writable)
                guard let owner = hypervisor.domain(DomainID(granter)) else {
                    try? hypervisor.unmapGrant(mapping.handle, by: domain)
                    return (.grantStatus(GrantStatus.badDomain.rawValue, "\(GrantStatus.badDomain)"), [])
                }
                return (.mapped(handle: mapping.handle, frame: mapping.frame), [Attachment(fileDescriptor: owner.memory.fileDescriptor, owner: owner.memory)])
            } catch {
                return (.grantStatus(error.rawValue, "\(error)"), [])
            }
        case let .unmapGrant(handle):
            guard let domain else { return (.error("attach first"), []) }
            do {
                try hypervisor.unmapGrant(handle, by: domain)
                return (.ok, [])
            } catch {
                return (.grantStatus(error.rawValue, "\(error)"), [])
            }
        case let .copyGrant(granter, ref, offset, localFrame, localOffset, length, toGrant):
            guard let domain, let own = hypervisor.domain(domain) else { return (.error("attach first"), []) }
            guard length >= 0, localFrame >= 0, localFrame < own.pageCount, localOffset >= 0, localOffset + length <= XenPage.size else {
                return (.grantStatus(GrantStatus.badCopyArg.rawValue, "\(GrantStatus.badCopyArg)"), [])
            }
            let local = own.page(localFrame) + localOffset
            do {
                if toGrant {
                    try hypervisor.copyGrant(UnsafeRawBufferPointer(start: local, count: length), to: GrantRef(ref), of: DomainID(granter), by: domain, offset: offset)
                } else {
                    try hypervisor.copyGrant(GrantRef(ref), of: DomainID(granter), by: domain, offset: offset,
                                             into: UnsafeMutableRawBufferPointer(start: local, count: length))
                }
                return (.ok, [])
            } catch {
                return (.grantStatus(error.rawValue, "\(error)"), [])
            }
        case let .capture(port, path):
            do {
                try network.startCapture(port: port, path: path)
                logger.info("capturing \(port) to \(path)")
                return (.ok, [])
            } catch {
                return (.error("\(error)"), [])
            }
        case let .stopCapture(port):
            guard let frames = network.stopCapture(port: port) else { return (.error("no capture of \(port) is running"), []) }
            logger.info("capture of \(port) ended: \(frames) frames")
            return (.ok, [])
        case .domainInfo:
            return (.error("attach first"), [])  // answered by serve() from the attach
        case .status:
            let s = hypervisor.status
            var status = HostStatus(domains: s.domains.map { .init(domid: $0.id.rawValue, name: $0.name, pages: $0.pages, ports: $0.ports) },
                                    grantsMapped: s.grantsMapped, grantMapsTotal: s.mapsTotal, grantCopiesTotal: s.copiesTotal,
                                    notificationsSent: s.notificationsSent)
            let store = toolstack.store
            status.devices = blocking { await Self.devices(store) }
            return (.status(status), [])
        }
    }
}
