import Foundation

/// One member of a cpio archive (`newc`/`crc` format, as Linux's initramfs uses).
public struct CpioEntry: Sendable, Equatable {
    public let name: String
    public let mode: UInt32
    public let size: Int
    /// Where the member's data starts in its (decompressed) archive.
    public let dataOffset: Int
    public var isRegularFile: Bool { mode & 0o170000 == 0o100000 }
}

/// What an initramfs holds that matters for a Xen guest, and its verdict.
public struct InitramfsInfo: Sendable, Codable {
    public struct Archive: Sendable, Codable {
        /// Where the archive starts in the file.
        public let offset: Int
        /// nil for the uncompressed (early microcode) part.
        public let compression: CompressionFormat?
        public let entries: Int
    }

    public let path: String
    public let archives: [Archive]
    /// Module files in the initramfs (paths), for the releases it carries.
    public let moduleReleases: [String]
    /// xen-blkfront / xen-netfront files, if present.
    public let blockFrontend: String?
    public let netFrontend: String?
    /// Members whose names would escape the root (`..`, absolute): reported, never written.
    public let suspiciousNames: [String]
    /// The tool that built it, recognised from its own files: `initramfs-tools`, `dracut`, `mkinitcpio`.
    public let builder: InitramfsBuilder?
    /// Why ``builder`` was decided (the member that shows it).
    public let builderEvidence: String?
    /// Every kernel module in it, by name (`xen_blkfront`, `nvme`), sorted.
    public let modules: [String]
    /// Whether the first archive is an uncompressed early-microcode prefix (`early_cpio`, or
    /// `kernel/x86/microcode/…`).
    public let hasEarlyMicrocode: Bool
}

/// The tools that build an initramfs, and how each is told to add a driver.
public enum InitramfsBuilder: String, Sendable, Codable {
    case initramfsTools = "initramfs-tools"
    case dracut
    case mkinitcpio

    /// The change that puts `modules` in the next initramfs for `release`, and the command that rebuilds it.
    public func fix(adding modules: [String], release: String, target: String) -> String {
        let list = modules.joined(separator: " ")
        switch self {
        case .initramfsTools:
            return "printf '%s\\n' \(list) >> /etc/initramfs-tools/modules && update-initramfs -u -k \(release)"
        case .dracut:
            return "echo 'add_drivers+=\" \(list) \"' > /etc/dracut.conf.d/pvcheck-\(target).conf && dracut -f --kver \(release)"
        case .mkinitcpio:
            return "add \(list) to MODULES=(…) in /etc/mkinitcpio.conf (or a file in /etc/mkinitcpio.conf.d/), then mkinitcpio -P"
        }
    }
}

/// A `newc`/`crc` cpio stream parsed as it arrives: headers and names are read, file data is
/// counted and skipped, never held. Archives may follow each other (zero padding between).
struct CpioStreamParser {
    /// The header's fields, as the cpio format names them.
    static let fieldNames = [
        "ino", "mode", "uid", "gid", "nlink", "mtime", "filesize", "devmajor", "devminor", "rdevmajor", "rdevminor", "namesize", "check"
    ]
    let context: String
    /// The compressed archive's offset in the file, when the stream is a decompressed one.
    let fileOffset: Int?
    private(set) var entries: [CpioEntry] = []
    /// Data bytes still to skip of the current member.
    private var skipping = 0
    /// Whether the last archive ended with its trailer (only zeros or a new archive may follow).
    private var betweenArchives = false
    /// Whether a non-cpio byte after a trailer ended the stream (an uncompressed part followed by a compressed one).
    private(set) var stopped = false

    init(context: String, fileOffset: Int?) {
        self.context = context
        self.fileOffset = fileOffset
    }

    func error(_ code: KernelAuditError.Code, _ what: String, at position: Int, hint: String) -> KernelAuditError {
        if let fileOffset {
            return KernelAuditError(code, "\(what) at byte \(position) of the decompressed stream in \(context)", offset: fileOffset, hint: hint)
        }
        return KernelAuditError(code, "\(what) in \(context)", offset: position, hint: hint)
    }

