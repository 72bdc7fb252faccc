import Foundation

/// A guest's root as the guest would see it: file systems mounted at their mount points,
/// symbolic links resolved inside the guest (an absolute link names the guest's `/`, never
/// the host's), `..` stopping at the root, and loops cut after 40 links as Linux does.
public final class GuestRoot {
    /// Mount point → file system, the root's at "/".
    public private(set) var mounts: [(point: String, fileSystem: GuestFileSystem)]
    /// Whatever the root keeps alive while it is read (an open disk image, a loop mount).
    private let owners: [AnyObject]
    /// For people: the directory, or "image.qcow2, partition 1 (ext4)".
    public var description: String { mounts.first { $0.point == "/" }?.fileSystem.description ?? "?" }

    public static let linkLimit = 40

    public init(root: GuestFileSystem, owners: [AnyObject] = []) {
        mounts = [("/", root)]
        self.owners = owners
    }

    /// Opens a directory on this machine as a guest root.
    public convenience init(directory: String) throws(GuestFileError) {
        self.init(root: try HostDirectory(directory))
    }

    /// Adds a file system at `point` (an absolute guest path), as fstab would mount it.
    public func mount(_ fileSystem: GuestFileSystem, at point: String) {
        let normalized = "/" + point.split(separator: "/").joined(separator: "/")
        mounts.removeAll { $0.point == normalized }
        mounts.append((normalized, fileSystem))
        mounts.sort { $0.point.count > $1.point.count }
    }

    /// The file system and its own path for a resolved guest path.
    private func locate(_ path: String) -> (GuestFileSystem, String) {
        for (point, fileSystem) in mounts {
            if point == "/" { return (fileSystem, path) }
            if path == point { return (fileSystem, "/") }
            if path.hasPrefix(point + "/") { return (fileSystem, String(path.dropFirst(point.count))) }
        }
        return (mounts[mounts.count - 1].fileSystem, path)
    }

    private func rawKind(_ path: String) -> GuestFileKind? {
        let (fileSystem, inner) = locate(path)
        return fileSystem.kind(of: inner)
    }

    /// `path` with every symbolic link resolved inside the guest (the last one only when
    /// `followingLast`). Throws when a link loops or a directory on the way is missing.
    public func resolve(_ path: String, followingLast: Bool = true) throws(GuestFileError) -> String {
        var resolved: [Substring] = []
        var pending = path.split(separator: "/")[...]
        var links = 0
        while let component = pending.popFirst() {
            if component == "." { continue }
            if component == ".." {
                _ = resolved.popLast()
                continue
            }
            let candidate = "/" + (resolved + [component]).joined(separator: "/")
            let kind = rawKind(candidate)
            if kind == .symbolicLink, followingLast || !pending.isEmpty {
                links += 1
                guard links <= Self.linkLimit else {
                    throw GuestFileError(
                        .notFound, "\(path) in \(description) goes through more than \(Self.linkLimit) symbolic links (a loop)",
                        hint: "Fix the guest's links; pvcheck resolves them inside the guest only")
                }
                let (fileSystem, inner) = locate(candidate)
                let target = try fileSystem.linkTarget(of: inner)
                if target.hasPrefix("/") { resolved = [] }
                pending = (target.split(separator: "/") + pending)[...]
                continue
            }
            if kind == nil, !pending.isEmpty {
                throw GuestFileError(.notFound, "\(candidate) does not exist in \(description)", hint: "Check the guest's files")
            }
            resolved.append(component)
        }
        return "/" + resolved.joined(separator: "/")
    }

    /// What `path` names after its links are followed, or nil.
    public func kind(of path: String) -> GuestFileKind? {
        guard let resolved = try? resolve(path) else { return nil }
        return rawKind(resolved)
    }

    public func isFile(_ path: String) -> Bool {
        if case .file? = kind(of: path) { return true }
        return false
    }

    public func isDirectory(_ path: String) -> Bool { kind(of: path) == .directory }

    /// The target of the link at `path` itself (its directories resolved), or nil when it is not one.
    public func linkTarget(of path: String) -> String? {
        guard let resolved = try? resolve(path, followingLast: false), rawKind(resolved) == .symbolicLink else { return nil }
        let (fileSystem, inner) = locate(resolved)
        return try? fileSystem.linkTarget(of: inner)
    }

