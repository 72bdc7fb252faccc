import Foundation
import PVSystem
import Testing
import XenABI
import XenStore

/// Bytes from a readable string: `\0` stands for NUL.
func wire(_ text: String) -> [UInt8] { Array(text.replacingOccurrences(of: "\\0", with: "\0").utf8) }

func header(_ type: UInt32, _ requestID: UInt32, _ transactionID: UInt32, _ length: Int) -> [UInt8] {
    [type, requestID, transactionID, UInt32(length)].flatMap { value in withUnsafeBytes(of: value.littleEndian, Array.init) }
}

@Suite("xs_wire requests: golden bytes, both ways", .timeLimit(.minutes(5)))
struct RequestWireTests {
    struct Case: Sendable, CustomTestStringConvertible {
        let request: XenStoreRequest
        let payload: String
        var testDescription: String { "\(request.type)" }
    }

    static let cases: [Case] = [
        Case(request: .control(["log", "on"]), payload: "log\\0on\\0"),
        Case(request: .directory("/local/domain/0"), payload: "/local/domain/0\\0"),
        Case(request: .read("device/vbd/51712/state"), payload: "device/vbd/51712/state\\0"),
        Case(request: .getPerms("/local"), payload: "/local\\0"),
        Case(request: .watch("backend/vbd", token: "tok-1"), payload: "backend/vbd\\0tok-1\\0"),
        Case(request: .unwatch(.introduceDomain, token: "t"), payload: "@introduceDomain\\0t\\0"),
        Case(request: .transactionStart, payload: "\\0"),
        Case(request: .transactionEnd(commit: true), payload: "T\\0"),
        Case(request: .transactionEnd(commit: false), payload: "F\\0"),
        Case(request: .introduce(DomainID(5), gfn: 0xFEFFF, port: EventChannelPort(7)), payload: "5\\01044479\\07\\0"),
        Case(request: .release(DomainID(5)), payload: "5\\0"),
        Case(request: .getDomainPath(DomainID(3)), payload: "3\\0"),
        Case(request: .write("data/x", value: Array("hello".utf8)), payload: "data/x\\0hello"),
        Case(request: .write("data/empty", value: []), payload: "data/empty\\0"),
        Case(request: .mkdir("/local/domain/5/data"), payload: "/local/domain/5/data\\0"),
        Case(request: .rm("/local/domain/5"), payload: "/local/domain/5\\0"),
        Case(
            request: .setPerms("/a", try! XenStorePermissions([XenStorePermission(.none, DomainID(0)), XenStorePermission(.read, DomainID(5))])),
            payload: "/a\\0n0\\0r5\\0"),
        Case(request: .isDomainIntroduced(DomainID(9)), payload: "9\\0"),
        Case(request: .resume(DomainID(9)), payload: "9\\0"),
        Case(request: .setTarget(DomainID(2), target: DomainID(7)), payload: "2\\07\\0"),
        Case(request: .resetWatches, payload: "\\0"),
        Case(request: .directoryPart("/local/domain", offset: 100), payload: "/local/domain\\0100\\0")
    ]

    @Test("encode, frame and decode back", arguments: cases)
    func roundTrip(_ c: Case) throws {
        let message = try c.request.message(requestID: 0x11, transactionID: 3)
        #expect(message.bytes == header(c.request.type.rawValue, 0x11, 3, wire(c.payload).count) + wire(c.payload))
        #expect(try XenStoreRequest.decode(message) == c.request)
    }

