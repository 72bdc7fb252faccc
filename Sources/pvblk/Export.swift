import ArgumentParser
import BlockFront
import Foundation
import Logging
import NBDServer
import ServiceLifecycle

extension PVBlkCommand {
    struct Export: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Serve the disk to any NBD client (nbdinfo, nbdcopy, qemu-img, nbd-client) until SIGINT or SIGTERM.",
            discussion: """
                Prints the URI clients connect to, e.g. nbd+unix:///xvda?socket=/run/xvda.sock or nbd://127.0.0.1:10809/xvda. \
                TCP binds to loopback unless --bind says otherwise. Replies are sent only once the backend completed the \
                request (FUA writes after the flush that follows them).
                """)
        @OptionGroup var connection: Connection
        @Flag(help: "Serve NBD (fixed newstyle, structured replies, FLUSH/FUA, TRIM, WRITE_ZEROES, multi-conn).") var nbd = false
        @Option(help: "Listen on this UNIX socket.") var socket: String?
        @Option(help: "Listen on this TCP port (0: any free one; printed).") var port: UInt16?
        @Option(help: "The IPv4 address a TCP listener binds to.") var bind = "127.0.0.1"
        @Option(help: "The export's name (clients may also ask for the default export).") var exportName = ""
        @Option(help: "The export's description (shown by nbdinfo).") var description = ""
        @Flag(help: "Refuse writes, trims and zeroing.") var readOnly = false
        @Option(help: "Connections served at once.") var connections = 16

        func validate() throws {
            guard nbd else { throw ValidationError("--nbd is the export protocol (the only one so far)") }
            guard (socket == nil) != (port == nil) else { throw ValidationError("give one of --socket PATH or --port N") }
            guard (1...1024).contains(connections) else { throw ValidationError("--connections is 1…1024") }
        }

        func run() async throws {
            let (disk, _) = try await connection.open()
            var logger = Logger(label: "pvblk.export")
            logger.logLevel = .notice
            let endpoint: NBDServer.Endpoint = socket.map { .unix($0) } ?? .tcp(host: bind, port: port ?? 10809)
            let server: NBDServer
            do {
                server = try NBDServer(
                    disk: disk, endpoint: endpoint,
                    configuration: .init(name: exportName, description: description, readOnly: readOnly, maximumConnections: connections), logger: logger)
            } catch {
                FileHandle.standardError.write(Data("pvblk export: listening on \(endpoint): \(error)\n".utf8))
                await disk.close()
                throw ExitCode(1)
            }
            let name = exportName.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed) ?? exportName
            // The URI, at once (whoever started us waits for it).
            switch endpoint {
            case let .unix(path): FileHandle.standardOutput.write(Data("nbd+unix:///\(name)?socket=\(path)\n".utf8))
            case let .tcp(host, _): FileHandle.standardOutput.write(Data("nbd://\(host):\(server.port)/\(name)\n".utf8))
            }
            let group = ServiceGroup(
                configuration: ServiceGroupConfiguration(
                    services: [.init(service: server, serviceName: "NBD export")], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
            do { try await group.run() } catch {
                FileHandle.standardError.write(Data("pvblk export: \(error)\n".utf8))
                await disk.close()
                throw ExitCode(1)
            }
            let s = server.statistics
            FileHandle.standardError.write(
                Data("pvblk export: stopped after \(s.connections) connection(s), \(s.requests) request(s), \(s.failedRequests) failed\n".utf8))
            await disk.close()
        }
    }
}
