import Foundation
#if canImport(Glibc)
    import Glibc
#endif
import PVSystem
import Testing
import TestSupport
import XenABI
import XenStore

/// pvhost as its own process with guest processes attached over the control socket: each
/// guest is a real process mapping its own memory memfd and talking xenstore over its ring.
@Suite("pvhost with guest processes", .serialized, .timeLimit(.minutes(10)))
struct GuestProcessTests {
    final class PVHostProcess {
        let directory: String
        let process: TestProcess
        var control: String { directory + "/control" }
        var xenstore: String { directory + "/xs" }

        init(config: String? = nil) async throws {
            directory = temporaryPath("pvkit-pvhost")
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            var arguments = ["run", "--control", directory + "/control", "--xenstore", directory + "/xs", "--grace", "3"]
            if let config {
                try config.write(toFile: directory + "/config.json", atomically: true, encoding: .utf8)
                arguments.append(directory + "/config.json")
            }
            process = try TestProcess(Binaries.path("pvhost"), arguments, outputPath: directory + "/pvhost.log")
            let control = directory + "/control"
            try #require(await eventually { FileManager.default.fileExists(atPath: control) }, "pvhost made no control socket")
        }

        /// Starts `TOOL ARGS --pvhost CONTROL --name NAME` (pvstore unless told), its output
        /// written to a file of its own (read with `output`).
        func guest(_ name: String, _ arguments: [String], tool: String = "pvstore") throws -> TestProcess {
            try TestProcess(
                Binaries.path(tool), arguments + ["--pvhost", control, "--name", name],
                outputPath: directory + "/\(name)-\(UInt32.random(in: 0...UInt32.max)).log")
        }

        /// Runs a guest to its end (two minutes at most).
        func run(_ name: String, _ arguments: [String], tool: String = "pvstore") async throws -> (status: Int32, output: String) {
            let guest = try self.guest(name, arguments, tool: tool)
            guard let status = try await guest.exit(within: .seconds(120)) else { throw TimedOut(what: "\(tool) \(arguments)", after: .seconds(120)) }
            return (status, guest.output)
        }

        func dom0() throws -> XenStoreClient { try XenStoreClient.connect(XenStoreLocation(environment: ["XENSTORED_PATH": xenstore])) }

        func count(_ what: String) -> Int {
            let pid = process.pid
            if what == "fd" { return (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? -1 }
            return ((try? String(contentsOfFile: "/proc/\(pid)/maps", encoding: .utf8)) ?? "").split(separator: "\n").filter { $0.contains("pvhost-dom") }.count
        }

        deinit { if ProcessEnvironment.value("PVKIT_KEEP") == nil { try? FileManager.default.removeItem(atPath: directory) } }
    }

    @Test("a guest process is a domain: it reads its own nodes, writes its data, cannot read another guest's")
    func identity() async throws {
        let host = try await PVHostProcess()
        let watcher = try host.guest("alpha", ["watch", "data"])
        defer { withExtendedLifetime(watcher) {} }
        let dom0 = try host.dom0()
        #expect(try await eventually { try await dom0.directory("/local/domain").count == 1 })
        let alpha = try await dom0.directory("/local/domain")[0]
        #expect(try await dom0.readString(XenStorePath("/local/domain/\(alpha)/name")) == "alpha")
        let beta = try await host.run("beta", ["read", "name", "domid"])
        #expect(beta.status == 0 && beta.output.hasPrefix("beta\n"), "\(beta)")
        let snoop = try await host.run("beta", ["read", "/local/domain/\(alpha)/name"])
        #expect(snoop.status == 1 && snoop.output.contains("EACCES"), "\(snoop)")
        #expect(try await host.run("beta", ["write", "data/x", "1"]).status == 0)
        let status = try await host.run("beta", ["write", "/local/domain/\(alpha)/data/x", "1"])
        #expect(status.status == 1 && status.output.contains("EACCES"))
        // pvhost status names the live guest.
        let text = try await runCommand(Binaries.path("pvhost"), ["status", "--control", host.control]).output
        #expect(text.contains("alpha") && !text.contains("beta"), "beta exited and was reclaimed: \(text)")
    }

