import XenABI

/// One decoded Xen ELF note.
public struct XenNote: Sendable, Codable, Equatable {
    /// The note type number.
    public let type: UInt32
    /// Its name (`ENTRY`, `PHYS32_ENTRY`, …), or `UNKNOWN_<n>`.
    public let name: String
    /// Descriptor size in bytes.
    public let size: Int
    /// Byte offset of the descriptor in the ELF.
    public let offset: Int?
    /// A string note's text.
    public let text: String?
    /// A numeric note's value (for PHYS32_ENTRY the 32-bit entry).
    public let number: UInt64?
    /// An array note's values (SUPPORTED_FEATURES words, PHYS32_RELOC, L1_MFN_VALID pairs).
    public let numbers: [UInt64]?
    /// What is odd about it, if anything (a numeric note of a size Xen reads as 0, …).
    public let remark: String?

    /// The typed note type, when Xen defines it.
    public var knownType: XenElfNoteType? { XenElfNoteType(rawValue: type) }
}

/// Where the notes came from, in the order Xen's libelf looks.
public enum NoteSource: String, Sendable, Codable {
    case programHeader = "PT_NOTE segment"
    case section = "SHT_NOTE section"
    case legacyGuestSection = "__xen_guest section"
    case none
}

/// All Xen notes of a kernel, with typed accessors.
public struct XenNoteSet: Sendable, Codable, Equatable {
    public let source: NoteSource
    public let notes: [XenNote]

    public func note(_ type: XenElfNoteType) -> XenNote? { notes.first { $0.type == type.rawValue } }
    public func text(_ type: XenElfNoteType) -> String? { note(type)?.text }
    public func number(_ type: XenElfNoteType) -> UInt64? { note(type)?.number }
    public var isEmpty: Bool { notes.isEmpty }

    /// FEATURES tokens: required ones (prefixed `!`) and the rest.
    public var featureTokens: (required: [String], optional: [String]) {
        guard let text = text(.features) else { return ([], []) }
        var required: [String] = [], optional: [String] = []
        for token in text.split(separator: "|") where !token.isEmpty {
            if token.hasPrefix("!") { required.append(String(token.dropFirst())) } else { optional.append(String(token)) }
        }
        return (required, optional)
    }

    /// Features the kernel supports: FEATURES (both kinds) ∪ SUPPORTED_FEATURES bits.
    public var supportedFeatures: Set<XenFeature> {
        let tokens = featureTokens
        var features = Set((tokens.required + tokens.optional).compactMap { XenFeature(name: $0) })
        for (word, bits) in (note(.supportedFeatures)?.numbers ?? []).enumerated() {
            for bit in 0..<32 where bits & (1 << UInt64(bit)) != 0 {
                if let feature = XenFeature(rawValue: UInt32(word * 32 + bit)) { features.insert(feature) }
            }
        }
        return features
    }

    /// Features the kernel requires (FEATURES tokens with `!`).
    public var requiredFeatures: Set<XenFeature> { Set(featureTokens.required.compactMap { XenFeature(name: $0) }) }

    /// Required tokens Xen does not know: its libelf refuses the kernel for these.
    public var unknownRequiredTokens: [String] { featureTokens.required.filter { XenFeature(name: $0) == nil } }
}

enum XenNoteDecoder {
    /// Decodes raw "Xen" notes (others are ignored).
    static func decode(_ raw: [ElfFile.RawNote], source: NoteSource) -> XenNoteSet {
        let notes = raw.filter { $0.name == XenElfNoteType.noteName }.map(decode)
        return XenNoteSet(source: notes.isEmpty ? .none : source, notes: notes)
    }

