/// An address of memory that its owner hands between threads: a mapping, a granted page, a
/// caller's buffer for the length of a request.
///
/// Swift's pointers are not `Sendable`, because the compiler cannot know who touches the bytes
/// behind them. Here the bytes are always governed by a protocol outside the type system — a
/// ring's producer and consumer indexes, a grant that a request holds until its response, a
/// mapping kept alive by its owner — so the address itself is a plain value. This is the one
/// place that says so: the types that carry addresses (``SharedMemoryRegion``, a shared page,
/// a mapped grant, a request's destination) store a `MemoryAddress` and are `Sendable` without
/// a claim of their own.
public struct MemoryAddress: @unchecked Sendable, Hashable {  // @unchecked: an address; the owner's protocol governs the bytes
    /// The address.
    public let pointer: UnsafeMutableRawPointer

    @inlinable
    public init(_ pointer: UnsafeMutableRawPointer) { self.pointer = pointer }
}
