import Foundation
#if canImport(Glibc)
    import Glibc
#endif
import Synchronization
import XenABI
import XenStore

/// Our xenstored against Xen's C xenstored (4.17, run without a hypervisor through
/// Tests/Interop/xenstored-preload.c), side by side in one run: the same plain blocking client
/// (one connection, like libxenstore) drives each daemon through the same workloads, rounds
/// alternate between the daemons, and the table gives medians of ops/s and the ratio.
@main
struct XenStoreBench {
    static func main() {
        signal(SIGPIPE, SIG_IGN)
        do { try run() } catch {
            print("xenstore-bench: \(error)")
            exit(1)
        }
    }

    /// One daemon under test.
    final class Daemon {
        let name: String
        let socket: String
        let process: Process
        let directory: String

        init(name: String, socket: String, process: Process, directory: String) {
            self.name = name
            self.socket = socket
            self.process = process
            self.directory = directory
        }

        deinit {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            try? FileManager.default.removeItem(atPath: directory)
        }

        static func waitForSocket(_ candidates: [String]) throws -> String {
            for _ in 0..<200 {
                if let found = candidates.first(where: { FileManager.default.fileExists(atPath: $0) }) { return found }
                usleep(10_000)
            }
            throw BenchError("no socket appeared at \(candidates)")
        }

        static func ours(_ executable: String) throws -> Daemon {
            let dir = NSTemporaryDirectory() + "xsbench-pvkit-\(getpid())"
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            let p = Process()
            p.executableURL = URL(fileURLWithPath: executable)
            p.arguments =
                ["xenstored", "--socket", dir + "/socket"] + (ProcessInfo.processInfo.environment["XSBENCH_POLL_US"].map { ["--poll-microseconds", $0] } ?? [])
            p.standardOutput = FileHandle.nullDevice
            p.standardError = FileHandle.nullDevice
            try p.run()
            return Daemon(name: "pvhost xenstored", socket: try waitForSocket([dir + "/socket"]), process: p, directory: dir)
        }

        static func xen(preloadSource: String) throws -> Daemon {
            let binary = "/usr/lib/xen-4.17/bin/xenstored"
            guard FileManager.default.isExecutableFile(atPath: binary) else { throw BenchError("\(binary) is missing: apt-get install xen-utils-4.17") }
            let dir = NSTemporaryDirectory() + "xsbench-c-\(getpid())"
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            let library = dir + "/preload.so"
            let cc = Process()
            cc.executableURL = URL(fileURLWithPath: "/usr/bin/cc")
            cc.arguments = ["-shared", "-fPIC", "-O2", "-o", library, preloadSource, "-ldl"]
            try cc.run()
            cc.waitUntilExit()
            guard cc.terminationStatus == 0 else { throw BenchError("the preload library did not build") }
            let p = Process()
            p.executableURL = URL(fileURLWithPath: binary)
            p.arguments = ["-N"]
            p.environment = ["XENSTORED_RUNDIR": dir, "LD_PRELOAD": library]
            p.standardOutput = FileHandle.nullDevice
            p.standardError = FileHandle.nullDevice
            try p.run()
            return Daemon(name: "C xenstored 4.17", socket: try waitForSocket([dir + "/socket", dir + "/xenstored/socket"]), process: p, directory: dir)
        }
    }

    /// A plain blocking client: write a request, read replies; as libxenstore does it.
    final class RawClient: @unchecked Sendable {  // @unchecked: each client is handed to one thread, the only one that uses it
        let fd: Int32
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        var decoder = XsFrameDecoder()

        init(_ path: String) throws {
            fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &address.sun_path) { raw in for (i, b) in path.utf8.enumerated() { raw[i] = b } }
            let r = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            guard r == 0 else { throw BenchError("connect \(path): \(errno)") }
        }

        deinit { close(fd) }

