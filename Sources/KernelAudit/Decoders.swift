import CBzip2
import CLZ4
import CLZMA
import CLZO
import CZlib
import CZstd

/// Output chunk for decoders that write into free space: 4 MiB at a time.
private let chunk = 4 << 20

/// Makes free space for the next chunk or fails with the limit error.
private func room(_ output: ImageBuffer, _ format: CompressionFormat, _ limits: DecompressionLimits, at offset: Int) throws(KernelAuditError)
    -> UnsafeMutableRawBufferPointer
{
    if output.freeSpace.count == 0 {
        try output.drain()
        let extra = min(chunk, limits.maxOutput - output.produced)
        guard extra > 0, output.reserve(extra: extra, limit: limits.maxOutput - output.dropped) else {
            throw Decompressor.limitError(format, limits, at: offset)
        }
    }
    // Never more than the limit leaves, whatever the capacity.
    let allowed = limits.maxOutput - output.produced
    guard allowed > 0 else { throw Decompressor.limitError(format, limits, at: offset) }
    let space = output.freeSpace
    return UnsafeMutableRawBufferPointer(rebasing: space[..<min(space.count, allowed)])
}

enum GzipDecoder {
    static func run(_ input: UnsafeRawBufferPointer, into output: ImageBuffer, limits: DecompressionLimits, base: Int) throws(KernelAuditError) -> Int {
        var stream = z_stream()
        // 16 + 15: a gzip wrapper and a 32 KiB window.
        guard inflateInit2_(&stream, 16 + MAX_WBITS, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
            throw KernelAuditError(.unsupported, "zlib could not start", hint: "Check the zlib installation")
        }
        defer { inflateEnd(&stream) }
        stream.next_in = UnsafeMutablePointer(mutating: input.baseAddress!.assumingMemoryBound(to: UInt8.self))
        stream.avail_in = UInt32(clamping: input.count)
        while true {
            let space = try room(output, .gzip, limits, at: base + Int(stream.total_in))
            let window = min(space.count, Int(UInt32.max))
            stream.next_out = space.baseAddress!.assumingMemoryBound(to: UInt8.self)
            stream.avail_out = UInt32(window)
            let before = stream.total_in
            let status = inflate(&stream, Z_NO_FLUSH)
            let produced = window - Int(stream.avail_out)
            output.commit(produced)
            switch status {
            case Z_STREAM_END: return Int(stream.total_in)
            case Z_OK, Z_BUF_ERROR:
                if stream.avail_in == 0 && produced < window { throw Decompressor.truncated(.gzip, at: base + Int(stream.total_in)) }
                if produced == 0 && stream.total_in == before {
                    throw Decompressor.corrupt(.gzip, "the decoder made no progress", at: base + Int(stream.total_in))
                }
                continue
            default:
                let message = stream.msg.map { String(cString: $0) } ?? "error \(status)"
                throw Decompressor.corrupt(.gzip, message, at: base + Int(stream.total_in))
            }
        }
    }
}

enum Bzip2Decoder {
    static func run(_ input: UnsafeRawBufferPointer, into output: ImageBuffer, limits: DecompressionLimits, base: Int) throws(KernelAuditError) -> Int {
        var stream = bz_stream()
        guard BZ2_bzDecompressInit(&stream, 0, 0) == BZ_OK else {
            throw KernelAuditError(.unsupported, "libbz2 could not start", hint: "Check the bzip2 installation")
        }
        defer { BZ2_bzDecompressEnd(&stream) }
        stream.next_in = UnsafeMutablePointer(mutating: input.baseAddress!.assumingMemoryBound(to: CChar.self))
        stream.avail_in = UInt32(clamping: input.count)
        func consumed() -> Int { Int(UInt64(stream.total_in_hi32) << 32 | UInt64(stream.total_in_lo32)) }
        while true {
            let space = try room(output, .bzip2, limits, at: base + consumed())
            let window = min(space.count, Int(UInt32.max))
            stream.next_out = space.baseAddress!.assumingMemoryBound(to: CChar.self)
            stream.avail_out = UInt32(window)
            let before = consumed()
            let status = BZ2_bzDecompress(&stream)
            let produced = window - Int(stream.avail_out)
            output.commit(produced)
            switch status {
            case BZ_STREAM_END: return consumed()
            case BZ_OK:
                if stream.avail_in == 0 && produced < window { throw Decompressor.truncated(.bzip2, at: base + consumed()) }
                if produced == 0 && consumed() == before { throw Decompressor.corrupt(.bzip2, "the decoder made no progress", at: base + consumed()) }
            case BZ_DATA_ERROR, BZ_DATA_ERROR_MAGIC: throw Decompressor.corrupt(.bzip2, "bad block data", at: base + consumed())
            default: throw Decompressor.corrupt(.bzip2, "error \(status)", at: base + consumed())
            }
        }
    }
}