    @Test("100 guests killed with SIGKILL mid-watch: no fd, mapping, domain or node left behind")
    func killedGuests() async throws {
        let host = try await PVHostProcess()
        let dom0 = try host.dom0()
        let released = try await dom0.watch(.releaseDomain)
        // One round first, so lazily created things (threads, buffers) exist before counting.
        func round(_ i: Int) async throws {
            let guest = try host.guest("victim-\(i)", ["watch", "data"])
            // Attached: its home is there and it says its watch is in place (a guest killed
            // mid-attach is another test's case).
            #expect(
                try await eventually(within: .seconds(30)) { try await dom0.directory("/local/domain").count == 1 && guest.output.contains("\n") },
                "guest \(i) attached")
            // Some I/O in flight from dom0 to the guest's watch.
            let domid = try await dom0.directory("/local/domain")[0]
            try await dom0.write(XenStorePath("/local/domain/\(domid)/data/ping"), "\(i)")
            #expect(try await guest.stop(with: SIGKILL, within: .seconds(10)) == 128 + SIGKILL)
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
        var events = released.dropFirst().makeAsyncIterator()  // past the registration event
        var seen = 0
        while seen < 101, await events.next() != nil { seen += 1 }
        #expect(seen == 101, "@releaseDomain for every guest")
        #expect(try await dom0.directory("/vm").isEmpty)
    }

    @Test("guests killed while attaching (0–60 ms after they start): every domain made for them is reclaimed")
    func killedMidAttach() async throws {
        let host = try await PVHostProcess()
        let dom0 = try host.dom0()
        for round in 0..<30 {
            let guest = try host.guest("early-\(round)", ["watch", "data"])
            try await Task.sleep(for: .milliseconds(2 * round))
            _ = try await guest.stop(with: SIGKILL, within: .seconds(10))
        }
        let reclaimed = try await eventually(within: .seconds(30)) { try await dom0.directory("/local/domain").isEmpty }
        let left = try await dom0.directory("/local/domain")
        #expect(reclaimed, "domains left: \(left)")
    }