    /// Consumes what it can of `bytes` (which start at stream offset `start`); returns how many
    /// bytes are done with. The rest is offered again with more after it.
    mutating func consume(_ bytes: UnsafeRawBufferPointer, at start: Int) throws(KernelAuditError) -> Int {
        var offset = 0
        let view = ByteView(bytes: bytes)
        while offset < bytes.count, !stopped {
            if skipping > 0 {
                let step = min(skipping, bytes.count - offset)
                skipping -= step
                offset += step
                continue
            }
            if betweenArchives {
                if bytes[offset] == 0 {
                    offset += 1
                    continue
                }
                guard bytes.count - offset >= 6 else { return offset }
                guard view.hasPrefix(Initramfs.newcMagic, at: offset) || view.hasPrefix(Initramfs.crcMagic, at: offset) else {
                    stopped = true
                    return offset
                }
                betweenArchives = false
            }
            guard bytes.count - offset >= Initramfs.headerSize else { return offset }
            guard view.hasPrefix(Initramfs.newcMagic, at: offset) || view.hasPrefix(Initramfs.crcMagic, at: offset) else {
                throw error(
                    .corruptStream, "expected a cpio header (070701)", at: start + offset, hint: "The initramfs is damaged; rebuild it (update-initramfs -u)")
            }
            func field(_ index: Int) throws(KernelAuditError) -> Int {
                let at = offset + 6 + 8 * index
                var value = 0
                for i in 0..<8 {
                    let c = bytes[at + i]
                    let digit: Int
                    switch c {
                    case 0x30...0x39: digit = Int(c - 0x30)
                    case 0x41...0x46: digit = Int(c - 0x41 + 10)
                    case 0x61...0x66: digit = Int(c - 0x61 + 10)
                    default:
                        throw error(
                            .corruptStream, "cpio header field \(Self.fieldNames[index]) is not hexadecimal", at: start + at,
                            hint: "The initramfs is damaged; rebuild it (update-initramfs -u)")
                    }
                    value = value << 4 | digit
                }
                return value
            }
            let mode = try field(1), size = try field(6), nameSize = try field(11)
            guard nameSize >= 1, nameSize <= Initramfs.nameLimit else {
                throw error(
                    .corruptStream, "cpio namesize \(nameSize) is absurd (limit \(Initramfs.nameLimit))", at: start + offset + 6 + 88,
                    hint: "The initramfs is damaged or hostile; rebuild it")
            }
            let nameStart = offset + Initramfs.headerSize
            let dataStart = (nameStart + nameSize + 3) & ~3
            guard bytes.count >= dataStart else { return offset }
            let name = String(decoding: bytes[nameStart..<nameStart + nameSize - 1], as: UTF8.self)
            let padded = (size + 3) & ~3
            if name == "TRAILER!!!" {
                betweenArchives = true
                offset = dataStart
                skipping = padded
                continue
            }
            entries.append(CpioEntry(name: name, mode: UInt32(truncatingIfNeeded: mode), size: size, dataOffset: start + dataStart))
            offset = dataStart
            skipping = padded
        }
        return offset
    }

    /// The stream ended at `end`: it must not end inside a member.
    func finish(at end: Int) throws(KernelAuditError) {
        if stopped || (betweenArchives && skipping == 0) { return }
        // Data padding may be cut at the very end of a stream.
        if betweenArchives && skipping < 4 { return }
        throw error(
            .truncated, entries.isEmpty ? "cpio archive ends inside a header" : "cpio member \(entries.last!.name) runs past the end",
            at: end, hint: "The initramfs is cut short; rebuild it (update-initramfs -u)")
    }
}

