import ArgumentParser
import Foundation
import XenABI
import XenStore
import PVPlatform

/// `pvstore`: xenstore-utils-style commands on PVKit's async client. It finds the daemon as
/// libxenstore does (XENSTORED_PATH, XENSTORED_RUNDIR, /var/run/xenstored/socket, then
/// /dev/xen/xenbus). Exit status: 0 success, 1 a xenstore error (or `exists` saying no),
/// 64 a usage error.
@main
struct PVStoreCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pvstore",
        abstract: "Read, write, list and watch XenStore (like xenstore-utils).",
        discussion: "Connection: $XENSTORED_PATH, else $XENSTORED_RUNDIR/socket, else /var/run/xenstored/socket, else /dev/xen/xenbus.",
        subcommands: [Read.self, Write.self, List.self, LS.self, Remove.self, Exists.self, Chmod.self, Mkdir.self, Watch.self])
}

struct Output: ParsableArguments {
    @Flag(help: "Print JSON (one document; `watch` prints one per line).")
    var json = false

    @Option(help: ArgumentHelp("Run as a guest of pvhost: attach to its control socket and use this domain's xenstore ring.", valueName: "control-socket"))
    var pvhost: String?

    @Option(help: "The guest's domain name (with --pvhost).")
    var name = "pvstore"
}

/// The guest platform while a command runs with --pvhost (kept alive for the connection).
nonisolated(unsafe) var guestPlatform: ReferencePlatform?

/// Parses a path argument, or exits with the reason.
func path(_ text: String) throws -> XenStorePath {
    do { return try XenStorePath(text) } catch { throw ValidationError("\(error)") }
}

/// Runs `body` on a client; a xenstore error is printed as `pvstore <command>: <error>` and
/// exits 1.
func withStore<T>(_ command: String, _ output: Output? = nil, _ body: (XenStoreClient) async throws -> T) async throws -> T {
    do {
        let store: XenStoreClient
        if let control = output?.pvhost {
            do {
                let platform = try ReferencePlatform.attach(socket: control, name: output?.name ?? "pvstore")
                guestPlatform = platform
                store = try platform.xenstore()
            } catch {
                FileHandle.standardError.write(Data("pvstore \(command): \(error)\n".utf8))
                throw ExitCode(1)
            }
        } else {
            store = try XenStoreClient.connect()
        }
        defer { store.close() }
        return try await body(store)
    } catch let error as XenStoreError {
        FileHandle.standardError.write(Data("pvstore \(command): \(error)\n".utf8))
        throw ExitCode(1)
    }
}

/// xenstore-read's escaping: printable ASCII as is, `\t \n \r \\`, other bytes as `\ooo`.
func sanitised(_ value: [UInt8]) -> String {
    var text = ""
    for byte in value {
        switch byte {
        case 0x09: text += "\\t"
        case 0x0A: text += "\\n"
        case 0x0D: text += "\\r"
        case 0x5C: text += "\\\\"
        case 0x20..<0x7F: text.unicodeScalars.append(UnicodeScalar(byte))
        default:
            let octal = String(byte, radix: 8)
            text += "\\" + String(repeating: "0", count: 3 - octal.count) + octal
        }
    }
    return text
}

func printJSON(_ value: some Encodable) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    print(String(decoding: try encoder.encode(value), as: UTF8.self))
}

/// A node in JSON: its path, value (text when UTF-8, with `base64` set otherwise) and permissions.
struct NodeJSON: Encodable {
    let path: String
    let value: String?
    let permissions: [String]?
}

extension PVStoreCommand {
    struct Read: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print node values, one per line (escaped like xenstore-read).")
        @Flag(name: .short, help: "Prefix each value with its path.") var prefix = false
        @Flag(name: .short, help: "Raw bytes, no escaping.") var raw = false
        @Argument(help: "Paths (absolute, or relative to /local/domain/<own id>).") var paths: [String]
        @OptionGroup var output: Output

