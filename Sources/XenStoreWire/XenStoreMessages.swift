import XenABI

/// One framed message: the 16-byte header and its payload.
public struct XsMessage: Sendable, Equatable {
    public var header: XsHeader
    public var payload: [UInt8]

    public init(header: XsHeader, payload: [UInt8]) {
        self.header = header
        self.payload = payload
    }

    /// Header and payload as they go on the wire.
    public var bytes: [UInt8] { header.bytes + payload }

    /// Appends the wire bytes to `buffer` (no intermediate array).
    public func append(to buffer: inout [UInt8]) {
        buffer.reserveCapacity(buffer.count + XsHeader.wireSize + payload.count)
        for field in [header.type, header.requestID, header.transactionID, header.length] {
            withUnsafeBytes(of: field.littleEndian) { buffer.append(contentsOf: $0) }
        }
        buffer.append(contentsOf: payload)
    }
}

/// Every request a client can send (xs_wire.h types 0–22 that clients send).
public enum XenStoreRequest: Sendable, Equatable {
    case control([String])
    case directory(XenStorePath)
    case read(XenStorePath)
    case getPerms(XenStorePath)
    case watch(XenStorePath, token: String)
    case unwatch(XenStorePath, token: String)
    case transactionStart
    case transactionEnd(commit: Bool)
    case introduce(DomainID, gfn: UInt64, port: EventChannelPort)
    case release(DomainID)
    case getDomainPath(DomainID)
    case write(XenStorePath, value: [UInt8])
    case mkdir(XenStorePath)
    case rm(XenStorePath)
    case setPerms(XenStorePath, XenStorePermissions)
    case isDomainIntroduced(DomainID)
    case resume(DomainID)
    case setTarget(DomainID, target: DomainID)
    case resetWatches
    /// DIRECTORY_PART: `offset` counts bytes into the whole child list ("a\0b\0…").
    case directoryPart(XenStorePath, offset: Int)

    public var type: XsMessageType {
        switch self {
        case .control: .control
        case .directory: .directory
        case .read: .read
        case .getPerms: .getPerms
        case .watch: .watch
        case .unwatch: .unwatch
        case .transactionStart: .transactionStart
        case .transactionEnd: .transactionEnd
        case .introduce: .introduce
        case .release: .release
        case .getDomainPath: .getDomainPath
        case .write: .write
        case .mkdir: .mkdir
        case .rm: .rm
        case .setPerms: .setPerms
        case .isDomainIntroduced: .isDomainIntroduced
        case .resume: .resume
        case .setTarget: .setTarget
        case .resetWatches: .resetWatches
        case .directoryPart: .directoryPart
        }
    }

    /// The payload: NUL-terminated strings, except a WRITE value (raw, unterminated).
    public var payload: [UInt8] {
        func strings(_ items: [String]) -> [UInt8] { XsPayload.encode(items) }
        switch self {
        case let .control(words): return strings(words)
        case let .directory(p), let .read(p), let .getPerms(p), let .mkdir(p), let .rm(p): return strings([p.rawValue])
        case let .watch(p, token), let .unwatch(p, token): return strings([p.rawValue, token])
        case .transactionStart: return [0]
        case let .transactionEnd(commit): return strings([commit ? "T" : "F"])
        case let .introduce(domain, gfn, port): return strings(["\(domain.rawValue)", "\(gfn)", "\(port.rawValue)"])
        case let .release(d), let .getDomainPath(d), let .isDomainIntroduced(d), let .resume(d): return strings(["\(d.rawValue)"])
        case let .write(p, value): return strings([p.rawValue]) + value
        case let .setPerms(p, permissions): return strings([p.rawValue] + permissions.entries.map(\.description))
        case let .setTarget(d, target): return strings(["\(d.rawValue)", "\(target.rawValue)"])
        case .resetWatches: return [0]
        case let .directoryPart(p, offset): return strings([p.rawValue, "\(offset)"])
        }
    }

