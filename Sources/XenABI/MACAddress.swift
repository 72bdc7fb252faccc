/// An Ethernet MAC address, held in 48 bits (a plain value: no allocation on the data path).
public struct MACAddress: Hashable, Sendable, CustomStringConvertible {
    /// The six bytes, first byte in the low 8 bits.
    @usableFromInline var packed: UInt64

    /// The address with these six bytes, in wire order.
    public init(_ b0: UInt8, _ b1: UInt8, _ b2: UInt8, _ b3: UInt8, _ b4: UInt8, _ b5: UInt8) {
        packed = [b0, b1, b2, b3, b4, b5].enumerated().reduce(0) { $0 | UInt64($1.element) << (8 * $1.offset) }
    }

    /// Reads six bytes at `offset` of a wire buffer.
    @inlinable
    public init(wire buffer: UnsafeRawBufferPointer, at offset: Int) {
        packed = UInt64(buffer.le(UInt32.self, at: offset)) | UInt64(buffer.le(UInt16.self, at: offset + 4)) << 32
    }

    /// Writes the six bytes at `offset`.
    @inlinable
    func encode(into buffer: UnsafeMutableRawBufferPointer, at offset: Int) {
        buffer.storeLE(UInt32(truncatingIfNeeded: packed), at: offset)
        buffer.storeLE(UInt16(truncatingIfNeeded: packed >> 32), at: offset + 4)
    }

    /// Parses `xx:xx:xx:xx:xx:xx`, the form xenstore's `mac` nodes hold.
    public init?(_ text: some StringProtocol) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 6 else { return nil }
        var bytes: [UInt8] = []
        for part in parts {
            guard part.count == 2, let byte = UInt8(part, radix: 16) else { return nil }
            bytes.append(byte)
        }
        self.init(bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5])
    }

    /// The six bytes in wire order.
    public var bytes: [UInt8] { (0..<6).map { UInt8(truncatingIfNeeded: packed >> (8 * $0)) } }

    /// True for group (multicast and broadcast) addresses: bit 0 of the first byte.
    public var isMulticast: Bool { packed & 1 != 0 }

    /// `ff:ff:ff:ff:ff:ff`.
    public static let broadcast = MACAddress(0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF)

    public var description: String {
        bytes.map { byte in
            let digits = String(byte, radix: 16)
            return digits.count == 1 ? "0" + digits : digits
        }.joined(separator: ":")
    }
}
