/// One export a server offers.
public struct NBDExport: Sendable, Equatable {
    /// Its name (the empty name asks for the default export, the first one).
    public var name: String
    /// Shown by `nbdinfo` (`NBD_INFO_DESCRIPTION`).
    public var description: String
    /// Bytes.
    public var size: UInt64
    /// What it supports (``NBD/TransmissionFlags/hasFlags`` is always added).
    public var flags: NBD.TransmissionFlags
    /// Requests' offsets and lengths are multiples of this (a power of two ≤ 64 KiB).
    public var minimumBlock: UInt32
    /// What the client should use for best speed (a power of two ≥ the minimum and 512).
    public var preferredBlock: UInt32
    /// The most bytes a READ or WRITE may carry.
    public var maximumPayload: UInt32

    public init(
        name: String, description: String = "", size: UInt64, flags: NBD.TransmissionFlags, minimumBlock: UInt32 = 512,
        preferredBlock: UInt32 = 4096, maximumPayload: UInt32 = 4 << 20
    ) {
        self.name = name
        self.description = description
        self.size = size
        self.flags = flags.union(.hasFlags)
        self.minimumBlock = minimumBlock
        self.preferredBlock = preferredBlock
        self.maximumPayload = maximumPayload
    }
}

/// A request of the transmission phase, checked against the export: its range lies inside
/// it, aligned, its flags are ones the command takes.
public struct NBDRequest: Sendable, Equatable {
    public var command: NBD.Command
    public var flags: NBD.CommandFlags
    /// Echoed in the reply (C: `handle`/`cookie`).
    public var cookie: UInt64
    public var offset: UInt64
    public var length: UInt32

    public init(command: NBD.Command, flags: NBD.CommandFlags, cookie: UInt64, offset: UInt64, length: UInt32) {
        self.command = command
        self.flags = flags
        self.cookie = cookie
        self.offset = offset
        self.length = length
    }
}

/// Why a connection must end (the protocol leaves no error reply for these).
public enum NBDProtocolError: Error, Equatable, CustomStringConvertible {
    case badClientFlags(UInt32)
    case badOptionMagic(UInt64)
    case optionTooLong(option: UInt32, length: UInt32)
    /// `NBD_OPT_EXPORT_NAME` named no export (that option has no error reply).
    case unknownExport(String)
    case badRequestMagic(UInt32)
    /// A WRITE bigger than the advertised maximum payload (its data cannot be taken).
    case payloadTooLarge(length: UInt32, maximum: UInt32)

    public var description: String {
        switch self {
        case let .badClientFlags(flags): "the client sent flags \(flags) the server did not offer"
        case let .badOptionMagic(magic): "an option request without IHAVEOPT (\(magic))"
        case let .optionTooLong(option, length): "option \(option) with \(length) bytes of data (at most \(NBDServerSession.optionLimit))"
        case let .unknownExport(name): "NBD_OPT_EXPORT_NAME asked for \"\(name)\", which is not exported"
        case let .badRequestMagic(magic): "a request without the request magic (\(magic))"
        case let .payloadTooLarge(length, maximum): "a WRITE of \(length) bytes (at most \(maximum))"
        }
    }
}

/// The server's side of NBD's fixed newstyle handshake and of its transmission phase, without
/// I/O: bytes the client sent go in, what to send back and what to do come out.
///
/// ```swift
/// var session = NBDServerSession(exports: [export])
/// send(session.greeting)
/// loop: switch try session.step(buffered) { … }   // drop `consumed` bytes from the front
/// ```
///
/// During transmission a WRITE's data follows its header: after ``Step/request(_:consumed:)``
/// (or ``Step/refuse(_:error:payload:consumed:)`` with a payload) the caller takes
/// `length` bytes of data before it steps again.
public struct NBDServerSession: Sendable {
    /// The most option data taken (longer options end the connection).
    public static let optionLimit: UInt32 = 65_536
    /// Bytes of a request header.
    public static let requestSize = 28

    public enum Phase: Sendable, Equatable { case clientFlags, options, transmission, closed }

    /// What the caller does next.
    public enum Step: Sendable, Equatable {
        /// Nothing complete yet: read at least this many more bytes.
        case needMore(Int)
        /// Send `bytes`; the negotiation goes on.
        case reply([UInt8], consumed: Int)
        /// Send `bytes`; transmission starts with the export chosen.
        case transmission([UInt8], consumed: Int)
        /// Send `bytes`, then close (the client aborted).
        case close([UInt8], consumed: Int)
        /// Serve it (a WRITE's data follows).
        case request(NBDRequest, consumed: Int)
        /// Reply `error` to the request named `cookie`, after taking `payload` bytes of data.
        case refuse(cookie: UInt64, command: UInt16, error: NBD.Errno, payload: Int, consumed: Int)
        /// `NBD_CMD_DISC`: finish what is in flight, then close.
        case disconnect(consumed: Int)
    }

