import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Testing
import XenABI
import XenStore

/// pvhost as its own process with guest processes attached over the control socket: each
/// guest is a real process mapping its own memory memfd and talking xenstore over its ring.
@Suite("pvhost with guest processes", .serialized)
struct GuestProcessTests {
    final class PVHostProcess {
        let directory: String
        let process = Process()
        var control: String { directory + "/control" }
        var xenstore: String { directory + "/xs" }
        static var binaries: URL {
            let me = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
            return URL(fileURLWithPath: me).deletingLastPathComponent()
        }

        init(config: String? = nil) throws {
            directory = NSTemporaryDirectory() + "pvkit-pvhost-\(UUID().uuidString.prefix(8))"
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            process.executableURL = Self.binaries.appendingPathComponent("pvhost")
            var arguments = ["run", "--control", directory + "/control", "--xenstore", directory + "/xs", "--grace", "3"]
            if let config {
                try config.write(toFile: directory + "/config.json", atomically: true, encoding: .utf8)
                arguments.append(directory + "/config.json")
            }
            process.arguments = arguments
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try process.run()
            for _ in 0..<200 where !FileManager.default.fileExists(atPath: directory + "/control") { usleep(10_000) }
            try #require(FileManager.default.fileExists(atPath: directory + "/control"), "pvhost made no control socket")
        }

        /// Starts `TOOL ARGS --pvhost CONTROL --name NAME` (pvstore unless told).
        func guest(_ name: String, _ arguments: [String], tool: String = "pvstore") throws -> (Process, Pipe) {
            let guest = Process()
            guest.executableURL = Self.binaries.appendingPathComponent(tool)
            guest.arguments = arguments + ["--pvhost", control, "--name", name]
            let pipe = Pipe()
            guest.standardOutput = pipe
            guest.standardError = pipe
            try guest.run()
            return (guest, pipe)
        }

        func run(_ name: String, _ arguments: [String], tool: String = "pvstore") throws -> (status: Int32, output: String) {
            let (guest, pipe) = try self.guest(name, arguments, tool: tool)
            let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            guest.waitUntilExit()
            return (guest.terminationStatus, output)
        }

        func dom0() throws -> XenStoreClient { try XenStoreClient.connect(XenStoreLocation(environment: ["XENSTORED_PATH": xenstore])) }

        func count(_ what: String) -> Int {
            let pid = process.processIdentifier
            if what == "fd" { return (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? -1 }
            return ((try? String(contentsOfFile: "/proc/\(pid)/maps", encoding: .utf8)) ?? "").split(separator: "\n").filter { $0.contains("pvhost-dom") }.count
        }

        deinit {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            try? FileManager.default.removeItem(atPath: directory)
        }
    }

    /// Waits until `condition` holds (5 s at most).
    func eventually(_ condition: () async throws -> Bool) async throws -> Bool {
        for _ in 0..<500 {
            if try await condition() { return true }
            try await Task.sleep(for: .milliseconds(10))
        }
        return false
    }

    @Test("a guest process is a domain: it reads its own nodes, writes its data, cannot read another guest's")
    func identity() async throws {
        let host = try PVHostProcess()
        let (watcher, _) = try host.guest("alpha", ["watch", "data"])
        defer { kill(watcher.processIdentifier, SIGKILL); watcher.waitUntilExit() }
        let dom0 = try host.dom0()
        #expect(try await eventually { try await dom0.directory("/local/domain").count == 1 })
        let alpha = try await dom0.directory("/local/domain")[0]
        #expect(try await dom0.readString(XenStorePath("/local/domain/\(alpha)/name")) == "alpha")
        let beta = try host.run("beta", ["read", "name", "domid"])
        #expect(beta.status == 0 && beta.output.hasPrefix("beta\n"), "\(beta)")
        let snoop = try host.run("beta", ["read", "/local/domain/\(alpha)/name"])
        #expect(snoop.status == 1 && snoop.output.contains("EACCES"), "\(snoop)")
        #expect(try host.run("beta", ["write", "data/x", "1"]).status == 0)
        let status = try host.run("beta", ["write", "/local/domain/\(alpha)/data/x", "1"])
        #expect(status.status == 1 && status.output.contains("EACCES"))
        // pvhost status names the live guest.
        let pvhost = Process()
        pvhost.executableURL = PVHostProcess.binaries.appendingPathComponent("pvhost")
        pvhost.arguments = ["status", "--control", host.control]
        let pipe = Pipe()
        pvhost.standardOutput = pipe
        try pvhost.run()
        let text = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        pvhost.waitUntilExit()
        #expect(text.contains("alpha") && !text.contains("beta"), "beta exited and was reclaimed: \(text)")
    }