    /// The framed message. Throws when the payload is over the 4096-byte limit (or `limit`:
    /// 4080 for `/dev/xen/xenbus`).
    public func message(requestID: UInt32, transactionID: UInt32 = 0, limit: Int = XsWire.payloadMax) throws(XenStoreWireError) -> XsMessage {
        let payload = self.payload
        guard payload.count <= limit else { throw .payloadTooLarge(length: UInt32(payload.count), limit: limit) }
        return XsMessage(
            header: XsHeader(type: type, requestID: requestID, transactionID: transactionID, length: UInt32(payload.count)),
            payload: payload)
    }

    /// Parses a request a client sent (the server's side).
    public static func decode(_ message: XsMessage) throws(XenStoreWireError) -> XenStoreRequest {
        guard let type = message.header.messageType else {
            throw .malformedPayload(type: "type \(message.header.type)", what: "unknown message type")
        }
        let name = type.description
        let fields = XsPayload.strings(message.payload)
        func field(_ index: Int) throws(XenStoreWireError) -> String {
            guard index < fields.count else { throw .malformedPayload(type: name, what: "missing field \(index + 1)") }
            return fields[index]
        }
        func path(_ index: Int = 0) throws(XenStoreWireError) -> XenStorePath { try XenStorePath(try field(index)) }
        func domain(_ index: Int = 0) throws(XenStoreWireError) -> DomainID {
            let text = try field(index)
            guard let id = UInt16(text) else { throw .malformedPayload(type: name, what: "\"\(text)\" is not a domain id") }
            return DomainID(id)
        }
        func exactly(_ count: Int) throws(XenStoreWireError) {
            guard XsPayload.isTerminatedStrings(message.payload), fields.count == count else {
                throw .malformedPayload(type: name, what: "expected \(count) NUL-terminated strings")
            }
        }
        switch type {
        case .control: return .control(fields)
        case .directory: try exactly(1); return .directory(try path())
        case .read: try exactly(1); return .read(try path())
        case .getPerms: try exactly(1); return .getPerms(try path())
        case .mkdir: try exactly(1); return .mkdir(try path())
        case .rm: try exactly(1); return .rm(try path())
        case .watch, .unwatch:
            try exactly(2)
            let token = try field(1)
            return type == .watch ? .watch(try path(), token: token) : .unwatch(try path(), token: token)
        case .transactionStart: return .transactionStart
        case .transactionEnd:
            try exactly(1)
            switch try field(0) {
            case "T": return .transactionEnd(commit: true)
            case "F": return .transactionEnd(commit: false)
            default: throw .malformedPayload(type: name, what: "expected T or F")
            }
        case .introduce:
            try exactly(3)
            guard let gfn = UInt64(try field(1)), let port = UInt32(try field(2)) else {
                throw .malformedPayload(type: name, what: "gfn and port must be numbers")
            }
            return .introduce(try domain(), gfn: gfn, port: EventChannelPort(port))
        case .release: try exactly(1); return .release(try domain())
        case .getDomainPath: try exactly(1); return .getDomainPath(try domain())
        case .isDomainIntroduced: try exactly(1); return .isDomainIntroduced(try domain())
        case .resume: try exactly(1); return .resume(try domain())
        case .setTarget: try exactly(2); return .setTarget(try domain(), target: try domain(1))
        case .write:
            guard let nul = message.payload.firstIndex(of: 0) else { throw .malformedPayload(type: name, what: "no NUL after the path") }
            let p = try XenStorePath(String(decoding: message.payload[..<nul], as: UTF8.self))
            return .write(p, value: Array(message.payload[(nul + 1)...]))
        case .setPerms:
            guard XsPayload.isTerminatedStrings(message.payload), fields.count >= 2 else {
                throw .malformedPayload(type: name, what: "expected a path and at least one permission")
            }
            var entries: [XenStorePermission] = []
            for text in fields.dropFirst() { entries.append(try XenStorePermission(text)) }
            return .setPerms(try path(), try XenStorePermissions(entries))
        case .resetWatches: return .resetWatches
        case .directoryPart:
            try exactly(2)
            guard let offset = Int(try field(1)), offset >= 0 else { throw .malformedPayload(type: name, what: "offset must be a number") }
            return .directoryPart(try path(), offset: offset)
        case .watchEvent, .error, .invalid:
            throw .malformedPayload(type: name, what: "not a request a client may send")
        }
    }
}

