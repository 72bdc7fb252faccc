import Foundation
#if canImport(Glibc)
    import Glibc
#endif
import PVSystem
import Testing
import TestSupport

/// libnbd's tools and Python binding, and qemu-img.
private let nbdClientsInstalled =
    ["/usr/bin/nbdinfo", "/usr/bin/nbdcopy", "/usr/bin/qemu-img", "/usr/bin/python3"].allSatisfy { FileManager.default.isExecutableFile(atPath: $0) }
    && FileManager.default.fileExists(atPath: "/usr/lib/python3/dist-packages/nbd.py")

/// `pvblk export --nbd` as a guest process of a real pvhost, used by real NBD clients: libnbd's
/// nbdinfo and nbdcopy, its Python binding, qemu-img; and by hostile raw-socket clients.
@Suite(
    "pvblk export --nbd: real NBD clients on a PV disk", .serialized, .timeLimit(.minutes(10)),
    .enabled(
        if: nbdClientsInstalled,
        "needs nbdinfo, nbdcopy (libnbd-bin), python3 with libnbd (python3-libnbd) and qemu-img (qemu-utils); scripts/install-deps.sh test installs them"))
struct NBDExportTests {
    /// A pvhost serving `bytes` of random data as domain alpha's disk, and its export.
    final class Exported {
        let host: GuestProcessTests.PVHostProcess
        let image: String
        let export: TestProcess
        let uri: String

        init(bytes: Int = 16 << 20, arguments: [String] = []) async throws {
            image = temporaryPath("pvkit-nbd") + ".img"
            var data = Data(count: bytes)
            data.withUnsafeMutableBytes { raw in
                for i in stride(from: 0, to: raw.count, by: 8) { raw.storeBytes(of: UInt64(i) &* 0x9E37_79B9_7F4A_7C15, toByteOffset: i, as: UInt64.self) }
            }
            try data.write(to: URL(fileURLWithPath: image))
            host = try await GuestProcessTests.PVHostProcess(config: #"{"domains": [{"name": "alpha", "disks": [{"devid": 51712, "path": "\#(image)"}]}]}"#)
            let socket = host.directory + "/nbd.sock"
            let listen = arguments.contains("--port") ? [] : ["--socket", socket]
            export = try host.guest("alpha", ["export", "--nbd", "--export-name", "xvda"] + listen + arguments, tool: "pvblk")
            let export = self.export
            try #require(await eventually { export.output.contains("nbd") && export.output.contains("\n") || !export.isRunning }, "the export printed its URI")
            uri = String(export.output.split(separator: "\n").first { $0.hasPrefix("nbd") } ?? "")
            try #require(!uri.isEmpty, "URI in \(export.output)")
        }

        func backing() throws -> [UInt8] { Array(try Data(contentsOf: URL(fileURLWithPath: image))) }

        deinit { unlink(image) }
    }

    /// Runs a Python program with libnbd's binding (`h` connected to `uri`); its output.
    func python(_ uri: String, _ program: String) async throws -> (status: Int32, output: String) {
        try await runCommand("/usr/bin/python3", ["-c", "import nbd, sys\nh = nbd.NBD()\nh.connect_uri(sys.argv[1])\n" + program, uri], timeout: .seconds(60))
    }

    @Test("nbdinfo sees the export as negotiated: fixed newstyle, structured replies, size, flush/FUA/trim/zero/multi-conn, 512-byte blocks")
    func info() async throws {
        let e = try await Exported()
        let (status, output) = try await runCommand("/usr/bin/nbdinfo", ["--json", e.uri], timeout: .seconds(30))
        try #require(status == 0, "\(output)")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(output.utf8)) as? [String: Any])
        #expect(json["protocol"] as? String == "newstyle-fixed" && json["TLS"] as? Bool == false && json["structured"] as? Bool == true, "\(json)")
        let export = try #require((json["exports"] as? [[String: Any]])?.first)
        #expect(export["export-name"] as? String == "xvda" && export["export-size"] as? Int == 16 << 20)
        for key in ["can_flush", "can_fua", "can_trim", "can_zero", "can_multi_conn", "can_df"] { #expect(export[key] as? Bool == true, "\(key): \(export)") }
        #expect(export["is_read_only"] as? Bool == false && export["can_cache"] as? Bool == false)
        #expect(export["block_size_minimum"] as? Int == 512 && export["block_size_maximum"] as? Int == 4 << 20)
        #expect(
            try await runCommand("/usr/bin/nbdinfo", ["--list", e.uri.replacingOccurrences(of: "/xvda?", with: "/?")], timeout: .seconds(30)).output.contains(
                "xvda"))
    }

