import Foundation
import PVSystem
#if canImport(Glibc)
    import Glibc
#endif

extension PVHostBench {
    /// `nbdcopy` of a whole disk through `pvblk export --nbd` (BlockFront over pvhost's
    /// blkback, each its own process) against `nbdcopy` from nbdkit's file plugin serving the
    /// same backing file, alternated run by run; reads to `null:` and writes from a file on
    /// tmpfs. CPU: user + system time of the serving processes (pvblk and pvhost; nbdkit).
    static func nbd(quick: Bool, runs: Int) async throws {
        let me = URL(fileURLWithPath: (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0])
        let pvhost = me.deletingLastPathComponent().appendingPathComponent("pvhost").path
        let pvblk = me.deletingLastPathComponent().appendingPathComponent("pvblk").path
        print("")
        let tools = ["/usr/bin/nbdcopy", "/usr/sbin/nbdkit"]
        guard FileManager.default.isExecutableFile(atPath: pvhost), FileManager.default.isExecutableFile(atPath: pvblk),
            let nbdkit = (tools.dropFirst() + ["/usr/bin/nbdkit"]).first(where: { FileManager.default.isExecutableFile(atPath: $0) }),
            FileManager.default.isExecutableFile(atPath: tools[0])
        else {
            print("NBD export vs nbdkit: skipped (needs pvhost and pvblk beside pvhost-bench, nbdcopy and nbdkit: `make bench` installs them)")
            return
        }
        // tmpfs: the page cache is the disk for both servers.
        let directory = "/dev/shm/pvhost-bench-nbd-\(getpid())"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let size = quick ? 64 << 20 : 512 << 20
        let image = directory + "/disk.img", source = directory + "/source.img"
        var chunk = [UInt8](repeating: 0, count: 1 << 20)
        _ = FileManager.default.createFile(atPath: image, contents: nil)
        _ = FileManager.default.createFile(atPath: source, contents: nil)
        for path in [image, source] {
            let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
            for m in 0..<(size >> 20) {
                for i in stride(from: 0, to: chunk.count, by: 8) {
                    chunk.withUnsafeMutableBytes { $0.storeBytes(of: UInt64(m << 20 | i) &* 0x9E37_79B9_7F4A_7C15, toByteOffset: i, as: UInt64.self) }
                }
                handle.write(Data(chunk))
            }
            try handle.close()
        }
        let config = #"{"domains":[{"name":"alpha","disks":[{"devid":51712,"path":"\#(image)"}]}]}"#
        try config.write(toFile: directory + "/config.json", atomically: true, encoding: .utf8)
        let control = directory + "/control"
        // Foundation's Process can miss a quick child's exit when waited for off the main
        // thread; PVSystem's ChildProcess waits on a pidfd.
        let quiet = open("/dev/null", O_WRONLY | O_CLOEXEC)
        defer { close(quiet) }
        let host = try ChildProcess(
            path: pvhost, arguments: ["run", directory + "/config.json", "--control", control, "--xenstore", directory + "/xs"], output: quiet)
        defer {
            host.signal(SIGTERM)
            _ = try? host.waitForExit()
        }
        for _ in 0..<200 where !FileManager.default.fileExists(atPath: control) { usleep(10_000) }
        let ours = directory + "/pvblk.sock", theirs = directory + "/nbdkit.sock"
        let export = try ChildProcess(path: pvblk, arguments: ["export", "--nbd", "--socket", ours, "--pvhost", control, "--name", "alpha"], output: quiet)
        defer {
            export.signal(SIGTERM)
            _ = try? export.waitForExit()
        }
        let kit = try ChildProcess(path: nbdkit, arguments: ["--foreground", "-U", theirs, "file", image], output: quiet)
        defer {
            kit.signal(SIGTERM)
            _ = try? kit.waitForExit()
        }
        for _ in 0..<500 where !(FileManager.default.fileExists(atPath: ours) && FileManager.default.fileExists(atPath: theirs)) { usleep(10_000) }

        struct Sample { var seconds: Double; var cpu: Double }
        func measure(_ arguments: [String], servers: [Int32]) async throws -> Sample {
            let before = servers.map(cpuSeconds)
            var t0 = timespec(), t1 = timespec()
            clock_gettime(CLOCK_MONOTONIC, &t0)
            let (status, output) = try await ChildProcess.run("/usr/bin/nbdcopy", arguments)
            clock_gettime(CLOCK_MONOTONIC, &t1)
            if status != 0 { print("nbdcopy \(arguments.joined(separator: " ")) failed (\(status)): \(output)") }
            let after = servers.map(cpuSeconds)
            return Sample(
                seconds: Double(t1.tv_sec - t0.tv_sec) + Double(t1.tv_nsec - t0.tv_nsec) / 1e9, cpu: zip(after, before).map { $0 - $1 }.reduce(0, +))
        }
        let ourURI = "nbd+unix:///?socket=\(ours)", theirURI = "nbd+unix:///?socket=\(theirs)"
        let ourServers = [export.pid, host.pid], theirServers = [kit.pid]
        print(
            "nbdcopy of a \(size >> 20) MiB disk through pvblk export (BlockFront ↔ pvhost blkback) vs nbdkit's file plugin, same file on tmpfs, medians of \(runs)"
        )
        print("direction               pvblk export MiB/s  CPU s/GiB    nbdkit file MiB/s  CPU s/GiB    ratio")
        for (label, ourArguments, theirArguments) in [
            ("read (to null:)", [ourURI, "null:"], [theirURI, "null:"]),
            ("write (from tmpfs)", ["--flush", source, ourURI], ["--flush", source, theirURI])
        ] {
            _ = try await measure(ourArguments, servers: ourServers)  // warm both
            _ = try await measure(theirArguments, servers: theirServers)
            var ourSamples: [Sample] = [], theirSamples: [Sample] = []
            for _ in 0..<runs {
                ourSamples.append(try await measure(ourArguments, servers: ourServers))
                theirSamples.append(try await measure(theirArguments, servers: theirServers))
            }
            func median(_ samples: [Sample]) -> Sample { samples.sorted { $0.seconds < $1.seconds }[samples.count / 2] }
            let a = median(ourSamples), b = median(theirSamples)
            let mib = Double(size) / Double(1 << 20), gib = Double(size) / Double(1 << 30)
            print(
                label.padding(toLength: 24, withPad: " ", startingAt: 0)
                    + String(
                        format: "%12.0f  %10.2f   %14.0f  %10.2f   %6.2f×", mib / a.seconds, a.cpu / gib, mib / b.seconds, b.cpu / gib, b.seconds / a.seconds))
        }
    }

    /// User + system seconds a process has used (`/proc/PID/stat` fields 14 and 15).
    static func cpuSeconds(_ pid: Int32) -> Double {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = text.lastIndex(of: ")") else { return 0 }
        let fields = text[text.index(after: close)...].split(separator: " ")
        guard fields.count > 13, let user = Double(fields[11]), let system = Double(fields[12]) else { return 0 }
        return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }
}
