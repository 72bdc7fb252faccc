import Atomics
import DequeModule
import Foundation
import PacketOffload
import PVSystem
import XenABI
import XenRing

/// What a connected frontend accepts on its rx ring (its own keys, read once at connect).
struct FrontendAccepts: Sendable, Equatable {
    var scatterGather = false
    var gsoTCPv4 = false
    var gsoTCPv6 = false
    /// IPv4 blank checksums (no `feature-no-csum-offload`).
    var checksumOffload = true
    var ipv6ChecksumOffload = false
}

/// One queue of a connected vif: its tx and rx ring pages mapped, its one or two event
/// channels bound and watched on one of pvhost's event loops. The handler takes packets off
/// the tx ring (slots copied out once and checked by ``TxAssembler``, data fetched with one
/// batched grant copy), answers them, and hands them to the switch. Packets for the guest
/// arrive from other ports' loops (``deliver(_:)``) and go straight into the buffers the
/// frontend posted (grant copy), or wait in a bounded queue until it posts more; the rx-notify
/// event brings the handler back to place them.
final class VifQueue: Sendable {
    private unowned let vif: NetBackend
    let index: Int
    private let mappings: [GrantMapping]
    private let txPort: EventChannelPort
    private let rxPort: EventChannelPort
    private let ends: [EventChannelPortEnd]
    private let accepts: FrontendAccepts
    private let hypervisor: Hypervisor
    private let hostile: NetBackend.HostileMode?
    private let rxRingStart: MemoryAddress
    /// The loop the channels are watched on.
    private let loop: EventLoop
    /// The tx ring and the handler's scratch (the loop's thread only).
    private let tx: LoopBound<TxSide>
    /// The rx ring and what waits for it (packets arrive from any port's thread).
    private let rxLock: Locked<RxSide>
    /// Packets waiting for rx buffers, at most.
    static let pendingLimit = 1024

    private struct TxSide: ~Copyable {
        var ring: BackRing<NetifTxRing>
        var assembler = TxAssembler()
        var packets: [Packet] = []
        /// Kept between batches (no allocation per batch).
        var outcomes: [TxAssembler.Outcome] = []
        var fetched: [[UInt8]] = []
        var copies: [Hypervisor.GrantCopy] = []
        /// Hostile `vanish` happened: the queue stops serving.
        var vanished = false
    }

    private struct RxSide: ~Copyable {
        var ring: BackRing<NetifRxRing>
        var pending = Deque<Packet>()
        var stopped = false
        var registrations: [EventLoop.Registration] = []
        /// Scratch of ``placeLocked(_:)``, kept between batches.
        var slots: [Slot] = []
        var copies: [Hypervisor.GrantCopy] = []
        /// The packets those copies read from, alive until the copies ran.
        var placed: [Packet] = []
    }

    /// Counters.
    let txPackets = ManagedAtomic<Int>(0), rxPackets = ManagedAtomic<Int>(0)
    let txRefused = ManagedAtomic<Int>(0), rxDropped = ManagedAtomic<Int>(0)
    let notifications = ManagedAtomic<Int>(0)
    /// Notifications to the frontend that failed (its port closed under us).
    let failedNotifications = ManagedAtomic<Int>(0)

    init(vif: NetBackend, index: Int, txRef: GrantRef, rxRef: GrantRef, ports: [EventChannelPort], accepts: FrontendAccepts) throws {
        self.vif = vif
        self.index = index
        self.accepts = accepts
        hostile = vif.settings.hostile
        let hypervisor = vif.hypervisor
        self.hypervisor = hypervisor
        loop = hypervisor.eventLoops.next()
        let frontend = vif.device.frontend
        var mapped: [GrantMapping] = []
        var bound: [(EventChannelPort, EventChannelPortEnd)] = []
        do {
            mapped.append(try hypervisor.mapGrant(txRef, of: frontend, by: .dom0, writable: true))
            mapped.append(try hypervisor.mapGrant(rxRef, of: frontend, by: .dom0, writable: true))
            for port in ports { bound.append(try hypervisor.bindInterdomain(.dom0, remote: frontend, remotePort: port)) }
            let txRing = try BackRing(resuming: UnsafeMutableRawBufferPointer(start: mapped[0].page, count: XenPage.size), protocol: NetifTxRing())
            let rxRing = try BackRing(resuming: UnsafeMutableRawBufferPointer(start: mapped[1].page, count: XenPage.size), protocol: NetifRxRing())
            tx = LoopBound(TxSide(ring: txRing), on: loop)
            rxLock = Locked(RxSide(ring: rxRing))
        } catch {
            for mapping in mapped { try? hypervisor.unmapGrant(mapping.handle, by: .dom0) }
            for (port, _) in bound { try? hypervisor.closePort(.dom0, port) }
            throw error
        }
        mappings = mapped
        rxRingStart = MemoryAddress(mapped[1].page)
        txPort = bound[0].0
        rxPort = bound.last!.0
        ends = bound.map(\.1)
    }