    @Test("with a configuration: named domains get their limits; other names and a second alpha are refused")
    func configured() async throws {
        let host = try await PVHostProcess(config: #"{"domains": [{"name": "alpha", "pages": 512}]}"#)
        let alpha = try host.guest("alpha", ["watch", "data"])
        defer { withExtendedLifetime(alpha) {} }
        let dom0 = try host.dom0()
        #expect(try await eventually { try await dom0.directory("/local/domain").count == 1 })
        let id = try await dom0.directory("/local/domain")[0]
        #expect(try await dom0.readString(XenStorePath("/local/domain/\(id)/memory/static-max")) == "2048", "512 pages of 4 KiB")
        let stranger = try await host.run("mallory", ["read", "name"])
        #expect(stranger.status == 1 && stranger.output.contains("no domain named \"mallory\""), "\(stranger)")
        let twin = try await host.run("alpha", ["read", "name"])
        #expect(twin.status == 1 && twin.output.contains("already running"), "\(twin)")
    }

    @Test("SIGTERM: every guest is told control/shutdown = poweroff, then pvhost exits")
    func shutdown() async throws {
        let host = try await PVHostProcess()
        let guest = try host.guest("alpha", ["watch", "--count", "2", "control/shutdown"])
        // The registration event on the guest's output says its watch is in place.
        #expect(try await eventually(within: .seconds(30)) { guest.output.contains("\n") })
        #expect(guest.output == "control/shutdown\n")
        host.process.child.signal(SIGTERM)
        let status = try await guest.exit(within: .seconds(30))
        #expect(status == 0 && guest.output == "control/shutdown\ncontrol/shutdown\n", "\(guest.output)")
        #expect(try await host.process.exit(within: .seconds(10)) != nil, "pvhost exits after telling its guests")
    }

    @Test("SIGTERM sent the moment the socket appears stops pvhost run and pvhost xenstored (20 starts each, never lost between setup steps)")
    func signalAtOnce() async throws {
        for _ in 0..<20 {
            let host = try await PVHostProcess()
            let ran = try await host.process.stop(within: .seconds(5))
            #expect(ran != nil, "pvhost run outlived its SIGTERM by 5 s")
            #expect(ran.map { $0 < 128 } ?? false, "pvhost run ends by itself, not by the signal's default action: \(String(describing: ran))")

            let daemon = try await XenStoreInteropTests.Daemon()
            let served = try await daemon.process.stop(within: .seconds(5))
            #expect(served != nil, "pvhost xenstored outlived its SIGTERM by 5 s")
            #expect(served.map { $0 < 128 } ?? false, "\(String(describing: served))")
        }
    }

    @Test("a socket file appears only once it accepts: a client connecting the moment it exists is never refused (20 starts of pvhost xenstored)")
    func socketAcceptsOnceVisible() async throws {
        for _ in 0..<20 {
            let daemon = try await XenStoreInteropTests.Daemon()  // returns as soon as the file exists
            #expect(XenStoreInteropTests.CDaemon.accepts(daemon.socket), "connection refused on \(daemon.socket) right after it appeared")
            _ = try await daemon.process.stop(within: .seconds(5))
        }
    }

    @Test("a configured disk: pvblk (a guest process) verifies a pattern against the backing file; a killed pvblk leaves nothing mapped")
    func disk() async throws {
        let image = NSTemporaryDirectory() + "pvkit-disk-\(getpid()).img"
        _ = FileManager.default.createFile(atPath: image, contents: Data(count: 4 << 20))
        defer { unlink(image) }
        let host = try await PVHostProcess(config: #"{"domains": [{"name": "alpha", "disks": [{"devid": 51712, "path": "\#(image)"}]}]}"#)
        let info = try await host.run("alpha", ["info", "--json"], tool: "pvblk")
        #expect(info.status == 0 && info.output.contains(#""sectors":8192"#), "\(info)")
        let verify = try await host.run("alpha", ["verify", "--sector", "100", "--count", "262144", "--backing", image], tool: "pvblk")
        #expect(verify.status == 0 && verify.output.contains("verified 262144 bytes"), "\(verify)")
        // Kill one mid-workload: pvhost reclaims the domain and its disk's mappings.
        let victim = try host.guest("alpha", ["verify", "--count", "4194304"], tool: "pvblk")
        try await Task.sleep(for: .milliseconds(300))
        _ = try await victim.stop(with: SIGKILL, within: .seconds(10))
        let dom0 = try host.dom0()
        #expect(try await eventually { try await dom0.directory("/local/domain").allSatisfy { $0 == "0" } }, "only dom0's home is left")
        // The directory itself may go (ENOENT) or stay empty; any other error is a failure.
        #expect(
            try await eventually {
                do { return try await dom0.directory("/local/domain/0/backend/vbd").isEmpty } catch XenStoreError.noEntry { return true }
            }, "the backend directory went with the domain")
        // And the disk serves a new guest afterwards.
        let again = try await host.run("alpha", ["verify", "--count", "65536", "--backing", image], tool: "pvblk")
        #expect(again.status == 0, "\(again)")
        // pvblk bench: IOPS, throughput and latency percentiles from its histogram.
        let bench = try await host.run("alpha", ["bench", "--seconds", "0.5", "--queue-depth", "8"], tool: "pvblk")
        #expect(bench.status == 0 && bench.output.contains("random reads of 4096 bytes at queue depth 8"), "\(bench)")
        let rate = bench.output.split(separator: "\n").first { $0.hasSuffix("per I/O") }.flatMap { Double($0.split(separator: " ")[0]) } ?? 0
        #expect(rate > 0, "a rate was measured: \(bench.output)")
        #expect(bench.output.contains("latency µs: p50 "), "\(bench)")
        let zeroCopy = try await host.run(
            "alpha",
            [
                "bench", "--seconds", "0.5", "--queue-depth", "2", "--pattern", "sequential",
                "--block-size", "65536", "--zero-copy"
            ], tool: "pvblk")
        #expect(zeroCopy.status == 0 && zeroCopy.output.contains("latency µs: p50 "), "\(zeroCopy)")
        let queued = try await host.run(
            "alpha",
            [
                "bench", "--seconds", "0.5", "--queue-depth", "16", "--io-queue", "--queues", "1",
                "--poll-microseconds", "20"
            ], tool: "pvblk")
        #expect(queued.status == 0 && queued.output.contains("random reads of 4096 bytes at queue depth 16 through an I/O queue, 1 ring(s)"), "\(queued)")
        let queuedRate = queued.output.split(separator: "\n").first { $0.hasSuffix("per I/O") }.flatMap { Double($0.split(separator: " ")[0]) } ?? 0
        #expect(queuedRate > 0 && queued.output.contains("latency µs: p50 "), "\(queued)")
        let queuedWrites = try await host.run(
            "alpha",
            [
                "bench", "--seconds", "0.3", "--write", "--io-queue", "--pattern", "sequential", "--block-size", "65536",
                "--queue-depth", "4"
            ], tool: "pvblk")
        #expect(queuedWrites.status == 0 && queuedWrites.output.contains("sequential writes of 65536 bytes"), "\(queuedWrites)")
        #expect(try await host.run("alpha", ["bench", "--poll-microseconds", "-1"], tool: "pvblk").status == 64, "a bad polling time is refused")
        let tooBig = try await host.run("alpha", ["bench", "--io-queue", "--block-size", "1048576", "--queue-depth", "64"], tool: "pvblk")
        #expect(tooBig.status == 1 && tooBig.output.contains("lower --queue-depth or --block-size"), "\(tooBig)")
        let refused = try await host.run("alpha", ["bench", "--block-size", "100"], tool: "pvblk")
        #expect(refused.status == 64, "\(refused)")
    }

    @Test("pvhost killed mid-workload: every block written before the last completed flush is in the file; pvblk fails cleanly")
    func hostKilledMidWrite() async throws {
        let image = NSTemporaryDirectory() + "pvkit-journal-\(getpid()).img"
        _ = FileManager.default.createFile(atPath: image, contents: Data(count: 16 << 20))
        defer { unlink(image) }
        let host = try await PVHostProcess(config: #"{"domains": [{"name": "alpha", "disks": [{"devid": 51712, "path": "\#(image)"}]}]}"#)
        let guest = try host.guest("alpha", ["journal", "--blocks", "4096", "--flush-every", "4"], tool: "pvblk")
        func durable(_ text: String) -> Int { text.split(separator: "\n").last { $0.hasPrefix("durable ") }.flatMap { Int($0.dropFirst(8)) } ?? 0 }
        #expect(try await eventually(within: .seconds(60)) { durable(guest.output) >= 64 || !guest.isRunning })
        host.process.child.signal(SIGKILL)
        let status = try await guest.exit(within: .seconds(60))
        let output = guest.output
        let acknowledged = durable(output)
        #expect(acknowledged >= 64 && acknowledged < 4096, "killed mid-workload: \(output.suffix(200))")
        #expect(status == 1, "pvblk reports the failure and exits 1: \(output.suffix(300))")
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
        let host = try await PVHostProcess()
        let guest = try host.guest("alpha", ["watch", "data"])
        #expect(try await eventually(within: .seconds(30)) { guest.output.contains("\n") })
        host.process.child.signal(SIGKILL)
        let status = try await guest.exit(within: .seconds(30))
        #expect(status == 1, "\(guest.output)")
        #expect(guest.output.contains("connection"), "\(guest.output)")
    }
}
