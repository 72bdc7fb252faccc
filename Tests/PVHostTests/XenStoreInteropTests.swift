import Foundation
#if canImport(Glibc)
    import Glibc
#endif
import Testing
import XenABI
import XenStore
import XenStoredCore
import PVHost
import PVSystem
import TestSupport

/// Xen's own tools against our xenstored on a UNIX socket: xenstore-utils and test-xenstore.
@Suite("xenstored interop: Xen's own tools", .serialized, .timeLimit(.minutes(5)))
struct XenStoreInteropTests {
    /// A running `pvhost xenstored` on a fresh socket, stopped when the value goes away.
    final class Daemon {
        let directory: String
        let socket: String
        let process: TestProcess

        init() async throws {
            directory = temporaryPath("pvkit-xs")
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            socket = directory + "/socket"
            let exe = Binaries.path("pvhost")
            try #require(FileManager.default.isExecutableFile(atPath: exe), "pvhost is not built beside the tests: swift build --build-tests")
            // Output discarded: a daemon left behind by a crashed test must not hold the test's pipes.
            process = try TestProcess(exe, ["xenstored", "--socket", socket])
            let socket = self.socket
            try #require(await eventually { FileManager.default.fileExists(atPath: socket) }, "the daemon did not create its socket")
        }

        /// Runs a tool with XENSTORED_PATH pointing at this daemon.
        func tool(_ path: String, _ arguments: [String]) async throws -> (status: Int32, output: String) {
            try await runTool(path, arguments, socket: socket)
        }

        deinit { try? FileManager.default.removeItem(atPath: directory) }
    }

    /// Xen's C xenstored, run without a hypervisor through Tests/Interop/xenstored-preload.c.
    final class CDaemon {
        let directory: String
        let socket: String
        let process: TestProcess

        init() async throws {
            let binary = "/usr/lib/xen-4.17/bin/xenstored"
            try XenStoreInteropTests.available(binary)
            directory = temporaryPath("pvkit-cxs")
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            let source = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
                .appendingPathComponent("Interop/xenstored-preload.c").path
            let library = directory + "/preload.so"
            let cc = try await runCommand("/usr/bin/cc", ["-shared", "-fPIC", "-O2", "-o", library, source, "-ldl"])
            try #require(cc.status == 0, "the preload library did not build: \(cc.output)")
            process = try TestProcess(binary, ["-N"], environment: ["XENSTORED_RUNDIR": directory, "LD_PRELOAD": library])
            let candidates = [directory + "/socket", directory + "/xenstored/socket"]
            try #require(await eventually { candidates.contains { FileManager.default.fileExists(atPath: $0) } }, "C xenstored made no socket")
            let socket = try #require(candidates.first { FileManager.default.fileExists(atPath: $0) })
            self.socket = socket
            // The file exists from bind(); connections are refused until listen(): wait for that.
            try #require(await eventually { Self.accepts(socket) }, "C xenstored does not accept connections")
        }

        /// Whether a stream connection to `path` is accepted now.
        static func accepts(_ path: String) -> Bool {
            (try? StreamDescriptor.connect(unixSocket: path)) != nil
        }

        // C xenstored run this way does not act on SIGTERM promptly: the process is killed
        // outright when it goes.
        deinit { try? FileManager.default.removeItem(atPath: directory) }
    }

    static func available(_ path: String) throws {
        try #require(FileManager.default.isExecutableFile(atPath: path), "\(path) is missing: make test installs xenstore-utils and xen-utils-4.17")
    }