    /// Watches the channels on the queue's loop.
    func start() throws(SystemError) {
        var made: [EventLoop.Registration] = []
        do throws(SystemError) {
            for end in ends {
                made.append(
                    try loop.register(
                        end.delivery.fileDescriptor, name: "vif \(vif.device.frontend.rawValue).\(vif.device.devid) q\(index)",
                        owner: end.delivery
                    ) { [self] _ in
                        end.delivery.consume()
                        serve()
                        return .wait
                    })
            }
        } catch {
            for registration in made { registration.cancel() }
            throw error
        }
        let stopped = rxLock.withLock { s in
            s.registrations = made
            return s.stopped
        }
        if stopped { for registration in made { registration.cancel() } }
    }

    /// Stops serving from the handler (a broken ring, hostile `vanish`).
    private func stopServing() {
        let registrations = rxLock.withLock { s in
            s.stopped = true
            return s.registrations
        }
        for registration in registrations { registration.cancel() }
    }

    /// Stops serving; returns once the channels are out of the loop (nothing of this queue
    /// runs after), with the rings unmapped and the ports closed.
    func stop() async {
        let registrations = rxLock.withLock { s in
            s.stopped = true
            defer { s.registrations = [] }
            return s.registrations
        }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            loop.execute { [self] in
                for registration in registrations { registration.cancel() }
                release()
                continuation.resume()
            }
        }
    }

    /// Unmaps the rings, closes the ports (after the queue stopped, or when it never started).
    func release() {
        let hypervisor = vif.hypervisor
        for mapping in mappings { try? hypervisor.unmapGrant(mapping.handle, by: .dom0) }
        try? hypervisor.closePort(.dom0, txPort)
        if rxPort != txPort { try? hypervisor.closePort(.dom0, rxPort) }
    }

    private func notifyFrontend(_ port: EventChannelPort) {
        do { try hypervisor.notify(.dom0, port) } catch { failedNotifications.wrappingIncrement(ordering: .relaxed) }
        notifications.wrappingIncrement(ordering: .relaxed)
    }

    // MARK: The handler

    /// A notification: everything on the tx ring taken, forwarded, answered; packets waiting
    /// for rx buffers placed; until ring.h's final check finds nothing more.
    private func serve() {
        guard !tx.value.vanished, !rxLock.withLock({ $0.stopped }) else { return }
        do {
            repeat {
                try takePackets(&tx.value)
                if tx.value.vanished {
                    stopServing()
                    return
                }
                if !tx.value.packets.isEmpty {
                    vif.forward(tx.value.packets)
                    tx.value.packets.removeAll(keepingCapacity: true)
                }
                placePending()
            } while try tx.value.ring.finalCheckForRequests()
        } catch {
            vif.logger.error("vif \(vif.device.frontend.rawValue).\(vif.device.devid) queue \(index): \(error); stopped serving it")
            stopServing()
        }
    }

    /// Takes every waiting tx request: t.packets t.fetched by grant copy (one batch), answered,
    /// and appended to `t.packets`.
    private func takePackets(_ t: inout TxSide) throws(RingError) {
        t.outcomes.removeAll(keepingCapacity: true)
        t.fetched.removeAll(keepingCapacity: true)
        t.copies.removeAll(keepingCapacity: true)
        while let raw: (UInt64, UInt32) = try t.ring.nextRequest(decode: { slot throws(XenABIError) in
            (slot.loadUnaligned(as: UInt64.self), slot.loadUnaligned(fromByteOffset: 8, as: UInt32.self))
        }) {
            if let outcome = withUnsafeBytes(of: raw, { t.assembler.consume(UnsafeRawBufferPointer(rebasing: $0[0..<NetifTxRequest.wireSize])) }) {
                t.outcomes.append(outcome)
            }
            if t.outcomes.count >= 64 { break }
        }
        guard !t.outcomes.isEmpty else { return }
        // Fetch every packet's bytes with one batch of copies. The copies point into the new
        // arrays' storage, which nothing resizes or shares before the copies ran.
        for outcome in t.outcomes {
            guard case let .packet(planned) = outcome else { t.fetched.append([]); continue }
            var bytes = [UInt8](repeating: 0, count: planned.length)
            bytes.withUnsafeMutableBytes { out in
                t.copies.append(
                    Hypervisor.GrantCopy(
                        ref: planned.first.gref, offset: planned.first.offset, length: planned.first.length,
                        local: out.baseAddress!, toGrant: false))
                var at = planned.first.length
                for segment in planned.rest {
                    t.copies.append(
                        Hypervisor.GrantCopy(
                            ref: segment.gref, offset: segment.offset, length: segment.length,
                            local: out.baseAddress! + at, toGrant: false))
                    at += segment.length
                }
            }
            t.fetched.append(bytes)
        }
        let frontend = vif.device.frontend
        t.copies.withUnsafeMutableBufferPointer { hypervisor.copyGrants($0, of: frontend, by: .dom0) }
        var next = 0
        for index in t.outcomes.indices {
            switch t.outcomes[index] {
            case let .packet(planned):
                if hostile == .vanish {
                    vif.vanish()
                    t.vanished = true
                    return
                }
                let count = 1 + planned.rest.count
                var failed = false
                for copy in next..<next + count where t.copies[copy].status != .okay { failed = true }
                next += count
                respond(&t, first: planned.first.id, extras: planned.extras, rest: planned.rest, status: failed ? Netif.statusError : Netif.statusOkay)
                if failed {
                    txRefused.wrappingIncrement(ordering: .relaxed)
                    continue
                }
                var gso: (type: NetifGSOType, size: UInt16)?
                if case let .gso(size, type, _)? = planned.gso { gso = (type, size) }
                t.packets.append(
                    Packet(
                        bytes: t.fetched[index], checksumBlank: planned.flags.contains(.checksumBlank),
                        dataValidated: planned.flags.contains(.dataValidated), gso: gso))
                txPackets.wrappingIncrement(ordering: .relaxed)
            case let .refused(ids, extras, reason):
                vif.logger.notice("vif \(frontend.rawValue).\(vif.device.devid): refused a tx packet (\(reason.rawValue))")
                if let first = ids.first {
                    respond(
                        &t, first: first, extras: extras, rest: ids.dropFirst().map { TxAssembler.Segment(id: $0, gref: GrantRef(0), offset: 0, length: 0) },
                        status: Netif.statusError)
                } else {
                    for _ in 0..<extras { t.ring.enqueueResponse(NetifTxResponse(id: 0, status: Netif.statusNull)) }
                }
                txRefused.wrappingIncrement(ordering: .relaxed)
            }
        }
        if hostile == .txNeverAnswer { return }
        if t.ring.pushResponsesAndCheckNotify() { notifyFrontend(txPort) }
        if hostile == .eventStorm {
            // After the frontend had time to take the responses and sleep: every one of these
            // wakes it for nothing.
            let port = txPort
            loop.schedule(after: .milliseconds(2)) { [self] in for _ in 0..<200 { notifyFrontend(port) } }
        }
    }

    /// Responses for one packet in ring order: the first data slot, a null per extra slot,
    /// the other data slots.
    private func respond(_ t: inout TxSide, first: UInt16, extras: Int, rest: [TxAssembler.Segment], status: Int16) {
        if hostile == .txNeverAnswer { return }
        let first = hostile == .txUnknownID ? first &+ 1000 : first
        t.ring.enqueueResponse(NetifTxResponse(id: first, status: status))
        for _ in 0..<extras { t.ring.enqueueResponse(NetifTxResponse(id: first, status: Netif.statusNull)) }
        for segment in rest { t.ring.enqueueResponse(NetifTxResponse(id: segment.id, status: status)) }
    }

    // MARK: Receive side

    /// Packets for this guest (from any thread): placed in its posted buffers now, or queued
    /// until it posts more (dropped and counted past ``pendingLimit``).
    func deliver(_ packets: [Packet]) {
        var packets = packets
        // GSO this guest did not negotiate: cut in software (Linux netback does the same).
        if packets.contains(where: { $0.gso != nil && !accepts(gso: $0.gso!.type) }) {
            var cut: [Packet] = []
            for packet in packets {
                guard let gso = packet.gso, !accepts(gso: gso.type) else { cut.append(packet); continue }
                if let segments = packet.segmented() { cut += segments } else { rxDropped.wrappingIncrement(ordering: .relaxed) }
            }
            packets = cut
        }
        let notify: Bool? = rxLock.withLock { [packets] s in
            guard !s.stopped else { return nil }
            let room = Self.pendingLimit - s.pending.count
            if room < packets.count { rxDropped.wrappingIncrement(by: packets.count - max(room, 0), ordering: .relaxed) }
            s.pending.append(contentsOf: packets.prefix(max(room, 0)))
            return placeLocked(&s)
        }
        guard let notify else {
            rxDropped.wrappingIncrement(by: packets.count, ordering: .relaxed)
            return
        }
        if notify { notifyFrontend(rxPort) }
    }

    /// From the queue's own handler (the frontend posted buffers).
    private func placePending() {
        let notify = rxLock.withLock { placeLocked(&$0) }
        if notify { notifyFrontend(rxPort) }
    }

    /// One response slot to write after the copies.
    private enum Slot {
        case data(id: UInt16, length: Int, flags: NetRxFlags, copy: Int)
        case extra(NetifExtraInfo)
    }
    /// Puts s.pending packets into posted buffers while they fit (under `rxLock`); returns
    /// whether to notify the frontend.
    private func placeLocked(_ s: inout RxSide) -> Bool {
        guard !s.pending.isEmpty else { return false }
        s.slots.removeAll(keepingCapacity: true)
        s.copies.removeAll(keepingCapacity: true)
        s.placed.removeAll(keepingCapacity: true)
        var available: UInt32
        do { available = try s.ring.availableRequests() } catch {
            return dropPending(&s, reason: "\(error)")
        }
        while var packet = s.pending.first {
            // What this frontend can take, decided before any slot is used.
            if packet.checksumBlank && !canTakeBlank(packet) {
                if !packet.completeChecksum() { packet.checksumBlank = false }  // not TCP/UDP: nothing to fill in
            }
            var extra: NetifExtraInfo?
            if let gso = packet.gso {
                guard accepts(gso: gso.type) else {  // cut in deliver(); never here
                    drop(&s)
                    continue
                }
                extra = NetifExtraInfo(.gso(size: gso.size, type: gso.type, features: 0))
            }
            // An extra the frontend never negotiated, with an impossible MSS.
            if hostile == .rxBadExtra { extra = NetifExtraInfo(.gso(size: 0, type: .tcpv4, features: 0)) }
            let pages = (packet.bytes.count + XenPage.size - 1) / XenPage.size
            guard packet.bytes.count >= 14, pages <= (accepts.scatterGather ? Netif.minimumSlotsPerPacket : 1) else {
                drop(&s)
                continue
            }
            let needed = UInt32(pages + (extra == nil ? 0 : 1))
            if available < needed {
                do { available = try s.ring.requestNotification(whenAvailable: needed) } catch {
                    return dropPending(&s, reason: "\(error)")
                }
                if available < needed { break }
            }
            available -= needed
            // Ring order: data slot 0, the extra (it uses a request too; that buffer stays
            // empty and goes back to the frontend), then the other data s.slots.
            // The s.copies read this storage (kept alive, unchanged, in `s.placed` until they ran).
            // A request the ring counted but cannot give (the frontend broke the ring): this
            // packet's s.slots are taken back, the rest dropped, the packets s.placed so far sent.
            let slotsBefore = s.slots.count, copiesBefore = s.copies.count
            var broken: String?
            packet.bytes.withUnsafeBytes { bytes in
                let base = UnsafeMutableRawPointer(mutating: bytes.baseAddress!)
                var page = 0
                for n in 0..<Int(needed) {
                    let request: NetifRxRequest
                    do {
                        guard let next = try s.ring.nextRequest() else {
                            broken = "request \(n) of \(needed) counted as available is not there"
                            return
                        }
                        request = next
                    } catch {
                        broken = "\(error)"
                        return
                    }
                    if n == 1, let extra {
                        s.slots.append(.extra(extra))
                        continue
                    }
                    let length = min(XenPage.size, bytes.count - page * XenPage.size)
                    var flags: NetRxFlags = []
                    if page + 1 < pages { flags.insert(.moreData) }
                    if page == 0 {
                        if packet.checksumBlank {
                            flags.formUnion([.checksumBlank, .dataValidated])
                        } else if packet.dataValidated {
                            flags.insert(.dataValidated)
                        }
                        if extra != nil { flags.insert(.extraInfo) }
                    }
                    s.slots.append(.data(id: request.id, length: length, flags: flags, copy: s.copies.count))
                    s.copies.append(
                        Hypervisor.GrantCopy(
                            ref: request.gref, offset: 0, length: length,
                            local: base + page * XenPage.size, toGrant: true))
                    page += 1
                }
            }
            if let broken {
                s.slots.removeSubrange(slotsBefore...)
                s.copies.removeSubrange(copiesBefore...)
                _ = dropPending(&s, reason: broken)
                break
            }
            s.pending.removeFirst()
            s.placed.append(packet)
            rxPackets.wrappingIncrement(ordering: .relaxed)
        }
        guard !s.slots.isEmpty else { return false }
        s.copies.withUnsafeMutableBufferPointer { hypervisor.copyGrants($0, of: vif.device.frontend, by: .dom0) }
        for slot in s.slots {
            switch slot {
            case let .data(id, length, flags, copy):
                let ok = s.copies[copy].status == .okay
                var response = NetifRxResponse(id: id, offset: 0, flags: flags, status: ok ? Int16(length) : Netif.statusError)
                switch hostile {
                case .rxWrongID?: response.id &+= 1
                case .rxBadLength?: response.offset = 100; response.status = 4090
                case .rxErrorStatus?: response.status = Netif.statusError
                case .rxEndlessChain?: response.flags.insert(.moreData)
                default: break
                }
                s.ring.enqueueResponse(.response(response))
            case let .extra(info):
                s.ring.enqueueResponse(.extraInfo(info))
            }
        }
        s.placed.removeAll(keepingCapacity: true)
        let notify = s.ring.pushResponsesAndCheckNotify()
        if hostile == .rxProducerAhead {
            (rxRingStart.pointer + SharedRingHeader.responseProducer).storeBytes(of: s.ring.publishedResponses &+ 300, as: UInt32.self)
            return true
        }
        if hostile == .eventStorm {
            for _ in 0..<200 { notifyFrontend(rxPort) }
        }
        return notify
    }

    private func accepts(gso type: NetifGSOType) -> Bool {
        (type == .tcpv4 && accepts.gsoTCPv4) || (type == .tcpv6 && accepts.gsoTCPv6)
    }

    private func canTakeBlank(_ packet: Packet) -> Bool {
        guard packet.bytes.count >= 14 else { return false }
        let ethertype = Int(packet.bytes[12]) << 8 | Int(packet.bytes[13])
        return ethertype == 0x86DD ? accepts.ipv6ChecksumOffload : accepts.checksumOffload
    }

    /// The first s.pending packet cannot go to this frontend: dropped, counted.
    private func drop(_ s: inout RxSide) {
        s.pending.removeFirst()
        rxDropped.wrappingIncrement(ordering: .relaxed)
    }

    /// A frontend that broke its rx ring: everything waiting is dropped, the ring left alone.
    private func dropPending(_ s: inout RxSide, reason: String) -> Bool {
        vif.logger.error("vif \(vif.device.frontend.rawValue).\(vif.device.devid) rx ring: \(reason)")
        rxDropped.wrappingIncrement(by: s.pending.count, ordering: .relaxed)
        s.pending.removeAll()
        return false
    }
}