    public let exports: [NBDExport]
    public private(set) var phase: Phase = .clientFlags
    /// The export of the transmission phase.
    public private(set) var export: NBDExport?
    /// `NBD_OPT_STRUCTURED_REPLY` was agreed: READs are answered with structured chunks.
    public private(set) var structuredReplies = false
    /// The client asked for the 124 zero bytes after `NBD_OPT_EXPORT_NAME` to be left out.
    public private(set) var noZeroes = false

    public init(exports: [NBDExport]) { self.exports = exports }

    /// What the server sends first: NBDMAGIC, IHAVEOPT, its handshake flags.
    public var greeting: [UInt8] {
        var out = NBDBytes(capacity: 18)
        out.append(NBD.magic)
        out.append(NBD.optionMagic)
        out.append(NBD.fixedNewstyle | NBD.noZeroes)
        return out.bytes
    }

    /// The flags a client sees for `export` in this session.
    func flags(of export: NBDExport) -> NBD.TransmissionFlags {
        structuredReplies ? export.flags.union(.sendDF) : export.flags.subtracting(.sendDF)
    }

    /// Takes what it can from the front of `input` (bytes received and not yet consumed).
    public mutating func step(_ input: UnsafeRawBufferPointer) throws(NBDProtocolError) -> Step {
        switch phase {
        case .clientFlags:
            guard let flags = NBDBytes.load(UInt32.self, at: 0, of: input) else { return .needMore(4 - input.count) }
            guard flags & ~(NBD.clientFixedNewstyle | NBD.clientNoZeroes) == 0 else {
                phase = .closed
                throw .badClientFlags(flags)
            }
            noZeroes = flags & NBD.clientNoZeroes != 0
            phase = .options
            return .reply([], consumed: 4)
        case .options:
            return try option(input)
        case .transmission:
            return try request(input)
        case .closed:
            return .needMore(1)
        }
    }

    // MARK: Options

    private mutating func option(_ input: UnsafeRawBufferPointer) throws(NBDProtocolError) -> Step {
        guard input.count >= 16, let magic = NBDBytes.load(UInt64.self, at: 0, of: input), let option = NBDBytes.load(UInt32.self, at: 8, of: input),
            let length = NBDBytes.load(UInt32.self, at: 12, of: input)
        else { return .needMore(16 - input.count) }
        guard magic == NBD.optionMagic else {
            phase = .closed
            throw .badOptionMagic(magic)
        }
        guard length <= Self.optionLimit else {
            phase = .closed
            throw .optionTooLong(option: option, length: length)
        }
        let total = 16 + Int(length)
        guard input.count >= total else { return .needMore(total - input.count) }
        let data = UnsafeRawBufferPointer(rebasing: input[16..<total])
        switch NBD.Option(rawValue: option) {
        case .exportName?:
            let name = String(decoding: data, as: UTF8.self)
            guard let chosen = find(name) else {
                phase = .closed
                throw .unknownExport(name)
            }
            var out = NBDBytes(capacity: 134)
            out.append(chosen.size)
            out.append(flags(of: chosen).rawValue)
            if !noZeroes { out.append(contentsOf: repeatElement(0, count: 124)) }
            enter(chosen)
            return .transmission(out.bytes, consumed: total)
        case .abort?:
            phase = .closed
            return .close(Self.reply(option, .ack), consumed: total)
        case .list?:
            guard length == 0 else { return .reply(Self.reply(option, .errorInvalid, message: "NBD_OPT_LIST takes no data"), consumed: total) }
            var out: [UInt8] = []
            for export in exports {
                var name = NBDBytes()
                name.append(UInt32(export.name.utf8.count))
                name.append(contentsOf: export.name.utf8)
                out += Self.reply(option, .server, data: name.bytes)
            }
            return .reply(out + Self.reply(option, .ack), consumed: total)
        case .info?, .go?:
            return infoOrGo(option, data: data, consumed: total)
        case .structuredReply?:
            guard length == 0 else { return .reply(Self.reply(option, .errorInvalid, message: "NBD_OPT_STRUCTURED_REPLY takes no data"), consumed: total) }
            guard !structuredReplies else { return .reply(Self.reply(option, .errorInvalid, message: "structured replies are already on"), consumed: total) }
            structuredReplies = true
            return .reply(Self.reply(option, .ack), consumed: total)
        case .startTLS?:
            return .reply(Self.reply(option, .errorUnsupported, message: "this server has no TLS"), consumed: total)
        case .listMetaContext?, .setMetaContext?, nil:
            return .reply(Self.reply(option, .errorUnsupported, message: "option \(option) is not supported"), consumed: total)
        }
    }