    @Test("xenstore-write, -read, -ls, -list, -exists, -rm, -chmod, -watch")
    func utilities() async throws {
        try Self.available("/usr/bin/xenstore-read")
        let daemon = try await Daemon()
        #expect(try await daemon.tool("/usr/bin/xenstore-write", ["/local/domain/0/name", "Domain-0", "/tool/pvkit/a", "one"]).status == 0)
        #expect(try await daemon.tool("/usr/bin/xenstore-read", ["/tool/pvkit/a"]) == (0, "one\n"))
        #expect(try await daemon.tool("/usr/bin/xenstore-read", ["/tool/missing"]).status != 0)
        #expect(try await daemon.tool("/usr/bin/xenstore-ls", ["/tool"]).output == "xenstored = \"\"\npvkit = \"\"\n a = \"one\"\n")
        #expect(try await daemon.tool("/usr/bin/xenstore-list", ["/tool/pvkit"]) == (0, "a\n"))
        #expect(try await daemon.tool("/usr/bin/xenstore-exists", ["/tool/pvkit/a"]).status == 0)
        #expect(try await daemon.tool("/usr/bin/xenstore-chmod", ["/tool/pvkit/a", "n0", "r5"]).status == 0)
        #expect(try await daemon.tool("/usr/bin/xenstore-ls", ["-p", "/tool/pvkit"]).output.contains("(n0,r5)"))
        let watch = try await daemon.tool("/usr/bin/xenstore-watch", ["-n", "1", "/tool/pvkit"])
        #expect(watch == (0, "/tool/pvkit\n"), "the watch fires once on registration")
        #expect(try await daemon.tool("/usr/bin/xenstore-rm", ["/tool/pvkit"]).status == 0)
        #expect(try await daemon.tool("/usr/bin/xenstore-exists", ["/tool/pvkit/a"]).status != 0)
    }

    @Test("xenstore-utils print the same against our daemon and Xen's C xenstored")
    func sameAsC() async throws {
        try Self.available("/usr/bin/xenstore-ls")
        let ours = try await Daemon()
        let theirs = try await CDaemon()
        let script: [(String, [String])] = [
            ("xenstore-write", ["/local/domain/0/name", "Domain-0", "/tool/pvkit/a", "one", "/tool/pvkit/b/c", "two"]),
            ("xenstore-read", ["/tool/pvkit/a"]), ("xenstore-read", ["/tool/pvkit/nope"]),
            ("xenstore-ls", ["/tool"]), ("xenstore-ls", ["-f", "/tool/pvkit"]), ("xenstore-list", ["/tool/pvkit"]),
            ("xenstore-exists", ["/tool/pvkit/b"]), ("xenstore-exists", ["/tool/pvkit/x"]),
            ("xenstore-chmod", ["/tool/pvkit/a", "n0", "r5", "w7"]), ("xenstore-ls", ["-p", "/tool/pvkit"]),
            ("xenstore-rm", ["/tool/pvkit/b"]), ("xenstore-ls", ["/tool/pvkit"]),
            ("xenstore-watch", ["-n", "1", "/tool/pvkit"]), ("xenstore-rm", ["/tool/pvkit/nope/deeper"])
        ]
        for (tool, arguments) in script {
            let mine = try await ours.tool("/usr/bin/" + tool, arguments)
            let reference = try await runTool("/usr/bin/" + tool, arguments, socket: theirs.socket)
            #expect(
                mine.status == reference.status && mine.output == reference.output,
                "\(tool) \(arguments): ours \(mine), C xenstored \(reference)")
        }
    }

    @Test("Xen's test-xenstore passes every test")
    func xenTest() async throws {
        let test = "/usr/lib/xen-4.17/bin/test-xenstore"
        try Self.available(test)
        let daemon = try await Daemon()
        let names = try await daemon.tool(test, ["-l"]).output.split(separator: "\n").compactMap {
            $0.split(separator: ":").first.map { $0.trimmingCharacters(in: .whitespaces) }
        }
        #expect(names.count == 12)
        let run = try await daemon.tool(test, [])
        #expect(run.status == 0, "\(run.output)")
        for name in names {
            #expect(run.output.split(separator: "\n").contains { $0.hasPrefix(name) && $0.hasSuffix(" ns") }, "\(name): \(run.output)")
        }
    }
}

/// Runs a xenstore tool against the daemon listening on `socket` (XENSTORED_PATH).
func runTool(_ path: String, _ arguments: [String], socket: String) async throws -> (status: Int32, output: String) {
    try await runCommand(path, arguments, environment: ["XENSTORED_PATH": socket, "PATH": "/usr/bin:/bin"])
}