    @Test("nbdcopy reads the whole disk (4 connections) identical to the backing file, and writes a new image that lands byte for byte")
    func copy() async throws {
        let e = try await Exported()
        let out = e.host.directory + "/out.img"
        let read = try await runCommand("/usr/bin/nbdcopy", ["-C", "4", e.uri, out], timeout: .seconds(60))
        #expect(read.status == 0, "\(read.output)")
        #expect(Array(try Data(contentsOf: URL(fileURLWithPath: out))) == (try e.backing()), "the export reads as the backing file")
        var fresh = [UInt8](repeating: 0, count: 16 << 20)
        for i in fresh.indices { fresh[i] = UInt8(truncatingIfNeeded: i &* 131 &+ i >> 12) }
        try Data(fresh).write(to: URL(fileURLWithPath: out))
        let write = try await runCommand("/usr/bin/nbdcopy", ["--flush", out, e.uri], timeout: .seconds(60))
        #expect(write.status == 0, "\(write.output)")
        #expect(try e.backing() == fresh, "every written byte is in the backing file")
    }

    @Test("qemu-img writes an image through the export and compares it identical")
    func qemuImg() async throws {
        let e = try await Exported()
        let source = e.host.directory + "/source.raw"
        var bytes = [UInt8](repeating: 0, count: 16 << 20)
        for i in stride(from: 0, to: bytes.count, by: 4096) { bytes[i] = UInt8(truncatingIfNeeded: i >> 12) | 1 }
        try Data(bytes).write(to: URL(fileURLWithPath: source))
        let convert = try await runCommand("/usr/bin/qemu-img", ["convert", "-n", "-f", "raw", "-O", "raw", source, e.uri], timeout: .seconds(60))
        #expect(convert.status == 0, "\(convert.output)")
        let compare = try await runCommand("/usr/bin/qemu-img", ["compare", "-f", "raw", "-F", "raw", source, e.uri], timeout: .seconds(60))
        #expect(compare.status == 0 && compare.output.contains("identical"), "\(compare.output)")
        #expect(try e.backing() == bytes)
    }

    @Test("libnbd from Python: FUA write, zero, trim (a hole in the backing file), flush; past the end and misaligned are EINVAL, not a crash")
    func python() async throws {
        let e = try await Exported()
        let program = """
            h.pwrite(b"\\x5a" * 4096, 1 << 20, nbd.CMD_FLAG_FUA)
            h.zero(65536, 2 << 20)
            h.trim(1 << 20, 4 << 20)
            h.flush()
            print("read", h.pread(4096, 1 << 20)[:1].hex(), len(set(h.pread(65536, 2 << 20))))
            for what, args in [("past-end", (512, 16 << 20)), ("straddling", (4096, (16 << 20) - 512))]:
                try:
                    h.pread(*args)
                    print(what, "no error")
                except nbd.Error as error:
                    print(what, error.errno)
            h.shutdown()
            """
        let (status, output) = try await python(e.uri, program)
        #expect(status == 0, "\(output)")
        #expect(output.contains("read 5a 1"), "the FUA write and the zeroed range read back: \(output)")
        #expect(output.contains("past-end EINVAL") && output.contains("straddling EINVAL"), "\(output)")
        let backing = try e.backing()
        #expect(backing[(1 << 20)..<((1 << 20) + 4096)].allSatisfy { $0 == 0x5a } && backing[(2 << 20)..<((2 << 20) + 65536)].allSatisfy { $0 == 0 })
        #expect(backing[(4 << 20)..<(5 << 20)].allSatisfy { $0 == 0 }, "trimmed bytes read as zeros")
        var info = stat()
        #expect(stat(e.image, &info) == 0 && Int(info.st_blocks) * 512 < 16 << 20, "the trim punched a hole (\(info.st_blocks) blocks)")
    }

    @Test("--read-only: reads work; write, trim and zero are refused with EPERM and the backing file is untouched")
    func readOnly() async throws {
        let e = try await Exported(arguments: ["--read-only"])
        let before = try e.backing()
        let program = """
            print("ro", h.is_read_only(), h.pread(512, 0)[:8].hex())
            for what, call in [("write", lambda: h.pwrite(b"x" * 512, 0)), ("trim", lambda: h.trim(512, 0)), ("zero", lambda: h.zero(512, 0))]:
                try:
                    call()
                    print(what, "accepted")
                except nbd.Error as error:
                    print(what, error.errno)
            """
        let (status, output) = try await python(e.uri, program)
        #expect(status == 0 && output.contains("ro True"), "\(output)")
        // libnbd refuses these itself on a read-only export; either way nothing may change.
        #expect(!output.contains("accepted"), "\(output)")
        #expect(try e.backing() == before)
    }

    @Test("TCP on loopback (port chosen by the kernel): nbdinfo and nbdcopy work; SIGTERM ends the export (status 0)")
    func tcp() async throws {
        let e = try await Exported(arguments: ["--port", "0"])
        #expect(e.uri.hasPrefix("nbd://127.0.0.1:") && !e.uri.hasPrefix("nbd://127.0.0.1:0/"), "\(e.uri)")
        let (status, output) = try await runCommand("/usr/bin/nbdinfo", ["--size", e.uri], timeout: .seconds(30))
        #expect(status == 0 && output.hasPrefix("\(16 << 20)"), "\(output)")
        let out = e.host.directory + "/tcp.img"
        #expect(try await runCommand("/usr/bin/nbdcopy", [e.uri, out], timeout: .seconds(60)).status == 0)
        #expect(Array(try Data(contentsOf: URL(fileURLWithPath: out))) == (try e.backing()))
        #expect(try await e.export.stop(with: SIGTERM, within: .seconds(20)) == 0, "\(e.export.output)")
    }

