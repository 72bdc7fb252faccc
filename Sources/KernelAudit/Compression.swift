/// The compressions Linux uses for its payload, and how to recognise them.
public enum CompressionFormat: String, Sendable, Codable, CaseIterable, CustomStringConvertible {
    case gzip, bzip2, xz, lzma, lzo, lz4, zstd

    /// The magic Xen's bzImage loader checks (`xg_dom_bzimageloader.c`).
    var magic: [UInt8] {
        switch self {
        case .gzip: [0x1F, 0x8B]
        case .bzip2: [0x42, 0x5A, 0x68]
        case .xz: [0xFD, 0x37, 0x7A, 0x58, 0x5A, 0x00]
        case .lzma: [0x5D, 0x00]
        case .lzo: [0x89, 0x4C, 0x5A, 0x4F, 0x00]
        case .lz4: [0x02, 0x21]
        case .zstd: [0x28, 0xB5, 0x2F, 0xFD]
        }
    }

    /// The longer magic used when scanning a whole file for a stream (`extract-vmlinux`),
    /// where two bytes would match too often.
    var scanMagic: [UInt8] {
        switch self {
        case .gzip: [0x1F, 0x8B, 0x08]
        case .lzma: [0x5D, 0x00, 0x00]
        case .lz4: [0x02, 0x21, 0x4C, 0x18]
        default: magic
        }
    }

    /// Xen's order of checks at the payload start.
    static let xenOrder: [CompressionFormat] = [.gzip, .bzip2, .xz, .zstd, .lzma, .lzo, .lz4]

    /// The format whose magic starts `view` at `offset`, in Xen's order.
    static func detect(_ view: ByteView, at offset: Int = 0) -> CompressionFormat? {
        xenOrder.first { view.hasPrefix($0.magic, at: offset) }
    }

    public var description: String { rawValue }
}

/// Decompression limits: a hostile stream ends in an error, not in exhausted memory.
public struct DecompressionLimits: Sendable {
    /// The most bytes one payload may decompress to.
    public var maxOutput: Int
    /// The most memory a decoder may take for its dictionary (xz, lzma, zstd windows).
    public var maxDecoderMemory: UInt64

    public init(maxOutput: Int = 1 << 30, maxDecoderMemory: UInt64 = 512 << 20) {
        self.maxOutput = maxOutput
        self.maxDecoderMemory = maxDecoderMemory
    }
}

/// One decompressed stream.
public struct Decompressed: Sendable {
    public let format: CompressionFormat
    /// Where the stream began in its container.
    public let offset: Int
    /// Compressed bytes consumed.
    public let consumed: Int
    public let output: ImageBuffer
    /// Bytes the stream decompressed to (more than `output` holds when a consumer drained it).
    public var produced: Int { output.produced }
}

/// Streaming decompression of a whole stream held in memory, into a buffer that grows within
/// the limit. Sizes announced by the stream (gzip ISIZE, the kernel's size trailer) are only
/// used as a first reservation, never trusted.
enum Decompressor {
    /// With a `consumer`, the output is a window: the consumer is handed the bytes produced so
    /// far (and the stream offset of the first) whenever the decoder needs room, returns how many
    /// it is done with, and those are dropped — memory stays at a few MiB.
    static func decompress(
        _ input: UnsafeRawBufferPointer, format: CompressionFormat, at offset: Int, limits: DecompressionLimits,
        sizeHint: Int? = nil, consumer: ImageBuffer.Consumer? = nil
    ) throws(KernelAuditError) -> Decompressed {
        let stream = UnsafeRawBufferPointer(rebasing: input[offset...])
        let hint = consumer == nil ? min(sizeHint ?? stream.count * 4, limits.maxOutput) : 4 << 20
        // Room for the announced size and the decoder's end-of-stream probe, so an honest size means no reallocation.
        let output = ImageBuffer(capacity: hint + 65536)
        output.consumer = consumer
        // The whole limit as address space up front (pages cost memory only once written): the
        // buffer never moves, so there is never an old and a new copy at once, and the peak is
        // the output so far plus the decoder's state. Where that much is refused, it grows instead.
        if consumer == nil { _ = output.reserve(extra: limits.maxOutput, limit: limits.maxOutput) }
        let consumed: Int
        switch format {
        case .gzip: consumed = try GzipDecoder.run(stream, into: output, limits: limits, base: offset)
        case .bzip2: consumed = try Bzip2Decoder.run(stream, into: output, limits: limits, base: offset)
        case .xz, .lzma: consumed = try LZMADecoder.run(stream, legacy: format == .lzma, into: output, limits: limits, base: offset)
        case .zstd: consumed = try ZstdDecoder.run(stream, into: output, limits: limits, base: offset)
        case .lz4: consumed = try LZ4LegacyDecoder.run(stream, into: output, limits: limits, base: offset)
        case .lzo: consumed = try LZOPDecoder.run(stream, into: output, limits: limits, base: offset)
        }
        try output.drain()
        output.releaseUnused()
        return Decompressed(format: format, offset: offset, consumed: consumed, output: output)
    }

    static func limitError(_ format: CompressionFormat, _ limits: DecompressionLimits, at offset: Int) -> KernelAuditError {
        KernelAuditError(
            .outputLimitExceeded, "\(format) stream decompresses past the limit of \(limits.maxOutput) bytes",
            offset: offset, hint: "If this is a genuine kernel, raise the limit with --max-output; otherwise the stream is a decompression bomb")
    }

    static func corrupt(_ format: CompressionFormat, _ what: String, at offset: Int) -> KernelAuditError {
        KernelAuditError(
            .corruptStream, "\(format) stream is corrupt: \(what)", offset: offset,
            hint: "The image is damaged or not what its header says; re-copy it from its package")
    }

    static func truncated(_ format: CompressionFormat, at offset: Int) -> KernelAuditError {
        KernelAuditError(
            .truncated, "\(format) stream ends before its end marker", offset: offset,
            hint: "The file is cut short; re-copy it from its package")
    }
}

/// The 4-byte little-endian size the kernel build appends to every payload (`size_append`),
/// or gzip's ISIZE: a reservation hint only.
func trailingSizeHint(_ payload: UnsafeRawBufferPointer) -> Int? {
    guard payload.count >= 4 else { return nil }
    let size = Int(UInt32(littleEndian: payload.loadUnaligned(fromByteOffset: payload.count - 4, as: UInt32.self)))
    return size > 0 ? size : nil
}
