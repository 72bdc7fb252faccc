import NBDProtocol
import Testing

/// The client's side, written here from the protocol document: option requests, replies.
private enum Client {
    static func be<T: FixedWidthInteger>(_ value: T) -> [UInt8] { (0..<MemoryLayout<T>.size).reversed().map { UInt8(truncatingIfNeeded: value >> ($0 * 8)) } }

    static func option(_ option: UInt32, _ data: [UInt8] = []) -> [UInt8] { be(NBD.optionMagic) + be(option) + be(UInt32(data.count)) + data }

    static func go(_ name: String, info: [UInt16] = [], option: UInt32 = 7) -> [UInt8] {
        Self.option(option, be(UInt32(name.utf8.count)) + Array(name.utf8) + be(UInt16(info.count)) + info.flatMap { be($0) })
    }

    static func request(_ command: UInt16, flags: UInt16 = 0, cookie: UInt64 = 7, offset: UInt64 = 0, length: UInt32 = 0) -> [UInt8] {
        be(NBD.requestMagic) + be(flags) + be(command) + be(cookie) + be(offset) + be(length)
    }

    /// Option replies in `bytes`: (option, type, data) each.
    static func replies(_ bytes: [UInt8]) -> [(UInt32, UInt32, [UInt8])] {
        var out: [(UInt32, UInt32, [UInt8])] = []
        var at = 0
        while at + 20 <= bytes.count {
            #expect(NBDBytes.load(UInt64.self, at: at, of: bytes) == NBD.replyMagic)
            let option = NBDBytes.load(UInt32.self, at: at + 8, of: bytes)!
            let type = NBDBytes.load(UInt32.self, at: at + 12, of: bytes)!
            let length = Int(NBDBytes.load(UInt32.self, at: at + 16, of: bytes)!)
            out.append((option, type, Array(bytes[(at + 20)..<(at + 20 + length)])))
            at += 20 + length
        }
        #expect(at == bytes.count, "whole replies")
        return out
    }
}

/// Steps `session` over `input` until it needs more, collecting what it does.
private func drive(_ session: inout NBDServerSession, _ input: [UInt8]) throws -> (steps: [NBDServerSession.Step], left: Int) {
    var steps: [NBDServerSession.Step] = []
    var at = 0
    while true {
        let step = try input.withUnsafeBytes { raw in try session.step(UnsafeRawBufferPointer(rebasing: raw[at...])) }
        switch step {
        case .needMore: return (steps, input.count - at)
        case let .reply(_, consumed), let .transmission(_, consumed), let .close(_, consumed), let .request(_, consumed), let .disconnect(consumed):
            at += consumed
        case let .refuse(_, _, _, payload, consumed):
            at = min(at + consumed + payload, input.count)
        }
        steps.append(step)
        if session.phase == .closed { return (steps, input.count - at) }
    }
}

private let disk = NBDExport(
    name: "xvda", description: "a PV disk", size: 1 << 20, flags: [.sendFlush, .sendFUA, .sendTrim, .sendWriteZeroes, .canMultiConn], maximumPayload: 65536)

@Suite("NBD server session (sans I/O): the handshake and request checks")
struct NBDServerSessionTests {
    @Test("the greeting is NBDMAGIC, IHAVEOPT and the fixed-newstyle and no-zeroes flags")
    func greeting() {
        let session = NBDServerSession(exports: [disk])
        #expect(session.greeting == Array("NBDMAGICIHAVEOPT".utf8) + [0, 3])
    }