enum LZMADecoder {
    static func run(_ input: UnsafeRawBufferPointer, legacy: Bool, into output: ImageBuffer, limits: DecompressionLimits, base: Int) throws(KernelAuditError)
        -> Int
    {
        let format: CompressionFormat = legacy ? .lzma : .xz
        var stream = lzma_stream()
        let started =
            legacy
            ? lzma_alone_decoder(&stream, limits.maxDecoderMemory)
            : lzma_stream_decoder(&stream, limits.maxDecoderMemory, 0)
        guard started == LZMA_OK else {
            throw KernelAuditError(.unsupported, "liblzma could not start", hint: "Check the liblzma installation")
        }
        defer { lzma_end(&stream) }
        stream.next_in = input.baseAddress!.assumingMemoryBound(to: UInt8.self)
        stream.avail_in = input.count
        while true {
            let space = try room(output, format, limits, at: base + Int(stream.total_in))
            stream.next_out = space.baseAddress!.assumingMemoryBound(to: UInt8.self)
            stream.avail_out = space.count
            // LZMA_FINISH: all input is here; the decoder reports a short stream as LZMA_BUF_ERROR.
            let status = lzma_code(&stream, LZMA_FINISH)
            let produced = space.count - stream.avail_out
            output.commit(produced)
            switch status {
            case LZMA_STREAM_END: return Int(stream.total_in)
            case LZMA_OK: continue
            case LZMA_BUF_ERROR:
                if stream.avail_in == 0 { throw Decompressor.truncated(format, at: base + Int(stream.total_in)) }
                if produced < space.count { throw Decompressor.corrupt(format, "the decoder made no progress", at: base + Int(stream.total_in)) }
                continue
            case LZMA_MEMLIMIT_ERROR:
                throw KernelAuditError(
                    .outputLimitExceeded, "\(format) stream asks for more decoder memory than \(limits.maxDecoderMemory) bytes",
                    offset: base + Int(stream.total_in), hint: "A real kernel never needs this much; the stream is hostile or damaged")
            case LZMA_FORMAT_ERROR: throw Decompressor.corrupt(format, "not an \(format) stream", at: base + Int(stream.total_in))
            case LZMA_OPTIONS_ERROR: throw Decompressor.corrupt(format, "unsupported options", at: base + Int(stream.total_in))
            default: throw Decompressor.corrupt(format, "data error (\(status.rawValue))", at: base + Int(stream.total_in))
            }
        }
    }
}

