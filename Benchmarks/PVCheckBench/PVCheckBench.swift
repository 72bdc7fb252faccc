import Foundation
import KernelAudit

/// pvcheck against the plain decompressor on the same real kernels, side by side:
/// `pvcheck IMAGE` (release) vs `xz -dc PAYLOAD` / `zstd -dc PAYLOAD`, alternating, medians of
/// wall time and peak memory (wait4's ru_maxrss). Kernels come from scripts/fetch-kernels.sh.
@main
struct PVCheckBench {
    static func main() {
        do {
            try run()
        } catch {
            print("pvcheck-bench: \(error)")
            exit(1)
        }
    }

    static func run() throws {
        let rounds = CommandLine.arguments.contains("--quick") ? 3 : 9
        let cache = ProcessInfo.processInfo.environment["PVKIT_CACHE"] ?? (NSHomeDirectory() + "/.cache/pvkit")
        let me = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        let pvcheck = me.appendingPathComponent("pvcheck").path
        guard FileManager.default.isExecutableFile(atPath: pvcheck) else {
            print("pvcheck is not built beside pvcheck-bench: swift build -c release --product pvcheck")
            exit(2)
        }
        print("pvcheck vs the decompressor alone, same payload, \(rounds) rounds each, alternating; medians")
        print("")
        print("kernel                       payload   vmlinux    pvcheck s  decompressor s  time ratio  pvcheck peak  peak/vmlinux")
        var results: [(String, String, String, [String])] = []
        defer {
            symbolRecovery(results, pvcheck: pvcheck, rounds: max(1, rounds / 3))
            for result in results { try? FileManager.default.removeItem(atPath: result.2) }
            diskImages(cache: cache, pvcheck: pvcheck, rounds: rounds)
        }
        for (suite, tool) in [("bookworm", ["xz", "-dc"]), ("trixie", ["zstd", "-dcq"])] {
            let status = (try? String(contentsOfFile: "\(cache)/kernels/\(suite)/STATUS", encoding: .utf8)) ?? ""
            guard status.hasPrefix("ok ") else {
                print("\(suite): no kernel (\(status.isEmpty ? "run scripts/fetch-kernels.sh" : status.trimmingCharacters(in: .newlines)))")
                continue
            }
            let root = String(status.dropFirst(3).trimmingCharacters(in: .whitespacesAndNewlines))
            let name = try FileManager.default.contentsOfDirectory(atPath: root + "/boot").first { $0.hasPrefix("vmlinuz-") }!
            let image = root + "/boot/" + name
            // The payload's place comes from pvcheck --json in a child process, and the payload is
            // copied in small pieces: this process stays small, because a spawned child's peak
            // memory (ru_maxrss) starts from its parent's.
            let report = try JSONDecoder().decode(AuditReport.self, from: try output(pvcheck, ["--json", image]))
            guard let offset = report.image?.payloadOffset, let length = report.image?.payloadLength,
                let vmlinuxBytes = report.image?.decompressedSize
            else {
                print("\(suite): pvcheck could not read \(image)")
                continue
            }
            let payloadPath = NSTemporaryDirectory() + "pvcheck-bench-payload-\(suite)"
            // Without the kernel build's 4-byte size trailer, which the decompressor tools reject.
            try copy(image, offset: offset, length: length - 4, to: payloadPath)
            var a: [Sample] = [], b: [Sample] = []
            for _ in 0..<(rounds + 1) {  // the first pair warms the page cache and is dropped
                a.append(try measure(pvcheck, [image]))
                b.append(try measure("/usr/bin/env", tool + [payloadPath]))
            }
            a.removeFirst()
            b.removeFirst()
            let ratios = zip(a, b).map { $0.seconds / $1.seconds }.sorted()
            let aTime = median(a.map(\.seconds)), bTime = median(b.map(\.seconds))
            let peak = median(a.map(\.peakBytes))
            let vmlinux = Double(vmlinuxBytes)
            results.append((suite, image, payloadPath, tool))
            print(
                String(
                    format: "%@ %@ %@ %9.3f %15.3f %10.2f× %11.0f MiB %12.2f×",
                    "\(report.kernel!.release!) (\(report.image!.compression!))".padding(toLength: 28, withPad: " ", startingAt: 0),
                    mib(Double(length)), mib(vmlinux), aTime, bTime, ratios[ratios.count / 2], peak / 1048576, peak / vmlinux))
        }
    }

