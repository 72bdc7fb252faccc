import BlockFront
import Logging
import NBDProtocol
import PVSystem
import ServiceLifecycle

/// Serves a ``BlockFront`` disk over NBD (fixed newstyle, `NBD_OPT_GO`/`INFO`, structured
/// replies, FLUSH, FUA, TRIM, WRITE_ZEROES, multi-conn) on a UNIX socket or a TCP port, so any
/// NBD client — libnbd's tools, `qemu-img`, the kernel's `nbd-client` — uses the PV disk.
///
/// Each connection runs as tasks preferring one of the disk's ring loops: the socket is
/// watched there, requests go to that loop's ring and their completions resume there. A
/// reply is sent only after its request completed on the backend (a FUA write after the
/// flush that follows it): nothing acknowledged is lost when the backend goes away later.
///
/// ```swift
/// let server = try NBDServer(disk: disk, endpoint: .unix("/run/pvblk.sock"), configuration: .init(name: "xvda"))
/// try await server.run()   // until cancelled or a graceful shutdown
/// ```
public final class NBDServer: Service, Sendable {
    /// Where the server listens.
    public enum Endpoint: Sendable, Equatable, CustomStringConvertible {
        case unix(String)
        /// An IPv4 address (loopback by default in `pvblk export`) and a port (0: any free one).
        case tcp(host: String, port: UInt16)

        public var description: String {
            switch self {
            case let .unix(path): "UNIX socket \(path)"
            case let .tcp(host, port): "TCP \(host):\(port)"
            }
        }
    }

    /// What is exported, and the server's bounds.
    public struct Configuration: Sendable {
        /// The export's name (clients may also ask for the default export, "").
        public var name: String
        public var description: String
        /// Refuse writes, trims and zeroing even when the disk is writable.
        public var readOnly: Bool
        /// Connections served at once (others are closed at accept).
        public var maximumConnections: Int
        /// Requests of one connection in flight at once.
        public var requestsPerConnection: Int
        /// The most bytes one READ or WRITE may carry (advertised in `NBD_INFO_BLOCK_SIZE`).
        public var maximumPayload: UInt32

        public init(
            name: String = "", description: String = "", readOnly: Bool = false, maximumConnections: Int = 16, requestsPerConnection: Int = 32,
            maximumPayload: UInt32 = 4 << 20
        ) {
            self.name = name
            self.description = description
            self.readOnly = readOnly
            self.maximumConnections = maximumConnections
            self.requestsPerConnection = requestsPerConnection
            self.maximumPayload = maximumPayload
        }
    }

    public let disk: BlockFront
    public let endpoint: Endpoint
    public let configuration: Configuration
    /// The export as clients see it.
    public let export: NBDExport
    private let listener: StreamListener
    private let logger: Logger
    private let loops: [EventLoop]
    private let counters = Locked(Counters())

    /// What the server did so far.
    public struct Counters: Sendable, Equatable {
        /// Connections accepted and served (in all).
        public var connections = 0
        /// Connections served now.
        public var active = 0
        public var refusedConnections = 0
        public var requests = 0
        public var failedRequests = 0
        public var protocolErrors = 0
    }

    public var statistics: Counters { counters.withLock { $0 } }

    /// The TCP port listened on (the kernel's choice for port 0); 0 for a UNIX socket.
    public var port: UInt16 { listener.port }

    /// Listens now (clients may connect before ``run()``; they wait in the backlog).
    public init(disk: BlockFront, endpoint: Endpoint, configuration: Configuration = .init(), logger: Logger = Logger(label: "pvkit.nbd")) throws(SystemError) {
        self.disk = disk
        self.endpoint = endpoint
        self.configuration = configuration
        self.logger = logger
        let info = disk.info
        var flags: NBD.TransmissionFlags = [.hasFlags]
        let readOnly = configuration.readOnly || info.readOnly
        if readOnly { flags.insert(.readOnly) }
        if info.flush { flags.formUnion([.sendFlush, .sendFUA]) }
        if !readOnly {
            flags.insert(.sendWriteZeroes)
            if info.discard != nil { flags.insert(.sendTrim) }
        }
        // One backend, one cache: a flush on any connection covers the writes of all.
        if readOnly || info.flush { flags.insert(.canMultiConn) }
        if info.removable || info.cdrom { flags.insert(.rotational) }
        let block = UInt32(max(info.sectorSize, 512))
        export = NBDExport(
            name: configuration.name, description: configuration.description, size: info.bytes, flags: flags, minimumBlock: block,
            preferredBlock: max(block, 4096), maximumPayload: max(configuration.maximumPayload, block))
        switch endpoint {
        case let .unix(path): listener = try StreamListener(unixSocket: path)
        case let .tcp(host, port): listener = try StreamListener(tcpHost: host, port: port)
        }
        let rings = disk.eventLoops
        loops = rings.isEmpty ? [EventLoopGroup.shared.next()] : rings
    }

    /// Accepts and serves connections until the task is cancelled or a graceful shutdown
    /// begins; then closes the connections (their requests in flight end first) and returns.
    public func run() async throws {
        try await cancelWhenGracefulShutdown {
            try await self.serve()
        }
    }

    private func serve() async throws {
        try await withThrowingDiscardingTaskGroup { group in
            var next = 0
            while !Task.isCancelled {
                do {
                    try await loops[0].readable(listener.fileDescriptor, name: "NBD listener (\(endpoint))")
                } catch is CancellationError {
                    break
                }
                while let socket = try listener.accept() {
                    let admitted = counters.withLock { c -> Bool in
                        guard c.active < configuration.maximumConnections else {
                            c.refusedConnections += 1
                            return false
                        }
                        c.connections += 1
                        c.active += 1
                        return true
                    }
                    guard admitted else {
                        logger.warning("refused a connection: \(configuration.maximumConnections) are served already")
                        socket.shutdown()
                        continue
                    }
                    let loop = loops[next % loops.count]
                    next += 1
                    let connection = NBDConnection(server: self, socket: socket, loop: loop)
                    group.addTask(executorPreference: loop) {
                        await connection.serve()
                        self.counters.withLock { $0.active -= 1 }
                    }
                }
            }
            group.cancelAll()
        }
    }

    // MARK: For connections

    func count(request failed: Bool) {
        counters.withLock {
            $0.requests += 1
            if failed { $0.failedRequests += 1 }
        }
    }

    func countProtocolError(_ error: NBDProtocolError, _ peer: String) {
        counters.withLock { $0.protocolErrors += 1 }
        logger.notice("NBD client \(peer): \(error); closing the connection")
    }

    var log: Logger { logger }
}