enum ZstdDecoder {
    static func run(_ input: UnsafeRawBufferPointer, into output: ImageBuffer, limits: DecompressionLimits, base: Int) throws(KernelAuditError) -> Int {
        guard let context = ZSTD_createDCtx() else {
            throw KernelAuditError(.unsupported, "libzstd could not start", hint: "Check the zstd installation")
        }
        defer { ZSTD_freeDCtx(context) }
        // The kernel's frames declare no content size but a 128 MiB window. Decoding into one
        // stable output buffer lets zstd use the output as its window: no second window buffer,
        // no copies. The buffer is reserved at the output limit (address space only: pages cost
        // memory once written), so the peak is the output so far plus a constant, and a bomb
        // stops at the limit. Where the reservation is refused, stream instead.
        let start = output.count
        if output.consumer == nil, output.reserve(extra: limits.maxOutput - start, limit: limits.maxOutput), output.freeSpace.count > 0 {
            ZSTD_DCtx_setParameter(context, ZSTD_dParameter(rawValue: 1001) /* ZSTD_d_stableOutBuffer */, 1)
            let space = output.freeSpace
            var source = ZSTD_inBuffer(src: input.baseAddress, size: input.count, pos: 0)
            var target = ZSTD_outBuffer(dst: space.baseAddress, size: space.count, pos: 0)
            while true {
                let before = (source.pos, target.pos)
                let result = ZSTD_decompressStream(context, &target, &source)
                if ZSTD_isError(result) != 0 {
                    // The whole limit is the output buffer: too small for the frame means past the limit.
                    if target.pos == target.size || ZSTD_getErrorCode(result) == ZSTD_error_dstSize_tooSmall {
                        throw Decompressor.limitError(.zstd, limits, at: base + source.pos)
                    }
                    throw Decompressor.corrupt(.zstd, String(cString: ZSTD_getErrorName(result)), at: base + source.pos)
                }
                if result == 0 {
                    output.commit(target.pos)
                    output.releaseUnused()
                    return source.pos
                }
                if target.pos == target.size { throw Decompressor.limitError(.zstd, limits, at: base + source.pos) }
                if source.pos == source.size { throw Decompressor.truncated(.zstd, at: base + source.pos) }
                if (source.pos, target.pos) == before { throw Decompressor.corrupt(.zstd, "the decoder made no progress", at: base + source.pos) }
            }
        }
        output.truncate(to: start)
        let windowLog = Int32(min(31, max(10, 63 - limits.maxDecoderMemory.leadingZeroBitCount)))
        ZSTD_DCtx_setParameter(context, ZSTD_d_windowLogMax, windowLog)
        var source = ZSTD_inBuffer(src: input.baseAddress, size: input.count, pos: 0)
        while true {
            let space = try room(output, .zstd, limits, at: base + source.pos)
            var target = ZSTD_outBuffer(dst: space.baseAddress, size: space.count, pos: 0)
            let before = source.pos
            let result = ZSTD_decompressStream(context, &target, &source)
            output.commit(target.pos)
            if ZSTD_isError(result) != 0 {
                throw Decompressor.corrupt(.zstd, String(cString: ZSTD_getErrorName(result)), at: base + source.pos)
            }
            if result == 0 { return source.pos }
            if source.pos == source.size && target.pos < target.size { throw Decompressor.truncated(.zstd, at: base + source.pos) }
            if source.pos == before && target.pos == 0 { throw Decompressor.corrupt(.zstd, "the decoder made no progress", at: base + source.pos) }
        }
    }
}

/// The legacy lz4 frame (`lz4 -l`): magic 0x184C2102, then blocks of a 32-bit little-endian
/// compressed size and data, each decompressing to at most 8 MiB.
enum LZ4LegacyDecoder {
    static let magic: UInt32 = 0x184C_2102
    static let blockMax = 8 << 20

    static func run(_ input: UnsafeRawBufferPointer, into output: ImageBuffer, limits: DecompressionLimits, base: Int) throws(KernelAuditError) -> Int {
        let view = ByteView(bytes: input)
        guard view.le(UInt32.self, 0) == magic else { throw Decompressor.corrupt(.lz4, "no legacy frame magic", at: base) }
        var position = 4
        while position < input.count {
            // The kernel's 4-byte size trailer, or the end of input: the stream is over.
            if input.count - position == 4 && position > 4 { return position }
            guard let size = view.le(UInt32.self, position) else { throw Decompressor.truncated(.lz4, at: base + position) }
            if size == magic { position += 4; continue }
            position += 4
            guard size > 0, Int(size) <= input.count - position else {
                throw size == 0
                    ? Decompressor.corrupt(.lz4, "empty block", at: base + position - 4)
                    : Decompressor.truncated(.lz4, at: base + position - 4)
            }
            guard Int(size) <= LZ4_compressBound(Int32(blockMax)) else {
                throw Decompressor.corrupt(.lz4, "block of \(size) bytes is larger than any legacy block", at: base + position - 4)
            }
            try output.drain()
            guard output.produced < limits.maxOutput,
                output.reserve(extra: min(blockMax, limits.maxOutput - output.produced), limit: limits.maxOutput - output.dropped)
            else {
                throw Decompressor.limitError(.lz4, limits, at: base + position)
            }
            let free = output.freeSpace
            let space = UnsafeMutableRawBufferPointer(rebasing: free[..<min(free.count, limits.maxOutput - output.produced)])
            let written = LZ4_decompress_safe(
                (input.baseAddress! + position).assumingMemoryBound(to: CChar.self),
                space.baseAddress!.assumingMemoryBound(to: CChar.self), Int32(size), Int32(min(space.count, blockMax)))
            guard written >= 0 else {
                if space.count < blockMax && output.produced + space.count >= limits.maxOutput {
                    throw Decompressor.limitError(.lz4, limits, at: base + position)
                }
                throw Decompressor.corrupt(.lz4, "bad block", at: base + position)
            }
            output.commit(Int(written))
            position += Int(size)
        }
        return position
    }
}

