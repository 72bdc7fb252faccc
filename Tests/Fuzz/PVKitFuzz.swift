import Foundation
import GuestFiles
import KernelAudit
import NBDProtocol
import PVHostProtocol
import XenABI
import XenBus
import XenStoreWire
import XenStoredCore

/// The fuzz targets, one per input surface. libFuzzer calls ``fuzzOne(_:_:)``; the target is
/// chosen by `PVKIT_FUZZ_TARGET` (run `pvkit-fuzz --list` for the names).
enum FuzzTarget: String, CaseIterable {
    /// A kernel image through the whole kernel pipeline: setup header, every decompressor,
    /// ELF program and section headers and notes (libelf), banner, IKCONFIG, kallsyms.
    case kernel
    /// An initramfs: concatenated cpio archives, compressed or not.
    case initramfs
    /// A fix-catalogue entry (`patches/*.json`).
    case catalogue
    /// A target profile (`patches/targets/*.json`).
    case target
    /// xs_wire framing and every request and reply decoder.
    case xsWire = "xs-wire"
    /// xenstored's engine fed messages from three connections (dom0, two guests).
    case xenstored
    /// A whole disk image: format detection, libqcow/libvmdk/libvhdi, libblkid, libext2fs.
    case diskImage = "disk-image"
    /// A guest root's files (fstab, crypttab, boot loaders, network configuration).
    case guestFacts = "guest-facts"
    /// pvhost's control-socket messages (requests and replies as pvhost and a guest decode them).
    case control
    /// The XenBus frontend state machine driven by any sequence of own and backend states.
    case xenbus
    /// An NBD client's bytes through the server session: handshake options, then requests.
    case nbd

    static let current: FuzzTarget = {
        let name = ProcessInfo.processInfo.environment["PVKIT_FUZZ_TARGET"] ?? ""
        guard let target = FuzzTarget(rawValue: name) else {
            FileHandle.standardError.write(Data("pvkit-fuzz: set PVKIT_FUZZ_TARGET to one of \(allCases.map(\.rawValue).joined(separator: ", "))\n".utf8))
            exit(2)
        }
        return target
    }()

    func run(_ bytes: UnsafeRawBufferPointer) {
        switch self {
        case .kernel:
            var options = AuditOptions(limits: DecompressionLimits(maxOutput: 64 << 20), symbols: true)
            options.targets = []
            _ = KernelAuditor(options: options).report(bytes: bytes, path: "fuzz")
        case .initramfs:
            _ = try? KernelAuditor(options: AuditOptions(limits: DecompressionLimits(maxOutput: 64 << 20))).initramfs(bytes: bytes, path: "fuzz")
        case .catalogue:
            _ = Catalogue.parse(Data(bytes), file: "fuzz.json")
        case .target:
            _ = TargetCatalogue.parse(Data(bytes), file: "fuzz.json")
        case .xsWire:
            var decoder = XsFrameDecoder(limit: 4096)
            decoder.feed(bytes)
            while let message = try? decoder.next() {
                _ = try? XenStoreRequest.decode(message)
                _ = try? XenStoreReply.decode(message, answering: XsMessageType(rawValue: message.header.type))
            }
        case .xenstored:
            Self.xenstored(bytes)
        case .diskImage:
            Self.diskImage(bytes)
        case .guestFacts:
            _ = GuestInfo.read(GuestRoot(root: MemoryFileSystem(bytes)))
        case .control:
            let message = Array(bytes)
            _ = ControlCoding.decode(ControlRequest.self, message)
            _ = ControlCoding.decode(ControlReply.self, message)
            _ = ControlCoding.decode(HostStatus.self, message)
        case .nbd:
            Self.nbd(bytes)
        case .xenbus:
            // Each pair of bytes: the frontend's own state and the backend's, as a watch reads
            // them (any 32-bit value may be written to the node; unknown ones read as unknown).
            var machine = FrontendStateMachine(connectsDirectly: bytes.first.map { $0 & 1 == 1 } ?? false)
            var index = 1
            while index + 1 < bytes.count {
                let own = XenbusState(rawValue: UInt32(bytes[index])) ?? .unknown
                let backend = XenbusState(rawValue: UInt32(bytes[index + 1])) ?? .unknown
                if bytes[index] == 0xFF { machine.restart() }
                _ = machine.next(own: own, backend: backend)
                index += 2
            }
        }
    }

