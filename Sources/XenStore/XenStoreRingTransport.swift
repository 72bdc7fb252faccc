#if canImport(Glibc)
import Glibc
#endif
import CLinux
import PVSystem
import XenABI

/// A guest's xenstore connection: the domain's ring page and its event channel (here two
/// eventfds, one per direction, as pvhost hands them to its guests). Requests go into the
/// page's request stream, replies and watch events come out of the response stream; nothing
/// travels any other way.
public final class XenStoreRingTransport: XenStoreTransport, @unchecked Sendable {
    public let name: String
    public let payloadLimit = XsWire.payloadMax
    private let ring: XenStoreRing
    /// Signalled by the daemon after it wrote responses or consumed requests.
    private let incoming: EventFD
    /// Signalled by us after writing requests or consuming responses.
    private let outgoing: EventFD
    private let wake: EventFD
    private let keepAlive: AnyObject?

    /// - Parameters:
    ///   - page: the mapped ring page (4 KiB, shared with the daemon).
    ///   - incoming: the event channel's daemon-to-guest direction.
    ///   - outgoing: the guest-to-daemon direction.
    ///   - keepAlive: whatever owns the mapping (kept as long as the transport).
    public init(page: UnsafeMutableRawPointer, incoming: EventFD, outgoing: EventFD, name: String = "xenstore ring", keepAlive: AnyObject? = nil) throws(XenStoreError) {
        ring = XenStoreRing(page: page, side: .guest)
        self.incoming = incoming
        self.outgoing = outgoing
        self.name = name
        self.keepAlive = keepAlive
        do { wake = try EventFD() } catch { throw .system(error.call, errno: error.code) }
    }

    public func send(_ bytes: UnsafeRawBufferPointer) throws(XenStoreError) {
        var offset = 0, stalled = 0
        while offset < bytes.count {
            try checkError()
            let written: Int
            do { written = try ring.write(UnsafeRawBufferPointer(rebasing: bytes[offset...])) } catch {
                throw .badReply("the daemon's ring indexes are inconsistent (\(error))")
            }
            if written > 0 {
                offset += written
                stalled = 0
                notify()
                continue
            }
            // Full: wait for the daemon to consume. The reader thread owns `incoming`, so poll
            // it without reading, briefly, and look again; a daemon that takes nothing for
            // 10 s is gone (this runs on the caller's thread, which must not be held forever).
            var fds = [pollfd(fd: incoming.fileDescriptor, events: Int16(POLLIN), revents: 0), pollfd(fd: wake.fileDescriptor, events: Int16(POLLIN), revents: 0)]
            _ = poll(&fds, 2, 1)
            if fds[1].revents != 0 { throw .connectionClosed("\(name): closed") }
            stalled += 1
            if stalled > 10_000 { throw .connectionClosed("\(name): the daemon took no request bytes for 10 s") }
        }
    }

    public func receive(into buffer: UnsafeMutableRawBufferPointer) throws(XenStoreError) -> Int {
        while true {
            try checkError()
            let count: Int
            do { count = try ring.read(into: buffer) } catch {
                throw .badReply("the daemon's ring indexes are inconsistent (\(error))")
            }
            if count > 0 {
                notify()  // room for the daemon to write more
                return count
            }
            var fds = [pollfd(fd: incoming.fileDescriptor, events: Int16(POLLIN), revents: 0), pollfd(fd: wake.fileDescriptor, events: Int16(POLLIN), revents: 0)]
            let ready = poll(&fds, 2, -1)
            if ready < 0 && errno != EINTR { throw .system("poll \(name)", errno: errno) }
            if fds[1].revents != 0 { return 0 }
            if fds[0].revents != 0 { _ = try? incoming.wait() }
        }
    }

    public func shutdown() { try? wake.notify() }

    /// Asks the daemon to reset the connection (the ring's reconnect protocol): everything in
    /// flight is dropped and the daemon forgets this domain's watches and transactions. Waits
    /// until the daemon has finished (connection back to 0).
    public func reconnect() throws(XenStoreError) {
        guard ring.serverFeatures & XsWire.serverFeatureReconnection != 0 else {
            throw .daemon(.ENOSYS, request: "reconnect (the daemon does not offer it)")
        }
        ring.connection = XsWire.reconnecting
        notify()
        for _ in 0..<10_000 where ring.connection != XsWire.connected { usleep(100) }
        guard ring.connection == XsWire.connected else { throw .connectionClosed("\(name): the daemon did not finish the reconnect") }
    }

    private func checkError() throws(XenStoreError) {
        let error = ring.error
        guard error == XsWire.errorNone else { throw .connectionClosed("\(name): the daemon marked the ring broken (error \(error))") }
    }

    private func notify() { try? outgoing.notify() }
}