    private mutating func infoOrGo(_ option: UInt32, data: UnsafeRawBufferPointer, consumed: Int) -> Step {
        // u32 name length · name · u16 count · count × u16 information type
        guard let nameLength = NBDBytes.load(UInt32.self, at: 0, of: data), Int(nameLength) <= data.count - 6,
            let count = NBDBytes.load(UInt16.self, at: 4 + Int(nameLength), of: data), data.count == 6 + Int(nameLength) + 2 * Int(count)
        else { return .reply(Self.reply(option, .errorInvalid, message: "a malformed NBD_OPT_INFO/GO request"), consumed: consumed) }
        let name = String(decoding: UnsafeRawBufferPointer(rebasing: data[4..<(4 + Int(nameLength))]), as: UTF8.self)
        guard let chosen = find(name) else {
            return .reply(Self.reply(option, .errorUnknown, message: "no export named \"\(name)\""), consumed: consumed)
        }
        var asked: Set<UInt16> = []
        for index in 0..<Int(count) { if let type = NBDBytes.load(UInt16.self, at: 6 + Int(nameLength) + 2 * index, of: data) { asked.insert(type) } }
        var out: [UInt8] = []
        var info = NBDBytes()
        info.append(NBD.Info.export.rawValue)
        info.append(chosen.size)
        info.append(flags(of: chosen).rawValue)
        out += Self.reply(option, .info, data: info.bytes)
        if asked.contains(NBD.Info.name.rawValue) {
            info = NBDBytes()
            info.append(NBD.Info.name.rawValue)
            info.append(contentsOf: chosen.name.utf8)
            out += Self.reply(option, .info, data: info.bytes)
        }
        if asked.contains(NBD.Info.description.rawValue), !chosen.description.isEmpty {
            info = NBDBytes()
            info.append(NBD.Info.description.rawValue)
            info.append(contentsOf: chosen.description.utf8.prefix(4096))
            out += Self.reply(option, .info, data: info.bytes)
        }
        // Always: the export needs aligned requests (a client that did not ask may ignore it).
        info = NBDBytes()
        info.append(NBD.Info.blockSize.rawValue)
        info.append(chosen.minimumBlock)
        info.append(chosen.preferredBlock)
        info.append(chosen.maximumPayload)
        out += Self.reply(option, .info, data: info.bytes)
        out += Self.reply(option, .ack)
        guard option == NBD.Option.go.rawValue else { return .reply(out, consumed: consumed) }
        enter(chosen)
        return .transmission(out, consumed: consumed)
    }

    private func find(_ name: String) -> NBDExport? {
        name.isEmpty ? exports.first : exports.first { $0.name == name }
    }

    private mutating func enter(_ chosen: NBDExport) {
        export = chosen
        phase = .transmission
    }

    /// An option reply: magic, the option, its type, the data (an error's message).
    public static func reply(_ option: UInt32, _ type: NBD.Reply, data: [UInt8] = [], message: String? = nil) -> [UInt8] {
        let payload = message.map { Array($0.utf8) } ?? data
        var out = NBDBytes(capacity: 20 + payload.count)
        out.append(NBD.replyMagic)
        out.append(option)
        out.append(type.rawValue)
        out.append(UInt32(payload.count))
        out.append(contentsOf: payload)
        return out.bytes
    }

    // MARK: Transmission