    /// Each chunk: one byte picking the connection, two giving the chunk's length, the bytes.
    static func xenstored(_ bytes: UnsafeRawBufferPointer) {
        var engine = XenStoreEngine()
        let callers = [XenStoreCaller.dom0, XenStoreCaller(domain: DomainID(1), privileged: false), XenStoreCaller(domain: DomainID(2), privileged: false)]
        for (id, caller) in callers.enumerated() { engine.connect(id, caller: caller) }
        var decoders = Array(repeating: XsFrameDecoder(limit: 4096), count: callers.count)
        var offset = 0
        while offset + 3 <= bytes.count {
            let id = Int(bytes[offset]) % callers.count
            let length = min(Int(bytes[offset + 1]) | Int(bytes[offset + 2]) << 8, bytes.count - offset - 3)
            decoders[id].feed(bytes[(offset + 3)..<(offset + 3 + length)])
            offset += 3 + length
            do {
                while let message = try decoders[id].next() { _ = engine.handle(message, from: id) }
            } catch {
                engine.disconnect(id)
                engine.connect(id, caller: callers[id])
                decoders[id] = XsFrameDecoder(limit: 4096)
            }
        }
    }

    /// The first byte picks the export (read-only or not, its size and block size); the rest
    /// is what a client sent. What the session consumes must be what it was given.
    static func nbd(_ bytes: UnsafeRawBufferPointer) {
        guard let pick = bytes.first else { return }
        let flags: NBD.TransmissionFlags = pick & 1 == 0 ? [.sendFlush, .sendFUA, .sendTrim, .sendWriteZeroes] : [.readOnly]
        let export = NBDExport(
            name: "xvda", size: UInt64(pick >> 1) << 12, flags: flags, minimumBlock: pick & 2 == 0 ? 512 : 4096, maximumPayload: 1 << 16)
        var session = NBDServerSession(exports: [export, NBDExport(name: "", size: 0, flags: [])])
        var at = 1
        while at < bytes.count, session.phase != .closed {
            let rest = UnsafeRawBufferPointer(rebasing: bytes[at...])
            guard let step = try? session.step(rest) else { return }
            switch step {
            case let .needMore(count):
                precondition(count > 0, "asks for more, not nothing")
                return
            case let .reply(_, consumed), let .transmission(_, consumed), let .close(_, consumed), let .disconnect(consumed):
                precondition(consumed > 0 && consumed <= rest.count, "consumed what it was given")
                at += consumed
            case let .request(request, consumed):
                precondition(consumed <= rest.count, "consumed what it was given")
                precondition(request.offset.addingReportingOverflow(UInt64(request.length)).overflow == false, "a checked range")
                precondition(request.offset + UInt64(request.length) <= export.size || session.export != export, "inside the export")
                at += consumed + (request.command == .write ? Int(request.length) : 0)
            case let .refuse(_, _, _, payload, consumed):
                precondition(consumed <= rest.count && payload <= Int(export.maximumPayload), "a bounded payload to skip")
                at += consumed + payload
            }
        }
    }

    /// A disk image from the bytes, on tmpfs (the libraries open files by name).
    static func diskImage(_ bytes: UnsafeRawBufferPointer) {
        let path = (FileManager.default.fileExists(atPath: "/dev/shm") ? "/dev/shm/" : NSTemporaryDirectory()) + "pvkit-fuzz-\(getpid()).img"
        guard FileManager.default.createFile(atPath: path, contents: Data(bytes)) else { return }
        defer { try? FileManager.default.removeItem(atPath: path) }
        guard let disk = try? GuestDisk(path: path) else { return }
        _ = GuestInfo.read(disk.root)
        _ = disk.root.names(in: "/boot")
        _ = disk.root.text(of: "/etc/fstab")
    }
}

/// A guest file system from fuzz bytes: NUL-separated records "path\u{1}contents", a record
/// whose contents start with "->" is a link.
final class MemoryFileSystem: GuestFileSystem {
    var files: [String: [UInt8]] = [:]
    var links: [String: String] = [:]
    var directories: Set<String> = ["/"]
    let description = "fuzz"

