import Foundation
import PVPlatform
import Testing
import TestSupport

/// What the lab needs from this machine.
enum XenLab {
    /// Why the lab cannot run here, or nil: QEMU and the static binaries (make test builds them).
    static var missing: String? {
        if !FileManager.default.isExecutableFile(atPath: "/usr/bin/qemu-system-x86_64") {
            return "qemu-system-x86_64 is missing (scripts/install-deps.sh test installs qemu-system-x86)"
        }
        for name in ["pvstore", "pvblk", "pvnet"]
        where !FileManager.default.fileExists(atPath: XenLabTests.root.appendingPathComponent(".build-static/release/\(name)").path) {
            return
                ".build-static/release/\(name) is missing (make test builds it: swift build -c release --build-path .build-static -Xswiftc -static-executable --product \(name))"
        }
        return nil
    }

}

/// The frontends' tools on a real Xen: Xen 4.17 and a Debian 12 dom0 booted under QEMU by
/// `scripts/xen-lab.sh`, our statically linked binaries run inside dom0 against Xen's own
/// daemons and Linux's drivers. Skipped (saying why) only when QEMU or the static binaries are missing.
@Suite(
    "real Xen under QEMU (scripts/xen-lab.sh)", .serialized, .timeLimit(.minutes(15)),
    .enabled(if: XenLab.missing == nil, "needs qemu-system-x86_64 and the static binaries of .build-static (make test installs and builds them)"))
struct XenLabTests {
    /// The package root (this file is Tests/PVHostTests/XenLabTests.swift).
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// Runs a payload with static binaries (stripped copies), ten minutes at most. QEMU that
    /// cannot start Xen (the script's status 3) is a failure: the trait above said it could.
    static func lab(_ payload: String, binaries: [String], files: [String] = []) async throws -> (status: Int32, output: String) {
        let directory = NSTemporaryDirectory() + "pvkit-xenlab-\(getpid())"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var copies: [String] = []
        for name in binaries {
            let built = root.appendingPathComponent(".build-static/release/\(name)").path
            let copy = directory + "/" + name
            _ = try await NetTapTests.sh("/usr/bin/strip", ["-o", copy, built])
            copies.append(copy)
        }
        let extras = files.map { root.appendingPathComponent("scripts/xenlab/\($0)").path }
        let result = try await runCommand(
            root.appendingPathComponent("scripts/xen-lab.sh").path,
            [root.appendingPathComponent("scripts/xenlab/\(payload)").path] + copies + extras, timeout: .seconds(600))
        #expect(result.status != 3, "QEMU could not start Xen: \(result.output.split(separator: "\n").last ?? "")")
        return result
    }

    @Test(
        "pvstore against Xen's C xenstored through /dev/xen/xenbus in a real dom0: a transaction, read, ls and list equal to xenstore-utils, a watch, ENOENT, rm"
    )
    func pvstore() async throws {
        let result = try await Self.lab("pvstore.sh", binaries: ["pvstore"])
        let payload = result.output.components(separatedBy: "XENLAB-DOM0-UP").last ?? result.output
        #expect(result.status == 0 && payload.contains("XENLAB-PASS"), "\(payload.suffix(3000))")
    }

    @Test(
        "BlockFront (pvblk --xen on LinuxXenPlatform) against Linux's real blkback on xl block-attach: every feature it offers negotiated (2 queues, 16-page rings, persistent grants, indirect, flush, barrier, discard); read, write+flush+read verified against the file (also through a BlockIOQueue), a barrier write, a discard reading back as zeros; each feature off in turn; after detach no active grant (Xen's own dump); the same workload through pvhost's blkback prints the same lines"
    )
    func blkfront() async throws {
        let result = try await Self.lab("blkfront.sh", binaries: ["pvblk"], files: ["blk-workload.sh"])
        let payload = result.output.components(separatedBy: "XENLAB-DOM0-UP").last ?? result.output
        let verified = payload.components(separatedBy: "\n").filter { $0.hasPrefix("verified ") && $0.hasSuffix("and in the file") }
        #expect(
            result.status == 0 && payload.contains("XENLAB-PASS") && verified.count == 7
                && payload.contains("(barrier write)") && payload.contains("discard: 1048576 bytes read back as zeros")
                && payload.contains("persistent grants no") && payload.contains("indirect segments 0,") && payload.contains("1 queue(s)")
                && payload.contains("of 1 ring page(s)") && payload.contains("after detach: no active grant entries"), "\(payload.suffix(3000))")