    @Test("a header announcing more than 4096 bytes is refused when building and when framing")
    func limits() throws {
        let big = XenStoreRequest.write("/a", value: [UInt8](repeating: 0x41, count: 4094))
        #expect(throws: XenStoreWireError.payloadTooLarge(length: 4097, limit: 4096)) { _ = try big.message(requestID: 1) }
        let fits = XenStoreRequest.write("/a", value: [UInt8](repeating: 0x41, count: 4093))
        #expect(try fits.message(requestID: 1).payload.count == 4096)
        #expect(throws: XenStoreWireError.payloadTooLarge(length: 4096, limit: 4080)) {
            _ = try fits.message(requestID: 1, limit: XsWire.xenbusDevicePayloadMax)
        }
        var decoder = XsFrameDecoder()
        decoder.feed(header(2, 1, 0, 4097))
        #expect(throws: XenStoreWireError.payloadTooLarge(length: 4097, limit: 4096)) { _ = try decoder.next() }
    }

    @Test("malformed request payloads are typed errors")
    func malformed() {
        func decode(_ type: XsMessageType, _ payload: String) -> XenStoreWireError? {
            let bytes = wire(payload)
            do {
                _ = try XenStoreRequest.decode(XsMessage(header: XsHeader(type: type, requestID: 1, length: UInt32(bytes.count)), payload: bytes))
                return nil
            } catch { return error }
        }
        #expect(decode(.read, "/a b\\0") == .invalidPath("/a b", "character   is not allowed"))
        #expect(decode(.read, "/a//b\\0") == .invalidPath("/a//b", "empty component (//)"))
        #expect(decode(.read, "/a/\\0") == .invalidPath("/a/", "trailing /"))
        #expect(decode(.read, "\\0") == .invalidPath("", "empty"))
        #expect(decode(.read, "@other\\0") == .invalidPath("@other", "unknown special path"))
        #expect(decode(.read, "/a") != nil, "a path must be NUL-terminated")
        #expect(decode(.watch, "/a\\0") != nil, "WATCH needs a token")
        #expect(decode(.watch, "/a\\0t\\03\\0") != nil, "4.17 has no watch depth")
        #expect(decode(.transactionEnd, "X\\0") == .malformedPayload(type: "TRANSACTION_END", what: "expected T or F"))
        #expect(decode(.setPerms, "/a\\0x5\\0") == .invalidPermission("x5"))
        #expect(decode(.setPerms, "/a\\0r\\0") == .invalidPermission("r"))
        #expect(decode(.setPerms, "/a\\0") != nil)
        #expect(decode(.introduce, "1\\0x\\02\\0") != nil)
        #expect(decode(.release, "domU\\0") != nil)
        #expect(decode(.write, "/a") != nil, "WRITE needs the NUL after its path")
        #expect(decode(.error, "EINVAL\\0") != nil, "ERROR is not a request")
        let unknown = XsMessage(header: XsHeader(type: 20, requestID: 1, transactionID: 0, length: 0), payload: [])
        #expect(throws: XenStoreWireError.self) { _ = try XenStoreRequest.decode(unknown) }
    }

    @Test("path rules and length limits")
    func paths() throws {
        #expect(try XenStorePath("/").isAbsolute)
        #expect(try XenStorePath("device/vif/0").resolved(home: .home(of: DomainID(7))).rawValue == "/local/domain/7/device/vif/0")
        #expect(try XenStorePath(String(repeating: "a", count: 2048)).rawValue.count == 2048)
        #expect(throws: XenStoreWireError.self) { try XenStorePath(String(repeating: "a", count: 2049)) }
        #expect(try XenStorePath("/" + String(repeating: "a", count: 3071)).isAbsolute)
        #expect(throws: XenStoreWireError.self) { try XenStorePath("/" + String(repeating: "a", count: 3072)) }
        #expect(try XenStorePath("@releaseDomain").isSpecial)
        for bad in ["a\u{0}b", "a.b", "a b", "é", "a\\b"] { #expect(throws: XenStoreWireError.self) { try XenStorePath(bad) } }
    }

    @Test("permissions: owner first, access by domain")
    func permissions() throws {
        let p = try XenStorePermissions([XenStorePermission("n0"), XenStorePermission("r5"), XenStorePermission("b7")])
        #expect(p.owner == .dom0 && p.description == "n0,r5,b7")
        #expect(p.access(for: .dom0) == .both && p.access(for: DomainID(5)) == .read && p.access(for: DomainID(9)) == .none)
        for bad in ["", "q1", "r", "rr1", "r-1", "r70000", "r 1"] { #expect(throws: XenStoreWireError.self) { try XenStorePermission(bad) } }
    }
}

@Suite("xs_wire replies: golden bytes", .timeLimit(.minutes(5)))
struct ReplyWireTests {
    struct Case: Sendable, CustomTestStringConvertible {
        let request: XsMessageType
        let reply: XenStoreReply
        let payload: String
        var testDescription: String { "\(request) → \(reply)" }
    }

    static let cases: [Case] = [
        Case(request: .write, reply: .ok, payload: "OK\\0"),
        Case(request: .read, reply: .value(Array("4".utf8)), payload: "4"),
        Case(request: .read, reply: .value([]), payload: ""),
        Case(request: .directory, reply: .children(["backend", "device"]), payload: "backend\\0device\\0"),
        Case(request: .directory, reply: .children([]), payload: ""),
        Case(request: .getPerms, reply: .permissions(try! XenStorePermissions([XenStorePermission("n0"), XenStorePermission("r5")])), payload: "n0\\0r5\\0"),
        Case(request: .transactionStart, reply: .transactionID(42), payload: "42\\0"),
        Case(request: .getDomainPath, reply: .domainPath("/local/domain/3"), payload: "/local/domain/3\\0"),
        Case(request: .isDomainIntroduced, reply: .introduced(true), payload: "T\\0"),
        Case(request: .isDomainIntroduced, reply: .introduced(false), payload: "F\\0"),
        Case(request: .directoryPart, reply: .childrenPart(generation: "17", children: ["a", "b"], complete: false), payload: "17\\0a\\0b\\0"),
        Case(request: .directoryPart, reply: .childrenPart(generation: "17", children: ["c"], complete: true), payload: "17\\0c\\0\\0"),
        Case(request: .control, reply: .text("done"), payload: "done\\0"),
        Case(request: .read, reply: .error(.ENOENT), payload: "ENOENT\\0"),
        Case(request: .transactionEnd, reply: .error(.EAGAIN), payload: "EAGAIN\\0")
    ]

    @Test("encode and decode", arguments: cases)
    func roundTrip(_ c: Case) throws {
        let request = XsHeader(type: c.request, requestID: 9, transactionID: 4, length: 0)
        let message = c.reply.message(answering: request)
        let type: XsMessageType = if case .error = c.reply { .error } else { c.request }
        #expect(message.bytes == header(type.rawValue, 9, 4, wire(c.payload).count) + wire(c.payload))
        #expect(try XenStoreReply.decode(message, answering: c.request) == c.reply)
    }

    @Test("watch events carry req_id and tx_id 0")
    func watchEvent() throws {
        let event = XenStoreReply.watchEvent(path: "/local/domain/0/backend", token: "be")
        let message = event.message(answering: XsHeader(type: .watch, requestID: 77, transactionID: 5, length: 0))
        #expect(message.bytes == header(15, 0, 0, 27) + wire("/local/domain/0/backend\\0be\\0"))
        #expect(try XenStoreReply.decode(message, answering: nil) == event)
    }

    @Test("every error name in xsd_errors order, and unknown names refused")
    func errors() throws {
        for name in XsErrorName.allCases {
            let message = XsMessage(
                header: XsHeader(type: .error, requestID: 1, length: UInt32(name.rawValue.utf8.count + 1)),
                payload: Array(name.rawValue.utf8) + [0])
            #expect(try XenStoreReply.decode(message, answering: .read) == .error(name))
        }
        let bogus = XsMessage(header: XsHeader(type: .error, requestID: 1, length: 6), payload: wire("EBOGUS\\0"))
        #expect(throws: XenStoreWireError.unknownErrorName("EBOGUS")) { _ = try XenStoreReply.decode(bogus, answering: .read) }
        let notOK = XsMessage(header: XsHeader(type: .write, requestID: 1, length: 3), payload: wire("NO\\0"))
        #expect(throws: XenStoreWireError.self) { _ = try XenStoreReply.decode(notOK, answering: .write) }
    }
}

@Suite("xs_wire framing", .timeLimit(.minutes(5)))
struct FramingTests {
    static let stream: [UInt8] = {
        let messages = [
            try! XenStoreRequest.write("/a", value: Array("one".utf8)).message(requestID: 1),
            try! XenStoreRequest.read("/a").message(requestID: 2),
            XenStoreReply.watchEvent(path: "/a", token: "t").message(answering: XsHeader(type: .watch, requestID: 0, length: 0)),
            try! XenStoreRequest.transactionStart.message(requestID: 3)
        ]
        return messages.flatMap(\.bytes)
    }()

    @Test("a stream split at every byte gives the same messages")
    func dripFeed() throws {
        var whole = XsFrameDecoder()
        whole.feed(Self.stream)
        var expected: [XsMessage] = []
        while let message = try whole.next() { expected.append(message) }
        #expect(expected.count == 4 && whole.pending == 0)
        for split in 0...Self.stream.count {
            var decoder = XsFrameDecoder()
            var got: [XsMessage] = []
            decoder.feed(Self.stream[..<split])
            while let message = try decoder.next() { got.append(message) }
            decoder.feed(Self.stream[split...])
            while let message = try decoder.next() { got.append(message) }
            #expect(got == expected, "split at \(split)")
        }
        var bytewise = XsFrameDecoder()
        var got: [XsMessage] = []
        for byte in Self.stream {
            bytewise.feed([byte])
            while let message = try bytewise.next() { got.append(message) }
        }
        #expect(got == expected)
    }

    @Test("a truncated header or payload waits; the buffer stays bounded")
    func truncated() throws {
        var decoder = XsFrameDecoder()
        decoder.feed(Self.stream.prefix(10))
        #expect(try decoder.next() == nil)
        #expect(decoder.pending == 10)
        var many = XsFrameDecoder()
        let one = try XenStoreRequest.read("/a").message(requestID: 1).bytes
        for _ in 0..<10_000 {
            many.feed(one)
            _ = try many.next()
        }
        #expect(many.pending == 0)
    }
}

@Suite("Where the client looks for the daemon", .timeLimit(.minutes(5)))
struct XenStoreLocationTests {
    @Test("libxenstore's order: XENSTORED_PATH, XENSTORED_RUNDIR/socket, /var/run/xenstored/socket, then the devices")
    func rules() {
        #expect(XenStoreLocation(environment: ["XENSTORED_PATH": "/x/s", "XENSTORED_RUNDIR": "/r"]) == XenStoreLocation(socket: "/x/s", devices: ["/x/s"]))
        #expect(XenStoreLocation(environment: ["XENSTORED_RUNDIR": "/r"]).socket == "/r/socket")
        let plain = XenStoreLocation(environment: [:])
        #expect(plain.socket == "/var/run/xenstored/socket")
        #expect(plain.devices == ["/dev/xen/xenbus", "/proc/xen/xenbus"])
    }

    @Test("nothing reachable: the error lists every place tried")
    func unreachable() {
        let location = XenStoreLocation(socket: "/nonexistent/socket", devices: ["/nonexistent/xenbus"])
        #expect {
            _ = try location.open()
        } throws: { error in
            guard case let .unreachable(tried) = error as? XenStoreError else { return false }
            return tried.count == 2 && tried[0].hasPrefix("/nonexistent/socket") && tried[1].hasPrefix("/nonexistent/xenbus")
        }
    }
}

