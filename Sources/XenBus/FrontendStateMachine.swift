import XenABI

/// The frontend half of the XenBus handshake, sans I/O: given the frontend's own state and the
/// backend's (re-read after every watch event — events may be spurious or coalesced), what the
/// frontend does next. It tolerates skipped states (a backend jumping 1 → 4 still gets the
/// transport published) and drives the reconnect ladder of a frontend that restarts.
public struct FrontendStateMachine: Sendable, Equatable {
    /// What the driver must do.
    public enum Action: Sendable, Equatable {
        /// Nothing now: wait for the backend's next change.
        case wait
        /// Publish the transport (ring refs, event channels, features) in one transaction and
        /// switch to `then` (Initialised for blkfront, Connected for netfront).
        case publish(then: XenbusState)
        /// Read the backend's device properties and switch to Connected.
        case connect
        /// Connected already, the backend wrote Connected again (e.g. a capacity change):
        /// re-read the properties.
        case refresh
        /// Stop I/O, release rings and grants, switch to Closed.
        case close
        /// Write `state` (a step of the reconnect ladder) and wait.
        case switchTo(XenbusState)
    }

    /// Whether the frontend publishes straight to Connected (netfront) or to Initialised
    /// (blkfront) and waits for the backend.
    public let connectsDirectly: Bool
    /// True while walking the reconnect ladder (after ``restart()``).
    public private(set) var reconnecting = false

    public init(connectsDirectly: Bool) { self.connectsDirectly = connectsDirectly }

    /// The frontend restarts with a backend that may still be connected from a previous life:
    /// walk it down to Closed and back up to InitWait (xenbus.md §5) before publishing.
    public mutating func restart() { reconnecting = true }

    /// The next action for the current pair of states.
    public mutating func next(own: XenbusState, backend: XenbusState) -> Action {
        if reconnecting {
            switch (own, backend) {
            case (_, .connected) where own != .closing: return .switchTo(.closing)
            case (_, .closing) where own != .closed: return .switchTo(.closed)
            case (_, .closed) where own != .initialising: return .switchTo(.initialising)
            // Closed already, the backend up again (or never down): start over.
            case (.closed, .initialising), (.closed, .initWait): return .switchTo(.initialising)
            case (.initialising, .initWait), (.initialising, .initialising), (.initialising, .unknown):
                reconnecting = backend == .initWait ? false : true
                return backend == .initWait ? .publish(then: connectsDirectly ? .connected : .initialised) : .wait
            default: return .wait
            }
        }
        switch (own, backend) {
        // The backend vanished or is shutting down: release everything.
        case (.initialised, .unknown), (.connected, .unknown),
            (.initialising, .closing), (.initialised, .closing), (.connected, .closing),
            (.initialised, .closed), (.connected, .closed), (.closing, .closing), (.closing, .closed):
            return .close
        case (.initialising, .initWait), (.initialising, .initialised), (.initialising, .connected):
            return .publish(then: connectsDirectly ? .connected : .initialised)
        case (.initialised, .connected):
            return .connect
        case (.connected, .connected):
            return .refresh
        // A backend that restarted (Closed → Initialising/InitWait) while we were closed:
        // start over.
        case (.closed, .initialising), (.closed, .initWait):
            return .switchTo(.initialising)
        default:
            return .wait
        }
    }
}