/// The lzop container (`lzop`, as the kernel's `unlzo` reads it): a header, then blocks of
/// big-endian uncompressed and compressed sizes, optional checksums, and LZO1X data.
enum LZOPDecoder {
    static let magic: [UInt8] = [0x89, 0x4C, 0x5A, 0x4F, 0x00, 0x0D, 0x0A, 0x1A, 0x0A]
    static let blockMax = 8 << 20

    static func run(_ input: UnsafeRawBufferPointer, into output: ImageBuffer, limits: DecompressionLimits, base: Int) throws(KernelAuditError) -> Int {
        let view = ByteView(bytes: input)
        guard view.hasPrefix(magic) else { throw Decompressor.corrupt(.lzo, "no lzop magic", at: base) }
        guard pvkit_lzo_init() == LZO_E_OK else {
            throw KernelAuditError(.unsupported, "liblzo2 could not start", hint: "Check the lzo2 installation")
        }
        var p = magic.count
        func need(_ n: Int) throws(KernelAuditError) { if p + n > input.count { throw Decompressor.truncated(.lzo, at: base + p) } }
        try need(4)
        let version = view.be(UInt16.self, p)!
        p += 4  // version, library version
        if version >= 0x0940 { try need(2); p += 2 }  // version needed to extract
        try need(1)
        let method = view.u8(p)!
        p += 1
        guard (1...3).contains(method) else { throw Decompressor.corrupt(.lzo, "unknown method \(method)", at: base + p - 1) }
        if version >= 0x0940 { p += 1 }  // level
        try need(4)
        let flags = view.be(UInt32.self, p)!
        p += 4
        if flags & 0x800 != 0 { p += 4 }  // filter
        p += 8  // mode, mtime
        if version >= 0x0940 { p += 4 }  // mtime high
        try need(1)
        let nameLength = Int(view.u8(p)!)
        p += 1 + nameLength + 4  // name, header checksum
        try need(0)
        while true {
            try need(4)
            let uncompressed = Int(view.be(UInt32.self, p)!)
            p += 4
            if uncompressed == 0 { return p }
            try need(4)
            let compressed = Int(view.be(UInt32.self, p)!)
            p += 4
            guard uncompressed <= blockMax else {
                throw Decompressor.corrupt(.lzo, "block of \(uncompressed) bytes is over the 8 MiB maximum", at: base + p - 8)
            }
            guard compressed <= uncompressed else {
                throw Decompressor.corrupt(.lzo, "block compresses to more than its size", at: base + p - 4)
            }
            if flags & 0x1 != 0 { p += 4 }  // adler32 of the data
            if flags & 0x100 != 0 { p += 4 }  // crc32 of the data
            if compressed < uncompressed {
                if flags & 0x2 != 0 { p += 4 }
                if flags & 0x200 != 0 { p += 4 }
            }
            try need(compressed)
            try output.drain()
            guard uncompressed <= limits.maxOutput - output.produced, output.reserve(extra: uncompressed, limit: limits.maxOutput - output.dropped) else {
                throw Decompressor.limitError(.lzo, limits, at: base + p)
            }
            let space = output.freeSpace
            if compressed == uncompressed {
                space.baseAddress!.copyMemory(from: input.baseAddress! + p, byteCount: compressed)
            } else {
                var written = lzo_uint(uncompressed)
                let status = lzo1x_decompress_safe(
                    (input.baseAddress! + p).assumingMemoryBound(to: UInt8.self), lzo_uint(compressed),
                    space.baseAddress!.assumingMemoryBound(to: UInt8.self), &written, nil)
                guard status == LZO_E_OK, Int(written) == uncompressed else {
                    throw Decompressor.corrupt(.lzo, "bad block (\(status))", at: base + p)
                }
            }
            output.commit(uncompressed)
            p += compressed
        }
    }
}
