import PVSystem
import XenABI

/// A guest's xenstore connection: the domain's ring page and its event channel (here two
/// eventfds, one per direction, as pvhost hands them to its guests). Requests go into the
/// page's request stream, replies and watch events come out of the response stream; nothing
/// travels any other way. The daemon notifies after it wrote responses or consumed requests,
/// so one descriptor, `incoming`, tells both "bytes arrived" and "room was made".
public final class XenStoreRingTransport: XenStoreTransport {
    public let name: String
    public let payloadLimit = XsWire.payloadMax
    private let ring: XenStoreRing
    /// Signalled by the daemon after it wrote responses or consumed requests.
    private let incoming: EventFD
    /// Signalled by us after writing requests or consuming responses.
    private let outgoing: EventFD
    private let keepAlive: (any Sendable & AnyObject)?
    /// Notifications that could not be sent (the daemon's end closed), with the last error.
    private let failures = Locked<(count: Int, last: SystemError?)>((0, nil))
    /// Set by ``shutdown()``: reads then say the stream ended.
    private let ended = Atomic<Bool>(false)

    /// - Parameters:
    ///   - page: the mapped ring page (4 KiB, shared with the daemon).
    ///   - incoming: the event channel's daemon-to-guest direction.
    ///   - outgoing: the guest-to-daemon direction.
    ///   - keepAlive: whatever owns the mapping (kept as long as the transport).
    public init(
        page: UnsafeMutableRawPointer, incoming: EventFD, outgoing: EventFD, name: String = "xenstore ring",
        keepAlive: (any Sendable & AnyObject)? = nil
    ) {
        ring = XenStoreRing(page: page, side: .guest)
        self.incoming = incoming
        self.outgoing = outgoing
        self.name = name
        self.keepAlive = keepAlive
    }

    public var descriptor: Int32 { incoming.fileDescriptor }
    public var descriptorOwner: any Sendable & AnyObject { incoming }
    public var waitToWrite: EventLoop.Readiness { [] }

    public func write(_ bytes: UnsafeRawBufferPointer) throws(XenStoreError) -> Int {
        try checkError()
        let written: Int
        do { written = try ring.write(bytes) } catch {
            throw .badReply("the daemon's ring indexes are inconsistent (\(error))")
        }
        if written > 0 { notify() }
        return written
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(XenStoreError) -> Int? {
        incoming.consume()
        if ended.load(ordering: .acquiring) { return 0 }
        try checkError()
        let count: Int
        do { count = try ring.read(into: buffer) } catch {
            throw .badReply("the daemon's ring indexes are inconsistent (\(error))")
        }
        guard count > 0 else { return nil }
        notify()  // room for the daemon to write more
        return count
    }

    /// Ends the connection here (the domain is going, or pvhost went): the client's next read
    /// says the stream ended, and it is woken to make it.
    public func shutdown() {
        ended.store(true, ordering: .releasing)
        do { try incoming.notify() } catch { failures.withLock { $0 = ($0.count + 1, error) } }
    }

    /// Asks the daemon to reset the connection (the ring's reconnect protocol): everything in
    /// flight is dropped and the daemon forgets this domain's watches and transactions. Returns
    /// once the daemon has finished (connection back to 0), waiting on an event loop for its
    /// notification, 10 s at most. Close the ring's client first.
    public func reconnect(on loop: EventLoop = EventLoopGroup.shared.next()) async throws(XenStoreError) {
        guard ring.serverFeatures & XsWire.serverFeatureReconnection != 0 else {
            throw .daemon(.ENOSYS, request: "reconnect (the daemon does not offer it)")
        }
        ring.connection = XsWire.reconnecting
        notify()
        let deadline = MonotonicClock.now() &+ 10_000_000_000
        // The daemon notifies when done; a client closing meanwhile may take that
        // notification, so the ring's state is looked at again every few milliseconds too.
        while ring.connection != XsWire.connected {
            guard MonotonicClock.now() < deadline else { throw .connectionClosed("\(name): the daemon did not finish the reconnect within 10 s") }
            do { _ = try await loop.readable(incoming.fileDescriptor, name: "\(name) reconnect", timeout: .milliseconds(5)) } catch {
                throw .connectionClosed("\(name): reconnect: \(error)")
            }
            incoming.consume()
        }
    }

    private func checkError() throws(XenStoreError) {
        let error = ring.error
        guard error == XsWire.errorNone else { throw .connectionClosed("\(name): the daemon marked the ring broken (error \(error))") }
    }

    /// The daemon's end gone: counted, and the next read or write finds the ring dead.
    private func notify() {
        do { try outgoing.notify() } catch { failures.withLock { $0 = ($0.count + 1, error) } }
    }

    /// Notifications to the daemon that failed, and the last error.
    public var failedNotifications: (count: Int, last: SystemError?) { failures.withLock { $0 } }
}

import Synchronization
