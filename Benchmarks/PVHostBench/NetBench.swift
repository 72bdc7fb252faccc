import Foundation
#if canImport(Glibc)
    import Glibc
#endif
import NetFront
import PVPlatform

extension PVHostBench {
    /// NetFront ↔ pvhost's netback and switch: frames guest to guest (64 bytes: frames per
    /// second against the 1 Mpps target; 1500 bytes and 64 KiB GSO segments: Gbit/s), with
    /// notifications per frame from both guests and the backend; then TCP between two network
    /// namespaces over `pvnet tap` against the same namespaces joined by a veth pair (iperf3,
    /// side by side; needs root and iperf3).
    static func net(quick: Bool, runs: Int) async throws {
        // pvhost in its own process, as in use; both guests (sender and receiver) in this one.
        let me = URL(fileURLWithPath: (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0])
        let pvhost = me.deletingLastPathComponent().appendingPathComponent("pvhost").path
        guard FileManager.default.isExecutableFile(atPath: pvhost) else {
            print("netfront benchmark: skipped (build pvhost next to pvhost-bench: swift build -c release)")
            return
        }
        let directory = NSTemporaryDirectory() + "pvhost-bench-net-\(getpid())"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let config = #"{"domains":[{"name":"sender","pages":2048,"nics":[{"devid":0}]},{"name":"receiver","pages":2048,"nics":[{"devid":0}]}]}"#
        try config.write(toFile: directory + "/config.json", atomically: true, encoding: .utf8)
        let control = directory + "/control"
        let host = try start(pvhost, ["run", directory + "/config.json", "--control", control, "--xenstore", directory + "/xs"])
        defer { kill(host.processIdentifier, SIGTERM); host.waitUntilExit() }
        for _ in 0..<200 where !FileManager.default.fileExists(atPath: control) { usleep(10_000) }

        var nics: [NetFront] = []
        for name in ["sender", "receiver"] {
            let guest = try ReferencePlatform.attach(socket: control, name: name)
            nics.append(try await NetFront.connect(platform: guest, store: try guest.xenstore(), id: 0))
        }
        let seconds = quick ? 0.5 : 2.0
        print("")
        print("netfront → pvhost netback + switch → netfront, guest to guest (pvhost its own process), medians of \(runs) runs of \(seconds) s")
        print("                                           frames/s      Gbit/s   notifications per frame: guests, backend")
        var batched: [Int: [Double]] = [:]
        for (label, size, batch, gso, receiving) in [
            ("64-byte frames", 64, 128, false, NetBenchmark.Receiving.batches(max: 4096)),
            ("64-byte frames, for await in frames", 64, 128, false, .frames),
            ("1500-byte frames", 1500, 64, false, .batches(max: 4096)),
            ("1500-byte frames, for await in frames", 1500, 64, false, .frames),
            ("64 KiB GSO TCP segments", 65535, 16, true, .batches(max: 4096))
        ] {
            var results: [(NetBenchmark.Result, Double, Double)] = []
            for _ in 0..<runs {
                let backend0 = try ReferencePlatform.status(socket: control).notificationsSent
                let result = try await NetBenchmark.run(
                    sender: nics[0], receiver: nics[1], size: size, batch: batch, seconds: seconds, gso: gso, receiving: receiving)
                let backend = Double(try ReferencePlatform.status(socket: control).notificationsSent - backend0) / Double(max(result.frames, 1))
                results.append((result, result.notificationsPerFrame, backend))
            }
            let median = results.sorted { $0.0.pps < $1.0.pps }[results.count / 2]
            // The frame-at-a-time rows as a ratio of the batched row of the same size (run just before).
            var versus = ""
            if case .frames = receiving, let base = batched[size] {
                versus = String(format: "   %.2f× of receive(max:)", median.0.pps / base.sorted()[base.count / 2])
            } else {
                batched[size] = results.map(\.0.pps)
            }
            print(
                label.padding(toLength: 40, withPad: " ", startingAt: 0)
                    + String(format: " %10.0f  %10.2f   %.5f, %.5f", median.0.pps, median.0.gbits, median.1, median.2) + versus)
        }
        for nic in nics { await nic.close() }
        try tcpAgainstVeth(quick: quick, runs: runs)
    }

