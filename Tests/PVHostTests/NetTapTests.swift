import Foundation
#if canImport(Glibc)
    import Glibc
#endif
import Testing
import TestSupport

/// Real Linux traffic over the PV network path: namespace A's stack ↔ TAP ↔ `pvnet tap`
/// (NetFront) ↔ rings ↔ pvhost's NetBack ↔ switch ↔ TAP ↔ namespace B's stack. Everything
/// is made by the test (two network namespaces, addresses in 10.199.0.0/24 inside them) and
/// removed after; nothing is routed out.
@Suite("Linux traffic over netfront/netback (network namespaces, TAP)", .serialized, .timeLimit(.minutes(10)))
struct NetTapTests {
    /// Why this machine cannot run the tier, or nil.
    static var missing: String? {
        if getuid() != 0 { return "not root (network namespaces and TAP devices need it; CI runs as root)" }
        if !FileManager.default.fileExists(atPath: "/dev/net/tun") { return "no /dev/net/tun" }
        for tool in ["/usr/sbin/ip", "/usr/bin/ping", "/usr/bin/python3"] where !FileManager.default.isExecutableFile(atPath: tool) {
            return "\(tool) is missing (scripts/install-deps.sh test installs iproute2, iputils-ping and python3)"
        }
        return nil
    }

    @discardableResult
    static func sh(_ tool: String, _ arguments: [String]) async throws -> (status: Int32, output: String) {
        try await runCommand(tool, arguments)
    }

    /// Two namespaces, pvhost with guest `alpha` (vif 0) and a TAP moved into B, and
    /// `pvnet tap` for alpha in A; addresses 10.199.0.1 (A) and .2 (B).
    final class Lab {
        let suffix = String(UUID().uuidString.prefix(6)).lowercased()
        var a: String { "pvkit-a-\(suffix)" }
        var b: String { "pvkit-b-\(suffix)" }
        var tapA: String { "pvka\(suffix)" }
        var tapB: String { "pvkb\(suffix)" }
        var host: GuestProcessTests.PVHostProcess!
        var bridge: TestProcess?

        init() async throws {
            for ns in [a, b] { try #require(try await NetTapTests.sh("/usr/sbin/ip", ["netns", "add", ns]).status == 0, "ip netns add \(ns)") }
            let config = #"{"domains":[{"name":"alpha","pages":2048,"nics":[{"devid":0}]}],"taps":[{"name":"\#(tapB)","netns":"\#(b)"}]}"#
            host = try await GuestProcessTests.PVHostProcess(config: config)
            for args in [["-n", b, "addr", "add", "10.199.0.2/24", "dev", tapB], ["-n", b, "link", "set", tapB, "up"], ["-n", b, "link", "set", "lo", "up"]] {
                let r = try await NetTapTests.sh("/usr/sbin/ip", args)
                try #require(r.status == 0, "ip \(args.joined(separator: " ")): \(r.output)")
            }
            let bridge = try TestProcess(
                "/usr/sbin/ip",
                [
                    "netns", "exec", a, Binaries.path("pvnet"), "tap", "--pvhost", host.control,
                    "--name", "alpha", "--tap", tapA
                ], outputPath: host.directory + "/bridge.log")
            self.bridge = bridge
            // Its first line says the TAP is up.
            try #require(await eventually(within: .seconds(30)) { bridge.output.contains("bridging") || !bridge.isRunning }, "pvnet tap: \(bridge.output)")
            try #require(bridge.output.contains("bridging"), "pvnet tap: \(bridge.output)")
            for args in [["-n", a, "addr", "add", "10.199.0.1/24", "dev", tapA], ["-n", a, "link", "set", "lo", "up"]] {
                let r = try await NetTapTests.sh("/usr/sbin/ip", args)
                try #require(r.status == 0, "ip \(args.joined(separator: " ")): \(r.output)")
            }
        }

        /// Stops the bridge (SIGTERM, 10 s) and returns what it printed.
        func stopBridge() async throws -> String {
            guard let bridge, bridge.isRunning else { return "" }
            let ended = try await bridge.stop()
            #expect(ended != nil, "pvnet tap outlived its SIGTERM by 10 s")
            return bridge.output
        }

        /// Removes what the lab made (the namespaces; their TAPs and pvhost go with them).
        func remove() async {
            bridge = nil
            host = nil
            for ns in [a, b] { _ = try? await NetTapTests.sh("/usr/sbin/ip", ["netns", "delete", ns]) }
        }
    }

    @Test(
        "ping across the PV path, from 56 bytes to 65 000 (IP fragments), and a 100 MiB TCP stream whose SHA-256 matches end to end",
        .enabled(if: NetTapTests.missing == nil, "needs root, /dev/net/tun, ip, ping and python3 (CI has them)"))
    func linuxTraffic() async throws {
        let lab = try await Lab()
        do { try await traffic(lab) } catch {
            await lab.remove()
            throw error
        }
        await lab.remove()
    }

