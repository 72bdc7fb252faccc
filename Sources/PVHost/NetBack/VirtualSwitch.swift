import PVSystem
import PacketOffload
import Synchronization
import XenABI

/// A place the switch delivers to: a vif of a guest, or a TAP device into Linux.
public protocol SwitchPort: AnyObject, Sendable {
    /// For status and logs (`vif1.0`, `tap:pvtap0`).
    var portName: String { get }
    /// Takes packets for this port; called on the sending port's thread, so it must not wait
    /// for long (queue, or drop and count).
    func deliver(_ packets: [Packet])
}

/// pvhost's learning switch between every vif of every guest and the TAP devices: it learns
/// which port each source MAC address is behind, sends a frame for a known unicast address to
/// that port only, and floods broadcast, multicast and unknown destinations to every other
/// port. A frame is never sent back out of the port it came in on.
public final class VirtualSwitch: Sendable {
    private struct Entry {
        let port: any SwitchPort
    }
    private struct State {
        var ports: [ObjectIdentifier: Entry] = [:]
        var table: [MACAddress: ObjectIdentifier] = [:]
        var forwarded = 0, flooded = 0, filtered = 0
        /// Captures by port name.
        var captures: [String: PacketCapture] = [:]
    }
    private let state = Locked(State())

    public init() {}

    public func attach(_ port: any SwitchPort) {
        state.withLock { $0.ports[ObjectIdentifier(port)] = Entry(port: port) }
    }

    /// Removes a port and every address learnt behind it.
    public func detach(_ port: any SwitchPort) {
        let id = ObjectIdentifier(port)
        state.withLock { s in
            s.ports[id] = nil
            s.table = s.table.filter { $0.value != id }
        }
    }

    /// Counters: frames sent to one port, frames flooded, frames dropped because their
    /// destination is behind the port they came from.
    public var counters: (forwarded: Int, flooded: Int, filtered: Int) { state.withLock { ($0.forwarded, $0.flooded, $0.filtered) } }

    /// Port names, sorted (for status and errors).
    public var portNames: [String] { state.withLock { $0.ports.values.map(\.port.portName).sorted() } }

    /// Why a capture could not start.
    public struct CaptureFailure: Error, CustomStringConvertible { public let description: String }

    /// Writes every frame `port` sends or receives from now on to a pcap file at `path`.
    public func startCapture(port: String, path: String) throws(CaptureFailure) {
        guard portNames.contains(port) else { throw CaptureFailure(description: "no switch port named \(port) (ports: \(portNames.joined(separator: ", ")))") }
        let capture: PacketCapture
        do { capture = try PacketCapture(path: path) } catch { throw CaptureFailure(description: "\(error)") }
        state.withLock { $0.captures[port] = capture }
    }

    /// Ends a capture; returns the frames it holds (nil: none was running).
    @discardableResult
    public func stopCapture(port: String) -> Int? {
        state.withLock { $0.captures.removeValue(forKey: port) }?.frames
    }

    /// The port an address was learnt behind.
    public func port(of address: MACAddress) -> String? {
        state.withLock { s in s.table[address].flatMap { s.ports[$0]?.port.portName } }
    }

    /// Learns the packets' sources and delivers them, one batch per destination port.
    public func forward(_ packets: [Packet], from ingress: any SwitchPort) {
        let from = ObjectIdentifier(ingress)
        // Few ports get a batch: a short list beats hashing per packet. The last source and
        // destination looked up are remembered (a batch is mostly one flow).
        var batches: [(id: ObjectIdentifier, port: any SwitchPort, packets: [Packet])] = []
        var captures: [String: PacketCapture] = [:]
        func add(_ packet: Packet, to id: ObjectIdentifier, _ port: any SwitchPort) {
            if let i = batches.firstIndex(where: { $0.id == id }) { batches[i].packets.append(packet) } else { batches.append((id, port, [packet])) }
        }
        state.withLock { s in
            guard s.ports[from] != nil else { return }
            captures = s.captures
            var lastSource: MACAddress?
            var lastDestination: (MACAddress, ObjectIdentifier, any SwitchPort)?
            for packet in packets where packet.bytes.count >= 14 {
                let source = packet.source
                if source != lastSource {
                    if !source.isMulticast, s.table[source] != from {
                        s.table[source] = from
                        lastDestination = nil  // the table changed
                    }
                    lastSource = source
                }
                let destination = packet.destination
                if let last = lastDestination, last.0 == destination {
                    add(packet, to: last.1, last.2)
                    s.forwarded += 1
                } else if !destination.isMulticast, let to = s.table[destination] {
                    guard to != from, let entry = s.ports[to] else { s.filtered += 1; continue }
                    lastDestination = (destination, to, entry.port)
                    add(packet, to: to, entry.port)
                    s.forwarded += 1
                } else {
                    for (id, entry) in s.ports where id != from { add(packet, to: id, entry.port) }
                    s.flooded += 1
                }
            }
        }
        if !captures.isEmpty {
            captures[ingress.portName]?.record(packets)
            for batch in batches { captures[batch.port.portName]?.record(batch.packets) }
        }
        for batch in batches { batch.port.deliver(batch.packets) }
    }
}
