import Logging
import PVSystem
import ServiceLifecycle
import Synchronization
import XenStore

// pvhost's long-running parts as swift-service-lifecycle services: a `ServiceGroup` runs them
// and owns graceful shutdown (in reverse order of the group's list).

extension XenStoreDaemon: Service {}
extension ControlServer: Service {}

extension BlockBackend: Service {
    /// Serves the disk until graceful shutdown (or cancellation), then stops following the
    /// frontend and unmaps everything.
    public func run() async throws {
        try? await gracefulShutdown()
        await stop()
    }
}

extension NetBackend: Service {
    /// Serves the interface until graceful shutdown (or cancellation), then leaves the switch.
    public func run() async throws {
        try? await gracefulShutdown()
        await stop()
    }
}

extension TapPort: Service {
    /// Bridges the TAP until graceful shutdown (or cancellation), then leaves the switch.
    public func run() async throws {
        try? await gracefulShutdown()
        stop()
    }
}

/// SIGINT and SIGTERM as a service: returns at the first one, which (configured with
/// `successTerminationBehavior: .gracefullyShutdownGroup`) shuts the group down gracefully.
///
/// Signals are caught with ``TerminationSignals`` (sigaction and a self-pipe, set before any
/// socket exists), not ServiceLifecycle's `UnixSignals`: that one ignores the signal
/// (`SIG_IGN`) and arms a dispatch source afterwards, and a signal in between is lost — the
/// race a test once caught `pvhost xenstored` in. So the group is given no signals of its own.
public struct TerminationSignalService: Service {
    public let signals: TerminationSignals
    public let logger: Logger

    public init(signals: TerminationSignals, logger: Logger) {
        self.signals = signals
        self.logger = logger
    }

    public func run() async throws {
        let number = try await cancelWhenGracefulShutdown { try await signals.next() }
        logger.info("signal \(number): shutting down")
    }
}

/// `pvhost run`'s orderly end: on graceful shutdown every guest is told `control/shutdown` =
/// `poweroff` (as `xl shutdown` does), given `grace` to detach, and the rest destroyed.
public struct GuestShutdownService: Service {
    public let toolstack: Toolstack
    public let grace: Duration

    public init(toolstack: Toolstack, grace: Duration) {
        self.toolstack = toolstack
        self.grace = grace
    }

    public func run() async throws {
        try? await gracefulShutdown()
        for domain in toolstack.hypervisor.domains {
            try? await toolstack.store.write(XenStorePath("/local/domain/\(domain.id.rawValue)/control/shutdown"), "poweroff")
        }
        let deadline = MonotonicClock.now() &+ MonotonicClock.nanoseconds(grace)
        while !toolstack.hypervisor.domains.isEmpty && MonotonicClock.now() < deadline { try? await Task.sleep(for: .milliseconds(50)) }
        for domain in toolstack.hypervisor.domains { await toolstack.destroyDomain(domain.id) }
    }
}

/// A count of work in progress that can be waited for until none is left.
final class PendingWork: Sendable {
    private let state = Locked((count: 0, waiting: [CheckedContinuation<Void, Never>]()))

    func begin() { state.withLock { $0.count += 1 } }

    func end() {
        let waiting: [CheckedContinuation<Void, Never>] = state.withLock { s in
            s.count -= 1
            guard s.count == 0 else { return [] }
            defer { s.waiting.removeAll() }
            return s.waiting
        }
        for continuation in waiting { continuation.resume() }
    }

    /// Returns when nothing is in progress.
    func waitUntilIdle() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let idle = state.withLock { s -> Bool in
                if s.count == 0 { return true }
                s.waiting.append(continuation)
                return false
            }
            if idle { continuation.resume() }
        }
    }
}