/// Reading an initramfs: concatenated cpio archives, the uncompressed early part first, then
/// any compression Linux supports; bounded by the decompression limits; nothing is written.
enum Initramfs {
    static let newcMagic: [UInt8] = Array("070701".utf8)
    static let crcMagic: [UInt8] = Array("070702".utf8)
    static let headerSize = 110
    static let nameLimit = 4096

    static func read(path: String, limits: DecompressionLimits) throws(KernelAuditError) -> (info: InitramfsInfo, entries: [CpioEntry]) {
        try read(file: try ImageFile.read(path: path), path: path, limits: limits)
    }

    /// Reads an initramfs already in memory (`path` names it in messages).
    static func read(file: ImageBuffer, path: String, limits: DecompressionLimits) throws(KernelAuditError) -> (info: InitramfsInfo, entries: [CpioEntry]) {
        guard file.count > 0 else {
            throw KernelAuditError(.empty, "the initramfs \(path) is empty", offset: 0, hint: "Rebuild it (update-initramfs -u)")
        }
        let bytes = file.bytes
        let view = ByteView(bytes: bytes)
        var archives: [InitramfsInfo.Archive] = []
        var entries: [CpioEntry] = []
        var offset = 0
        while offset < bytes.count {
            // Archives are separated by zero padding.
            while offset < bytes.count, bytes[offset] == 0 { offset += 1 }
            guard offset < bytes.count else { break }
            if view.hasPrefix(newcMagic, at: offset) || view.hasPrefix(crcMagic, at: offset) {
                // Uncompressed (the early microcode part): parsed in place, in the file's offsets.
                var parser = CpioStreamParser(context: path, fileOffset: nil)
                let used = try parser.consume(UnsafeRawBufferPointer(rebasing: bytes[offset...]), at: offset)
                try parser.finish(at: offset + used)
                archives.append(.init(offset: offset, compression: nil, entries: parser.entries.count))
                entries += parser.entries
                offset += used
            } else if let format = CompressionFormat.detect(view, at: offset) {
                // Compressed: the members are parsed as the decompressor produces them and their
                // data is dropped, so memory stays at a few MiB whatever a member's size.
                var parser = CpioStreamParser(context: "\(path) (\(format) archive at byte \(offset))", fileOffset: offset)
                let stream = try Decompressor.decompress(bytes, format: format, at: offset, limits: limits) { (window, start) throws(KernelAuditError) in
                    try parser.consume(window, at: start)
                }
                try parser.finish(at: stream.produced)
                entries += parser.entries
                archives.append(.init(offset: offset, compression: format, entries: parser.entries.count))
                offset += stream.consumed
            } else {
                throw KernelAuditError(
                    .corruptStream, "the initramfs has neither a cpio archive nor a known compression here",
                    offset: offset, hint: "The file is damaged or not an initramfs; rebuild it (update-initramfs -u)")
            }
        }
        guard !archives.isEmpty else {
            throw KernelAuditError(.notAKernel, "\(path) holds no cpio archive", offset: 0, hint: "This is not an initramfs")
        }
        return (summarize(path: path, archives: archives, entries: entries), entries)
    }