        func send(_ bytes: [UInt8]) throws {
            var off = 0
            while off < bytes.count {
                let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + off, bytes.count - off, 0) }
                guard n > 0 else { throw BenchError("send: \(errno)") }
                off += n
            }
        }

        /// The next reply (watch events are not expected here).
        func receive() throws -> XsMessage {
            while true {
                if let m = try decoder.next() { return m }
                let n = read(fd, &buffer, buffer.count)
                guard n > 0 else { throw BenchError("read: daemon closed") }
                decoder.feed(buffer[..<n])
            }
        }

        func call(_ request: [UInt8]) throws -> XsMessage {
            try send(request)
            let reply = try receive()
            guard reply.header.messageType != .error else { throw BenchError("error reply: \(String(decoding: reply.payload, as: UTF8.self))") }
            return reply
        }
    }

    static func frame(_ request: XenStoreRequest, id: UInt32 = 0, tx: UInt32 = 0) -> [UInt8] {
        try! request.message(requestID: id, transactionID: tx).bytes
    }

    struct Workload {
        let name: String
        let unit: String
        let operations: Int
        /// Connections driving the load at once, each on its own thread.
        var clients = 1
        /// Runs `operations` operations on a connected client.
        let run: @Sendable (RawClient, Int) throws -> Void

        init(name: String, unit: String, operations: Int, clients: Int = 1, run: @escaping @Sendable (RawClient, Int) throws -> Void) {
            self.name = name
            self.unit = unit
            self.operations = operations
            self.clients = clients
            self.run = run
        }

        /// Runs the load on `clients` connections to `socket`; returns the wall time.
        func measure(_ socket: String) throws -> Double {
            let connections = try (0..<clients).map { _ in try RawClient(socket) }
            if clients == 1 { return try seconds { try run(connections[0], operations) } }
            let share = operations / clients
            let failures = Failures()
            let done = DispatchSemaphore(value: 0)
            let t = seconds {
                for c in connections {
                    Thread {
                        do { try run(c, share) } catch { failures.add("\(error)") }
                        done.signal()
                    }.start()
                }
                for _ in connections { done.wait() }
            }
            if let failure = failures.first { throw BenchError(failure) }
            return t
        }
    }

    final class Failures: Sendable {
        private let list = Mutex<[String]>([])
        func add(_ s: String) { list.withLock { $0.append(s) } }
        var first: String? { list.withLock { $0.first } }
    }

    static func workloads(quick: Bool) -> [Workload] {
        let n = quick ? 2_000 : 20_000
        let read = frame(.read("/bench/node"))
        let write = frame(.write("/bench/node", value: Array("value-of-sixteen".utf8)))
        let directory = frame(.directory("/bench/dir"))
        return [
            Workload(name: "sync read", unit: "ops/s", operations: n) { c, n in for _ in 0..<n { _ = try c.call(read) } },
            Workload(name: "sync write", unit: "ops/s", operations: n) { c, n in for _ in 0..<n { _ = try c.call(write) } },
            Workload(name: "sync read, 8 clients at once", unit: "ops/s", operations: n * 2, clients: 8) { c, n in for _ in 0..<n { _ = try c.call(read) } },
            Workload(name: "sync write, 8 clients at once", unit: "ops/s", operations: n * 2, clients: 8) { c, n in for _ in 0..<n { _ = try c.call(write) } },
            Workload(name: "pipelined read (depth 32)", unit: "ops/s", operations: n * 4) { c, n in
                let batch = Array((0..<32).map { _ in read }.joined())
                for _ in 0..<(n / 32) {
                    try c.send(batch)
                    for _ in 0..<32 { _ = try c.receive() }
                }
            },
            Workload(name: "directory of 100 children", unit: "ops/s", operations: n / 2) { c, n in for _ in 0..<n { _ = try c.call(directory) } },
            Workload(name: "short transaction (start, write, end)", unit: "tx/s", operations: n / 3) { c, n in
                let start = frame(.transactionStart)
                for i in 0..<n {
                    let reply = try c.call(start)
                    let id = UInt32(String(decoding: reply.payload.prefix { $0 != 0 }, as: UTF8.self))!
                    _ = try c.call(frame(.write("/bench/tx", value: Array("\(i)".utf8)), tx: id))
                    _ = try c.call(frame(.transactionEnd(commit: true), tx: id))
                }
            }
        ]
    }

    static func prepare(_ daemon: Daemon) throws {
        let c = try RawClient(daemon.socket)
        _ = try c.call(frame(.write("/bench/node", value: Array("value-of-sixteen".utf8))))
        for i in 0..<100 { _ = try c.call(frame(.write(try XenStorePath("/bench/dir/child-\(i)"), value: Array("\(i)".utf8)))) }
        // A realistic tree around it: 50 guests with a dozen device nodes each.
        for d in 1...50 {
            for key in [
                "name", "domid", "vm", "device/vbd/51712/state", "device/vbd/51712/ring-ref", "device/vbd/51712/event-channel",
                "device/vif/0/state", "device/vif/0/mac", "control/shutdown", "memory/target", "data/updated", "console/port"
            ] {
                _ = try c.call(frame(.write(try XenStorePath("/local/domain/\(d)/\(key)"), value: Array("v\(d)".utf8))))
            }
        }
    }

    static func seconds(_ body: () throws -> Void) rethrows -> Double {
        var t0 = timespec(), t1 = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t0)
        try body()
        clock_gettime(CLOCK_MONOTONIC, &t1)
        return Double(t1.tv_sec - t0.tv_sec) + Double(t1.tv_nsec - t0.tv_nsec) / 1e9
    }

    static func median(_ values: [Double]) -> Double { values.sorted()[values.count / 2] }

    /// CPU time (µs) a process has used, in nanosecond resolution: /proc/PID/schedstat's
    /// first field, summed over its threads.
    static func cpuMicroseconds(_ pid: Int32) -> Double {
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
        var total = 0.0
        for task in tasks {
            guard let stat = try? String(contentsOfFile: "/proc/\(pid)/task/\(task)/schedstat", encoding: .utf8),
                let first = stat.split(separator: " ").first, let ns = Double(first)
            else { continue }
            total += ns / 1000
        }
        return total
    }

    /// Latency percentiles (µs) of sync reads.
    static func latencies(_ client: RawClient, count: Int) throws -> (p50: Double, p99: Double) {
        let read = frame(.read("/bench/node"))
        var samples: [Double] = []
        samples.reserveCapacity(count)
        for _ in 0..<count { samples.append(try seconds { _ = try client.call(read) } * 1e6) }
        samples.sort()
        return (samples[count / 2], samples[count * 99 / 100])
    }

    static func run() throws {
        let quick = CommandLine.arguments.contains("--quick")
        let rounds = quick ? 3 : 7
        let me = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        let pvhost = me.appendingPathComponent("pvhost").path
        guard FileManager.default.isExecutableFile(atPath: pvhost) else { throw BenchError("pvhost is not built beside xenstore-bench") }
        let preload = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Tests/Interop/xenstored-preload.c").path
        let daemons = [try Daemon.ours(pvhost), try Daemon.xen(preloadSource: preload)]
        for d in daemons { try prepare(d) }
        print("xenstored: ours vs Xen's C xenstored 4.17, one blocking client each, \(rounds) alternating rounds, medians")
        print("")
        print(
            pad("workload", 40) + pad("pvhost ops/s", 14) + pad("C ops/s", 14) + pad("ratio", 9)
                + pad("pvhost CPU µs/op", 18) + pad("C CPU µs/op", 14) + "CPU ratio (C/ours)")
        for workload in workloads(quick: quick) {
            var rates: [[Double]] = [[], []], cpu: [[Double]] = [[], []]
            for _ in 0..<(rounds + 1) {
                for (i, d) in daemons.enumerated() {
                    let before = cpuMicroseconds(d.process.processIdentifier)
                    let t = try workload.measure(d.socket)
                    rates[i].append(Double(workload.operations) / t)
                    cpu[i].append((cpuMicroseconds(d.process.processIdentifier) - before) / Double(workload.operations))
                }
            }
            let ours = median(Array(rates[0].dropFirst())), theirs = median(Array(rates[1].dropFirst()))
            let ourCPU = median(Array(cpu[0].dropFirst())), theirCPU = median(Array(cpu[1].dropFirst()))
            print(
                pad(workload.name, 40) + pad(String(format: "%.0f", ours), 14) + pad(String(format: "%.0f", theirs), 14)
                    + pad(String(format: "%.2f×", ours / theirs), 9)
                    + pad(String(format: "%.1f", ourCPU), 18) + pad(String(format: "%.1f", theirCPU), 14)
                    + String(format: "%.2f×", theirCPU / max(ourCPU, 0.01)))
        }
        // Latency with 500 idle connections open, against none.
        print("")
        print(pad("sync read latency, µs (p50 / p99)", 40) + pad("pvhost", 16) + pad("C", 16) + "ratio p50")
        for idle in [0, 500] {
            var results: [(Double, Double)] = []
            for d in daemons {
                let sleepers = try (0..<idle).map { _ in try RawClient(d.socket) }
                let c = try RawClient(d.socket)
                _ = try latencies(c, count: 1000)  // warm-up
                results.append(try latencies(c, count: quick ? 2_000 : 20_000))
                withExtendedLifetime(sleepers) {}
            }
            print(
                pad("with \(idle) idle connections", 40)
                    + pad(String(format: "%.1f / %.1f", results[0].0, results[0].1), 16)
                    + pad(String(format: "%.1f / %.1f", results[1].0, results[1].1), 16)
                    + String(format: "%.2f×", results[1].0 / results[0].0))
        }
    }

    static func pad(_ s: String, _ width: Int) -> String { s.count >= width ? s + " " : s + String(repeating: " ", count: width - s.count) }
}

struct BenchError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