    @Test("GO with structured replies: INFO_EXPORT (size, flags with DF), the name and block sizes asked for, ACK; then transmission")
    func go() throws {
        var session = NBDServerSession(exports: [disk])
        let input = Client.be(UInt32(3)) + Client.option(8) + Client.go("xvda", info: [1, 2, 3])
        let (steps, left) = try drive(&session, input)
        #expect(left == 0 && session.phase == .transmission && session.structuredReplies && session.export == disk)
        guard steps.count == 3, case let .reply(ack, _) = steps[1], case let .transmission(bytes, _) = steps[2] else {
            Issue.record("steps: \(steps)")
            return
        }
        #expect(Client.replies(ack).map(\.1) == [1])
        let replies = Client.replies(bytes)
        #expect(replies.map(\.0).allSatisfy { $0 == 7 } && replies.map(\.1) == [3, 3, 3, 3, 1], "info ×4 then ACK")
        let export = replies[0].2
        #expect(NBDBytes.load(UInt16.self, at: 0, of: export) == 0 && NBDBytes.load(UInt64.self, at: 2, of: export) == 1 << 20)
        let flags = NBD.TransmissionFlags(rawValue: NBDBytes.load(UInt16.self, at: 10, of: export)!)
        #expect(flags.isSuperset(of: [.hasFlags, .sendFlush, .sendFUA, .sendTrim, .sendWriteZeroes, .canMultiConn, .sendDF]) && !flags.contains(.readOnly))
        #expect(replies[1].2 == [0, 1] + Array("xvda".utf8))
        #expect(replies[2].2 == [0, 2] + Array("a PV disk".utf8))
        #expect(replies[3].2 == [0, 3] + Client.be(UInt32(512)) + Client.be(UInt32(4096)) + Client.be(UInt32(65536)))
    }

    @Test("EXPORT_NAME: size, flags and 124 zeros (none when the client said NO_ZEROES); the empty name is the default export")
    func exportName() throws {
        for (clientFlags, zeros) in [(UInt32(1), 124), (UInt32(3), 0)] {
            var session = NBDServerSession(exports: [disk])
            let (steps, _) = try drive(&session, Client.be(clientFlags) + Client.option(1))
            guard case let .transmission(bytes, _)? = steps.last else {
                Issue.record("\(steps)")
                continue
            }
            #expect(bytes.count == 10 + zeros && NBDBytes.load(UInt64.self, at: 0, of: bytes) == 1 << 20)
            #expect(!NBD.TransmissionFlags(rawValue: NBDBytes.load(UInt16.self, at: 8, of: bytes)!).contains(.sendDF), "no DF without structured replies")
        }
        var session = NBDServerSession(exports: [disk])
        #expect(throws: NBDProtocolError.unknownExport("sda")) { try drive(&session, Client.be(UInt32(1)) + Client.option(1, Array("sda".utf8))) }
    }

    @Test("LIST names every export; an unknown option gets ERR_UNSUP and negotiation goes on; ABORT is acknowledged, then close")
    func listUnknownAbort() throws {
        var session = NBDServerSession(exports: [disk, NBDExport(name: "b", size: 512, flags: [])])
        let (steps, _) = try drive(&session, Client.be(UInt32(1)) + Client.option(3) + Client.option(42, [1, 2, 3]) + Client.option(5) + Client.option(2))
        let replies = steps.flatMap { step -> [(UInt32, UInt32, [UInt8])] in
            switch step {
            case let .reply(bytes, _), let .close(bytes, _): Client.replies(bytes)
            default: []
            }
        }
        #expect(replies.map(\.1) == [2, 2, 1, NBD.Reply.errorUnsupported.rawValue, NBD.Reply.errorUnsupported.rawValue, 1])
        #expect(replies[0].2 == Client.be(UInt32(4)) + Array("xvda".utf8) && replies[1].2 == Client.be(UInt32(1)) + Array("b".utf8))
        #expect(session.phase == .closed)
        if case .close? = steps.last {} else { Issue.record("ABORT ends with close: \(steps)") }
    }

    @Test("malformed INFO/GO gets ERR_INVALID, an unknown name ERR_UNKNOWN, a second STRUCTURED_REPLY ERR_INVALID; the session stays in negotiation")
    func optionErrors() throws {
        var session = NBDServerSession(exports: [disk])
        let input =
            Client.be(UInt32(1)) + Client.option(7, [0, 0, 0, 9, 1]) + Client.go("nope") + Client.option(8) + Client.option(8) + Client.option(8, [1])
            + Client.option(3, [1])
        let (steps, _) = try drive(&session, input)
        let types = steps.dropFirst().flatMap { step -> [UInt32] in if case let .reply(bytes, _) = step { Client.replies(bytes).map(\.1) } else { [] } }
        let invalid = NBD.Reply.errorInvalid.rawValue
        #expect(types == [invalid, NBD.Reply.errorUnknown.rawValue, 1, invalid, invalid, invalid])
        #expect(session.phase == .options)
    }