    /// TCP throughput (iperf3, one stream) between two namespaces over the PV path — A's
    /// stack ↔ TAP ↔ `pvnet tap` ↔ rings ↔ netback ↔ switch ↔ TAP ↔ B's stack — and between
    /// two namespaces joined by a veth pair, alternated run by run.
    static func tcpAgainstVeth(quick: Bool, runs: Int) throws {
        print("")
        let tools = ["/usr/sbin/ip", "/usr/bin/iperf3"]
        if getuid() != 0 || tools.contains(where: { !FileManager.default.isExecutableFile(atPath: $0) }) {
            print("TCP over pvnet tap vs veth: skipped (needs root, iproute2 and iperf3: `make bench` installs them)")
            return
        }
        let me = URL(fileURLWithPath: (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0])
        let pvhost = me.deletingLastPathComponent().appendingPathComponent("pvhost").path
        let pvnet = me.deletingLastPathComponent().appendingPathComponent("pvnet").path
        guard FileManager.default.isExecutableFile(atPath: pvhost), FileManager.default.isExecutableFile(atPath: pvnet) else {
            print("TCP over pvnet tap vs veth: skipped (build pvhost and pvnet next to pvhost-bench: swift build -c release)")
            return
        }
        let tag = String(getpid() % 100_000)
        let (a, b, va, vb) = ("pvbench-a\(tag)", "pvbench-b\(tag)", "pvbench-va\(tag)", "pvbench-vb\(tag)")
        let (tapA, tapB) = ("pvba\(tag)", "pvbb\(tag)")
        func ip(_ arguments: String...) { _ = run("/usr/sbin/ip", Array(arguments)) }
        for ns in [a, b, va, vb] { ip("netns", "add", ns) }
        defer { for ns in [a, b, va, vb] { ip("netns", "delete", ns) } }
        // The PV path: pvhost (its own process, as in use) with a TAP moved into B; pvnet tap in A.
        let directory = NSTemporaryDirectory() + "pvhost-bench-tcp-\(getpid())"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let config = #"{"domains":[{"name":"alpha","pages":2048,"nics":[{"devid":0}]}],"taps":[{"name":"\#(tapB)","netns":"\#(b)"}]}"#
        try config.write(toFile: directory + "/config.json", atomically: true, encoding: .utf8)
        let host = try start(pvhost, ["run", directory + "/config.json", "--control", directory + "/control", "--xenstore", directory + "/xs"])
        defer { kill(host.processIdentifier, SIGTERM); host.waitUntilExit() }
        for _ in 0..<200 where !FileManager.default.fileExists(atPath: directory + "/control") { usleep(10_000) }
        ip("-n", b, "addr", "add", "10.198.0.2/24", "dev", tapB)
        ip("-n", b, "link", "set", tapB, "up")
        let bridge = try start("/usr/sbin/ip", ["netns", "exec", a, pvnet, "tap", "--pvhost", directory + "/control", "--name", "alpha", "--tap", tapA])
        defer { kill(bridge.processIdentifier, SIGTERM); bridge.waitUntilExit() }
        for _ in 0..<200 where run("/usr/sbin/ip", ["-n", a, "link", "show", tapA]) != 0 { usleep(10_000) }
        usleep(200_000)
        ip("-n", a, "addr", "add", "10.198.0.1/24", "dev", tapA)
        // The baseline: the same addresses on a veth pair between two other namespaces.
        ip("link", "add", "pvbv\(tag)a", "netns", va, "type", "veth", "peer", "name", "pvbv\(tag)b", "netns", vb)
        ip("-n", va, "addr", "add", "10.198.0.1/24", "dev", "pvbv\(tag)a")
        ip("-n", vb, "addr", "add", "10.198.0.2/24", "dev", "pvbv\(tag)b")
        for ns in [a, b, va, vb] { ip("-n", ns, "link", "set", "lo", "up") }
        ip("-n", va, "link", "set", "pvbv\(tag)a", "up")
        ip("-n", vb, "link", "set", "pvbv\(tag)b", "up")
        let duration = quick ? 2 : 5
        func iperf(client: String, server: String) throws -> Double? {
            let listener = try start("/usr/sbin/ip", ["netns", "exec", server, "iperf3", "-s", "-1", "-B", "10.198.0.2"])
            defer { kill(listener.processIdentifier, SIGKILL); listener.waitUntilExit() }
            usleep(300_000)
            let output = capture("/usr/sbin/ip", ["netns", "exec", client, "iperf3", "-c", "10.198.0.2", "-t", "\(duration)", "-J"])
            guard let data = output.data(using: .utf8), let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
                let end = json["end"] as? [String: Any], let received = end["sum_received"] as? [String: Any],
                let bits = received["bits_per_second"] as? Double
            else { return nil }
            return bits / 1e9
        }
        var pv: [Double] = [], veth: [Double] = []
        for _ in 0..<max(1, runs / 2) {
            if let g = try iperf(client: a, server: b) { pv.append(g) }
            if let g = try iperf(client: va, server: vb) { veth.append(g) }
        }
        guard !pv.isEmpty, !veth.isEmpty else {
            print("TCP over pvnet tap vs veth: iperf3 gave no result (pv \(pv), veth \(veth))")
            return
        }
        let pvMedian = pv.sorted()[pv.count / 2], vethMedian = veth.sorted()[veth.count / 2]
        print(
            "TCP, one iperf3 stream, \(duration) s, medians of \(pv.count): over pvnet tap \(String(format: "%.2f", pvMedian)) Gbit/s; "
                + "veth pair \(String(format: "%.2f", vethMedian)) Gbit/s; ratio \(String(format: "%.3f", pvMedian / vethMedian))×")
    }

    @discardableResult
    static func run(_ tool: String, _ arguments: [String]) -> Int32 {
        guard let process = try? start(tool, arguments, quiet: true) else { return -1 }
        process.waitUntilExit()
        return process.terminationStatus
    }

    static func start(_ tool: String, _ arguments: [String], quiet: Bool = true) throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: tool)
        process.arguments = arguments
        if quiet {
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
        }
        try process.run()
        return process
    }

    static func capture(_ tool: String, _ arguments: [String]) -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: tool)
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        guard (try? process.run()) != nil else { return "" }
        let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        return output
    }
}
