import XenABI
import XenStore

/// What a device frontend (blkfront, netfront) does at each step of the XenBus handshake.
public protocol XenbusFrontendDriver: Sendable {
    /// Allocate the transport (ring pages, grants, event channels) and write its keys into the
    /// frontend directory inside `transaction` (the driver may be asked again after EAGAIN).
    func publish(_ transaction: XenStoreTransaction, frontend: String, backend: String, backendID: DomainID) async throws
    /// The backend is Connected: read its device properties and start I/O.
    func connect(frontend: String, backend: String) async throws
    /// The backend wrote Connected again while connected (e.g. a new disk size).
    func refresh(frontend: String, backend: String) async throws
    /// Stop I/O and release the transport (revoking grants with try semantics).
    func disconnect() async
}

/// Why the frontend stopped.
public enum XenbusFrontendError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The device directory (or its `backend` key) is not there.
    case noDevice(String)
    /// Our own `state` node vanished (the toolstack removed the device): never recreate it.
    case removed(String)
    case store(XenStoreError)
    /// The driver failed; the message went to `error/<device>/error` and the state to Closing.
    case driver(String)

    public var description: String {
        switch self {
        case let .noDevice(path): "no device at \(path) (or no backend key in it)"
        case let .removed(path): "\(path) was removed"
        case let .store(error): "\(error)"
        case let .driver(what): "driver failed: \(what)"
        }
    }
}

/// Removes what an earlier connection of a device published in its frontend directory —
/// `keys`, every `queue-N/` directory and every `ring-ref…` — inside the transaction that
/// publishes the new one, so the backend never reads a stale ring reference or queue count
/// (a new frontend process may ask for fewer queues than the last one did).
public func clearTransport(_ transaction: XenStoreTransaction, frontend: String, keys: Set<String>) async throws {
    let entries = (try? await transaction.directory(XenStorePath(frontend))) ?? []
    for entry in entries where keys.contains(entry) || entry.hasPrefix("queue-") || entry.hasPrefix("ring-ref") {
        try await transaction.remove(XenStorePath(frontend + "/" + entry))
    }
}

/// Runs one frontend device through the XenBus lifecycle, as Linux's xenbus does: reads
/// `backend` and `backend-id` (the domain the driver grants its transport to), watches the backend's `state`, re-reads both states on every
/// event and acts per ``FrontendStateMachine``; state changes go through a transaction that
/// refuses to recreate a removed directory; a failing driver gets its error written to
/// `error/device/<type>/<id>/error` ("<errno> <text>") and the device switched to Closing.
public final class XenbusFrontend: Sendable {
    public let store: XenStoreClient
    /// `device/<type>/<id>`, relative to the guest's home.
    public let path: String
    public let driver: any XenbusFrontendDriver
    public let connectsDirectly: Bool
    /// After the backend closed, wait for it to come back (Closed → InitWait) and connect
    /// again, instead of ending the run.
    public let reconnects: Bool

    public init(store: XenStoreClient, type: String, id: Int, driver: any XenbusFrontendDriver, connectsDirectly: Bool, reconnects: Bool = false) {
        self.store = store
        path = "device/\(type)/\(id)"
        self.driver = driver
        self.connectsDirectly = connectsDirectly
        self.reconnects = reconnects
    }