        func run() async throws {
            let checked = try paths.map(path)
            try await withStore("read", output) { store in
                var nodes: [NodeJSON] = []
                for p in checked {
                    let value = try await store.read(p)
                    if output.json {
                        nodes.append(NodeJSON(path: p.rawValue, value: String(decoding: value, as: UTF8.self), permissions: nil))
                    } else if raw {
                        FileHandle.standardOutput.write(Data(value))
                    } else {
                        print(prefix ? "\(p): \(sanitised(value))" : sanitised(value))
                    }
                }
                if output.json { try printJSON(nodes) }
            }
        }
    }

    struct Write: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Write values: PATH VALUE [PATH VALUE ...] (in one transaction).")
        @Argument(help: "Alternating paths and values.") var pairs: [String]

        func validate() throws {
            guard !pairs.isEmpty, pairs.count % 2 == 0 else { throw ValidationError("expected PATH VALUE pairs") }
        }

        @OptionGroup var output: Output

        func run() async throws {
            var writes: [(XenStorePath, String)] = []
            for i in stride(from: 0, to: pairs.count, by: 2) { writes.append((try path(pairs[i]), pairs[i + 1])) }
            let items = writes
            try await withStore("write", output) { store in
                try await store.transaction { tx in
                    for (p, value) in items { try await tx.write(p, value) }
                }
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print a node's children, one per line.")
        @Flag(name: .short, help: "Print full paths.") var prefix = false
        @Argument var path: String
        @OptionGroup var output: Output

        func run() async throws {
            let p = try pvstore.path(path)
            try await withStore("list", output) { store in
                let children = try await store.directory(p)
                let shown = prefix ? children.map { p.rawValue == "/" ? "/" + $0 : p.rawValue + "/" + $0 } : children
                if output.json { try printJSON(shown) } else { for line in shown { print(line) } }
            }
        }
    }

    struct LS: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "ls", abstract: "Print the tree below a node (like xenstore-ls).")
        @Flag(name: .short, help: "Full paths instead of indented names.") var full = false
        @Flag(name: .short, help: "Show permissions.") var permissions = false
        @Argument var path: String = "/"
        @OptionGroup var output: Output

        func run() async throws {
            let root = try pvstore.path(path)
            try await withStore("ls", output) { store in
                var nodes: [NodeJSON] = []
                try await walk(store, root, depth: 0, into: &nodes)
                if output.json { try printJSON(nodes) }
            }
        }

        private func walk(_ store: XenStoreClient, _ node: XenStorePath, depth: Int, into nodes: inout [NodeJSON]) async throws {
            for name in try await store.directory(node) {
                let child = try XenStorePath(node.rawValue == "/" ? "/" + name : node.rawValue + "/" + name)
                let value = try? await store.read(child)
                let perms = permissions || output.json ? try? await store.permissions(child) : nil
                if output.json {
                    nodes.append(
                        NodeJSON(
                            path: child.rawValue, value: value.map { String(decoding: $0, as: UTF8.self) },
                            permissions: perms?.entries.map(\.description)))
                } else {
                    var line = full ? child.rawValue : String(repeating: " ", count: depth) + name
                    line += value.map { " = \"\(sanitised($0))\"" } ?? ":"
                    if let perms { line += "   (" + perms.entries.map(\.description).joined(separator: ",") + ")" }
                    print(line)
                }
                try await walk(store, child, depth: depth + 1, into: &nodes)
            }
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "rm", abstract: "Remove nodes and everything below them.")
        @Argument var paths: [String]

        @OptionGroup var output: Output

        func run() async throws {
            let checked = try paths.map(path)
            try await withStore("rm", output) { store in
                for p in checked { try await store.remove(p) }
            }
        }
    }

    struct Exists: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Exit 0 if every node exists, 1 otherwise.")
        @Argument var paths: [String]
        @OptionGroup var output: Output

        func run() async throws {
            let checked = try paths.map(path)
            let results = try await withStore("exists", output) { store in
                var results: [String: Bool] = [:]
                for p in checked { results[p.rawValue] = try await store.exists(p) }
                return results
            }
            if output.json { try printJSON(results) }
            if results.values.contains(false) { throw ExitCode(1) }
        }
    }

    struct Chmod: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Set a node's permissions: PATH PERM... (the first names the owner and everyone's default).",
            discussion: "PERM is n, r, w or b followed by a domain id, e.g. `pvstore chmod /local/domain/1/data n1 r0`.")
        @Flag(name: .short, help: "Apply to every node below too.") var recursive = false
        @Argument var path: String
        @Argument var permissions: [String]

        @OptionGroup var output: Output

        func run() async throws {
            let root = try pvstore.path(path)
            let perms: XenStorePermissions
            do { perms = try XenStorePermissions(permissions.map { try XenStorePermission($0) }) } catch { throw ValidationError("\(error)") }
            try await withStore("chmod", output) { store in
                var queue = [root]
                while let node = queue.popLast() {
                    try await store.setPermissions(node, perms)
                    if recursive {
                        for name in try await store.directory(node) {
                            queue.append(try XenStorePath(node.rawValue == "/" ? "/" + name : node.rawValue + "/" + name))
                        }
                    }
                }
            }
        }
    }

    struct Mkdir: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create nodes with empty values (nothing if they exist).")
        @Argument var paths: [String]

        @OptionGroup var output: Output

        func run() async throws {
            let checked = try paths.map(path)
            try await withStore("mkdir", output) { store in
                for p in checked { try await store.mkdir(p) }
            }
        }
    }

    struct Watch: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print the path of each change at or below PATH (the first is the registration event) until Ctrl-C or --count.")
        @Option(name: [.short, .long], help: "Stop after this many events.") var count: Int?
        @Argument var path: String
        @OptionGroup var output: Output

        func run() async throws {
            let p = try pvstore.path(path)
            try await withStore("watch", output) { store in
                var seen = 0
                for await event in try await store.watch(p, token: p.rawValue) {
                    if output.json { try printJSON(["path": event.path, "token": event.token]) } else { print(event.path) }
                    fflush(nil)
                    seen += 1
                    if let count, seen >= count { return }
                }
                throw XenStoreError.connectionClosed("the daemon ended the connection")
            }
        }
    }
}
