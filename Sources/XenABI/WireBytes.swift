/// Little-endian field access on raw wire buffers.
///
/// Every Xen ABI used here is little-endian (x86 and Arm). Fields are read and written at
/// explicit byte offsets, never by binding a Swift struct to the memory: Swift's layout is not
/// C's, and the offsets are checked against the C headers by the ABI tests.
extension UnsafeRawBufferPointer {
    @inlinable @inline(__always)
    func le<T: FixedWidthInteger>(_: T.Type, at offset: Int) -> T {
        T(littleEndian: loadUnaligned(fromByteOffset: offset, as: T.self))
    }
}

extension UnsafeMutableRawBufferPointer {
    @inlinable @inline(__always)
    func storeLE<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        storeBytes(of: value.littleEndian, toByteOffset: offset, as: T.self)
    }
}

// Some encoders move whole little-endian words between Swift values and slots.
#if _endian(big)
    #error("PVKit's wire encoders assume a little-endian host, as every Xen architecture is")
#endif
