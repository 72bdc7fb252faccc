import Foundation
import Logging
import PVHostProtocol
import PVSystem
import ServiceLifecycle
import XenABI
import XenStore

/// pvhost's control socket: guest processes attach here and become domains; their few
/// hypercalls (event channels) come here; tools ask for the status. Every connection is
/// watched on one of pvhost's event loops; a request that needs the toolstack is handled by a
/// task on that loop, and the connection's next request waits for its reply. When a guest's connection ends — it exited, crashed or was
/// killed — its domain is destroyed and everything it held reclaimed.
public final class ControlServer: Sendable {
    public let path: String
    public let toolstack: Toolstack
    /// With a configuration, only its domains may attach, with its limits.
    public let config: PVHostConfig?
    private let listener: Int32
    private let logger: Logger
    /// The loop the socket and its connections are served on.
    private let loop: EventLoop
    private let lock = Locked(Backends())
    /// What is served for each attached domain.
    private struct Backends {
        var disks: [DomainID: [BlockBackend]] = [:]
        var nics: [DomainID: [NetBackend]] = [:]
    }
    /// The switch every vif and TAP is a port of.
    public let network = VirtualSwitch()
    /// The configuration's TAP devices.
    public let taps: [TapPort]

    /// Why the server could not start.
    public struct StartFailure: Error, CustomStringConvertible { public let description: String }

    /// Listens on `path`; opens the configuration's TAP devices (needs CAP_NET_ADMIN when there are any).
    public init(path: String, toolstack: Toolstack, config: PVHostConfig? = nil, logger: Logger = Logger(label: "pvhost.control")) throws(StartFailure) {
        self.path = path
        self.logger = logger
        self.toolstack = toolstack
        self.config = config
        loop = toolstack.hypervisor.eventLoops.next()
        served = LoopBound(Served(), on: loop)
        var taps: [TapPort] = []
        for tap in config?.taps ?? [] {
            do { taps.append(try TapPort.open(name: tap.name, namespace: tap.netns, network: network, loop: toolstack.hypervisor.eventLoops.next())) } catch {
                for opened in taps { opened.stop() }
                throw StartFailure(description: "\(error)")
            }
        }
        do { listener = try SeqpacketSocket.listen(at: path) } catch {
            for opened in taps { opened.stop() }
            throw StartFailure(description: "control socket \(path): \(error)")
        }
        self.taps = taps
    }

    deinit {
        for tap in taps { tap.stop() }
        SeqpacketSocket.stopListening(listener, at: path)
    }

    /// One guest's (or tool's) connection: served one request at a time, in order. Its state
    /// is the server loop's (the handler and the tasks preferring that loop).
    private final class Connection: Sendable {
        let socket: SeqpacketSocket
        private let state: LoopBound<State>

        private struct State {
            var registration: EventLoop.Registration?
            var domain: DomainID?
            var info: AttachedDomain?
            /// A request is being handled (reading is paused until its reply is sent).
            var busy = false
            /// The peer went while a request was being handled: ended once it is done.
            var hungUp = false
        }

        init(socket: SeqpacketSocket, loop: EventLoop) {
            self.socket = socket
            state = LoopBound(State(), on: loop)
        }

        var registration: EventLoop.Registration? {
            get { state.value.registration }
            set { state.value.registration = newValue }
        }
        var domain: DomainID? {
            get { state.value.domain }
            set { state.value.domain = newValue }
        }
        var info: AttachedDomain? {
            get { state.value.info }
            set { state.value.info = newValue }
        }
        var busy: Bool {
            get { state.value.busy }
            set { state.value.busy = newValue }
        }
        var hungUp: Bool {
            get { state.value.hungUp }
            set { state.value.hungUp = newValue }
        }
    }

    /// The connections and the listener (the loop's thread only).
    private let served: LoopBound<Served>
    private struct Served {
        var connections: [ObjectIdentifier: Connection] = [:]
        var listening: EventLoop.Registration?
        /// Who waits for the server to stop; nil once it stopped.
        var stopped: [CheckedContinuation<Void, Never>]? = []
    }
    private var connections: [ObjectIdentifier: Connection] {
        _read { yield served.value.connections }
        _modify { yield &served.value.connections }
    }
    private var listening: EventLoop.Registration? {
        get { served.value.listening }
        set { served.value.listening = newValue }
    }
    private var stopped: [CheckedContinuation<Void, Never>]? {
        _read { yield served.value.stopped }
        _modify { yield &served.value.stopped }
    }

    /// Starts accepting connections on the server's loop; each is served there.
    public func start() throws(StartFailure) {
        do {
            let registration = try loop.register(listener, name: "pvhost control socket \(path)") { [self] _ in
                accept()
                return .wait
            }
            loop.execute { [self] in listening = registration }
        } catch {
            throw StartFailure(description: "control socket \(path): \(error)")
        }
    }

