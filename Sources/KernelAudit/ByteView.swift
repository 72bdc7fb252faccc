/// Bounds-checked little-endian reads over an image in memory. A read past the end is nil,
/// never a trap: every offset in a kernel image comes from the image itself.
struct ByteView {
    let bytes: UnsafeRawBufferPointer

    var count: Int { bytes.count }

    func u8(_ offset: Int) -> UInt8? {
        offset >= 0 && offset < bytes.count ? bytes[offset] : nil
    }

    func le<T: FixedWidthInteger>(_: T.Type, _ offset: Int) -> T? {
        guard offset >= 0, offset <= bytes.count - MemoryLayout<T>.size else { return nil }
        return T(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: T.self))
    }

    func be<T: FixedWidthInteger>(_: T.Type, _ offset: Int) -> T? {
        guard offset >= 0, offset <= bytes.count - MemoryLayout<T>.size else { return nil }
        return T(bigEndian: bytes.loadUnaligned(fromByteOffset: offset, as: T.self))
    }

    func hasPrefix(_ magic: [UInt8], at offset: Int = 0) -> Bool {
        guard offset >= 0, offset <= bytes.count - magic.count else { return false }
        for (index, byte) in magic.enumerated() where bytes[offset + index] != byte { return false }
        return true
    }

    /// A NUL-terminated string at `offset`, at most `limit` bytes, printable ASCII only.
    func cString(at offset: Int, limit: Int = 256) -> String? {
        guard offset >= 0, offset < bytes.count else { return nil }
        var end = offset
        while end < bytes.count, end - offset < limit, bytes[end] != 0 { end += 1 }
        guard end < bytes.count, bytes[end] == 0 else { return nil }
        let slice = bytes[offset..<end]
        guard slice.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) else { return nil }
        return String(decoding: slice, as: UTF8.self)
    }

    /// The first offset of `needle` at or after `start` (glibc's `memmem`).
    func firstOffset(of needle: [UInt8], from start: Int = 0) -> Int? {
        guard !needle.isEmpty, start >= 0, bytes.count - start >= needle.count, let base = bytes.baseAddress else { return nil }
        return needle.withUnsafeBytes { pattern in
            memmem(base + start, bytes.count - start, pattern.baseAddress, needle.count).map { base.distance(to: UnsafeRawPointer($0)) }
        }
    }

    /// Offsets of `needle` in `range`, in order (glibc's `memmem`).
    func find(_ needle: [UInt8], in range: Range<Int>? = nil, limit: Int = .max) -> [Int] {
        let range = (range ?? 0..<bytes.count).clamped(to: 0..<bytes.count)
        guard !needle.isEmpty, range.count >= needle.count, let base = bytes.baseAddress else { return [] }
        var hits: [Int] = []
        var position = range.lowerBound
        needle.withUnsafeBytes { pattern in
            while hits.count < limit, range.upperBound - position >= needle.count,
                let found = memmem(base + position, range.upperBound - position, pattern.baseAddress, needle.count)
            {
                let offset = base.distance(to: UnsafeRawPointer(found))
                hits.append(offset)
                position = offset + 1
            }
        }
        return hits
    }
}

import CLinux
