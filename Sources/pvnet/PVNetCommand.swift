import ArgumentParser
import Foundation
import NetFront
import PVPlatform
import PVSystem
import XenABI

/// `pvnet`: a guest tool on NetFront. It attaches to a pvhost as a domain and uses that
/// domain's network interface over the PV network protocol. Exit status: 0 success, 1 a
/// connection error or timeout, 64 bad usage.
@main
struct PVNetCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pvnet",
        abstract: "Use a network interface through Xen's PV network protocol, as a guest of pvhost.",
        subcommands: [Info.self, Send.self, Receive.self, Bench.self, Tap.self])
}

struct Connection: ParsableArguments {
    @Option(help: "pvhost's control socket.") var pvhost: String = "/run/pvhost/control"
    @Option(help: "The guest's domain name (pvhost's configuration gives it its interfaces).") var name: String?
    @Flag(help: "Run in this real Xen domain instead (/dev/xen/gntalloc, evtchn, xenbus; as root).") var xen = false
    @Option(help: "The interface's vif number.") var device = 0
    @Option(help: "Guest memory in pages when pvhost runs without a configuration (a queue takes ~520).") var pages = 2048
    @Option(help: "Queues to ask for.") var queues = 1

    func validate() throws {
        if !xen && name == nil { throw ValidationError("--name is needed with pvhost (or --xen in a real Xen domain)") }
    }

    var options: NetFrontOptions {
        var o = NetFrontOptions()
        o.queues = queues
        if xen {
            // gntalloc allows 1024 pages per process by default: 2 × (2 + 128 + 128) per queue fits.
            o.txBuffers = 128
            o.rxBuffers = 128
        }
        return o
    }

    /// Attaches as `name` (or uses this Xen domain) and connects the interface; prints a clear
    /// error and exits 1 on failure.
    func open(as domain: String? = nil) async throws -> (NetFront, any PVPlatform) {
        do {
            let platform: any PVPlatform =
                xen
                ? try await LinuxXenPlatform.open()
                : try ReferencePlatform.attach(socket: pvhost, name: domain ?? name ?? "", pages: pages)
            let nic = try await NetFront.connect(platform: platform, store: try platform.xenstore(), id: device, options: options)
            return (nic, platform)
        } catch {
            fail("\(domain ?? name ?? "this domain"): \(error)")
        }
    }
}

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("pvnet: \(message)\n".utf8))
    exit(1)
}

/// A MAC address argument: `xx:xx:xx:xx:xx:xx` or `broadcast`.
extension MACAddress: ExpressibleByArgument {
    public init?(argument: String) {
        if argument == "broadcast" { self = .broadcast } else { self.init(argument) }
    }
}

/// A test frame: ethertype 0x88B5 (local experimental), a sequence number, then a pattern.
func testFrame(to destination: MACAddress, from source: MACAddress, size: Int, sequence: Int) -> [UInt8] {
    var frame = destination.bytes + source.bytes + [0x88, 0xB5]
    frame += withUnsafeBytes(of: UInt64(sequence).bigEndian) { Array($0) }
    frame += (0..<max(0, size - frame.count)).map { UInt8(truncatingIfNeeded: $0 &+ sequence) }
    return Array(frame.prefix(max(size, 14)))
}

/// The negotiated features as one line (`pvnet info`, `pvnet tap`).
func describe(_ f: NetNegotiation.Features) -> String {
    "queues \(f.queues), split event channels \(f.splitEventChannels ? "yes" : "no"), scatter-gather \(f.scatterGather ? "yes" : "no"), "
        + "GSO TCPv4 \(f.gsoTCPv4 ? "yes" : "no"), TCPv6 \(f.gsoTCPv6 ? "yes" : "no"), checksum offload \(f.checksumOffload ? "yes" : "no")"
}