    static func summarize(path: String, archives: [InitramfsInfo.Archive], entries: [CpioEntry]) -> InitramfsInfo {
        var releases = Set<String>()
        var block: String? = nil, net: String? = nil
        var suspicious: [String] = []
        var modules = Set<String>()
        var builder: InitramfsBuilder? = nil, builderEvidence: String? = nil
        var earlyMicrocode = false
        let firstArchiveEnd = archives.first.map { $0.compression == nil ? $0.entries : 0 } ?? 0
        for (index, entry) in entries.enumerated() {
            let name = entry.name.hasPrefix("./") ? String(entry.name.dropFirst(2)) : entry.name
            if index < firstArchiveEnd, name == "early_cpio" || name.hasPrefix("kernel/x86/microcode/") { earlyMicrocode = true }
            if builder == nil {
                if name == "conf/initramfs.conf" || name == "scripts/init-top" {
                    (builder, builderEvidence) = (.initramfsTools, name)
                } else if name.hasPrefix("usr/lib/dracut/") || name.hasPrefix("lib/dracut/") || name == "usr/lib/dracut-lib.sh" || name == "lib/dracut-lib.sh" {
                    (builder, builderEvidence) = (.dracut, name)
                } else if name == "buildconfig" || name == "init_functions" {
                    (builder, builderEvidence) = (.mkinitcpio, name)
                }
            }
            if name.hasPrefix("/") || name.split(separator: "/").contains("..") { suspicious.append(entry.name) }
            let parts = name.split(separator: "/")
            if let modules = parts.firstIndex(of: "modules"), modules > 0, parts[modules - 1] == "lib", modules + 1 < parts.count {
                releases.insert(String(parts[modules + 1]))
            }
            guard entry.isRegularFile else { continue }
            let module = moduleName(fromPath: name)
            if [".ko", ".ko.xz", ".ko.zst", ".ko.gz"].contains(where: { name.hasSuffix($0) }) { modules.insert(module) }
            if module == "xen_blkfront" { block = name }
            if module == "xen_netfront" { net = name }
        }
        return InitramfsInfo(
            path: path, archives: archives, moduleReleases: releases.sorted(), blockFrontend: block, netFrontend: net,
            suspiciousNames: suspicious, builder: builder, builderEvidence: builderEvidence, modules: modules.sorted(),
            hasEarlyMicrocode: earlyMicrocode)
    }

    /// The first-class question: will this kernel + initramfs find a root disk on xvda?
    static func verdict(_ info: InitramfsInfo, release: String?, frontends: [FrontendPresence]?) -> Verdict {
        var evidence = info.archives.map { "cpio archive at byte \($0.offset)\($0.compression.map { ", \($0)" } ?? ", uncompressed"): \($0.entries) members" }
        let vbd = frontends?.first { $0.frontend == .vbd }
        if vbd?.state == .builtIn {
            evidence.append(vbd!.evidence)
            return Verdict(
                mode: .initramfsRootDisk, answer: .yes, summary: "blkfront is built into the kernel: xvd* disks appear without the initramfs",
                evidence: evidence)
        }
        if let release, !info.moduleReleases.isEmpty, !info.moduleReleases.contains(release) {
            evidence.append("modules in the initramfs are for \(info.moduleReleases.joined(separator: ", "))")
            return Verdict(
                mode: .initramfsRootDisk, answer: .no,
                summary:
                    "the initramfs carries modules for \(info.moduleReleases.joined(separator: ", ")), not \(release): rebuild it for this kernel (update-initramfs -u -k \(release))",
                evidence: evidence)
        }
        if let block = info.blockFrontend {
            evidence.append("\(block) in the initramfs")
            if let net = info.netFrontend { evidence.append("\(net) in the initramfs") }
            return Verdict(
                mode: .initramfsRootDisk, answer: .yes, summary: "xen-blkfront is in the initramfs: the root disk on xvda will be found",
                evidence: evidence)
        }
        if vbd?.state == .absent {
            evidence.append("kernel: \(vbd!.evidence)")
            return Verdict(
                mode: .initramfsRootDisk, answer: .no, summary: "this kernel has no blkfront at all: no xvd* disks, whatever the initramfs holds",
                evidence: evidence)
        }
        if vbd == nil || vbd?.state == .unknown {
            return Verdict(
                mode: .initramfsRootDisk, answer: .unknown,
                summary: "no xen-blkfront in the initramfs, and the kernel's own blkfront cannot be confirmed", evidence: evidence)
        }
        evidence.append(vbd.map { "kernel: \($0.evidence)" } ?? "")
        return Verdict(
            mode: .initramfsRootDisk, answer: .no,
            summary:
                "xen-blkfront is a module but not in the initramfs: a root disk on xvda will not be found — add xen-blkfront to /etc/initramfs-tools/modules and run update-initramfs -u",
            evidence: evidence)
    }
}