    @Test("100 guests killed with SIGKILL mid-watch: no fd, mapping, domain or node left behind")
    func killedGuests() async throws {
        let host = try PVHostProcess()
        let dom0 = try host.dom0()
        let released = try await dom0.watch(.releaseDomain, skipInitial: true)
        // One round first, so lazily created things (threads, buffers) exist before counting.
        func round(_ i: Int) async throws {
            let (guest, _) = try host.guest("victim-\(i)", ["watch", "data"])
            #expect(try await eventually { try await dom0.directory("/local/domain").count == 1 }, "guest \(i) attached")
            // Some I/O in flight from dom0 to the guest's watch.
            let domid = try await dom0.directory("/local/domain")[0]
            try await dom0.write(XenStorePath("/local/domain/\(domid)/data/ping"), "\(i)")
            kill(guest.processIdentifier, SIGKILL)
            guest.waitUntilExit()
            #expect(try await eventually { try await dom0.directory("/local/domain").isEmpty }, "guest \(i) reclaimed")
        }
        try await round(0)
        // Reclaiming finishes shortly after the nodes go (the connection thread closes last):
        // count once the number is steady.
        var fds = host.count("fd")
        for _ in 0..<50 {
            try await Task.sleep(for: .milliseconds(50))
            let now = host.count("fd")
            if now == fds { break }
            fds = now
        }
        let maps = host.count("maps")
        #expect(maps == 0, "no domain memory stays mapped")
        for i in 1...100 { try await round(i) }
        #expect(try await eventually { host.count("fd") == fds }, "file descriptors: \(fds) before, \(host.count("fd")) after")
        #expect(host.count("maps") == 0)
        var events = released.makeAsyncIterator()
        var seen = 0
        while seen < 101, await events.next() != nil { seen += 1 }
        #expect(seen == 101, "@releaseDomain for every guest")
        #expect(try await dom0.directory("/vm").isEmpty)
    }