    static func decode(_ raw: ElfFile.RawNote) -> XenNote {
        let type = XenElfNoteType(rawValue: raw.type)
        let name = type?.description ?? "UNKNOWN_\(raw.type)"
        let d = raw.descriptor
        func le(_ bytes: ArraySlice<UInt8>) -> UInt64 { bytes.reversed().reduce(0) { $0 << 8 | UInt64($1) } }
        switch type?.kind {
        case .string?:
            let text = String(decoding: d.prefix { $0 != 0 }, as: UTF8.self)
            // Xen reads up to the NUL or the descriptor's end (Linux writes FEATURES without a NUL).
            let printable = text.utf8.allSatisfy { $0 >= 0x20 && $0 < 0x7F }
            return XenNote(
                type: raw.type, name: name, size: d.count, offset: raw.offset, text: text, number: nil, numbers: nil,
                remark: printable ? nil : "contains unprintable bytes")
        case .numeric?:
            if type == .phys32Entry, d.count == 4 || d.count == 8 {
                // Pointer-sized on x86-64; the entry is the low 32 bits.
                return XenNote(
                    type: raw.type, name: name, size: d.count, offset: raw.offset, text: nil,
                    number: le(d[0..<4]), numbers: nil, remark: nil)
            }
            guard [1, 2, 4, 8].contains(d.count) else {
                return XenNote(
                    type: raw.type, name: name, size: d.count, offset: raw.offset, text: nil, number: nil, numbers: nil,
                    remark: "a \(d.count)-byte numeric note: Xen reads it as 0")
            }
            return XenNote(
                type: raw.type, name: name, size: d.count, offset: raw.offset, text: nil, number: le(d[...]),
                numbers: nil, remark: nil)
        case .numericArray?:
            let width = type == .l1MFNValid && d.count % 8 == 0 ? 8 : 4
            let values = stride(from: 0, to: d.count - d.count % width, by: width).map { le(d[$0..<$0 + width]) }
            return XenNote(
                type: raw.type, name: name, size: d.count, offset: raw.offset, text: nil, number: nil,
                numbers: values, remark: d.count % width == 0 ? nil : "descriptor is not a whole number of words")
        default:
            return XenNote(
                type: raw.type, name: name, size: d.count, offset: raw.offset, text: nil, number: nil, numbers: nil,
                remark: type == nil ? "a type Xen 4.17 does not define" : nil)
        }
    }

    /// The legacy `__xen_guest` string: comma-separated NAME=VALUE items, mapped onto note types.
    static func decodeLegacy(_ text: String, offset: Int) -> XenNoteSet {
        var notes: [XenNote] = []
        var virtBase: UInt64?
        var hypercallPage: UInt64?
        for item in text.split(separator: ",") {
            let parts = item.split(separator: "=", maxSplits: 1)
            let key = String(parts[0].prefix(31))
            let value = parts.count > 1 ? String(parts[1].prefix(127)) : ""
            func string(_ type: XenElfNoteType) -> XenNote {
                XenNote(
                    type: type.rawValue, name: type.description, size: value.utf8.count, offset: offset, text: value,
                    number: nil, numbers: nil, remark: "from __xen_guest \(key)")
            }
            func number(_ type: XenElfNoteType, _ value: UInt64?) -> XenNote {
                XenNote(
                    type: type.rawValue, name: type.description, size: 8, offset: offset, text: nil, number: value,
                    numbers: nil, remark: "from __xen_guest \(key)")
            }
            switch key {
            case "LOADER": notes.append(string(.loader))
            case "GUEST_OS": notes.append(string(.guestOS))
            case "GUEST_VER": notes.append(string(.guestVersion))
            case "XEN_VER": notes.append(string(.xenVersion))
            case "PAE": notes.append(string(.paeMode))
            case "FEATURES": notes.append(string(.features))
            case "BSD_SYMTAB": notes.append(string(.bsdSymtab))
            case "VIRT_BASE": virtBase = parseCNumber(value); notes.append(number(.virtBase, virtBase))
            case "VIRT_ENTRY": notes.append(number(.entry, parseCNumber(value)))
            case "ELF_PADDR_OFFSET": notes.append(number(.paddrOffset, parseCNumber(value)))
            case "HYPERCALL_PAGE": hypercallPage = parseCNumber(value)
            default: break
            }
        }
        if let page = hypercallPage {
            // A page number: ×4096, then + VIRT_BASE.
            notes.append(
                XenNote(
                    type: XenElfNoteType.hypercallPage.rawValue, name: "HYPERCALL_PAGE", size: 8, offset: offset,
                    text: nil, number: page &* 4096 &+ (virtBase ?? 0), numbers: nil, remark: "from __xen_guest HYPERCALL_PAGE"))
        }
        return XenNoteSet(source: notes.isEmpty ? .none : .legacyGuestSection, notes: notes)
    }

    /// C `strtoull(s, 0)`: 0x… hex, 0… octal, else decimal.
    static func parseCNumber(_ text: String) -> UInt64? {
        let t = text.trimmingCharacters(in: .whitespaces)
        if t.lowercased().hasPrefix("0x") { return UInt64(t.dropFirst(2), radix: 16) }
        if t.count > 1, t.hasPrefix("0") { return UInt64(t.dropFirst(), radix: 8) }
        return UInt64(t)
    }
}

import Foundation