/// Connection-level bad input against the running daemon.
@Suite("xenstored: hostile clients", .serialized, .timeLimit(.minutes(5)))
struct XenStoreHostileClientTests {
    /// A raw client socket to the daemon.
    func connect(_ path: String) throws -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        try #require(fd >= 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in for (i, b) in path.utf8.enumerated() { raw[i] = b } }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        try #require(result == 0, "connect failed: \(errno)")
        return fd
    }

    /// Reads until EOF or error; true when the daemon closed the connection.
    func closedByDaemon(_ fd: Int32) -> Bool {
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = read(fd, &buffer, buffer.count)
            if n == 0 { return true }
            if n < 0 { return errno == ECONNRESET }
        }
    }

    func residentKilobytes(_ pid: Int32) -> Int {
        let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
        return Int(line.split(whereSeparator: \.isWhitespace).dropFirst().first ?? "") ?? 0
    }

    @Test("an oversized frame ends only that connection")
    func oversized() async throws {
        let daemon = try await XenStoreInteropTests.Daemon()
        let fd = try connect(daemon.socket)
        defer { close(fd) }
        let header = [UInt32(2), 1, 0, 5000].flatMap { withUnsafeBytes(of: $0.littleEndian, Array.init) }
        #expect(write(fd, header, header.count) == header.count)
        #expect(closedByDaemon(fd))
        #expect(try await daemon.tool("/usr/bin/xenstore-write", ["/tool/still", "here"]).status == 0)
        #expect(try await daemon.tool("/usr/bin/xenstore-read", ["/tool/still"]) == (0, "here\n"))
    }

    @Test("a client that never reads its replies is dropped; the daemon's memory stays bounded")
    func neverReads() async throws {
        let daemon = try await XenStoreInteropTests.Daemon()
        #expect(try await daemon.tool("/usr/bin/xenstore-write", ["/tool/big", String(repeating: "x", count: 3000)]).status == 0)
        let fd = try connect(daemon.socket)
        defer { close(fd) }
        let request = [UInt32(2), 1, 0, 10].flatMap { withUnsafeBytes(of: $0.littleEndian, Array.init) } + Array("/tool/big".utf8) + [0]
        var batch: [UInt8] = []
        for _ in 0..<100 { batch += request }
        var timeout = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        // 5000 reads of 3000 bytes: 15 MB of replies nobody collects.
        for _ in 0..<50 where send(fd, batch, batch.count, Int32(MSG_NOSIGNAL)) > 0 {}
        // Not reading yet: reading now would make this an ordinary (slow) reader.
        try await Task.sleep(for: .seconds(1))
        #expect(closedByDaemon(fd), "the daemon must give up on a reader that never reads")
        #expect(residentKilobytes(daemon.process.pid) < 64 * 1024)
        #expect(try await daemon.tool("/usr/bin/xenstore-read", ["/tool/big"]).output.count == 3001)
    }

    @Test("10 000 connections opened and dropped (500 open at once) leave the daemon serving")
    func churn() async throws {
        let daemon = try await XenStoreInteropTests.Daemon()
        for _ in 0..<20 {
            let batch = try (0..<500).map { _ in try connect(daemon.socket) }
            for fd in batch { close(fd) }
        }
        #expect(try await daemon.tool("/usr/bin/xenstore-write", ["/tool/after", "ok"]).status == 0)
        #expect(try await daemon.tool("/usr/bin/xenstore-read", ["/tool/after"]) == (0, "ok\n"))
        #expect(residentKilobytes(daemon.process.pid) < 64 * 1024)
    }

    /// Frames a request with the path as NUL-terminated payload.
    func request(_ type: XsMessageType, _ strings: [String], value: [UInt8] = [], id: UInt32 = 1) -> [UInt8] {
        let payload = strings.flatMap { Array($0.utf8) + [0] } + value
        return XsHeader(type: type, requestID: id, length: UInt32(payload.count)).bytes + payload
    }

    /// Reads messages until the daemon is silent for 300 ms.
    func drain(_ fd: Int32) -> [XsMessage] {
        var timeout = timeval(tv_sec: 0, tv_usec: 300_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var decoder = XsFrameDecoder()
        var messages: [XsMessage] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = read(fd, &buffer, buffer.count)
            guard n > 0 else { return messages }
            decoder.feed(buffer[..<n])
            while let message = try? decoder.next() { messages.append(message) }
        }
    }

    @Test("a watch storm: a slow watcher of a hot node gets coalesced events, a watcher that never reads is dropped, the writer is unharmed")
    func watchStorm() async throws {
        let daemon = try await XenStoreInteropTests.Daemon()
        let writer = try XenStoreClient.connect(XenStoreLocation(environment: ["XENSTORED_PATH": daemon.socket]))
        try await writer.write("/tool/hot", "0")
        // One watcher never reads; one reads only after the storm.
        let silent = try connect(daemon.socket), slow = try connect(daemon.socket)
        defer { close(silent); close(slow) }
        for (fd, path) in [(silent, "/tool"), (slow, "/tool/hot")] {
            var watch = request(.watch, [path, "tok"])
            #expect(send(fd, &watch, watch.count, 0) == watch.count)
        }
        try await Task.sleep(for: .milliseconds(100))
        // 10 000 writes of the hot node (64 in flight at a time), then 10 000 distinct nodes
        // with long names: the silent watcher's events add up to over 2 MB.
        for round in 0..<(10_000 / 64 + 1) {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for i in (round * 64)..<min(10_000, round * 64 + 64) { group.addTask { try await writer.write("/tool/hot", String(i)) } }
                try await group.waitForAll()
            }
        }
        let long = String(repeating: "x", count: 200)
        for i in 0..<10_000 { try await writer.write(XenStorePath("/tool/cold/\(long)-\(i)"), "v") }
        // The last round's 64 writes race each other; one more, alone, decides the value.
        try await writer.write("/tool/hot", "final")
        #expect(try await writer.readString("/tool/hot") == "final", "the writer is unharmed")
        let events = drain(slow).filter { $0.header.messageType == .watchEvent }
        #expect(events.count >= 2, "the registration event and at least one change")
        #expect(events.count < 5_000, "coalesced: \(events.count) events for 10 000 changes")
        #expect(residentKilobytes(daemon.process.pid) < 96 * 1024)
        #expect(closedByDaemon(silent), "a watcher that never reads is dropped")
    }
}

