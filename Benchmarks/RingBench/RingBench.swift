import ArgumentParser
import Dispatch
import Foundation
import PVSystem
import XenABI
import XenRing

/// The ring benchmark: the Swift ring against a C harness built on Xen's ring.h, side by
/// side in one run, plus a printout of the ABI facts.
@main
struct RingBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ring-bench",
        abstract: "Benchmark PVKit's shared ring against Xen's ring.h, and print the ABI facts.",
        discussion: """
            Examples:
              ring-bench abi                 ring geometry and wire sizes
              ring-bench run                 the full benchmark (build with -c release)
              ring-bench run --quick         one short round of each case
            """,
        subcommands: [ABI.self, Run.self, Peer.self])
}

enum ProtocolChoice: String, ExpressibleByArgument, CaseIterable {
    case blkif, netif

    var slotBytes: Int { self == .blkif ? BlkifRing().slotSize : NetifTxRing().slotSize }
}

enum Mode: String, ExpressibleByArgument, CaseIterable {
    case threads, processes
}

extension RingBench {
    struct ABI: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print ring geometries and wire sizes.")

        func run() {
            print("Xen public ABI as PVKit encodes it (checked against /usr/include/xen by make test)")
            print("")
            print("ring            slot   entries by page order 0 1 2 3 4")
            let rings: [(String, Int)] = [
                ("blkif x86_64", BlkifRing().slotSize), ("blkif x86_32", BlkifRing(abi: .x86_32).slotSize),
                ("netif tx", NetifTxRing().slotSize), ("netif rx", NetifRxRing().slotSize),
                ("netif ctrl", NetifControlRing().slotSize)
            ]
            for (name, slot) in rings {
                let counts = (0...4).map { String(RingGeometry(slotSize: slot, pageOrder: $0)!.entryCount) }
                print(
                    name.padding(toLength: 16, withPad: " ", startingAt: 0) + String(slot).padding(toLength: 7, withPad: " ", startingAt: 0)
                        + counts.joined(separator: " "))
            }
            print("")
            let sizes: [(String, Int)] = [
                ("blkif_request", BlkifLayout.x86_64.requestSize), ("blkif_request (x86_32)", BlkifLayout.x86_32.requestSize),
                ("blkif_response", BlkifLayout.x86_64.responseSize), ("netif_tx_request", NetifTxRequest.wireSize),
                ("netif_rx_response", NetifRxResponse.wireSize), ("netif_extra_info", NetifExtraInfo.wireSize),
                ("xsd_sockmsg", XsHeader.wireSize), ("xenstore_domain_interface", XenstoreDomainInterface.size),
                ("grant_entry_v1", GrantEntryV1.wireSize)
            ]
            for (name, size) in sizes { print(name.padding(toLength: 28, withPad: " ", startingAt: 0) + "\(size) bytes") }
            print("")
            print("xenbus states: " + XenbusState.allCases.map { "\($0.rawValue) \($0)" }.joined(separator: ", "))
            print("Xen ELF notes: " + XenElfNoteType.allCases.prefix(20).map { "\($0.rawValue) \($0)" }.joined(separator: ", "))
        }
    }

    struct Run: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run Swift and C ring.h side by side and print requests/s and the ratio Swift/C.")

        @Flag(help: "One short round of each case (for make demo).")
        var quick = false

        @Option(help: "Requests per round.")
        var count: UInt64?

        @Option(help: "Rounds per case; medians are reported.")
        var rounds: Int?

        func run() throws {
            let count = self.count ?? (quick ? 200_000 : 2_000_000)
            let rounds = self.rounds ?? (quick ? 1 : 7)
            guard let cHarness = siblingExecutable("ring-bench-c") else {
                throw ValidationError("ring-bench-c is not built beside ring-bench: run `swift build -c release --product ring-bench-c`")
            }
            #if DEBUG
                print("warning: a debug build; the figures that count come from `swift build -c release`")
            #endif
            print("one request/response pair per request, \(count) requests per round, median of \(rounds) rounds, A/B alternating")
            print("")
            print("ring           mode        Swift req/s    C req/s   Swift/C   events/req Swift  C")
            for proto in ProtocolChoice.allCases {
                for mode in Mode.allCases {
                    var swift: [Measurement] = []
                    var c: [Measurement] = []
                    for _ in 0..<rounds {
                        swift.append(try measureSwift(proto: proto, mode: mode, count: count))
                        c.append(try measureC(cHarness, proto: proto, mode: mode, count: count))
                    }
                    let s = median(swift), b = median(c)
                    let name = "\(proto) (\(proto.slotBytes) B)"
                    print(
                        name.padding(toLength: 15, withPad: " ", startingAt: 0)
                            + mode.rawValue.padding(toLength: 10, withPad: " ", startingAt: 0)
                            + format(s.rate, width: 13) + format(b.rate, width: 11)
                            + String(format: "%9.2f×", s.rate / b.rate)
                            + String(format: "%13.4f %9.4f", s.eventsPerRequest, b.eventsPerRequest))
                }
            }
        }
    }

    /// The Swift back end in its own process, for `run`'s processes mode.
    struct Peer: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Internal: the Swift back end of a processes round.")
        @Option var proto: ProtocolChoice
        @Option var memfd: Int32
        @Option var bytes: Int
        @Option var frontEvt: Int32
        @Option var backEvt: Int32
        @Option var readyEvt: Int32
        @Option var count: UInt64

        func run() throws {
            let region = try SharedMemoryRegion(mapping: memfd, byteCount: bytes)
            let wake = EventFD(adopting: frontEvt), sleep = EventFD(adopting: backEvt), ready = EventFD(adopting: readyEvt)
            let ringBytes = region.slice(offset: 0, count: XenPage.size)
            try ready.notify()
            let events =
                switch proto {
                case .blkif: try runBack(BlkifWorkload(), region: ringBytes, count: count, wake: wake, sleep: sleep)
                case .netif: try runBack(NetifTxWorkload(), region: ringBytes, count: count, wake: wake, sleep: sleep)
                }
            // The events count goes back through the page after the ring.
            region.bytes.storeBytes(of: events, toByteOffset: XenPage.size, as: UInt64.self)
        }
    }
}

