import ArgumentParser
import Logging
import Foundation
import PVHost
import ServiceLifecycle
import PVHostProtocol
import PVPlatform
import PVSystem
import XenABI
import XenStore
import XenStoredCore

extension String {
    func padded(_ width: Int) -> String { count >= width ? self : self + String(repeating: " ", count: width - count) }
    func leftPadded(_ width: Int) -> String { count >= width ? self : String(repeating: " ", count: width - count) + self }
}

/// `pvhost`: the reference backend hypervisor: `run` (hypervisor, xenstored, toolstack and the
/// control socket guests attach to), `status`, and `xenstored` on its own.
@main
struct PVHostCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pvhost",
        abstract: "PVKit's userspace stand-in for Xen + dom0.",
        subcommands: [Run.self, Status.self, Capture.self, XenStored.self])

    struct Capture: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write the frames a switch port sends and receives to a pcap file (tcpdump, tshark, Wireshark read it).",
            discussion:
                "Ports: vif<domid>.<devid> for a guest's interface, tap:<name> for a TAP. pvhost writes the file. Example: pvhost capture vif1.0 /tmp/vif1.pcap --seconds 5"
        )
        @Argument(help: "The switch port, e.g. vif1.0.") var port: String
        @Argument(help: "The pcap file to write (by pvhost).", completion: .file()) var file: String
        @Option(help: "pvhost's control socket.") var control: String = "/run/pvhost/control"
        @Option(help: "Capture this long (default: until SIGINT).") var seconds: Double?

        func run() async throws {
            let path = file.hasPrefix("/") ? file : FileManager.default.currentDirectoryPath + "/" + file
            let signals = try caughtSignals("pvhost capture")
            do { try ReferencePlatform.request(socket: control, .capture(port: port, path: path)) } catch {
                FileHandle.standardError.write(Data("pvhost capture: \(error)\n".utf8))
                throw ExitCode(1)
            }
            if let seconds {
                try? await Task.sleep(for: .seconds(seconds))
            } else {
                _ = try await signals.next()
            }
            do { try ReferencePlatform.request(socket: control, .stopCapture(port: port)) } catch {
                FileHandle.standardError.write(Data("pvhost capture: \(error)\n".utf8))
                throw ExitCode(1)
            }
            print("captured \(port) to \(path)")
        }
    }

    struct Run: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run pvhost: guest processes attach on the control socket and become domains.",
            discussion: """
                Guests: any program linking PVPlatform, e.g. `pvstore --pvhost CONTROL --name alpha ls`. \
                A guest whose process ends is destroyed and reclaimed (grants, event channels, xenstore nodes and watches). \
                On SIGINT/SIGTERM every guest is told to power off (control/shutdown) and given --grace seconds.
                """)

        @Argument(
            help: ArgumentHelp(
                "A JSON file naming the domains that may attach and their limits (without it any name may attach, with default limits).", valueName: "config"),
            completion: .file())
        var configPath: String?

        @Option(help: "The control socket guests attach to.") var control: String = "/run/pvhost/control"
        @Option(help: "The xenstored socket for dom0 tools.") var xenstore: String = "/run/pvhost/xenstored"
        @Option(help: "Seconds guests get to detach after being told to power off.") var grace: Double = 2

        func run() async throws {
            let signals = try caughtSignals("pvhost run")
            var config: PVHostConfig?
            if let configPath {
                do { config = try PVHostConfig.load(configPath) } catch {
                    FileHandle.standardError.write(Data("pvhost run: \(error)\n".utf8))
                    throw ExitCode(2)
                }
            }
            for path in [control, xenstore] {
                try? FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            }
            ignoreBrokenPipes()
            let logger = Logger(label: "pvhost")
            let daemon: XenStoreDaemon
            let server: ControlServer
            let toolstack: Toolstack
            do {
                daemon = try XenStoreDaemon(path: xenstore)
                try daemon.start()
                let store = try XenStoreClient.connect(XenStoreLocation(environment: ["XENSTORED_PATH": xenstore]))
                toolstack = Toolstack(hypervisor: Hypervisor(), xenstored: daemon, store: store)
                server = try ControlServer(path: control, toolstack: toolstack, config: config)
            } catch {
                FileHandle.standardError.write(Data("pvhost run: \(error)\n".utf8))
                throw ExitCode(1)
            }
            // Shut down in reverse order: the guests told and given their grace, then the
            // control socket (every remaining domain reclaimed), then xenstored.
            let group = ServiceGroup(
                configuration: ServiceGroupConfiguration(
                    services: [
                        .init(service: daemon, serviceName: "xenstored"),
                        .init(service: server, serviceName: "control server"),
                        .init(service: GuestShutdownService(toolstack: toolstack, grace: .seconds(grace)), serviceName: "guest shutdown"),
                        .init(
                            service: TerminationSignalService(signals: signals, logger: logger), successTerminationBehavior: .gracefullyShutdownGroup,
                            serviceName: "SIGINT/SIGTERM")
                    ], logger: logger))
            logger.info("running", metadata: ["control": "\(control)", "xenstored": "\(xenstore)"])
            do { try await group.run() } catch {
                FileHandle.standardError.write(Data("pvhost run: \(error)\n".utf8))
                throw ExitCode(1)
            }
        }
    }

    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show pvhost's domains, grants in use and event counters.")
        @Option(help: "pvhost's control socket.") var control: String = "/run/pvhost/control"
        @Flag(help: "Print JSON.") var json = false

        func run() throws {
            let status: HostStatus
            do { status = try ReferencePlatform.status(socket: control) } catch {
                FileHandle.standardError.write(Data("pvhost status: \(error) (is `pvhost run --control \(control)` running?)\n".utf8))
                throw ExitCode(1)
            }
            if json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.sortedKeys]
                print(String(decoding: try encoder.encode(status), as: UTF8.self))
                return
            }
            print("domid  name                 pages  ports")
            print("    0  Domain-0 (pvhost)        -      -")
            for d in status.domains {
                print(String(d.domid).leftPadded(5) + "  " + d.name.padded(20) + " " + String(d.pages).leftPadded(5) + "  " + String(d.ports).leftPadded(5))
            }
            for device in status.devices {
                print(
                    "device \(device.type) \(device.devid) of domain \(device.frontend): backend state \(device.backendState), frontend state \(device.frontendState)"
                )
            }
            print(
                "grants mapped now: \(status.grantsMapped); maps since start: \(status.grantMapsTotal); copies: \(status.grantCopiesTotal); notifications sent by backends: \(status.notificationsSent)"
            )
        }
    }

    struct XenStored: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "xenstored",
            abstract: "Serve a xenstore on a UNIX socket (dom0's clients: xenstore-utils with XENSTORED_PATH, pvstore).",
            discussion: "Example: pvhost xenstored --socket /tmp/xs/socket & XENSTORED_PATH=/tmp/xs/socket xenstore-ls /")

        @Option(help: "The socket path (created 0600).", completion: .file())
        var socket: String = "/var/run/xenstored/socket"

        @Option(
            name: .customLong("quota"),
            help: ArgumentHelp(
                "A default quota, NAME=VALUE (repeatable). Names: \(XenStoreQuota.names.joined(separator: ", ")); defaults as C xenstored 4.17 (1000, 2048, 128, 10, 5, 20).",
                valueName: "name=value"))
        var quotas: [String] = []

        @Option(name: .customLong("domain-quota"), help: ArgumentHelp("A quota for one domain, DOMID:NAME=VALUE (repeatable).", valueName: "domid:name=value"))
        var domainQuotas: [String] = []

        /// The quotas the options ask for.
        func parsedQuotas() throws -> XenStoreQuotas {
            var result = XenStoreQuotas()
            func apply(_ text: String, to quota: inout XenStoreQuota) throws {
                let parts = text.split(separator: "=", maxSplits: 1).map(String.init)
                guard parts.count == 2, let value = Int(parts[1]), quota.set(parts[0], to: value) else {
                    throw ValidationError(
                        "bad quota \"\(text)\": expected NAME=VALUE with NAME one of \(XenStoreQuota.names.joined(separator: ", ")) and VALUE > 0")
                }
            }
            for text in quotas { try apply(text, to: &result.defaults) }
            for text in domainQuotas {
                let parts = text.split(separator: ":", maxSplits: 1).map(String.init)
                guard parts.count == 2, let id = UInt16(parts[0]) else { throw ValidationError("bad domain quota \"\(text)\": expected DOMID:NAME=VALUE") }
                var quota = result.overrides[DomainID(id)] ?? result.defaults
                try apply(parts[1], to: &quota)
                result.overrides[DomainID(id)] = quota
            }
            return result
        }

        @Option(help: "After serving a request, look for the next one this many µs before sleeping (0: never).")
        var pollMicroseconds = 50

        func run() async throws {
            let signals = try caughtSignals("pvhost xenstored")
            let limits = try parsedQuotas()
            let server: XenStoreDaemon
            do {
                server = try XenStoreDaemon(path: socket)
            } catch {
                FileHandle.standardError.write(Data("pvhost xenstored: \(error)\n".utf8))
                throw ExitCode(1)
            }
            server.quotas = limits
            server.pollMicroseconds = pollMicroseconds
            ignoreBrokenPipes()
            let logger = Logger(label: "pvhost.xenstored")
            let group = ServiceGroup(
                configuration: ServiceGroupConfiguration(
                    services: [
                        .init(service: server, serviceName: "xenstored"),
                        .init(
                            service: TerminationSignalService(signals: signals, logger: logger), successTerminationBehavior: .gracefullyShutdownGroup,
                            serviceName: "SIGINT/SIGTERM")
                    ], logger: logger))
            do { try await group.run() } catch {
                FileHandle.standardError.write(Data("pvhost xenstored: \(error)\n".utf8))
                throw ExitCode(1)
            }
        }
    }
}

/// SIGINT/SIGTERM caught before the command makes anything a supervisor waits for (sockets), so
/// that a stop sent as soon as it is ready is never lost; a failure ends the command (exit 1).
func caughtSignals(_ command: String) throws -> TerminationSignals {
    do { return try TerminationSignals.catchSignals() } catch {
        FileHandle.standardError.write(Data("\(command): \(error)\n".utf8))
        throw ExitCode(1)
    }
}