@Suite("The /dev/xen/xenbus transport", .timeLimit(.minutes(5)))
struct XenbusDeviceTransportTests {
    @Test("a device carries at most 4080 payload bytes (header + payload ≤ 4096): longer requests fail before sending")
    func payloadCap() async throws {
        // A FIFO opened read-write stands in for the character device: same open/write path.
        let fifo = NSTemporaryDirectory() + "pvkit-xenbus-\(getpid())"
        unlink(fifo)
        #expect(mkfifo(fifo, 0o600) == 0)
        defer { unlink(fifo) }
        let transport = try XenStoreLocation(socket: "/nonexistent/socket", devices: [fifo]).open()
        #expect(transport.payloadLimit == 4080)
        let client = XenStoreClient(transport: transport)
        defer { client.close() }
        await #expect(throws: XenStoreError.invalidRequest(.payloadTooLarge(length: 4081, limit: 4080))) {
            try await client.write("/a", Array(repeating: 0x41, count: 4081 - 3))
        }
    }
}

/// A transport answering every request itself (a READ gets "v", 2 ms later, from an event
/// loop's timer), counting how many requests were ever outstanding at once. Its descriptor is
/// an eventfd notified when a reply is ready.
final class CountingTransport: XenStoreTransport, @unchecked Sendable {  // @unchecked: the counters and replies are under `lock`
    let name = "counting"
    let payloadLimit = 4096
    let oneRequestAtATime: Bool
    private let lock = NSLock()
    private var replies: [UInt8] = []
    private var outstanding = 0
    private var ended = false
    private var most = 0
    var mostOutstanding: Int { lock.withLock { most } }
    private let ready: EventFD
    private let timers = EventLoopGroup.shared.next()