/// A reply, or an unsolicited watch event.
public enum XenStoreReply: Sendable, Equatable {
    case ok
    /// READ: the value's exact bytes.
    case value([UInt8])
    /// DIRECTORY: child names.
    case children([String])
    case permissions(XenStorePermissions)
    case transactionID(UInt32)
    case domainPath(String)
    /// IS_DOMAIN_INTRODUCED.
    case introduced(Bool)
    /// DIRECTORY_PART: the generation count, the children from the offset, and whether the list ended.
    case childrenPart(generation: String, children: [String], complete: Bool)
    /// CONTROL: the daemon's text.
    case text(String)
    case error(XsErrorName)
    /// WATCH_EVENT (req_id 0): the path that changed and the watch's token.
    case watchEvent(path: String, token: String)

    /// Decodes a message from the daemon; `request` says what a reply answers.
    public static func decode(_ message: XsMessage, answering request: XsMessageType?) throws(XenStoreWireError) -> XenStoreReply {
        let payload = message.payload
        if message.header.messageType == .error {
            let name = String(decoding: payload.prefix { $0 != 0 }, as: UTF8.self)
            guard let error = XsErrorName(rawValue: name) else { throw .unknownErrorName(name) }
            return .error(error)
        }
        if message.header.messageType == .watchEvent {
            let fields = XsPayload.strings(payload)
            guard fields.count >= 2 else { throw .malformedPayload(type: "WATCH_EVENT", what: "expected a path and a token") }
            return .watchEvent(path: fields[0], token: fields[1])
        }
        let type = request ?? message.header.messageType
        let name = type?.description ?? "type \(message.header.type)"
        switch type {
        case .read?: return .value(payload)
        case .directory?: return .children(XsPayload.strings(payload).filter { !$0.isEmpty })
        case .getPerms?:
            var entries: [XenStorePermission] = []
            for text in XsPayload.strings(payload) where !text.isEmpty { entries.append(try XenStorePermission(text)) }
            return .permissions(try XenStorePermissions(entries))
        case .transactionStart?:
            let text = String(decoding: payload.prefix { $0 != 0 }, as: UTF8.self)
            guard let id = UInt32(text) else { throw .malformedPayload(type: name, what: "\"\(text)\" is not a transaction id") }
            return .transactionID(id)
        case .getDomainPath?: return .domainPath(String(decoding: payload.prefix { $0 != 0 }, as: UTF8.self))
        case .isDomainIntroduced?:
            switch payload.prefix(while: { $0 != 0 }) {
            case [UInt8(ascii: "T")]: return .introduced(true)
            case [UInt8(ascii: "F")]: return .introduced(false)
            default: throw .malformedPayload(type: name, what: "expected T or F")
            }
        case .directoryPart?:
            // gencnt\0 child\0 … and one more \0 when the list is complete.
            guard let first = payload.firstIndex(of: 0) else { throw .malformedPayload(type: name, what: "no generation count") }
            let generation = String(decoding: payload[..<first], as: UTF8.self)
            let rest = Array(payload[(first + 1)...])
            let complete = rest.isEmpty || (rest.count >= 1 && rest.last == 0 && (rest.count == 1 || rest[rest.count - 2] == 0))
            let children = XsPayload.strings(complete ? Array(rest.dropLast()) : rest).filter { !$0.isEmpty }
            return .childrenPart(generation: generation, children: children, complete: complete)
        case .control?: return .text(String(decoding: payload.prefix { $0 != 0 }, as: UTF8.self))
        default:
            guard payload == Array("OK".utf8) + [0] else { throw .malformedPayload(type: name, what: "expected OK") }
            return .ok
        }
    }

