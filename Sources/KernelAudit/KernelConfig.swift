/// A kernel `.config`: `CONFIG_X=y|m|value` and `# CONFIG_X is not set` lines.
public struct KernelConfig: Sendable, Equatable {
    /// Where it came from: "embedded IKCONFIG", a path, ….
    public let source: String
    /// Option → value ("y", "m", a number or a quoted string). Unset options are absent.
    public let values: [String: String]
    /// Line number of each option, for evidence.
    public let lines: [String: Int]

    public init(text: String, source: String) {
        var values: [String: String] = [:], lines: [String: Int] = [:]
        let notSet = Array(" is not set".utf8)
        var number = 0
        // Byte-wise: a distribution config has ~10 000 lines.
        for line in text.utf8.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
            number += 1
            if line.starts(with: "CONFIG_".utf8), let equals = line.firstIndex(of: UInt8(ascii: "=")) {
                let name = String(decoding: line[..<equals], as: UTF8.self)
                values[name] = String(decoding: line[line.index(after: equals)...], as: UTF8.self)
                lines[name] = number
            } else if line.starts(with: "# CONFIG_".utf8), line.count > notSet.count + 2, line.suffix(notSet.count).elementsEqual(notSet) {
                lines[String(decoding: line.dropFirst(2).dropLast(notSet.count), as: UTF8.self)] = number
            }
        }
        self.source = source
        self.values = values
        self.lines = lines
    }

    /// The option's state.
    public func state(_ option: String) -> OptionState {
        switch values[option] {
        case "y": .builtIn
        case "m": .module
        case nil: .unset
        case let value?: .value(value)
        }
    }

    /// Evidence text: "CONFIG_X=y (config line 123 of SOURCE)".
    public func evidence(_ option: String) -> String {
        let line = lines[option].map { " (line \($0) of \(source))" } ?? " (\(source))"
        return "\(option)\(values[option].map { "=\($0)" } ?? " is not set")\(line)"
    }

    /// True when the text looks like a kernel config at all.
    public var isPlausible: Bool { values.count >= 10 }
}

public enum OptionState: Sendable, Equatable {
    case builtIn, module, unset
    case value(String)
    public var isEnabled: Bool { self == .builtIn || self == .module }
}

/// Finds the embedded config (CONFIG_IKCONFIG): "IKCFG_ST" followed by a gzip stream.
enum EmbeddedConfig {
    static let marker: [UInt8] = Array("IKCFG_ST".utf8) + [0x1F, 0x8B, 0x08]

    static func find(in bytes: UnsafeRawBufferPointer, limits: DecompressionLimits) -> (text: String, offset: Int)? {
        let view = ByteView(bytes: bytes)
        var next = 0
        for _ in 0..<4 {
            guard let offset = view.firstOffset(of: marker, from: next) else { return nil }
            next = offset + 1
            var small = limits
            small.maxOutput = min(limits.maxOutput, 16 << 20)
            guard let result = try? Decompressor.decompress(bytes, format: .gzip, at: offset + 8, limits: small) else { continue }
            let text = String(decoding: result.output.bytes, as: UTF8.self)
            if text.utf8.starts(with: "#".utf8) || text.contains("\nCONFIG_") { return (text, offset) }
        }
        return nil
    }
}

/// The `Linux version …` banner (`linux_banner`).
enum KernelBanner {
    static let prefix: [UInt8] = Array("Linux version ".utf8)

    /// The first banner whose release looks like a version number, and the release itself.
    static func find(in bytes: UnsafeRawBufferPointer) -> (banner: String, release: String, offset: Int)? {
        let view = ByteView(bytes: bytes)
        var next = 0
        for _ in 0..<64 {
            guard let offset = view.firstOffset(of: prefix, from: next) else { return nil }
            next = offset + 1
            var end = offset + prefix.count
            while end < bytes.count, end - offset < 512, bytes[end] >= 0x20, bytes[end] < 0x7F { end += 1 }
            let banner = String(decoding: bytes[offset..<end], as: UTF8.self)
            let release = banner.dropFirst(prefix.count).prefix { $0 != " " }
            if let first = release.first, first.isNumber, release.contains(".") {
                return (banner, String(release), offset)
            }
        }
        return nil
    }
}