    @Test("with a configuration: named domains get their limits; other names and a second alpha are refused")
    func configured() async throws {
        let host = try PVHostProcess(config: #"{"domains": [{"name": "alpha", "pages": 512}]}"#)
        let (alpha, _) = try host.guest("alpha", ["watch", "data"])
        defer { kill(alpha.processIdentifier, SIGKILL); alpha.waitUntilExit() }
        let dom0 = try host.dom0()
        #expect(try await eventually { try await dom0.directory("/local/domain").count == 1 })
        let id = try await dom0.directory("/local/domain")[0]
        #expect(try await dom0.readString(XenStorePath("/local/domain/\(id)/memory/static-max")) == "2048", "512 pages of 4 KiB")
        let stranger = try host.run("mallory", ["read", "name"])
        #expect(stranger.status == 1 && stranger.output.contains("no domain named \"mallory\""), "\(stranger)")
        let twin = try host.run("alpha", ["read", "name"])
        #expect(twin.status == 1 && twin.output.contains("already running"), "\(twin)")
    }

    @Test("SIGTERM: every guest is told control/shutdown = poweroff, then pvhost exits")
    func shutdown() async throws {
        let host = try PVHostProcess()
        let (guest, pipe) = try host.guest("alpha", ["watch", "--count", "2", "control/shutdown"])
        // The registration event on the guest's output says its watch is in place.
        var output = ""
        for _ in 0..<1000 where !output.contains("\n") {
            output += String(decoding: pipe.fileHandleForReading.availableData, as: UTF8.self)
        }
        #expect(output == "control/shutdown\n")
        kill(host.process.processIdentifier, SIGTERM)
        output += String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        guest.waitUntilExit()
        #expect(guest.terminationStatus == 0 && output == "control/shutdown\ncontrol/shutdown\n", "\(output)")
        #expect(try await eventually { !host.process.isRunning }, "pvhost exits after telling its guests")
    }

    @Test("SIGTERM sent the moment the socket appears stops pvhost run and pvhost xenstored (20 starts each, never lost between setup steps)")
    func signalAtOnce() throws {
        for _ in 0..<20 {
            let host = try PVHostProcess()
            stop(host.process, within: 5)
            #expect(host.process.terminationReason == .exit, "pvhost run ends by itself, not by the signal's default action")

            let daemon = try XenStoreInteropTests.Daemon()
            stop(daemon.process, within: 5)
            #expect(daemon.process.terminationReason == .exit)
        }
    }

    @Test("a configured disk: pvblk (a guest process) verifies a pattern against the backing file; a killed pvblk leaves nothing mapped")
    func disk() async throws {
        let image = NSTemporaryDirectory() + "pvkit-disk-\(getpid()).img"
        _ = FileManager.default.createFile(atPath: image, contents: Data(count: 4 << 20))
        defer { unlink(image) }
        let host = try PVHostProcess(config: #"{"domains": [{"name": "alpha", "disks": [{"devid": 51712, "path": "\#(image)"}]}]}"#)
        let info = try host.run("alpha", ["info", "--json"], tool: "pvblk")
        #expect(info.status == 0 && info.output.contains(#""sectors":8192"#), "\(info)")
        let verify = try host.run("alpha", ["verify", "--sector", "100", "--count", "262144", "--backing", image], tool: "pvblk")
        #expect(verify.status == 0 && verify.output.contains("verified 262144 bytes"), "\(verify)")
        // Kill one mid-workload: pvhost reclaims the domain and its disk's mappings.
        let (victim, _) = try host.guest("alpha", ["verify", "--count", "4194304"], tool: "pvblk")
        try await Task.sleep(for: .milliseconds(300))
        kill(victim.processIdentifier, SIGKILL)
        victim.waitUntilExit()
        let dom0 = try host.dom0()
        #expect(try await eventually { try await dom0.directory("/local/domain").allSatisfy { $0 == "0" } }, "only dom0's home is left")
        #expect(try await eventually { (try? await dom0.directory("/local/domain/0/backend/vbd"))?.isEmpty ?? true }, "the backend directory went with the domain")
        // And the disk serves a new guest afterwards.
        let again = try host.run("alpha", ["verify", "--count", "65536", "--backing", image], tool: "pvblk")
        #expect(again.status == 0, "\(again)")
        // pvblk bench: IOPS, throughput and latency percentiles from its histogram.
        let bench = try host.run("alpha", ["bench", "--seconds", "0.5", "--queue-depth", "8"], tool: "pvblk")
        #expect(bench.status == 0 && bench.output.contains("random reads of 4096 bytes at queue depth 8"), "\(bench)")
        let rate = bench.output.split(separator: "\n").first { $0.hasSuffix("per I/O") }.flatMap { Double($0.split(separator: " ")[0]) } ?? 0
        #expect(rate > 0, "a rate was measured: \(bench.output)")
        #expect(bench.output.contains("latency µs: p50 "), "\(bench)")
        let zeroCopy = try host.run("alpha", ["bench", "--seconds", "0.5", "--queue-depth", "2", "--pattern", "sequential",
                                              "--block-size", "65536", "--zero-copy"], tool: "pvblk")
        #expect(zeroCopy.status == 0 && zeroCopy.output.contains("latency µs: p50 "), "\(zeroCopy)")
        let queued = try host.run("alpha", ["bench", "--seconds", "0.5", "--queue-depth", "16", "--io-queue", "--queues", "1",
                                            "--poll-microseconds", "20"], tool: "pvblk")
        #expect(queued.status == 0 && queued.output.contains("random reads of 4096 bytes at queue depth 16 through an I/O queue, 1 ring(s)"), "\(queued)")
        let queuedRate = queued.output.split(separator: "\n").first { $0.hasSuffix("per I/O") }.flatMap { Double($0.split(separator: " ")[0]) } ?? 0
        #expect(queuedRate > 0 && queued.output.contains("latency µs: p50 "), "\(queued)")
        let queuedWrites = try host.run("alpha", ["bench", "--seconds", "0.3", "--write", "--io-queue", "--pattern", "sequential", "--block-size", "65536",
                                                  "--queue-depth", "4"], tool: "pvblk")
        #expect(queuedWrites.status == 0 && queuedWrites.output.contains("sequential writes of 65536 bytes"), "\(queuedWrites)")
        #expect(try host.run("alpha", ["bench", "--poll-microseconds", "-1"], tool: "pvblk").status == 64, "a bad polling time is refused")
        let tooBig = try host.run("alpha", ["bench", "--io-queue", "--block-size", "1048576", "--queue-depth", "64"], tool: "pvblk")
        #expect(tooBig.status == 1 && tooBig.output.contains("lower --queue-depth or --block-size"), "\(tooBig)")
        let refused = try host.run("alpha", ["bench", "--block-size", "100"], tool: "pvblk")
        #expect(refused.status == 64, "\(refused)")
    }

    @Test("pvhost killed mid-workload: every block written before the last completed flush is in the file; pvblk fails cleanly")
    func hostKilledMidWrite() async throws {
        let image = NSTemporaryDirectory() + "pvkit-journal-\(getpid()).img"
        _ = FileManager.default.createFile(atPath: image, contents: Data(count: 16 << 20))
        defer { unlink(image) }
        let host = try PVHostProcess(config: #"{"domains": [{"name": "alpha", "disks": [{"devid": 51712, "path": "\#(image)"}]}]}"#)
        let (guest, pipe) = try host.guest("alpha", ["journal", "--blocks", "4096", "--flush-every", "4"], tool: "pvblk")
        var output = ""
        func durable() -> Int { output.split(separator: "\n").last { $0.hasPrefix("durable ") }.flatMap { Int($0.dropFirst(8)) } ?? 0 }
        while durable() < 64 {
            let data = pipe.fileHandleForReading.availableData
            guard !data.isEmpty else { break }
            output += String(decoding: data, as: UTF8.self)
        }
        kill(host.process.processIdentifier, SIGKILL)
        output += String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        guest.waitUntilExit()
        let acknowledged = durable()
        #expect(acknowledged >= 64 && acknowledged < 4096, "killed mid-workload: \(output.suffix(200))")
        #expect(guest.terminationStatus == 1, "pvblk reports the failure and exits 1: \(output.suffix(300))")
        let file = try #require(FileHandle(forReadingAtPath: image))
        defer { try? file.close() }
        for index in 0..<acknowledged {
            let block = Array(file.readData(ofLength: 4096))
            let expected = (0..<512).flatMap { _ in withUnsafeBytes(of: UInt64(index).littleEndian, Array.init) }
            #expect(block == expected, "block \(index) of \(acknowledged) acknowledged as durable")
            if block != expected { break }
        }
    }

    @Test("pvhost killed outright: a guest waiting on a watch sees its connection end and exits with an error, not a hang")
    func hostDies() async throws {
        let host = try PVHostProcess()
        let (guest, pipe) = try host.guest("alpha", ["watch", "data"])
        var output = ""
        for _ in 0..<1000 where !output.contains("\n") {
            output += String(decoding: pipe.fileHandleForReading.availableData, as: UTF8.self)
        }
        kill(host.process.processIdentifier, SIGKILL)
        output += String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        guest.waitUntilExit()
        #expect(guest.terminationStatus == 1, "\(output)")
        #expect(output.contains("connection"), "\(output)")
    }
}