extension PVNetCommand {
    struct Info: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print the interface's address, MTU and negotiated features.")
        @OptionGroup var connection: Connection
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            let (nic, platform) = try await connection.open()
            let i = nic.info, f = i.features
            if json {
                print(
                    #"{"gsoTCPv4":\#(f.gsoTCPv4),"gsoTCPv6":\#(f.gsoTCPv6),"linkUp":\#(i.linkUp),"mac":"\#(i.mac)","mtu":\#(i.mtu),"queues":\#(f.queues),"scatterGather":\#(f.scatterGather),"splitEventChannels":\#(f.splitEventChannels)}"#
                )
            } else {
                print("vif \(connection.device) of domain \(platform.domain.rawValue): \(i.mac), mtu \(i.mtu), link \(i.linkUp ? "up" : "down")")
                print(describe(f))
            }
            await nic.close()
        }
    }

    struct Send: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Send test frames (ethertype 0x88B5, a sequence number, a pattern).")
        @OptionGroup var connection: Connection
        @Option(help: "Destination MAC address, or `broadcast`.") var to: MACAddress
        @Option(help: "Frames to send.") var count = 1
        @Option(help: "Bytes per frame, header included (14…65535).") var size = 64

        func run() async throws {
            let (nic, _) = try await connection.open()
            let frames = (0..<count).map { NetFrame(bytes: testFrame(to: to, from: nic.info.mac, size: size, sequence: $0)) }
            do { try await nic.send(frames) } catch { fail("\(error)") }
            print("sent \(count) frames of \(size) bytes to \(to)")
            // Stay until the backend took them off the ring.
            try await Task.sleep(for: .milliseconds(200))
            await nic.close()
        }
    }

    struct Receive: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "recv", abstract: "Receive frames and print one line each.")
        @OptionGroup var connection: Connection
        @Option(help: "Frames to wait for.") var count = 1
        @Option(help: "Give up after this many seconds (exit 1).") var timeout: Double = 10
        @Flag(help: "Print each frame's bytes in hex too.") var hex = false

        func run() async throws {
            let (nic, _) = try await connection.open()
            // Ready: tools waiting on this line know frames sent from now on are seen.
            print("listening on \(nic.info.mac)")
            fflush(nil)
            var received = 0
            let deadline = ContinuousClock.now + .milliseconds(Int(timeout * 1000))
            while received < count {
                let frames = nic.poll(max: count - received)
                if frames.isEmpty {
                    guard ContinuousClock.now < deadline else { fail("\(received) of \(count) frames in \(timeout) s") }
                    try await Task.sleep(for: .milliseconds(2))
                    continue
                }
                for frame in frames {
                    let type = frame.bytes.count >= 14 ? String(Int(frame.bytes[12]) << 8 | Int(frame.bytes[13]), radix: 16) : "?"
                    var line =
                        "\(frame.bytes.count) bytes from \(frame.source.map { "\($0)" } ?? "?") to \(frame.destination.map { "\($0)" } ?? "?") type 0x\(type)"
                    if hex { line += " " + frame.bytes.map { String(format: "%02x", $0) }.joined() }
                    print(line)
                }
                received += frames.count
            }
            let s = nic.statistics
            if !s.dropped.isEmpty {
                print("dropped (backend broke a rule): \(s.dropped.map { "\($0.key.rawValue) \($0.value)" }.sorted().joined(separator: ", "))")
            }
            await nic.close()
        }
    }

    struct Bench: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Measure frames per second guest to guest through pvhost's switch.",
            discussion: "Attaches as --name (sender) and --peer (receiver), both with vif --device, and streams frames between them.")
        @OptionGroup var connection: Connection
        @Option(help: "The receiving domain.") var peer: String
        @Option(help: "Bytes per frame (14…65535).") var size = 64
        @Option(help: "Frames per send call.") var batch = 128
        @Option(help: "Seconds to run.") var seconds: Double = 3
        @Flag(help: "Send 64 KiB-class frames as GSO TCPv4 segments (MSS 1448).") var gso = false
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            let (sender, _) = try await connection.open()
            let (receiver, _) = try await connection.open(as: peer)
            let result = try await NetBenchmark.run(sender: sender, receiver: receiver, size: size, batch: batch, seconds: seconds, gso: gso)
            if json {
                print(
                    #"{"frames":\#(result.frames),"gbits":\#(result.gbits),"notificationsPerFrame":\#(result.notificationsPerFrame),"pps":\#(result.pps),"seconds":\#(result.seconds),"size":\#(size)}"#
                )
            } else {
                print(
                    String(
                        format: "%d frames of %d bytes in %.2f s: %.0f frames/s, %.2f Gbit/s, %.4f guest notifications per frame",
                        result.frames, size, result.seconds, result.pps, result.gbits, result.notificationsPerFrame))
            }
            await sender.close()
            await receiver.close()
        }
    }

    struct Tap: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Bridge the interface to a TAP device in this network namespace (Linux's stack over the PV path).",
            discussion: "Runs until SIGINT or SIGTERM. Example: ip netns exec lab pvnet tap --name alpha --tap pv0; ip -n lab addr add 10.0.0.1/24 dev pv0")
        @OptionGroup var connection: Connection
        @Option(help: "The TAP device to create (or open).") var tap: String

        func run() async throws {
            let signals: TerminationSignals
            do { signals = try TerminationSignals.catchSignals() } catch { fail("\(error)") }
            let (nic, _) = try await connection.open()
            let bridge: TapBridge
            do { bridge = try TapBridge(nic: nic, tap: tap) } catch { fail("\(error)") }
            print("bridging vif \(connection.device) (\(nic.info.mac)) to \(tap): \(describe(nic.info.features))")
            fflush(nil)
            _ = try? await signals.next()
            await bridge.stop()
            print(
                "to the rings \(bridge.toGuestNetwork.load(ordering: .relaxed)), to Linux \(bridge.toLinux.load(ordering: .relaxed)), lost \(bridge.lost.load(ordering: .relaxed))"
            )
            await nic.close()
        }
    }
}
