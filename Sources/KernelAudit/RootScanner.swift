import Foundation

/// Finds the kernels of a mounted guest root filesystem.
public enum RootScanner {
    /// Every `boot/vmlinuz-*` (and `vmlinux-*`, `Image-*`) under `root`, and which one the
    /// `/vmlinuz` or `/boot/vmlinuz` link names.
    public static func kernels(root: String) throws(KernelAuditError) -> (paths: [String], defaultPath: String?) {
        let boot = root + "/boot"
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: boot) else {
            throw KernelAuditError(.unreadable, "\(boot) cannot be listed", hint: "Give --root the mount point of a guest's root filesystem")
        }
        let kernels = names.filter { $0.hasPrefix("vmlinuz-") || $0.hasPrefix("vmlinux-") || $0.hasPrefix("Image-") }
            .sorted().map { boot + "/" + $0 }
        var defaultPath: String? = nil
        for link in [root + "/vmlinuz", boot + "/vmlinuz"] {
            guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: link) else { continue }
            let resolved = target.hasPrefix("/") ? root + target : (link as NSString).deletingLastPathComponent + "/" + target
            let standard = (resolved as NSString).standardizingPath
            defaultPath = kernels.first { ($0 as NSString).standardizingPath == standard }
            if defaultPath != nil { break }
        }
        return (kernels, defaultPath)
    }
}
