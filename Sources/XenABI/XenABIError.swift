/// A wire value that Xen's ABI does not allow, found while decoding bytes from a peer.
///
/// Decoders never trap on what a peer wrote: every structural impossibility (a count larger
/// than the array that holds it, an unknown operation, a sector range that runs backwards) is
/// one of these cases, carrying the offending value.
public enum XenABIError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The buffer is shorter than the structure being decoded.
    case truncated(structure: String, needed: Int, available: Int)
    /// An operation, type or state code that the protocol does not define.
    case unknownCode(field: String, value: UInt64)
    /// A count field larger than the protocol allows.
    case countOutOfRange(field: String, value: Int, limit: Int)
    /// A blkif segment whose sector range is empty, reversed, or leaves the 4 KiB page.
    case badSegmentSectors(index: Int, first: UInt8, last: UInt8)
    /// A field combination the protocol forbids, described in words.
    case inconsistent(String)

    public var description: String {
        switch self {
        case let .truncated(structure, needed, available):
            "truncated \(structure): needs \(needed) bytes, got \(available)"
        case let .unknownCode(field, value):
            "unknown \(field) \(value)"
        case let .countOutOfRange(field, value, limit):
            "\(field) \(value) is over the limit \(limit)"
        case let .badSegmentSectors(index, first, last):
            "segment \(index) has sectors \(first)...\(last) (must be first <= last <= 7)"
        case let .inconsistent(what):
            what
        }
    }
}

@inlinable @inline(__always)
func requireBytes(_ buffer: UnsafeRawBufferPointer, _ needed: Int, _ structure: String) throws(XenABIError) {
    guard buffer.count >= needed else {
        throw .truncated(structure: structure, needed: needed, available: buffer.count)
    }
}
