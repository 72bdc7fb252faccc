import Foundation
import Testing

/// Xen's own tools against our xenstored on a UNIX socket: xenstore-utils and test-xenstore.
@Suite("xenstored interop: Xen's own tools", .serialized)
struct XenStoreInteropTests {
    /// A running `pvhost xenstored` on a fresh socket, stopped when the value goes away.
    final class Daemon {
        let directory: URL
        let socket: String
        let process = Process()

        init() throws {
            directory = FileManager.default.temporaryDirectory.appendingPathComponent("pvkit-xs-\(UUID().uuidString)")
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            socket = directory.appendingPathComponent("socket").path
            let me = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
            let exe = URL(fileURLWithPath: me).deletingLastPathComponent().appendingPathComponent("pvhost").path
            try #require(FileManager.default.isExecutableFile(atPath: exe), "pvhost is not built beside the tests: swift build --build-tests")
            process.executableURL = URL(fileURLWithPath: exe)
            process.arguments = ["xenstored", "--socket", socket]
            try process.run()
            for _ in 0..<100 where !FileManager.default.fileExists(atPath: socket) { usleep(20_000) }
            try #require(FileManager.default.fileExists(atPath: socket), "the daemon did not create its socket")
        }

        /// Runs a tool with XENSTORED_PATH pointing at this daemon.
        func tool(_ path: String, _ arguments: [String]) throws -> (status: Int32, output: String) {
            let tool = Process()
            tool.executableURL = URL(fileURLWithPath: path)
            tool.arguments = arguments
            tool.environment = ["XENSTORED_PATH": socket, "PATH": "/usr/bin:/bin"]
            let pipe = Pipe()
            tool.standardOutput = pipe
            tool.standardError = pipe
            try tool.run()
            let data = pipe.fileHandleForReading.readDataToEndOfFile()
            tool.waitUntilExit()
            return (tool.terminationStatus, String(decoding: data, as: UTF8.self))
        }

        deinit {
            process.terminate()
            process.waitUntilExit()
            try? FileManager.default.removeItem(at: directory)
        }
    }

    static func available(_ path: String) throws {
        try #require(FileManager.default.isExecutableFile(atPath: path), "\(path) is missing: make test installs xenstore-utils and xen-utils-4.17")
    }

    @Test("xenstore-write, -read, -ls, -list, -exists, -rm, -chmod, -watch")
    func utilities() throws {
        try Self.available("/usr/bin/xenstore-read")
        let daemon = try Daemon()
        #expect(try daemon.tool("/usr/bin/xenstore-write", ["/local/domain/0/name", "Domain-0", "/tool/pvkit/a", "one"]).status == 0)
        #expect(try daemon.tool("/usr/bin/xenstore-read", ["/tool/pvkit/a"]) == (0, "one\n"))
        #expect(try daemon.tool("/usr/bin/xenstore-read", ["/tool/missing"]).status != 0)
        #expect(try daemon.tool("/usr/bin/xenstore-ls", ["/tool"]).output == "pvkit = \"\"\n a = \"one\"\n")
        #expect(try daemon.tool("/usr/bin/xenstore-list", ["/tool/pvkit"]) == (0, "a\n"))
        #expect(try daemon.tool("/usr/bin/xenstore-exists", ["/tool/pvkit/a"]).status == 0)
        #expect(try daemon.tool("/usr/bin/xenstore-chmod", ["/tool/pvkit/a", "n0", "r5"]).status == 0)
        #expect(try daemon.tool("/usr/bin/xenstore-ls", ["-p", "/tool/pvkit"]).output.contains("(n0,r5)"))
        let watch = try daemon.tool("/usr/bin/xenstore-watch", ["-n", "1", "/tool/pvkit"])
        #expect(watch == (0, "/tool/pvkit\n"), "the watch fires once on registration")
        #expect(try daemon.tool("/usr/bin/xenstore-rm", ["/tool/pvkit"]).status == 0)
        #expect(try daemon.tool("/usr/bin/xenstore-exists", ["/tool/pvkit/a"]).status != 0)
    }

    @Test("Xen's test-xenstore passes every test")
    func xenTest() throws {
        let test = "/usr/lib/xen-4.17/bin/test-xenstore"
        try Self.available(test)
        let daemon = try Daemon()
        let names = try daemon.tool(test, ["-l"]).output.split(separator: "\n").compactMap { $0.split(separator: ":").first.map { $0.trimmingCharacters(in: .whitespaces) } }
        #expect(names.count == 12)
        let run = try daemon.tool(test, [])
        #expect(run.status == 0, "\(run.output)")
        for name in names {
            #expect(run.output.split(separator: "\n").contains { $0.hasPrefix(name) && $0.hasSuffix(" ns") }, "\(name): \(run.output)")
        }
    }
}