struct Measurement {
    let rate: Double
    let eventsPerRequest: Double
}

func median(_ values: [Measurement]) -> Measurement {
    let sorted = values.sorted { $0.rate < $1.rate }
    return sorted[sorted.count / 2]
}

func format(_ rate: Double, width: Int) -> String {
    let text = rate >= 1e6 ? String(format: "%.2fM", rate / 1e6) : String(format: "%.0fK", rate / 1e3)
    return String(repeating: " ", count: max(0, width - text.count)) + text
}

func siblingExecutable(_ name: String) -> String? {
    guard let me = ChildProcess.currentExecutablePath() else { return nil }
    let path = URL(fileURLWithPath: me).deletingLastPathComponent().appendingPathComponent(name).path
    return FileManager.default.isExecutableFile(atPath: path) ? path : nil
}

func measureSwift(proto: ProtocolChoice, mode: Mode, count: UInt64) throws -> Measurement {
    switch proto {
    case .blkif: try measureSwift(BlkifWorkload(), proto: proto, mode: mode, count: count)
    case .netif: try measureSwift(NetifTxWorkload(), proto: proto, mode: mode, count: count)
    }
}

func measureSwift<W: Workload>(_ w: W, proto: ProtocolChoice, mode: Mode, count: UInt64) throws -> Measurement {
    let inheritable = mode == .processes
    let region = try SharedMemoryRegion(creating: "ring-bench", byteCount: 2 * XenPage.size, inheritable: inheritable)
    let frontEvent = try EventFD(inheritable: inheritable), backEvent = try EventFD(inheritable: inheritable)
    let ringBytes = region.slice(offset: 0, count: XenPage.size)
    // The back end attaches to an initialised ring, as in Xen.
    _ = try FrontRing(initializing: ringBytes, protocol: w.ring)
    let clock = ContinuousClock()
    switch mode {
    case .threads:
        let backResult = BackResult()
        let group = DispatchGroup()
        let start = clock.now
        DispatchQueue.global().async(group: group) {
            // The region (Sendable, shared by design) crosses threads; its ring bytes are sliced on each side.
            let backBytes = region.slice(offset: 0, count: XenPage.size)
            backResult.set(Result { try runBack(w, region: backBytes, count: count, wake: frontEvent, sleep: backEvent) })
        }
        let frontEvents = try runFront(w, region: ringBytes, count: count, wake: backEvent, sleep: frontEvent)
        group.wait()
        let elapsed = clock.now - start
        let backEvents = try backResult.get()
        return Measurement(rate: Double(count) / elapsed.seconds, eventsPerRequest: Double(frontEvents + backEvents) / Double(count))
    case .processes:
        let ready = try EventFD(inheritable: true)
        let child = try ChildProcess(
            path: ChildProcess.currentExecutablePath()!,
            arguments: [
                "peer", "--proto", proto.rawValue, "--memfd", "\(region.fileDescriptor)", "--bytes", "\(region.byteCount)",
                "--front-evt", "\(frontEvent.fileDescriptor)", "--back-evt", "\(backEvent.fileDescriptor)",
                "--ready-evt", "\(ready.fileDescriptor)", "--count", "\(count)"
            ])
        try ready.wait()
        let start = clock.now
        let frontEvents = try runFront(w, region: ringBytes, count: count, wake: backEvent, sleep: frontEvent)
        let elapsed = clock.now - start
        let status = try child.waitForExit()
        guard status == 0 else { throw WorkloadFailure(description: "the Swift peer exited with status \(status)") }
        let backEvents = region.bytes.load(fromByteOffset: XenPage.size, as: UInt64.self)
        return Measurement(rate: Double(count) / elapsed.seconds, eventsPerRequest: Double(frontEvents + backEvents) / Double(count))
    }
}

/// Carries the back thread's result to the front thread (written once, read after `group.wait()`).
/// The back end's outcome, set on its thread, read after the join.
final class BackResult: Sendable {
    private let result = Locked<Result<UInt64, any Error>?>(nil)
    func set(_ value: Result<UInt64, any Error>) { result.withLock { $0 = value } }
    func get() throws -> UInt64 { try result.withLock { $0 }!.get() }
}

func measureC(_ harness: String, proto: ProtocolChoice, mode: Mode, count: UInt64) throws -> Measurement {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: harness)
    process.arguments = ["run", "--proto", proto.rawValue, "--mode", mode.rawValue, "--count", "\(count)"]
    let pipe = Pipe()
    process.standardOutput = pipe
    try process.run()
    let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    process.waitUntilExit()
    guard process.terminationStatus == 0 else { throw WorkloadFailure(description: "ring-bench-c failed: \(output)") }
    var fields: [String: Double] = [:]
    for pair in output.split(whereSeparator: \.isWhitespace) {
        let parts = pair.split(separator: "=")
        if parts.count == 2 { fields[String(parts[0])] = Double(parts[1]) }
    }
    guard let seconds = fields["seconds"], let front = fields["front_events"], let back = fields["back_events"] else {
        throw WorkloadFailure(description: "unreadable ring-bench-c output: \(output)")
    }
    return Measurement(rate: Double(count) / seconds, eventsPerRequest: (front + back) / Double(count))
}

extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}