    @Test("what ends a connection: unknown client flags, a missing IHAVEOPT, an option longer than 64 KiB, a bad request magic, a WRITE over the maximum")
    func fatal() throws {
        var s = NBDServerSession(exports: [disk])
        #expect(throws: NBDProtocolError.badClientFlags(4)) { try drive(&s, Client.be(UInt32(4))) }
        s = NBDServerSession(exports: [disk])
        #expect(throws: NBDProtocolError.badOptionMagic(0)) { try drive(&s, Client.be(UInt32(1)) + [UInt8](repeating: 0, count: 16)) }
        s = NBDServerSession(exports: [disk])
        #expect(throws: NBDProtocolError.optionTooLong(option: 3, length: 1 << 20)) {
            try drive(&s, Client.be(UInt32(1)) + Client.be(NBD.optionMagic) + Client.be(UInt32(3)) + Client.be(UInt32(1 << 20)))
        }
        s = try transmitting()
        #expect(throws: NBDProtocolError.badRequestMagic(0x2560_9514)) { try drive(&s, Client.be(UInt32(0x2560_9514)) + [UInt8](repeating: 0, count: 24)) }
        s = try transmitting()
        #expect(throws: NBDProtocolError.payloadTooLarge(length: 65536 + 512, maximum: 65536)) { try drive(&s, Client.request(1, length: 65536 + 512)) }
    }

    private func transmitting(_ export: NBDExport = disk, structured: Bool = false) throws -> NBDServerSession {
        var session = NBDServerSession(exports: [export])
        _ = try drive(&session, Client.be(UInt32(1)) + (structured ? Client.option(8) : []) + Client.go(""))
        #expect(session.phase == .transmission)
        return session
    }

    @Test("requests: each command checked against the export (range, alignment, flags, read-only, what was offered)")
    func requests() throws {
        func answer(_ request: [UInt8], export: NBDExport = disk, structured: Bool = false) throws -> NBDServerSession.Step? {
            var session = try transmitting(export, structured: structured)
            return try drive(&session, request).steps.first
        }
        func refused(_ step: NBDServerSession.Step?) -> NBD.Errno? { if case let .refuse(_, _, error, _, _)? = step { error } else { nil } }
        // Served.
        #expect(
            try answer(Client.request(0, cookie: 99, offset: 4096, length: 8192))
                == .request(NBDRequest(command: .read, flags: [], cookie: 99, offset: 4096, length: 8192), consumed: 28))
        #expect(try answer(Client.request(0, length: 0)) == .request(NBDRequest(command: .read, flags: [], cookie: 7, offset: 0, length: 0), consumed: 28))
        #expect(
            try answer(Client.request(1, flags: 1, offset: (1 << 20) - 512, length: 512))
                == .request(NBDRequest(command: .write, flags: .fua, cookie: 7, offset: (1 << 20) - 512, length: 512), consumed: 28))
        #expect(
            try answer(Client.request(3, offset: 5, length: 9))
                == .request(NBDRequest(command: .flush, flags: [], cookie: 7, offset: 0, length: 0), consumed: 28))
        #expect(
            try answer(Client.request(6, flags: 2, length: 1 << 20))
                == .request(NBDRequest(command: .writeZeroes, flags: .noHole, cookie: 7, offset: 0, length: 1 << 20), consumed: 28))
        #expect(
            try answer(Client.request(0, flags: 4, length: 512), structured: true)
                == .request(NBDRequest(command: .read, flags: .dontFragment, cookie: 7, offset: 0, length: 512), consumed: 28))
        #expect(try answer(Client.request(2)) == .disconnect(consumed: 28))
        // Refused, each with its error.
        #expect(refused(try answer(Client.request(0, offset: 1 << 20, length: 512))) == .invalid, "read past the end")
        #expect(refused(try answer(Client.request(0, offset: UInt64.max - 100, length: 512))) == .invalid, "offset + length overflows")
        #expect(refused(try answer(Client.request(1, offset: 1 << 20, length: 512))) == .noSpace, "write past the end")
        #expect(refused(try answer(Client.request(4, offset: 1 << 20, length: 512))) == .invalid, "trim past the end")
        #expect(refused(try answer(Client.request(0, offset: 100, length: 512))) == .invalid, "misaligned offset")
        #expect(refused(try answer(Client.request(0, length: 100))) == .invalid, "misaligned length")
        #expect(refused(try answer(Client.request(0, length: 65536 + 512))) == .invalid, "a read over the maximum payload")
        #expect(refused(try answer(Client.request(9))) == .invalid, "unknown command")
        #expect(refused(try answer(Client.request(5, length: 512))) == .invalid, "CACHE was not offered")
        #expect(refused(try answer(Client.request(7, length: 512))) == .invalid, "BLOCK_STATUS without a meta context")
        #expect(refused(try answer(Client.request(0, flags: 1 << 9, length: 512))) == .invalid, "unknown flag")
        #expect(refused(try answer(Client.request(0, flags: 4, length: 512))) == .invalid, "DF without structured replies")
        #expect(refused(try answer(Client.request(1, flags: 2, length: 512))) == .invalid, "NO_HOLE on a write")
        let readOnly = NBDExport(name: "r", size: 1 << 20, flags: [.readOnly])
        for command: UInt16 in [1, 4, 6] {
            #expect(refused(try answer(Client.request(command, length: 512), export: readOnly)) == .permission, "command \(command) on a read-only export")
        }
        #expect(refused(try answer(Client.request(3), export: readOnly)) == .invalid, "FLUSH was not offered")
        #expect(refused(try answer(Client.request(0, flags: 1, length: 512), export: readOnly)) == .invalid, "FUA was not offered")
        // A refused WRITE still has its data to skip.
        if case let .refuse(cookie, command, _, payload, _)? = try answer(Client.request(1, cookie: 5, offset: 1 << 20, length: 1024)) {
            #expect(cookie == 5 && command == 1 && payload == 1024)
        } else {
            Issue.record("a refused write names its payload")
        }
    }

    @Test("the handshake cut at every byte: each prefix asks for more and takes nothing it cannot finish; whole, it reaches transmission")
    func cutAtEveryByte() throws {
        let input = Client.be(UInt32(1)) + Client.option(8) + Client.option(3) + Client.go("xvda", info: [3]) + Client.request(0, length: 512)
        for cut in 0..<input.count {
            var session = NBDServerSession(exports: [disk])
            let prefix = Array(input[..<cut])
            let (_, left) = try drive(&session, prefix)
            #expect(left < 28, "at \(cut): at most a partial message is left (\(left) bytes)")
        }
        var session = NBDServerSession(exports: [disk])
        let (steps, left) = try drive(&session, input)
        #expect(left == 0 && session.phase == .transmission)
        #expect(steps.last == .request(NBDRequest(command: .read, flags: [], cookie: 7, offset: 0, length: 512), consumed: 28))
    }

    @Test("replies: simple (16 bytes), structured data (DONE, OFFSET_DATA, length + 8, the offset), error chunk with its message, NONE")
    func replies() {
        #expect(NBDReplies.simple(cookie: 0x0102, error: 22) == Client.be(NBD.simpleReplyMagic) + Client.be(UInt32(22)) + Client.be(UInt64(0x0102)))
        #expect(
            NBDReplies.data(cookie: 3, offset: 4096, count: 512)
                == Client.be(NBD.structuredReplyMagic) + Client.be(UInt16(1)) + Client.be(UInt16(1)) + Client.be(UInt64(3)) + Client.be(UInt32(520))
                + Client.be(UInt64(4096)))
        #expect(
            NBDReplies.error(cookie: 3, error: .io, message: "gone")
                == Client.be(NBD.structuredReplyMagic) + Client.be(UInt16(1)) + Client.be(UInt16(0x8001)) + Client.be(UInt64(3)) + Client.be(UInt32(10))
                + Client.be(UInt32(5)) + Client.be(UInt16(4)) + Array("gone".utf8))
        #expect(
            NBDReplies.done(cookie: 3) == Client.be(NBD.structuredReplyMagic) + Client.be(UInt16(1)) + Client.be(UInt16(0)) + Client.be(UInt64(3))
                + Client.be(UInt32(0)))
        #expect(NBDReplies.failure(cookie: 1, command: 1, error: .io, message: "x", structured: true).count == 16, "only READs get structured errors")
    }
}