    /// Waits until the backend's state is one of `states` (e.g. Closed after our Closing), at
    /// most `timeout`. Returns whether it got there.
    @discardableResult
    public func waitForBackend(in states: Set<XenbusState>, timeout: Duration) async -> Bool {
        guard let backend = try? await store.readString(node(path + "/backend")),
            let backendState = try? XenStorePath(backend + "/state")
        else { return true }
        guard let events = try? await store.watch(backendState) else { return false }
        defer { events.cancel() }
        return await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                // The first event comes at registration: the state as it is now.
                for await _ in events where states.contains(await self.state(backend)) { return true }
                return false
            }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return false
            }
            let reached = await group.next() ?? false
            group.cancelAll()
            return reached
        }
    }

    private func node(_ key: String) throws(XenbusFrontendError) -> XenStorePath {
        do { return try XenStorePath(key) } catch { throw .store(.invalidRequest(error)) }
    }

    /// The device's `state`, Unknown when missing or unreadable.
    private func state(_ directory: String) async -> XenbusState {
        guard let path = try? XenStorePath(directory + "/state"), let text = try? await store.readString(path) else { return .unknown }
        return XenbusState(nodeValue: text) ?? .unknown
    }

    /// Writes our state in a transaction that first checks the node still exists (Linux's
    /// `xenbus_switch_state`), retried on EAGAIN.
    public func switchState(_ new: XenbusState) async throws(XenbusFrontendError) {
        let statePath = try node(path + "/state")
        do {
            try await store.transaction { tx in
                guard try await tx.exists(statePath) else { throw XenbusFrontendError.removed(statePath.rawValue) }
                if try await tx.readString(statePath) != new.nodeValue { try await tx.write(statePath, new.nodeValue) }
            }
        } catch let error as XenbusFrontendError {
            throw error
        } catch let error as XenStoreError {
            throw .store(error)
        } catch {
            throw .driver("\(error)")
        }
    }

    /// Records a driver error where Linux's `xenbus_dev_error` puts it and switches to Closing.
    public func fail(errno: Int32, _ message: String) async {
        if let errorPath = try? XenStorePath("error/" + path + "/error") {
            try? await store.write(errorPath, "\(errno) \(message)")
        }
        try? await switchState(.closing)
    }

    /// Runs the handshake until the device is closed (after the backend closed it, or after
    /// removal). With `restart`, first walks a backend left connected by a previous run down
    /// and back up (the reconnect ladder).
    public func run(restart: Bool = false) async throws(XenbusFrontendError) {
        let backend: String
        let backendKey = try node(path + "/backend")
        do throws(XenStoreError) {
            backend = try await store.readString(backendKey)
        } catch .noEntry {
            throw .noDevice(path)
        } catch {
            throw .store(error)
        }
        guard let backendState = try? XenStorePath(backend + "/state") else { throw .noDevice(path) }
        // The domain to grant the transport to.
        let backendIDKey = try node(path + "/backend-id")
        guard let text = try? await store.readString(backendIDKey), let backendNumber = UInt16(text) else { throw .noDevice(path) }
        let backendID = DomainID(backendNumber)
        var machine = FrontendStateMachine(connectsDirectly: connectsDirectly)
        // A device a previous frontend left behind (Closed, or still Connected after a crash)
        // is walked down and up again, as when asked to restart.
        let initial = await state(path)
        if restart || [.initialised, .connected, .closing, .closed].contains(initial) { machine.restart() }
        let events: XenStoreWatch
        do { events = try await store.watch(backendState) } catch { throw .store(error) }
        defer { events.cancel() }
        var connected = false
        for await _ in events {
            // Act until there is nothing to do without the backend moving: our own state
            // change can make the next step due at once (a backend that is already Connected).
            while true {
                let own = await state(path)
                if own == .unknown && !restart { throw .removed(path) }
                let peer = await state(backend)
                switch machine.next(own: own, backend: peer) {
                case .wait:
                    break
                case let .switchTo(new):
                    try await switchState(new)
                    continue
                case let .publish(then):
                    do {
                        try await store.transaction { tx in try await self.driver.publish(tx, frontend: path, backend: backend, backendID: backendID) }
                    } catch {
                        await fail(errno: 5, "publishing the transport: \(error)")
                        throw .driver("\(error)")
                    }
                    try await switchState(then)
                    connected = then == .connected
                    continue
                case .connect:
                    do { try await driver.connect(frontend: path, backend: backend) } catch {
                        await fail(errno: 5, "connecting: \(error)")
                        throw .driver("\(error)")
                    }
                    try await switchState(.connected)
                    connected = true
                case .refresh:
                    if !connected {
                        do { try await driver.connect(frontend: path, backend: backend) } catch { throw .driver("\(error)") }
                        connected = true
                    } else {
                        try? await driver.refresh(frontend: path, backend: backend)
                    }
                case .close:
                    await driver.disconnect()
                    connected = false
                    try? await switchState(.closed)
                    if !reconnects { return }
                }
                break
            }
        }
    }
}