    /// Serves (as ``start()``) until graceful shutdown, cancellation or ``stop()``: the
    /// control server as a long-running service. Returns once every guest that was attached
    /// has been destroyed and reclaimed.
    public func run() async throws {
        try start()
        await withTaskCancellationOrGracefulShutdownHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                loop.execute { [self] in
                    if stopped == nil { continuation.resume() } else { stopped!.append(continuation) }
                }
            }
        } onCancelOrGracefulShutdown: {
            self.stop()
        }
        await reclaims.waitUntilIdle()
    }

    /// Domains being reclaimed (their connection ended).
    private let reclaims = PendingWork()

    /// Stops accepting and ends every guest's connection: each guest is detached and
    /// destroyed as if its process had ended. Never blocks.
    public func stop() {
        loop.execute { [self] in
            listening?.cancel()
            listening = nil
            for connection in connections.values { connection.socket.shutdown() }
            let waiting = stopped ?? []
            stopped = nil
            for continuation in waiting { continuation.resume() }
        }
    }

    private func accept() {
        while true {
            let accepted: SeqpacketSocket?
            do { accepted = try SeqpacketSocket.accept(from: listener) } catch {
                logger.warning("accepting a control connection failed: \(error)")
                return
            }
            guard let socket = accepted else { return }
            guard stopped != nil else { socket.shutdown(); continue }
            let connection = Connection(socket: socket, loop: loop)
            do {
                connection.registration = try loop.register(socket.fileDescriptor, name: "pvhost control connection", owner: socket) { [self] _ in
                    receive(on: connection)
                    return .wait
                }
            } catch {
                logger.warning("watching a control connection failed: \(error)")
                continue
            }
            connections[ObjectIdentifier(connection)] = connection
        }
    }

    /// A message (or the end) on a connection. Reading pauses while its request is handled,
    /// so replies go in order.
    private func receive(on connection: Connection) {
        if connection.busy {
            // Only a hang-up comes while reading is paused: the domain (perhaps being made by
            // the request in hand) is reclaimed once that request is done.
            connection.hungUp = true
            connection.registration?.cancel()
            return
        }
        let received: SeqpacketSocket.Received
        do { received = try connection.socket.tryReceive() } catch {
            end(connection)
            return
        }
        switch received {
        case .nothing:
            return
        case .ended:
            end(connection)
        case let .message(bytes, descriptors):
            SeqpacketSocket.discard(descriptors)  // guests send none
            guard let request = ControlCoding.decode(ControlRequest.self, bytes) else {
                reply(ControlReply.error("malformed control message (\(bytes.count) bytes): expected a JSON ControlRequest"), [], on: connection)
                return
            }
            if request == .domainInfo, let info = connection.info {
                reply(.attached(info), [], on: connection)
                return
            }
            do { try connection.registration?.modify([]) } catch { end(connection); return }
            connection.busy = true
            let domain = connection.domain
            Task(executorPreference: loop) { [self] in
                defer { connection.busy = false }
                let (answer, attached) = await handle(request, domain: domain)
                if case let .attached(started) = answer, connection.domain == nil {
                    connection.domain = DomainID(started.domid)
                    connection.info = started
                    logger.info("domain \(started.domid) attached", metadata: ["pages": "\(started.pages)", "store-port": "\(started.storePort)"])
                } else if case let .error(why) = answer {
                    logger.notice("refused: \(why)", metadata: ["domain": "\(domain.map { String($0.rawValue) } ?? "-")"])
                }
                if connection.hungUp {
                    end(connection)
                    return
                }
                reply(answer, attached, on: connection)
                do { try connection.registration?.modify(.readable) } catch { end(connection) }
            }
        }
    }

    private func reply(_ answer: ControlReply, _ attached: [Attachment], on connection: Connection) {
        do {
            try connection.socket.send(ControlCoding.encode(answer), descriptors: attached.map(\.fileDescriptor))
        } catch {
            end(connection)
        }
        withExtendedLifetime(attached) {}
    }

    /// The connection ended (the guest exited, crashed or was killed): its domain is
    /// destroyed and everything it held reclaimed.
    private func end(_ connection: Connection) {
        guard connections.removeValue(forKey: ObjectIdentifier(connection)) != nil else { return }
        connection.registration?.cancel()
        connection.registration = nil
        guard let domain = connection.domain else { return }
        reclaims.begin()
        Task(executorPreference: loop) { [self] in
            defer { reclaims.end() }
            let backends = lock.withLock { s in s.disks.removeValue(forKey: domain) } ?? []
            for backend in backends { await backend.stop() }
            let interfaces = lock.withLock { s in s.nics.removeValue(forKey: domain) } ?? []
            for nic in interfaces { await nic.stop() }
            let reclaimed = await toolstack.destroyDomain(domain)
            logger.info(
                "domain \(domain.rawValue) detached and destroyed",
                metadata: [
                    "mappings-by-it": "\(reclaimed.mappingsByIt)", "mappings-of-it": "\(reclaimed.mappingsOfIt)", "ports": "\(reclaimed.ports)"
                ])
        }
    }

    private struct Failure: Error, CustomStringConvertible { let description: String }

    /// Runs an async toolstack step in line (where the handler awaits it).
    private func inline<T>(_ body: () async -> T) async -> T { await body() }

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
                    devices.append(
                        .init(
                            type: type, frontend: UInt16(frontend) ?? 0, devid: devid,
                            backendState: await read(backend + "/state"), frontendState: await read(frontendPath + "/state")))
                }
            }
        }
        return devices
    }

    /// Objects whose descriptors go with a reply (kept alive until it is sent).
    private struct Attachment { let fileDescriptor: Int32; let owner: AnyObject }

    private func handle(_ request: ControlRequest, domain: DomainID?) async -> (ControlReply, [Attachment]) {
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
            let created: Result<Toolstack.Guest, Toolstack.Failure> = await inline {
                do throws(Toolstack.Failure) { return .success(try await toolstack.createDomain(name: name, limits: limits)) } catch { return .failure(error) }
            }
            switch created {
            case let .failure(error): return (.error("creating domain \"\(name)\": \(error)"), [])
            case let .success(guest):
                let d = guest.domain
                if let configured = config?.domain(named: name)?.disks, !configured.isEmpty {
                    let toolstack = self.toolstack
                    let started: Result<[BlockBackend], Failure> = await inline {
                        var backends: [BlockBackend] = []
                        for disk in configured {
                            let device = Toolstack.Device(type: "vbd", frontend: d.id, devid: disk.devid)
                            let settings = disk.settings
                            do {
                                try await toolstack.addDevice(
                                    device, frontendKeys: ["virtual-device": "\(disk.devid)", "device-type": "disk"],
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
                    case let .success(backends): lock.withLock { s in s.disks[d.id] = backends }
                    case let .failure(error):
                        _ = await inline { await toolstack.destroyDomain(d.id) }
                        return (.error("creating domain \"\(name)\": \(error)"), [])
                    }
                }
                if let configured = config?.domain(named: name)?.nics, !configured.isEmpty {
                    let toolstack = self.toolstack, network = self.network
                    let started: Result<[NetBackend], Failure> = await inline {
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
                    case let .success(backends): lock.withLock { s in s.nics[d.id] = backends }
                    case let .failure(error):
                        let disksStarted = lock.withLock { s in s.disks.removeValue(forKey: d.id) } ?? []
                        _ = await inline {
                            for backend in disksStarted { await backend.stop() }
                            return await toolstack.destroyDomain(d.id)
                        }
                        return (.error("creating domain \"\(name)\": \(error)"), [])
                    }
                }
                let info = AttachedDomain(
                    domid: d.id.rawValue, pages: d.pageCount, grantFrames: d.limits.grantFrames,
                    storeFrame: d.storeFrame, storePort: guest.storePort.rawValue)
                return (
                    .attached(info),
                    [
                        Attachment(fileDescriptor: d.memory.fileDescriptor, owner: d.memory),
                        Attachment(fileDescriptor: d.grantFrames.fileDescriptor, owner: d.grantFrames),
                        Attachment(fileDescriptor: guest.storeChannel.delivery.fileDescriptor, owner: guest.storeChannel.delivery),
                        Attachment(fileDescriptor: guest.storeChannel.peer.fileDescriptor, owner: guest.storeChannel.peer)
                    ]
                )
            }
        case let .allocUnbound(remote):
            guard let domain else { return (.error("attach first"), []) }
            do {
                let (port, end) = try hypervisor.allocUnbound(domain, remote: DomainID(remote))
                return (
                    .port(port.rawValue),
                    [
                        Attachment(fileDescriptor: end.delivery.fileDescriptor, owner: end.delivery),
                        Attachment(fileDescriptor: end.peer.fileDescriptor, owner: end.peer)
                    ]
                )
            } catch {
                return (.error("\(error)"), [])
            }
        case let .bindInterdomain(remote, port):
            guard let domain else { return (.error("attach first"), []) }
            do {
                let (local, end) = try hypervisor.bindInterdomain(domain, remote: DomainID(remote), remotePort: EventChannelPort(port))
                return (
                    .port(local.rawValue),
                    [
                        Attachment(fileDescriptor: end.delivery.fileDescriptor, owner: end.delivery),
                        Attachment(fileDescriptor: end.peer.fileDescriptor, owner: end.peer)
                    ]
                )
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
                    try hypervisor.copyGrant(
                        UnsafeRawBufferPointer(start: local, count: length), to: GrantRef(ref), of: DomainID(granter), by: domain, offset: offset)
                } else {
                    try hypervisor.copyGrant(
                        GrantRef(ref), of: DomainID(granter), by: domain, offset: offset,
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
            var status = HostStatus(
                domains: s.domains.map { .init(domid: $0.id.rawValue, name: $0.name, pages: $0.pages, ports: $0.ports) },
                grantsMapped: s.grantsMapped, grantMapsTotal: s.mapsTotal, grantCopiesTotal: s.copiesTotal,
                notificationsSent: s.notificationsSent)
            let store = toolstack.store
            status.devices = await inline { await Self.devices(store) }
            return (.status(status), [])
        }
    }
}