        // The same workload through pvhost's blkback, offering what Linux's did: the same lines.
        let xen = Self.workload(in: payload)
        let image = NSTemporaryDirectory() + "pvkit-compare-\(getpid()).img"
        _ = FileManager.default.createFile(atPath: image, contents: Data((0..<(16 << 20)).map { _ in UInt8.random(in: 0...255) }))
        defer { unlink(image) }
        let host = try await GuestProcessTests.PVHostProcess(
            config: #"{"domains": [{"name": "alpha", "disks": [{"devid": 51728, "path": "\#(image)", "maxQueues": 2}]}]}"#)
        let pvblk = Binaries.path("pvblk")
        let script = """
            . '\(Self.root.appendingPathComponent("scripts/xenlab/blk-workload.sh").path)'
            blk() { timeout 60 '\(pvblk)' "$@" --pvhost '\(host.control)' --name alpha --device 51728; }
            IMAGE='\(image)'
            blk_workload
            """
        let ours = try await NetTapTests.sh("/bin/bash", ["-c", script])
        #expect(ours.status == 0, "\(ours.output)")
        #expect(Self.workload(in: ours.output) == xen, "through pvhost:\n\(ours.output)\nthrough Linux's blkback:\n\(xen.joined(separator: "\n"))")
        #expect(!xen.isEmpty)
    }

    /// The lines between WORKLOAD-BEGIN and WORKLOAD-END.
    static func workload(in output: String) -> [String] {
        let lines = output.components(separatedBy: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
        guard let begin = lines.firstIndex(of: "WORKLOAD-BEGIN"), let end = lines.firstIndex(of: "WORKLOAD-END"), begin < end else { return [] }
        return Array(lines[(begin + 1)..<end])
    }

    @Test(
        "NetFront (pvnet --xen) against Linux's real netback on xl network-attach: ARP from Linux received; pvnet tap in a namespace on 2 queues with split event channels, SG, GSO and checksum offload: ping (56 and 3000 bytes) and 8 MiB of TCP each way, identical end to end, GSO used both ways; pvhost's netback negotiates the same features"
    )
    func netfront() async throws {
        let result = try await Self.lab("netfront.sh", binaries: ["pvnet"])
        let payload = result.output.components(separatedBy: "XENLAB-DOM0-UP").last ?? result.output
        #expect(
            result.status == 0 && payload.contains("XENLAB-PASS") && payload.contains("3 packets received")
                && payload.contains("to pv0: queues 2, split event channels yes, scatter-gather yes, GSO TCPv4 yes, TCPv6 yes, checksum offload yes")
                && payload.contains("TCP: 8 MiB each way, identical end to end") && payload.contains("GSO both ways"), "\(payload.suffix(3000))")

        // pvhost's netback negotiates the same with the same frontend.
        let xen = payload.components(separatedBy: "\n").first { $0.hasPrefix("queues 2, ") }
        let host = try await GuestProcessTests.PVHostProcess(
            config: #"{"domains": [{"name": "alpha", "pages": 2048, "grantFrames": 16, "nics": [{"devid": 0}]}]}"#)
        let ours = try await host.run("alpha", ["info", "--queues", "2"], tool: "pvnet")
        #expect(
            ours.status == 0 && xen != nil && ours.output.components(separatedBy: "\n").contains(xen ?? "-"),
            "through pvhost: \(ours.output); through Linux's netback: \(xen ?? "nothing")")
    }
}

/// LinuxXenPlatform where there is no Xen: a clear error, never a crash or a hang.
@Suite("LinuxXenPlatform outside a Xen domain", .timeLimit(.minutes(5)))
struct LinuxXenOutsideTests {
    @Test(
        "opening it, and pvblk --xen / pvnet --xen, fail with what is missing and what to do",
        .disabled(if: FileManager.default.fileExists(atPath: "/dev/xen/gntalloc"), "this machine is a Xen domain (/dev/xen/gntalloc exists)"))
    func noXen() async throws {
        do {
            _ = try await LinuxXenPlatform.open()
            Issue.record("opened a Xen platform without Xen")
        } catch {
            guard case let .connection(why) = error else { Issue.record("\(error)"); return }
            #expect(why.contains("/dev/xen/gntalloc") && why.contains("xen-gntalloc"), "\(why)")
        }
        for tool in ["pvblk", "pvnet"] {
            let (status, output) = try await runCommand(Binaries.path(tool), ["info", "--xen"])
            #expect(status == 1 && output.contains("/dev/xen/gntalloc"), "\(tool): \(output)")
        }
    }
}