    /// `pvcheck --target all` on a whole 2 GiB qcow2 image against the same command on the
    /// kernel, initramfs, config and module indexes extracted from it beforehand; wall time and
    /// peak memory, medians.
    static func diskImages(cache: String, pvcheck: String, rounds: Int) {
        print("")
        let guests = cache + "/guests"
        guard (try? String(contentsOfFile: guests + "/STATUS", encoding: .utf8))?.hasPrefix("ok ") == true,
            let release = try? String(contentsOfFile: guests + "/most/release", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        else {
            print("disk images: none (run scripts/make-guests.sh as root)")
            return
        }
        let root = guests + "/most/root"
        let extracted = NSTemporaryDirectory() + "pvcheck-bench-extracted"
        try? FileManager.default.removeItem(atPath: extracted)
        defer { try? FileManager.default.removeItem(atPath: extracted) }
        do {
            try FileManager.default.createDirectory(atPath: extracted + "/modules", withIntermediateDirectories: true)
            for name in ["vmlinuz-\(release)", "initrd.img-\(release)", "config-\(release)"] {
                try FileManager.default.copyItem(atPath: root + "/boot/" + name, toPath: extracted + "/" + name)
            }
            for name in try FileManager.default.contentsOfDirectory(atPath: root + "/lib/modules/\(release)") where name.hasPrefix("modules.") {
                try FileManager.default.copyItem(atPath: root + "/lib/modules/\(release)/" + name, toPath: extracted + "/modules/" + name)
            }
            print("pvcheck --target all on a 2 GiB qcow2 image vs on its kernel and initramfs extracted beforehand, \(rounds) rounds each; medians")
            print("")
            print("image                    image s  extracted s  time ratio  image peak  extracted peak")
            for image in ["ext4-mbr.qcow2", "ext4-gpt.raw"] {
                var a: [Sample] = [], b: [Sample] = []
                for _ in 0..<(rounds + 1) {
                    a.append(try measure(pvcheck, ["--target", "all", "--json", guests + "/most/" + image], allowing: [0, 1, 3]))
                    b.append(
                        try measure(
                            pvcheck,
                            ["--target", "all", "--json", "--modules", extracted + "/modules", extracted + "/vmlinuz-\(release)"],
                            allowing: [0, 1, 3]))
                }
                a.removeFirst()
                b.removeFirst()
                let ratios = zip(a, b).map { $0.seconds / $1.seconds }.sorted()
                print(
                    String(
                        format: "%@ %7.3f %12.3f %10.2f× %7.0f MiB %11.0f MiB", image.padding(toLength: 22, withPad: " ", startingAt: 0),
                        median(a.map(\.seconds)), median(b.map(\.seconds)), ratios[ratios.count / 2], median(a.map(\.peakBytes)) / 1048576,
                        median(b.map(\.peakBytes)) / 1048576))
            }
        } catch {
            print("disk images: \(error)")
        }
    }

    /// `pvcheck --symbols --json` against vmlinux-to-elf's `kallsyms-finder` on the same images.
    static func symbolRecovery(_ kernels: [(String, String, String, [String])], pvcheck: String, rounds: Int) {
        print("")
        guard
            let finder = ProcessInfo.processInfo.environment["PATH"]?.split(separator: ":")
                .map({ "\($0)/kallsyms-finder" }).first(where: { FileManager.default.isExecutableFile(atPath: $0) })
        else {
            print("symbol recovery: kallsyms-finder is not installed (pip install vmlinux-to-elf): no comparison")
            return
        }
        print("symbol recovery vs vmlinux-to-elf's kallsyms-finder, \(rounds) rounds each, medians")
        print("input                 pvcheck --symbols s  kallsyms-finder s   speed-up  symbols pvcheck  symbols kallsyms-finder")
        for (suite, image, payload, tool) in kernels {
            // The packaged image (both decompress it), and the bare vmlinux (symbol recovery alone).
            let vmlinux = payload + ".vmlinux"
            defer { try? FileManager.default.removeItem(atPath: vmlinux) }
            _ = try? spawn("/bin/sh", ["-c", "\(tool.joined(separator: " ")) '\(payload)'"], stdout: vmlinux)
            for (label, input) in [("\(suite) image", image), ("\(suite) vmlinux", vmlinux)] {
                do {
                    var a: [Double] = [], b: [Double] = []
                    for _ in 0..<rounds {
                        a.append(try measure(pvcheck, ["--symbols", input]).seconds)
                        b.append(try measure(finder, [input]).seconds)
                    }
                    let report = try JSONDecoder().decode(AuditReport.self, from: try output(pvcheck, ["--symbols", "--json", input]))
                    let finderOutput = String(decoding: try output(finder, [input]), as: UTF8.self)
                    let finderCount = finderOutput.split(separator: "\n").filter { line in
                        let fields = line.split(separator: " ")
                        return fields.count == 3 && fields[0].count == 16 && UInt64(fields[0], radix: 16) != nil
                    }.count
                    print(
                        String(
                            format: "%@ %19.3f %18.3f %9.1f× %16d %24d", label.padding(toLength: 21, withPad: " ", startingAt: 0),
                            median(a), median(b), median(b) / median(a), report.symbols?.count ?? 0, finderCount))
                } catch {
                    print("\(label): \(error)")
                }
            }
        }
    }

    struct Sample {
        let seconds: Double
        let peakBytes: Double
    }

    static func mib(_ bytes: Double) -> String { String(format: "%6.1f MiB", bytes / 1048576) }

    static func median(_ values: [Double]) -> Double { values.sorted()[values.count / 2] }

    /// Runs a command under /usr/bin/time (which forks it fresh, so its peak memory is its own)
    /// with output on /dev/null; wall time around the whole run, peak RSS as time reports it.
    static func measure(_ path: String, _ arguments: [String], allowing statuses: Set<Int32> = [0]) throws -> Sample {
        let report = NSTemporaryDirectory() + "pvcheck-bench-rss"
        let start = DispatchTime.now()
        let status = try spawn("/usr/bin/time", ["-f", "%M", "-o", report, path] + arguments)
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e9
        guard statuses.contains(status), let text = try? String(contentsOfFile: report, encoding: .utf8),
            let kilobytes = Double(text.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: "\n").last ?? "")
        else {
            throw BenchError("\(path) \(arguments.joined(separator: " ")) failed (status \(status))")
        }
        return Sample(seconds: seconds, peakBytes: kilobytes * 1024)
    }

