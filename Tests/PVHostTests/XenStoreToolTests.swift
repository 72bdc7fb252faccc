import Foundation
#if canImport(Glibc)
    import Glibc
#endif
import Testing
import XenABI
import XenStore

/// pvstore against xenstore-utils, and the pyxs Python client, on both daemons.
@Suite("pvstore and pyxs against both daemons", .serialized, .timeLimit(.minutes(5)))
struct XenStoreToolTests {
    static var pvstore: String {
        let me = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return URL(fileURLWithPath: me).deletingLastPathComponent().appendingPathComponent("pvstore").path
    }

    @Test("pvstore prints what xenstore-utils print, on our daemon and on C xenstored", arguments: StoreDaemon.allCases)
    func sameAsXenstoreUtils(_ kind: StoreDaemon) async throws {
        try XenStoreInteropTests.available("/usr/bin/xenstore-ls")
        try #require(FileManager.default.isExecutableFile(atPath: Self.pvstore), "pvstore is not built beside the tests")
        let (socket, handle) = try await kind.start()
        defer { withExtendedLifetime(handle) {} }
        #expect(
            try await runTool(Self.pvstore, ["write", "/tool/pv/a", "one", "/tool/pv/b/c", "two", "/tool/pv/t", "tab\there\u{1}"], socket: socket).status == 0)
        #expect(try await runTool(Self.pvstore, ["chmod", "/tool/pv/b", "n0", "r5"], socket: socket).status == 0)
        let pairs: [([String], [String])] = [
            (["read", "/tool/pv/a", "/tool/pv/t"], ["xenstore-read", "/tool/pv/a", "/tool/pv/t"]),
            (["read", "-p", "/tool/pv/a"], ["xenstore-read", "-p", "/tool/pv/a"]),
            (["ls", "/tool"], ["xenstore-ls", "/tool"]),
            (["ls", "-f", "/tool/pv"], ["xenstore-ls", "-f", "/tool/pv"]),
            (["ls", "-f", "-p", "/tool/pv"], ["xenstore-ls", "-f", "-p", "/tool/pv"]),
            (["list", "/tool/pv"], ["xenstore-list", "/tool/pv"]),
            (["list", "-p", "/tool/pv"], ["xenstore-list", "-p", "/tool/pv"]),
            (["exists", "/tool/pv/b/c"], ["xenstore-exists", "/tool/pv/b/c"])
        ]
        for (ours, theirs) in pairs {
            let mine = try await runTool(Self.pvstore, ours, socket: socket)
            let reference = try await runTool("/usr/bin/" + theirs[0], Array(theirs.dropFirst()), socket: socket)
            #expect(mine == reference, "pvstore \(ours) vs \(theirs)")
        }
        // Failures: exit 1 like xenstore-utils, with a message that names the node.
        let missing = try await runTool(Self.pvstore, ["read", "/tool/pv/none"], socket: socket)
        #expect(missing.status == 1 && missing.output.contains("/tool/pv/none") && missing.output.contains("ENOENT"))
        #expect(try await runTool(Self.pvstore, ["exists", "/tool/pv/none"], socket: socket).status == 1)
        #expect(try await runTool(Self.pvstore, ["chmod", "/tool/pv/a", "q5"], socket: socket).status == 64)
        // JSON.
        let json = try await runTool(Self.pvstore, ["ls", "--json", "/tool/pv/b"], socket: socket)
        let nodes = try JSONSerialization.jsonObject(with: Data(json.output.utf8)) as? [[String: Any]]
        #expect(nodes?.first?["path"] as? String == "/tool/pv/b/c" && nodes?.first?["value"] as? String == "two")
        // mkdir, rm, watch --count.
        #expect(try await runTool(Self.pvstore, ["mkdir", "/tool/pv/m"], socket: socket).status == 0)
        #expect(try await runTool("/usr/bin/xenstore-read", ["/tool/pv/m"], socket: socket) == (0, "\n"))
        #expect(try await runTool(Self.pvstore, ["watch", "--count", "1", "/tool/pv"], socket: socket) == (0, "/tool/pv\n"))
        #expect(try await runTool(Self.pvstore, ["rm", "/tool/pv"], socket: socket).status == 0)
        #expect(try await runTool("/usr/bin/xenstore-exists", ["/tool/pv"], socket: socket).status == 1)
    }

    @Test("pvhost xenstored rejects a bad quota with a usage error that lists the names")
    func badQuota() async throws {
        let pvhost = URL(fileURLWithPath: Self.pvstore).deletingLastPathComponent().appendingPathComponent("pvhost").path
        for arguments in [["--quota", "bogus=1"], ["--quota", "entries=0"], ["--domain-quota", "x:entries=5"]] {
            let result = try await runTool(pvhost, ["xenstored", "--socket", "/tmp/pvkit-never-\(getpid())"] + arguments, socket: "")
            #expect(result.status == 64, "\(arguments): \(result.output)")
            #expect(result.output.contains("quota"))
        }
    }

    @Test("pvstore says where it looked when no daemon is reachable")
    func unreachable() async throws {
        let result = try await runTool(Self.pvstore, ["read", "/x"], socket: "/nonexistent/pvkit/socket")
        #expect(result.status == 1)
        #expect(result.output.contains("/nonexistent/pvkit/socket") && result.output.contains("XENSTORED_PATH"))
    }

    @Test("the pyxs Python client: transactions, watches, permissions; same transcript on both daemons")
    func pyxs() async throws {
        let cache = ProcessInfo.processInfo.environment["PVKIT_CACHE"] ?? (NSHomeDirectory() + "/.cache/pvkit")
        let site = cache + "/python"
        try #require(FileManager.default.fileExists(atPath: site + "/pyxs"), "pyxs is missing: make test installs it into \(site)")
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Interop/pyxs_check.py").path
        var transcripts: [String] = []
        for kind in StoreDaemon.allCases {
            let (socket, handle) = try await kind.start()
            let python = Process()
            python.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            python.arguments = ["python3", script]
            python.environment = ["XENSTORED_PATH": socket, "PYTHONPATH": site, "PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"]
            let pipe = Pipe()
            python.standardOutput = pipe
            python.standardError = pipe
            try python.run()
            let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            python.waitUntilExit()
            withExtendedLifetime(handle) {}
            #expect(python.terminationStatus == 0, "pyxs against \(kind.testDescription): \(output)")
            transcripts.append(output)
        }
        let ours = transcripts[0]
        #expect(ours.contains("'read' b'one'"))
        #expect(ours.contains("'perms' [b'n0', b'r5']"))
        #expect(ours.contains("'missing' 'ENOENT'"))
        #expect(ours.contains("'commit' True b'1'"))
        #expect(ours.contains("'conflicting-commit' False b'2'"), "the conflicting transaction is refused (EAGAIN)")
        #expect(ours.contains("'rolled-back-exists' False"))
        #expect(ours.contains("'watch' True"))
        #expect(transcripts[0] == transcripts[1], "ours:\n\(transcripts[0])\nC xenstored:\n\(transcripts[1])")
    }
}