@Suite("xenstored output queue", .timeLimit(.minutes(5)))
struct XenStoreOutputQueueTests {
    func event(_ path: String, _ token: String) -> XsMessage {
        XenStoreReply.watchEvent(path: path, token: token).message(answering: XsHeader(type: .watch, requestID: 0, length: 0))
    }

    @Test("an event identical to one still queued is dropped; once sent, it is queued again")
    func coalescing() {
        var queue = XenStoreOutputQueue(limit: 1000)
        let appended = [queue.append(event("/a", "t")), queue.append(event("/a", "t")), queue.append(event("/a", "u"))]
        #expect(appended == [true, true, true])
        #expect(queue.coalesced == 1)
        let first = event("/a", "t").bytes.count
        #expect(queue.pending == first + event("/a", "u").bytes.count)
        queue.consumed(first)
        let again = queue.append(event("/a", "t"))
        #expect(again && queue.coalesced == 1, "the queued one went out: a new change is a new event")
        let reply = XenStoreReply.ok.message(answering: XsHeader(type: .write, requestID: 1, length: 0))
        let before = queue.pending
        _ = queue.append(reply)
        _ = queue.append(reply)
        #expect(queue.pending == before + 2 * reply.bytes.count, "replies are never coalesced")
    }

    @Test("past the limit, append says drop the connection")
    func bounded() {
        var queue = XenStoreOutputQueue(limit: 100)
        var accepted = 0
        while queue.append(event("/n\(accepted)", "t")) { accepted += 1 }
        #expect(queue.pending > 100 && accepted < 10)
    }
}