    static func spawn(_ path: String, _ arguments: [String], stdout: String = "/dev/null") throws -> Int32 {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 1, stdout, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        var argv: [UnsafeMutablePointer<CChar>?] = ([path] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var pid: pid_t = 0
        guard posix_spawn(&pid, path, &actions, nil, &argv, environ) == 0 else { throw BenchError("cannot start \(path)") }
        var status: Int32 = 0
        _ = waitpid(pid, &status, 0)
        return (status >> 8) & 0xFF
    }

    static func output(_ path: String, _ arguments: [String]) throws -> Data {
        let file = NSTemporaryDirectory() + "pvcheck-bench-output"
        _ = try spawn(path, arguments, stdout: file)
        defer { try? FileManager.default.removeItem(atPath: file) }
        return try Data(contentsOf: URL(fileURLWithPath: file))
    }

    /// Copies `length` bytes at `offset` of `source` to `destination`, 1 MiB at a time.
    static func copy(_ source: String, offset: Int, length: Int, to destination: String) throws {
        let input = try FileHandle(forReadingFrom: URL(fileURLWithPath: source))
        guard FileManager.default.createFile(atPath: destination, contents: nil) else { throw BenchError("cannot create \(destination)") }
        let output = try FileHandle(forWritingTo: URL(fileURLWithPath: destination))
        defer { try? input.close(); try? output.close() }
        try input.seek(toOffset: UInt64(offset))
        var left = length
        while left > 0, let chunk = try input.read(upToCount: min(left, 1 << 20)), !chunk.isEmpty {
            try output.write(contentsOf: chunk)
            left -= chunk.count
        }
    }
}

struct BenchError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