    @Test("the backend goes away (pvhost killed): a FUA write made before is in the backing file; a later read gets EIO at once, the export stays up")
    func backendGone() async throws {
        let e = try await Exported()
        let wrote = try await python(e.uri, "h.pwrite(b'\\x77' * 4096, 8192, nbd.CMD_FLAG_FUA)\nprint('written')\nh.shutdown()")
        #expect(wrote.status == 0 && wrote.output.contains("written"), "\(wrote.output)")
        #expect(try await e.host.process.stop(with: SIGKILL, within: .seconds(10)) == 128 + SIGKILL)
        let read = try await python(
            e.uri,
            "import time\nt = time.time()\ntry:\n    h.pread(4096, 0); print('no error')\n"
                + "except nbd.Error as error:\n    print('error', error.errno)\nprint('seconds %.1f' % (time.time() - t))"
        )
        #expect(read.status == 0 && read.output.contains("error EIO"), "\(read.output)")
        let seconds = read.output.split(separator: "\n").first { $0.hasPrefix("seconds") }.flatMap { Double($0.dropFirst(8)) } ?? 99
        #expect(seconds < 10, "the error came at once, not after a hang (\(seconds) s)")
        #expect(try e.backing()[8192..<12288].allSatisfy { $0 == 0x77 }, "the acknowledged write is on the disk")
        #expect(e.export.isRunning && e.export.output.contains("closed"), "\(e.export.output)")
    }

    @Test(
        "hostile clients: the handshake cut at every byte, garbage, a bad request magic, an oversized write, unknown commands; the export survives and serves")
    func hostile() async throws {
        let e = try await Exported()
        let socket = e.host.directory + "/nbd.sock"
        let program = """
            import socket, struct
            path = sys.argv[2]
            def conn():
                s = socket.socket(socket.AF_UNIX); s.settimeout(10); s.connect(path); return s
            def recv_exactly(s, n):
                data = b""
                while len(data) < n:
                    chunk = s.recv(n - len(data))
                    if not chunk: break
                    data += chunk
                return data
            def opt(o, data=b""): return b"IHAVEOPT" + struct.pack(">II", o, len(data)) + data
            go = opt(8) + opt(7, struct.pack(">I", 4) + b"xvda" + struct.pack(">H", 0))
            hello = struct.pack(">I", 3) + go
            for cut in range(len(hello)):
                s = conn(); recv_exactly(s, 18); s.sendall(hello[:cut]); s.close()
            s = conn(); recv_exactly(s, 18); s.sendall(b"\\xff" * 64)
            print("garbage", s.recv(100)); s.close()
            def session():
                s = conn(); recv_exactly(s, 18); s.sendall(hello)
                replies = 0
                while True:
                    magic, option, kind, length = struct.unpack(">QIII", recv_exactly(s, 20)); recv_exactly(s, length)
                    if option == 7 and kind == 1: return s
            s = session(); s.sendall(struct.pack(">IHHQQI", 0x12345678, 0, 0, 1, 0, 512))
            print("bad magic", s.recv(100)); s.close()
            s = session(); s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 1, 2, 0, 1 << 30))
            print("oversized write", s.recv(100)); s.close()
            s = session()
            for command, flags in [(9, 0), (5, 0), (7, 0), (0, 1 << 12)]:
                s.sendall(struct.pack(">IHHQQI", 0x25609513, flags, command, 3, 0, 512))
                magic, = struct.unpack(">I", recv_exactly(s, 4))
                if magic == 0x67446698:  # simple: error, cookie
                    error, cookie = struct.unpack(">IQ", recv_exactly(s, 12))
                else:  # structured: flags, type, cookie, length, then an error chunk's payload
                    flags, kind, cookie, length = struct.unpack(">HHQI", recv_exactly(s, 16))
                    error, = struct.unpack(">I", recv_exactly(s, length)[:4])
                print("command", command, "error", error, "cookie", cookie)
            s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 2, 4, 0, 0)); s.close()
            h.pread(4096, 0)
            print("still serving")
            """
        let (status, output) = try await runCommand(
            "/usr/bin/python3", ["-c", "import nbd, sys\nh = nbd.NBD()\nh.connect_uri(sys.argv[1])\n" + program, e.uri, socket], timeout: .seconds(120))
        #expect(status == 0, "\(output)")
        #expect(output.contains("garbage b''") && output.contains("bad magic b''") && output.contains("oversized write b''"), "closed, no reply: \(output)")
        for command in [9, 5, 7, 0] { #expect(output.contains("command \(command) error 22"), "EINVAL for command \(command): \(output)") }
        #expect(output.contains("still serving") && e.export.isRunning, "\(output)")
    }
}
