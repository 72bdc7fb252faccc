import Foundation
#if canImport(Glibc)
    import Glibc
#endif
import TestSupport
import Testing
import XenABI
import XenStore

/// The client against daemons that lie or die: it must fail with a clear error, never crash
/// or hang, and never hand a reply to the wrong request.
@Suite("XenStore client: a lying or dying daemon", .serialized, .timeLimit(.minutes(5)))
struct XenStoreLyingDaemonTests {
    /// A one-connection fake daemon: reads one request header + payload, then runs `answer`
    /// with the connection and the request's header.
    final class FakeDaemon: Sendable {
        let socket: String
        let listener: Int32
        init(answer: @escaping @Sendable (Int32, XsHeader) -> Void) throws {
            socket = NSTemporaryDirectory() + "pvkit-fake-\(UUID().uuidString.prefix(8)).sock"
            let listener = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            self.listener = listener
            let socket = self.socket
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &address.sun_path) { raw in for (i, b) in socket.utf8.enumerated() { raw[i] = b } }
            let bound = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            try #require(bound == 0 && listen(listener, 4) == 0)
            let thread = Thread {
                let fd = accept(listener, nil, nil)
                guard fd >= 0 else { return }
                var header = [UInt8](repeating: 0, count: 16)
                guard recv(fd, &header, 16, Int32(MSG_WAITALL)) == 16,
                    let parsed = try? header.withUnsafeBytes({ try XsHeader.decode($0) })
                else { close(fd); return }
                var payload = [UInt8](repeating: 0, count: Int(parsed.length))
                if parsed.length > 0 { _ = recv(fd, &payload, payload.count, Int32(MSG_WAITALL)) }
                answer(fd, parsed)
                close(fd)
            }
            thread.start()
        }

        func client() throws -> XenStoreClient {
            try XenStoreClient.connect(XenStoreLocation(environment: ["XENSTORED_PATH": socket]))
        }

        deinit {
            close(listener)
            unlink(socket)
        }
    }

    static func send(_ fd: Int32, _ bytes: [UInt8]) { _ = Glibc.send(fd, bytes, bytes.count, Int32(MSG_NOSIGNAL)) }
    static func frame(type: UInt32, requestID: UInt32, payload: [UInt8]) -> [UInt8] {
        XsHeader(type: type, requestID: requestID, transactionID: 0, length: UInt32(payload.count)).bytes + payload
    }

    @Test("XSA-349: a daemon flooding 100 000 watch events cannot grow the watch's queue past its limit; the drops are counted")
    func watchFlood() async throws {
        let flood = 100_000
        let daemon = try FakeDaemon { fd, header in
            Self.send(fd, Self.frame(type: header.type, requestID: header.requestID, payload: Array("OK".utf8) + [0]))
            var batch: [UInt8] = []
            for index in 0..<flood {
                batch += Self.frame(type: XsMessageType.watchEvent.rawValue, requestID: 0, payload: Array("/flood/\(index)".utf8) + [0] + Array("t".utf8) + [0])
                if batch.count > 65536 {
                    Self.send(fd, batch)
                    batch.removeAll(keepingCapacity: true)
                }
            }
            Self.send(fd, batch)
            usleep(500_000)
        }
        let store = try daemon.client()
        let watch = try await store.watch("/flood", token: "t")
        // Let the flood arrive without reading it.
        #expect(try await eventually { watch.droppedEvents >= flood - XenStoreWatch.queueLimit })
        var held = 0
        var last = ""
        for await event in watch {
            held += 1
            last = event.path
            if event.path == "/flood/\(flood - 1)" { break }
        }
        #expect(held <= XenStoreWatch.queueLimit, "the queue held \(held) events")
        #expect(last == "/flood/\(flood - 1)", "the newest events are kept")
        #expect(watch.droppedEvents == flood - held)
    }

    @Test("a reply for a request never made ends the connection with badReply")
    func unknownRequestID() async throws {
        let daemon = try FakeDaemon { fd, header in
            Self.send(fd, Self.frame(type: header.type, requestID: header.requestID &+ 1000, payload: Array("v".utf8)))
            usleep(200_000)
        }
        let store = try daemon.client()
        await #expect { try await store.read("/x") } throws: { error in
            guard case .badReply? = error as? XenStoreError else { return false }
            return true
        }
        // Every later call fails the same way, at once.
        await #expect(throws: XenStoreError.self) { try await store.read("/y") }
    }

    @Test("an ERROR naming no known errno is a badReply")
    func unknownErrorName() async throws {
        let daemon = try FakeDaemon { fd, header in
            Self.send(fd, Self.frame(type: XsMessageType.error.rawValue, requestID: header.requestID, payload: Array("EWHAT".utf8) + [0]))
            usleep(200_000)
        }
        let store = try daemon.client()
        await #expect { try await store.read("/x") } throws: { error in
            guard case let .badReply(what)? = error as? XenStoreError else { return false }
            return what.contains("EWHAT")
        }
    }

    @Test("a header announcing more than 4096 bytes ends the connection")
    func oversizedReply() async throws {
        let daemon = try FakeDaemon { fd, header in
            Self.send(fd, XsHeader(type: header.type, requestID: header.requestID, transactionID: 0, length: 1 << 30).bytes)
            usleep(200_000)
        }
        let store = try daemon.client()
        await #expect { try await store.read("/x") } throws: { error in
            guard case let .badReply(what)? = error as? XenStoreError else { return false }
            return what.contains("over the xenstore limit")
        }
    }

    @Test("a reply that does not fit its request (TRANSACTION_START without an id) is a badReply")
    func wrongShape() async throws {
        let daemon = try FakeDaemon { fd, header in
            Self.send(fd, Self.frame(type: header.type, requestID: header.requestID, payload: Array("banana".utf8) + [0]))
            usleep(200_000)
        }
        let store = try daemon.client()
        await #expect { _ = try await store.startTransaction() } throws: { error in
            guard case .badReply? = error as? XenStoreError else { return false }
            return true
        }
    }

    @Test("a daemon that dies: the request in flight fails, the watch ends, later calls fail at once")
    func killed() async throws {
        let daemon = try await XenStoreInteropTests.Daemon()
        let store = try XenStoreClient.connect(XenStoreLocation(environment: ["XENSTORED_PATH": daemon.socket]))
        let watch = try await store.watch("/tool/k")
        daemon.process.child.signal(SIGKILL)
        var events: [XenStoreWatchEvent] = []
        for await event in watch { events.append(event) }
        #expect(
            events.count <= 1 && events.allSatisfy { $0.path == "/tool/k" },
            "at most the registration event, then the watch ends with the connection: \(events)")
        await #expect { try await store.read("/tool/k") } throws: { error in
            guard case .connectionClosed? = error as? XenStoreError else { return false }
            return true
        }
    }
}
