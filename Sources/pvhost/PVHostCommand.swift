import ArgumentParser
import Foundation
import PVHost

/// `pvhost`: the reference backend hypervisor. So far: its xenstored, runnable on its own.
@main
struct PVHostCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pvhost",
        abstract: "PVKit's userspace stand-in for Xen + dom0.",
        subcommands: [XenStored.self])

    struct XenStored: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "xenstored",
            abstract: "Serve a xenstore on a UNIX socket (dom0's clients: xenstore-utils with XENSTORED_PATH, pvstore).",
            discussion: "Example: pvhost xenstored --socket /tmp/xs/socket & XENSTORED_PATH=/tmp/xs/socket xenstore-ls /")

        @Option(help: "The socket path (created 0600).", completion: .file())
        var socket: String = "/var/run/xenstored/socket"

        func run() throws {
            let server: XenStoreSocketServer
            do {
                server = try XenStoreSocketServer(path: socket)
            } catch {
                FileHandle.standardError.write(Data("pvhost xenstored: \(error)\n".utf8))
                throw ExitCode(1)
            }
            signal(SIGPIPE, SIG_IGN)
            let stopper = DispatchSource.makeSignalSource(signal: SIGTERM, queue: .global())
            signal(SIGTERM, SIG_IGN)
            stopper.setEventHandler { server.stop() }
            stopper.resume()
            let interrupt = DispatchSource.makeSignalSource(signal: SIGINT, queue: .global())
            signal(SIGINT, SIG_IGN)
            interrupt.setEventHandler { server.stop() }
            interrupt.resume()
            server.run()
        }
    }
}