    /// The payload the daemon sends for this reply.
    public var payload: [UInt8] {
        func strings(_ items: [String]) -> [UInt8] { XsPayload.encode(items) }
        switch self {
        case .ok: return strings(["OK"])
        case let .value(bytes): return bytes
        case let .children(names): return strings(names)
        case let .permissions(p): return strings(p.entries.map(\.description))
        case let .transactionID(id): return strings(["\(id)"])
        case let .domainPath(path): return strings([path])
        case let .introduced(yes): return strings([yes ? "T" : "F"])
        case let .childrenPart(generation, children, complete): return strings([generation] + children) + (complete ? [0] : [])
        case let .text(text): return strings([text])
        case let .error(name): return strings([name.rawValue])
        case let .watchEvent(path, token): return strings([path, token])
        }
    }

    /// The framed reply to `request` (ERROR and WATCH_EVENT carry their own types).
    public func message(answering request: XsHeader) -> XsMessage {
        let payload = self.payload
        let type: UInt32
        switch self {
        case .error: type = XsMessageType.error.rawValue
        case .watchEvent: type = XsMessageType.watchEvent.rawValue
        default: type = request.type
        }
        let isEvent = { if case .watchEvent = self { return true } else { return false } }()
        return XsMessage(
            header: XsHeader(
                type: type, requestID: isEvent ? 0 : request.requestID,
                transactionID: isEvent ? 0 : request.transactionID, length: UInt32(payload.count)),
            payload: payload)
    }
}

/// Payload helpers: NUL-separated strings.
public enum XsPayload {
    /// `a\0b\0…`, built in one allocation.
    public static func encode(_ items: [String]) -> [UInt8] {
        var size = 0
        for item in items { size += item.utf8.count + 1 }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(size)
        for item in items {
            bytes.append(contentsOf: item.utf8)
            bytes.append(0)
        }
        return bytes
    }

    static func strings(_ payload: [UInt8]) -> [String] {
        guard !payload.isEmpty else { return [] }
        var parts = payload.split(separator: 0, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
        if payload.last == 0 { parts.removeLast() }
        return parts
    }

    static func isTerminatedStrings(_ payload: [UInt8]) -> Bool { payload.last == 0 }
}

/// An incremental frame decoder: feed bytes as they arrive (a message split at any byte, or
/// several in one read); take whole messages out. Bounded: a header announcing more than the
/// limit is an error, and the buffer never holds more than one incomplete message.
public struct XsFrameDecoder: Sendable {
    private var buffer: [UInt8] = []
    private var start = 0
    public let limit: Int

    public init(limit: Int = XsWire.payloadMax) { self.limit = limit }

    /// Bytes held that do not yet make a message.
    public var pending: Int { buffer.count - start }

    public mutating func feed(_ bytes: some Sequence<UInt8>) {
        if start > 0 && start == buffer.count {
            buffer.removeAll(keepingCapacity: true)
            start = 0
        }
        buffer.append(contentsOf: bytes)
    }

    /// The next whole message, nil when more bytes are needed.
    /// - Throws: ``XenStoreWireError/payloadTooLarge(length:limit:)`` — the caller must drop the connection.
    public mutating func next() throws(XenStoreWireError) -> XsMessage? {
        guard buffer.count - start >= XsHeader.wireSize else { return nil }
        let header = buffer.withUnsafeBytes { raw in
            try! XsHeader.decode(UnsafeRawBufferPointer(rebasing: raw[start..<start + XsHeader.wireSize]))
        }
        guard Int(header.length) <= limit else { throw .payloadTooLarge(length: header.length, limit: limit) }
        let end = start + XsHeader.wireSize + Int(header.length)
        guard buffer.count >= end else { return nil }
        let message = XsMessage(header: header, payload: Array(buffer[(start + XsHeader.wireSize)..<end]))
        start = end
        if start > 4 * (XsHeader.wireSize + limit) {
            buffer.removeFirst(start)
            start = 0
        }
        return message
    }
}