    func traffic(_ lab: Lab) async throws {
        for size in [56, 1472, 1473, 4000, 9000, 30000, 65000] {
            let r = try await Self.sh("/usr/sbin/ip", ["netns", "exec", lab.a, "ping", "-c", "3", "-i", "0.2", "-W", "3", "-s", "\(size)", "10.199.0.2"])
            #expect(r.status == 0 && r.output.contains("3 received"), "ping -s \(size): \(r.output)")
        }
        // 100 MiB from A to B over TCP; each side hashes what it sent or got.
        let server = """
            import hashlib, socket, sys
            s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("10.199.0.2", 5201)); s.listen(1)
            print("ready", flush=True)
            c, _ = s.accept(); h = hashlib.sha256(); n = 0
            while True:
                b = c.recv(1 << 20)
                if not b: break
                h.update(b); n += len(b)
            print(n, h.hexdigest(), flush=True)
            """
        let client = """
            import hashlib, random, socket
            block = random.Random(42).randbytes(1 << 20); h = hashlib.sha256()
            c = socket.create_connection(("10.199.0.2", 5201), timeout=60)
            for i in range(100):
                chunk = bytes([i]) + block[1:]
                c.sendall(chunk); h.update(chunk)
            c.close(); print(100 << 20, h.hexdigest(), flush=True)
            """
        let receiver = try TestProcess(
            "/usr/sbin/ip", ["netns", "exec", lab.b, "/usr/bin/python3", "-c", server],
            outputPath: lab.host.directory + "/receiver.log")
        try #require(await eventually(within: .seconds(30)) { receiver.output.contains("ready") || !receiver.isRunning }, "TCP receiver: \(receiver.output)")
        let sent = try await Self.sh("/usr/sbin/ip", ["netns", "exec", lab.a, "/usr/bin/python3", "-c", client])
        #expect(try await receiver.exit(within: .seconds(60)) == 0, "TCP receiver: \(receiver.output)")
        let got = receiver.output
        #expect(sent.status == 0, "TCP sender: \(sent.output)")
        let sentLine = sent.output.split(separator: "\n").last.map(String.init) ?? ""
        let gotLine = got.split(separator: "\n").last.map(String.init) ?? ""
        #expect(sentLine.hasPrefix("104857600 ") && gotLine == sentLine, "sent \(sentLine), received \(gotLine)")
        let counters = try await lab.stopBridge()
        #expect(counters.contains("lost 0"), "pvnet tap: \(counters)")
    }
}

/// `pvhost capture`: a switch port's frames in a pcap file that Wireshark's tshark reads.
@Suite("pvhost capture (pcap, read by tshark)", .serialized, .timeLimit(.minutes(5)))
struct NetCaptureTests {
    @Test(
        "frames between two guest processes, captured on one vif, read back by tshark with their addresses and type",
        .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/tshark"), "/usr/bin/tshark is missing (scripts/install-deps.sh test installs it)"))
    func capture() async throws {
        let config =
            #"{"domains":[{"name":"alpha","pages":2048,"nics":[{"devid":0,"mac":"00:16:3e:00:00:0a"}]},{"name":"beta","pages":2048,"nics":[{"devid":0,"mac":"00:16:3e:00:00:0b"}]}]}"#
        let host = try await GuestProcessTests.PVHostProcess(config: config)
        let file = host.directory + "/beta.pcap"
        let receiver = try host.guest("beta", ["recv", "--count", "5"], tool: "pvnet")
        // Wait for beta (domain 1, attached first) to be on the switch ("listening"), then capture its vif.
        try #require(await eventually(within: .seconds(30)) { receiver.output.contains("listening") || !receiver.isRunning }, "pvnet recv: \(receiver.output)")
        // Until SIGINT: the capture is on once pvhost has made the file (a fixed duration lost
        // every frame when a loaded machine started pvnet send late).
        let capture = try TestProcess(
            Binaries.path("pvhost"), ["capture", "vif1.0", file, "--control", host.control], outputPath: host.directory + "/capture.log")
        try #require(await eventually(within: .seconds(30)) { FileManager.default.fileExists(atPath: file) }, "pvhost capture: \(capture.output)")
        let sent = try await host.run("alpha", ["send", "--to", "00:16:3e:00:00:0b", "--count", "5", "--size", "300"], tool: "pvnet")
        #expect(sent.status == 0, "pvnet send: \(sent.output)")
        #expect(try await receiver.exit(within: .seconds(30)) == 0, "pvnet recv: \(receiver.output)")
        #expect(try await capture.stop(with: SIGINT, within: .seconds(30)) == 0, "pvhost capture: \(capture.output)")
        let read = try await NetTapTests.sh(
            "/usr/bin/tshark", ["-r", file, "-T", "fields", "-e", "eth.src", "-e", "eth.dst", "-e", "eth.type", "-e", "frame.len"])
        let lines = read.output.split(separator: "\n").filter { $0.contains("00:16:3e:00:00:0a") }
        #expect(read.status == 0 && lines.count == 5, "tshark: \(read.output)")
        #expect(lines.allSatisfy { $0.split(separator: "\t").map(String.init) == ["00:16:3e:00:00:0a", "00:16:3e:00:00:0b", "0x88b5", "300"] }, "\(lines)")
        // A port that does not exist: refused with the list of ports.
        let bad = try await NetTapTests.sh(
            Binaries.path("pvhost"),
            ["capture", "vif9.0", file, "--control", host.control, "--seconds", "0"])
        #expect(bad.status == 1 && bad.output.contains("no switch port named vif9.0") && bad.output.contains("(ports:"), "\(bad.output)")
    }
}