    init(_ bytes: UnsafeRawBufferPointer) {
        for record in bytes.split(separator: 0) {
            let parts = record.split(separator: 1, maxSplits: 1, omittingEmptySubsequences: false)
            let path = "/" + String(decoding: parts[0], as: UTF8.self).split(separator: "/").joined(separator: "/")
            let contents = parts.count > 1 ? Array(parts[1]) : []
            if contents.starts(with: Array("->".utf8)) {
                links[path] = String(decoding: contents.dropFirst(2), as: UTF8.self)
            } else {
                files[path] = contents
            }
            var parent = path
            while let slash = parent.lastIndex(of: "/"), slash != parent.startIndex {
                parent = String(parent[..<slash])
                directories.insert(parent)
            }
        }
    }

    func kind(of path: String) -> GuestFileKind? {
        if directories.contains(path) { return .directory }
        if links[path] != nil { return .symbolicLink }
        return files[path].map { .file(size: UInt64($0.count)) }
    }

    func linkTarget(of path: String) throws(GuestFileError) -> String {
        guard let target = links[path] else { throw GuestFileError(.notFound, "\(path) is not a link", hint: "-") }
        return target
    }

    func contents(of path: String, limit: Int) throws(GuestFileError) -> [UInt8] {
        guard let bytes = files[path] else { throw GuestFileError(.notFound, "\(path) is not a file", hint: "-") }
        guard bytes.count <= limit else { throw GuestFileError(.tooLarge, "\(path) is too large", hint: "-") }
        return bytes
    }

    func read(_ path: String, limit: Int, into allocate: (Int) -> UnsafeMutableRawBufferPointer) throws(GuestFileError) {
        let bytes = try contents(of: path, limit: limit)
        let buffer = allocate(bytes.count)
        bytes.withUnsafeBytes { source in
            if let base = source.baseAddress, let target = buffer.baseAddress { target.copyMemory(from: base, byteCount: min(source.count, buffer.count)) }
        }
    }

    func names(in path: String) throws(GuestFileError) -> [String] {
        let prefix = path == "/" ? "/" : path + "/"
        let all = Set(files.keys).union(links.keys).union(directories)
        return all.filter { $0.hasPrefix(prefix) && $0 != path && !$0.dropFirst(prefix.count).contains("/") }.map { String($0.dropFirst(prefix.count)) }
            .sorted()
    }

    func hostPath(of path: String) -> String? { nil }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    FuzzTarget.current.run(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}

#if FUZZING
    @_silgen_name("LLVMFuzzerRunDriver")
    func LLVMFuzzerRunDriver(
        _ argc: UnsafeMutablePointer<Int32>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
        _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32
    ) -> Int32

    @_cdecl("pvkit_fuzz_main")
    public func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
        var count = argc
        var arguments = argv
        return LLVMFuzzerRunDriver(&count, &arguments) { data, size in fuzzOne(data, size) }
    }
#else
    /// Without libFuzzer: replays corpus files and directories given as arguments (every file
    /// once), so normal builds compile and run the targets.
    @main
    struct Replay {
        static func main() {
            let arguments = CommandLine.arguments.dropFirst()
            if arguments.first == "--list" {
                print(FuzzTarget.allCases.map(\.rawValue).joined(separator: "\n"))
                return
            }
            var count = 0
            for argument in arguments {
                var isDirectory: ObjCBool = false
                guard FileManager.default.fileExists(atPath: argument, isDirectory: &isDirectory) else { continue }
                let files =
                    isDirectory.boolValue
                    ? ((try? FileManager.default.contentsOfDirectory(atPath: argument)) ?? []).sorted().map { argument + "/" + $0 } : [argument]
                for file in files {
                    guard let data = FileManager.default.contents(atPath: file) else { continue }
                    data.withUnsafeBytes { FuzzTarget.current.run($0) }
                    count += 1
                }
            }
            print("pvkit-fuzz: \(FuzzTarget.current.rawValue): replayed \(count) inputs")
        }
    }
#endif
