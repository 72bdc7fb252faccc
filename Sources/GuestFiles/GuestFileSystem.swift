import Foundation

/// What a name in a guest file system is, without following a symbolic link.
public enum GuestFileKind: Sendable, Equatable {
    case file(size: UInt64)
    case directory
    case symbolicLink
    case other
}

/// One file system a guest root is made of: a host directory, an ext4 volume in an image, a
/// loop mount. Paths are absolute within it and have no symbolic link before their last
/// component (``GuestRoot`` resolves links before asking).
public protocol GuestFileSystem: AnyObject {
    /// For people: "/mnt/guest", "disk.qcow2, partition 1 (ext4)".
    var description: String { get }
    /// What `path` names, or nil when nothing does.
    func kind(of path: String) -> GuestFileKind?
    /// The target of the symbolic link at `path`.
    func linkTarget(of path: String) throws(GuestFileError) -> String
    /// The bytes of the regular file at `path`, at most `limit` of them (else ``GuestFileError/Code/tooLarge``).
    func contents(of path: String, limit: Int) throws(GuestFileError) -> [UInt8]
    /// Reads the regular file at `path` (at most `limit` bytes) straight into the buffer
    /// `allocate` returns for its size, with no copy in between.
    func read(_ path: String, limit: Int, into allocate: (Int) -> UnsafeMutableRawBufferPointer) throws(GuestFileError)
    /// The names in the directory at `path`, sorted.
    func names(in path: String) throws(GuestFileError) -> [String]
    /// The host directory that holds `path` when the file system is one (a directory, a
    /// mount): libraries that want a real path (libkmod) then use it as it is.
    func hostPath(of path: String) -> String?
}

/// A directory on this machine that holds a guest's root (a mount point, an unpacked tree).
public final class HostDirectory: GuestFileSystem {
    public let root: String
    public var description: String { root }

    public init(_ root: String) throws(GuestFileError) {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: root, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw GuestFileError(.unreadable, "\(root) is not a directory", hint: "Give the mount point of a guest's root file system")
        }
        self.root = root.count > 1 && root.hasSuffix("/") ? String(root.dropLast()) : root
    }

    private func host(_ path: String) -> String { root == "/" ? path : root + path }

    public func kind(of path: String) -> GuestFileKind? {
        guard let attributes = try? FileManager.default.attributesOfItem(atPath: host(path)), let type = attributes[.type] as? FileAttributeType
        else { return nil }
        switch type {
        case .typeRegular: return .file(size: (attributes[.size] as? NSNumber)?.uint64Value ?? 0)
        case .typeDirectory: return .directory
        case .typeSymbolicLink: return .symbolicLink
        default: return .other
        }
    }

    public func linkTarget(of path: String) throws(GuestFileError) -> String {
        guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: host(path)) else {
            throw GuestFileError(.unreadable, "cannot read the link \(host(path))", hint: "Check the guest root's permissions")
        }
        return target
    }

    public func contents(of path: String, limit: Int) throws(GuestFileError) -> [UInt8] {
        guard case .file(let size)? = kind(of: path) else {
            throw GuestFileError(.notFound, "\(host(path)) is not a regular file", hint: "Check the guest root")
        }
        guard size <= UInt64(limit) else {
            throw GuestFileError(.tooLarge, "\(host(path)) is \(size) bytes, more than the \(limit) read", hint: "The file is not what it should be")
        }
        guard let handle = FileHandle(forReadingAtPath: host(path)) else {
            throw GuestFileError(.unreadable, "cannot open \(host(path))", hint: "Check the guest root's permissions")
        }
        defer { try? handle.close() }
        do {
            let data = try handle.read(upToCount: limit + 1) ?? Data()
            guard data.count <= limit else {
                throw GuestFileError(.tooLarge, "\(host(path)) grew past the \(limit) bytes read", hint: "The file is not what it should be")
            }
            return [UInt8](data)
        } catch let error as GuestFileError {
            throw error
        } catch {
            throw GuestFileError(.unreadable, "reading \(host(path)) failed: \(error.localizedDescription)", hint: "Check the device the guest root is on")
        }
    }

    public func read(_ path: String, limit: Int, into allocate: (Int) -> UnsafeMutableRawBufferPointer) throws(GuestFileError) {
        let bytes = try contents(of: path, limit: limit)
        let buffer = allocate(bytes.count)
        bytes.withUnsafeBytes { source in
            if let base = source.baseAddress, let target = buffer.baseAddress { target.copyMemory(from: base, byteCount: min(source.count, buffer.count)) }
        }
    }

    public func names(in path: String) throws(GuestFileError) -> [String] {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: host(path)) else {
            throw GuestFileError(.unreadable, "cannot list \(host(path))", hint: "Check the guest root's permissions")
        }
        return names.sorted()
    }

    public func hostPath(of path: String) -> String? { host(path) }
}