    init(oneRequestAtATime: Bool) throws {
        self.oneRequestAtATime = oneRequestAtATime
        ready = try EventFD(nonBlocking: true)
    }

    var descriptor: Int32 { ready.fileDescriptor }
    var descriptorOwner: any Sendable & AnyObject { ready }
    var waitToWrite: EventLoop.Readiness { [] }

    func write(_ bytes: UnsafeRawBufferPointer) throws(XenStoreError) -> Int {
        guard let header = try? XsHeader.decode(UnsafeRawBufferPointer(rebasing: bytes[0..<16])) else { throw .badReply("bad frame") }
        lock.withLock {
            outstanding += 1
            most = max(most, outstanding)
        }
        timers.schedule(after: .milliseconds(2)) { [self] in
            lock.withLock { replies += XsHeader(type: header.type, requestID: header.requestID, transactionID: 0, length: 1).bytes + Array("v".utf8) }
            try? ready.notify()
        }
        return bytes.count
    }

    func read(into buffer: UnsafeMutableRawBufferPointer) throws(XenStoreError) -> Int? {
        ready.consume()
        return lock.withLock { () -> Int? in
            if ended { return 0 }
            guard !replies.isEmpty else { return nil }
            // One whole reply per read: it is outstanding until the client has it.
            let count = 17
            buffer.copyBytes(from: replies[0..<count])
            replies.removeFirst(count)
            outstanding -= 1
            if !replies.isEmpty { try? ready.notify() }
            return count
        }
    }