    /// The bytes of a regular file, at most `limit`.
    public func contents(of path: String, limit: Int) throws(GuestFileError) -> [UInt8] {
        let resolved = try resolve(path)
        let (fileSystem, inner) = locate(resolved)
        return try fileSystem.contents(of: inner, limit: limit)
    }

    /// Reads a regular file straight into the buffer `allocate` returns for its size.
    public func read(_ path: String, limit: Int, into allocate: (Int) -> UnsafeMutableRawBufferPointer) throws(GuestFileError) {
        let resolved = try resolve(path)
        let (fileSystem, inner) = locate(resolved)
        try fileSystem.read(inner, limit: limit, into: allocate)
    }

    /// A text file (at most `limit` bytes), or nil when it is missing or unreadable.
    public func text(of path: String, limit: Int = 1 << 20) -> String? {
        guard let bytes = try? contents(of: path, limit: limit) else { return nil }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// The names in a directory (sorted), or nil.
    public func names(in path: String) -> [String]? {
        guard let resolved = try? resolve(path), rawKind(resolved) == .directory else { return nil }
        let (fileSystem, inner) = locate(resolved)
        return try? fileSystem.names(in: inner)
    }

    /// The host path of a guest file when the guest is on this machine's file system, else nil.
    public func hostFile(_ path: String) -> String? {
        guard let resolved = try? resolve(path) else { return nil }
        let (fileSystem, inner) = locate(resolved)
        return fileSystem.hostPath(of: inner)
    }

    /// The host path of a guest directory, for libraries that take one (libkmod): the
    /// directory itself when the guest is on this machine's file system, else a private copy
    /// of the regular files directly in it whose names pass `include` (made under `scratch`).
    /// With `recursive`, subdirectories are copied too (at most `limit` bytes in all).
    public func hostDirectory(
        _ path: String, scratch: String, recursive: Bool = false, limit: Int = 256 << 20, include: (String) -> Bool
    ) throws(GuestFileError) -> String {
        let resolved = try resolve(path)
        guard rawKind(resolved) == .directory else {
            throw GuestFileError(.notFound, "\(path) is not a directory in \(description)", hint: "Check the guest's files")
        }
        let (fileSystem, inner) = locate(resolved)
        if let host = fileSystem.hostPath(of: inner) { return host }
        let copy = scratch + "/" + resolved.split(separator: "/").joined(separator: "_")
        do {
            try FileManager.default.createDirectory(atPath: copy, withIntermediateDirectories: true)
        } catch {
            throw GuestFileError(.unreadable, "cannot make \(copy): \(error.localizedDescription)", hint: "Check the space in \(scratch)")
        }
        var budget = limit
        try copyFiles(fileSystem, inner, to: copy, recursive: recursive, budget: &budget, include: include)
        return copy
    }

    private func copyFiles(
        _ fileSystem: GuestFileSystem, _ inner: String, to copy: String, recursive: Bool, budget: inout Int, include: (String) -> Bool
    ) throws(GuestFileError) {
        for name in try fileSystem.names(in: inner) {
            let member = (inner == "/" ? "" : inner) + "/" + name
            switch fileSystem.kind(of: member) {
            case .file(let size)? where include(name):
                guard size <= UInt64(budget) else {
                    throw GuestFileError(
                        .tooLarge, "copying \(member) of \(description) would pass the \(budget)-byte budget", hint: "The tree is not what it should be")
                }
                let bytes = try fileSystem.contents(of: member, limit: budget)
                budget -= bytes.count
                // A private scratch copy: no atomic rename, no fsync.
                do {
                    try Data(bytes).write(to: URL(fileURLWithPath: copy + "/" + name))
                } catch {
                    throw GuestFileError(
                        .unreadable, "cannot write \(copy)/\(name): \(error.localizedDescription)", hint: "Check the space in the temporary directory")
                }
            case .directory? where recursive:
                do {
                    try FileManager.default.createDirectory(atPath: copy + "/" + name, withIntermediateDirectories: true)
                } catch {
                    throw GuestFileError(.unreadable, "cannot make \(copy)/\(name): \(error.localizedDescription)", hint: "Check the temporary directory")
                }
                try copyFiles(fileSystem, member, to: copy + "/" + name, recursive: true, budget: &budget, include: include)
            default: continue
            }
        }
    }
}