    private mutating func request(_ input: UnsafeRawBufferPointer) throws(NBDProtocolError) -> Step {
        guard input.count >= Self.requestSize, let magic = NBDBytes.load(UInt32.self, at: 0, of: input),
            let rawFlags = NBDBytes.load(UInt16.self, at: 4, of: input), let type = NBDBytes.load(UInt16.self, at: 6, of: input),
            let cookie = NBDBytes.load(UInt64.self, at: 8, of: input), let offset = NBDBytes.load(UInt64.self, at: 16, of: input),
            let length = NBDBytes.load(UInt32.self, at: 24, of: input), let export
        else { return .needMore(Self.requestSize - input.count) }
        guard magic == NBD.requestMagic else {
            phase = .closed
            throw .badRequestMagic(magic)
        }
        let consumed = Self.requestSize
        let isWrite = type == NBD.Command.write.rawValue
        if isWrite, length > export.maximumPayload {
            phase = .closed
            throw .payloadTooLarge(length: length, maximum: export.maximumPayload)
        }
        let payload = isWrite ? Int(length) : 0
        func refuse(_ error: NBD.Errno) -> Step { .refuse(cookie: cookie, command: type, error: error, payload: payload, consumed: consumed) }
        let flags = NBD.CommandFlags(rawValue: rawFlags)
        guard let command = NBD.Command(rawValue: type) else { return refuse(.invalid) }
        let allowed: NBD.CommandFlags
        switch command {
        case .disconnect:
            phase = .closed
            return .disconnect(consumed: consumed)
        case .read: allowed = structuredReplies ? [.fua, .dontFragment] : [.fua]
        case .write, .trim, .flush: allowed = [.fua]
        case .writeZeroes: allowed = [.fua, .noHole]
        case .cache, .blockStatus: return refuse(.invalid)  // not offered
        }
        guard flags.isSubset(of: allowed) else { return refuse(.invalid) }
        let offered = export.flags
        switch command {
        case .flush:
            guard offered.contains(.sendFlush) else { return refuse(.invalid) }
            return .request(NBDRequest(command: command, flags: flags, cookie: cookie, offset: 0, length: 0), consumed: consumed)
        case .write where offered.contains(.readOnly), .trim where offered.contains(.readOnly), .writeZeroes where offered.contains(.readOnly):
            return refuse(.permission)
        case .trim where !offered.contains(.sendTrim), .writeZeroes where !offered.contains(.sendWriteZeroes):
            return refuse(.invalid)
        default:
            break
        }
        if flags.contains(.fua), !offered.contains(.sendFUA) { return refuse(.invalid) }
        if command == .read, length > export.maximumPayload { return refuse(.invalid) }
        let (end, overflow) = offset.addingReportingOverflow(UInt64(length))
        if overflow || end > export.size { return refuse(command == .read || command == .trim ? .invalid : .noSpace) }
        let block = UInt64(max(export.minimumBlock, 1))
        guard offset % block == 0, UInt64(length) % block == 0 else { return refuse(.invalid) }
        return .request(NBDRequest(command: command, flags: flags, cookie: cookie, offset: offset, length: length), consumed: consumed)
    }
}

/// Replies of the transmission phase.
public enum NBDReplies {
    /// A simple reply's 16 bytes (a successful READ's data follows).
    public static func simple(cookie: UInt64, error: UInt32 = 0) -> [UInt8] {
        var out = NBDBytes(capacity: 16)
        out.append(NBD.simpleReplyMagic)
        out.append(error)
        out.append(cookie)
        return out.bytes
    }

    /// A structured `OFFSET_DATA` chunk's header, the last of its request (`count` bytes of
    /// data at `offset` follow; `count` ≥ 1).
    public static func data(cookie: UInt64, offset: UInt64, count: Int) -> [UInt8] {
        var out = NBDBytes(capacity: 28)
        out.append(NBD.structuredReplyMagic)
        out.append(NBD.chunkDone)
        out.append(NBD.chunkOffsetData)
        out.append(cookie)
        out.append(UInt32(truncatingIfNeeded: 8 + count))
        out.append(offset)
        return out.bytes
    }

    /// A structured reply with no data (`NONE`, done).
    public static func done(cookie: UInt64) -> [UInt8] {
        var out = NBDBytes(capacity: 20)
        out.append(NBD.structuredReplyMagic)
        out.append(NBD.chunkDone)
        out.append(NBD.chunkNone)
        out.append(cookie)
        out.append(UInt32(0))
        return out.bytes
    }

    /// A structured `ERROR` chunk (done) with a message for people.
    public static func error(cookie: UInt64, error: NBD.Errno, message: String) -> [UInt8] {
        let text = Array(message.utf8.prefix(4096))
        var out = NBDBytes(capacity: 26 + text.count)
        out.append(NBD.structuredReplyMagic)
        out.append(NBD.chunkDone)
        out.append(NBD.chunkError)
        out.append(cookie)
        out.append(UInt32(6 + text.count))
        out.append(error.rawValue)
        out.append(UInt16(text.count))
        out.append(contentsOf: text)
        return out.bytes
    }

    /// The failure of a request as this session answers it: a structured error chunk for a
    /// READ when structured replies were agreed, else a simple reply.
    public static func failure(cookie: UInt64, command: UInt16, error: NBD.Errno, message: String, structured: Bool) -> [UInt8] {
        structured && command == NBD.Command.read.rawValue
            ? Self.error(cookie: cookie, error: error, message: message) : simple(cookie: cookie, error: error.rawValue)
    }
}
