import XenABI
import XenStore

/// A backend's side of the XenBus handshake, shared by blkback and netback: its own `state`
/// written only while the node exists (Linux's `xenbus_switch_state`: a watcher acting late
/// must not recreate a directory the toolstack removed), errors where libxl looks for them,
/// and a watch on the frontend's state that connects, disconnects and offers the device again.
struct BackendXenbus: Sendable {
    let store: XenStoreClient
    let device: Toolstack.Device

    func node(_ key: String) -> XenStorePath { try! XenStorePath(device.backendPath + "/" + key) }

    func ownState() async -> XenbusState? {
        guard let text = try? await store.readString(node("state")) else { return nil }
        return XenbusState(nodeValue: text)
    }

    func setState(_ state: XenbusState) async {
        let path = node("state")
        try? await store.transaction { tx in
            if try await tx.exists(path) { try await tx.write(path, state.nodeValue) }
        }
    }

    /// `error/backend/<type>/<domid>/<devid>/error` in dom0's tree: "5 <message>" (EIO).
    func reportError(_ message: String) async {
        let path = "/local/domain/0/error/backend/\(device.type)/\(device.frontend.rawValue)/\(device.devid)/error"
        try? await store.write(XenStorePath(path), "5 \(message)")
    }

    /// The backend's directory goes, as if its driver had been unloaded (hostile `vanish`).
    func vanish() {
        let store = self.store, path = device.backendPath
        Task { try? await store.remove(XenStorePath(path)) }
    }

    /// Follows the frontend's `state`: `connect` when it reaches one of `connectOn` (and we are
    /// not connected); on Closing, `disconnect` (the data path goes: rings and grants unmapped)
    /// and our state becomes Closing; on Closed or Unknown, Closed (the watch ends on Unknown:
    /// the device is gone); a frontend starting over (Initialising) is offered the device
    /// again once we are Closed — or Closing, after a failed connect: a restarted backend can
    /// see the previous instance's Connected and stale ring refs before the frontend noticed
    /// the restart; it then starts over, and so do we.
    func follow(
        connectOn: Set<XenbusState>, isConnected: @escaping @Sendable () -> Bool?,
        connect: @escaping @Sendable () async -> Void, disconnect: @escaping @Sendable () async -> Void
    ) -> Task<Void, Never> {
        let frontendState = try! XenStorePath(device.frontendPath + "/state")
        let store = self.store, me = self
        return Task {
            guard let events = try? await store.watch(frontendState) else { return }
            for await _ in events {
                // Cancelled (the backend stopping): act on nothing more.
                if Task.isCancelled { return }
                // nil: the backend is gone.
                guard let connected = isConnected() else { return }
                let state = XenbusState(nodeValue: (try? await store.readString(frontendState)) ?? "") ?? .unknown
                switch state {
                case let state where connectOn.contains(state):
                    if !connected { await connect() }
                case .closing:
                    // As the spec's close table (and Linux): tear down the data path, say
                    // Closing, and go Closed only once the frontend is Closed.
                    if connected { await disconnect() }
                    if await me.ownState() != .closed { await me.setState(.closing) }
                case .closed, .unknown:
                    if connected { await disconnect() }
                    // A frontend still Closed from before, while we wait for it in InitWait (a
                    // backend just started): it starts over when it sees us. Going Closed too
                    // would leave both waiting for the other.
                    if state == .closed, !connected, await me.ownState() == .initWait { break }
                    await me.setState(.closed)
                    if state == .unknown { return }
                case .initialising:
                    if await [.closed, .closing].contains(me.ownState()) { await me.setState(.initWait) }
                default:
                    break
                }
            }
        }
    }
}
