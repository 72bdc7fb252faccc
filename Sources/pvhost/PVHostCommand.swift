import ArgumentParser
import Foundation
import PVHost
import XenABI

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

        @Option(name: .customLong("quota"), help: ArgumentHelp(
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
                    throw ValidationError("bad quota \"\(text)\": expected NAME=VALUE with NAME one of \(XenStoreQuota.names.joined(separator: ", ")) and VALUE > 0")
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

        func run() throws {
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