    func shutdown() {
        lock.withLock { ended = true }
        try? ready.notify()
    }
}

@Suite("Requests one at a time", .timeLimit(.minutes(5)))
struct OneRequestAtATimeTests {
    @Test(
        "a transport that asks (Linux's /dev/xen/xenbus: a WATCH written while another reply is due deadlocks the kernel) gets each reply before the next request; others are pipelined"
    )
    func turns() async throws {
        for serial in [true, false] {
            let transport = try CountingTransport(oneRequestAtATime: serial)
            let client = XenStoreClient(transport: transport)
            try await withThrowingTaskGroup(of: String.self) { group in
                for i in 0..<20 { group.addTask { try await client.readString(XenStorePath("/n\(i)")) } }
                for try await value in group { #expect(value == "v") }
            }
            client.close()
            if serial { #expect(transport.mostOutstanding == 1) } else { #expect(transport.mostOutstanding > 1) }
        }
        // The device transport is one of those that ask.
        let fifo = NSTemporaryDirectory() + "pvkit-xenbus-turns-\(getpid())"
        unlink(fifo)
        #expect(mkfifo(fifo, 0o600) == 0)
        defer { unlink(fifo) }
        #expect(try XenStoreLocation(socket: "/nonexistent/socket", devices: [fifo]).open().oneRequestAtATime)
    }
}
