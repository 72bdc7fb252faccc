import CLibElf

/// An ELF image read through elfutils' libelf, straight from memory this value does not copy.
/// Owns the `Elf *` and ends it on deinit; the bytes must outlive it.
final class ElfFile {
    typealias ProgramHeader = GElf_Phdr

    private let elf: OpaquePointer
    let bytes: UnsafeRawBufferPointer
    /// 32 or 64.
    let bitness: Int
    let machine: UInt16
    let type: UInt16
    let entry: UInt64

    init(_ bytes: UnsafeRawBufferPointer) throws(KernelAuditError) {
        _ = elf_version(UInt32(EV_CURRENT))
        guard bytes.count >= 16,
            let handle = elf_memory(
                UnsafeMutablePointer(mutating: bytes.baseAddress!.assumingMemoryBound(to: CChar.self)), bytes.count)
        else {
            throw KernelAuditError(
                .badELF, "libelf cannot read the ELF: \(Self.lastError())", offset: 0,
                hint: "The ELF (or the decompressed payload) is damaged; re-copy the image from its package")
        }
        // Everything is checked on the local handle: a throw before all properties are set
        // runs no deinit, so the handle is ended here exactly once.
        var header = GElf_Ehdr()
        guard elf_kind(handle) == ELF_K_ELF, gelf_getehdr(handle, &header) != nil else {
            let message = Self.lastError()
            elf_end(handle)
            throw KernelAuditError(
                .badELF, "ELF header unreadable: \(message)", offset: 0,
                hint: "The file claims to be ELF but its header is damaged")
        }
        // libelf reads tables lazily; a cut-short image must fail here, naming where.
        let tables: [(String, UInt64, Int, Int)] = [
            ("program header table", header.e_phoff, Int(header.e_phnum), Int(header.e_phentsize)),
            ("section header table", header.e_shoff, Int(header.e_shnum), Int(header.e_shentsize))
        ]
        for (name, offset, count, size) in tables where count > 0 && offset > 0 {
            let (end, overflow) = Int(clamping: offset).addingReportingOverflow(count * size)
            guard !overflow, end <= bytes.count else {
                elf_end(handle)
                throw KernelAuditError(
                    .truncated, "the ELF \(name) (\(count) × \(size) bytes at \(offset)) runs past the end of the \(bytes.count)-byte image",
                    offset: Int(clamping: offset), hint: "The kernel image is cut short or damaged; re-copy it from its package")
            }
        }
        elf = handle
        self.bytes = bytes
        bitness = gelf_getclass(handle) == ELFCLASS64 ? 64 : 32
        machine = header.e_machine
        type = header.e_type
        entry = header.e_entry
    }

    deinit { elf_end(elf) }

    static func lastError() -> String {
        elf_errmsg(-1).map { String(cString: $0) } ?? "unknown libelf error"
    }

    /// Program headers; a header table outside the file is an error naming its offset.
    func programHeaders() throws(KernelAuditError) -> [GElf_Phdr] {
        var count = 0
        guard elf_getphdrnum(elf, &count) == 0 else {
            throw KernelAuditError(
                .badELF, "program headers unreadable: \(Self.lastError())", offset: 0x20,
                hint: "The ELF is truncated or damaged")
        }
        var headers: [GElf_Phdr] = []
        for index in 0..<count {
            var header = GElf_Phdr()
            guard gelf_getphdr(elf, Int32(index), &header) != nil else {
                throw KernelAuditError(
                    .badELF, "program header \(index) unreadable: \(Self.lastError())", offset: nil,
                    hint: "The ELF is truncated or damaged")
            }
            headers.append(header)
        }
        return headers
    }

    /// One raw note: its type, name and descriptor, with the descriptor's file offset.
    struct RawNote {
        let name: String
        let type: UInt32
        let descriptor: [UInt8]
        let offset: Int
    }

    /// Notes in a byte range of the file (a PT_NOTE segment), parsed by libelf.
    func notes(fileRange range: Range<Int>) throws(KernelAuditError) -> [RawNote] {
        guard range.upperBound <= bytes.count else {
            throw KernelAuditError(
                .truncated, "a PT_NOTE segment runs past the end of the ELF (\(bytes.count) bytes)",
                offset: range.lowerBound, hint: "The kernel image is cut short")
        }
        guard let data = elf_getdata_rawchunk(elf, Int64(range.lowerBound), range.count, ELF_T_NHDR) else {
            throw KernelAuditError(
                .badELF, "note segment unreadable: \(Self.lastError())", offset: range.lowerBound,
                hint: "The ELF is damaged")
        }
        return parseNotes(data, base: range.lowerBound)
    }

    /// The file bytes a section header's offset and size name, or nil when they do not fit
    /// in the file (sizes from the file are untrusted: no conversion or sum may trap).
    func fileRange(offset: UInt64, size: UInt64) -> Range<Int>? {
        let count = UInt64(bytes.count)
        guard offset <= count, size <= count - offset else { return nil }
        return Int(offset)..<Int(offset + size)
    }

    /// Notes of every SHT_NOTE section.
    func noteSections() -> [RawNote] {
        var notes: [RawNote] = []
        var section: OpaquePointer? = nil
        while let next = elf_nextscn(elf, section) {
            section = next
            var header = GElf_Shdr()
            guard gelf_getshdr(next, &header) != nil, header.sh_type == SHT_NOTE,
                let range = fileRange(offset: header.sh_offset, size: header.sh_size),
                let data = elf_getdata(next, nil)
            else { continue }
            notes += parseNotes(data, base: range.lowerBound)
        }
        return notes
    }

    /// The bytes of the section called `name`, if there is one inside the file.
    func section(named name: String) -> (offset: Int, bytes: UnsafeRawBufferPointer)? {
        var stringTable = 0
        guard elf_getshdrstrndx(elf, &stringTable) == 0 else { return nil }
        var section: OpaquePointer? = nil
        while let next = elf_nextscn(elf, section) {
            section = next
            var header = GElf_Shdr()
            guard gelf_getshdr(next, &header) != nil, let sectionName = elf_strptr(elf, stringTable, Int(header.sh_name)),
                String(cString: sectionName) == name, header.sh_type != SHT_NOBITS
            else { continue }
            guard let range = fileRange(offset: header.sh_offset, size: header.sh_size) else { return nil }
            return (range.lowerBound, UnsafeRawBufferPointer(rebasing: bytes[range]))
        }
        return nil
    }

    /// Names in the symbol table (`.symtab`, defined and undefined): a module's own functions and
    /// the kernel functions it calls.
    func symbolNames() -> Set<String> {
        var names = Set<String>()
        var section: OpaquePointer? = nil
        while let next = elf_nextscn(elf, section) {
            section = next
            var header = GElf_Shdr()
            guard gelf_getshdr(next, &header) != nil, header.sh_type == SHT_SYMTAB, header.sh_entsize > 0,
                fileRange(offset: header.sh_offset, size: header.sh_size) != nil, let data = elf_getdata(next, nil)
            else { continue }
            // gelf_getsym takes an int index.
            let count = Int(min(header.sh_size / header.sh_entsize, UInt64(Int32.max)))
            for index in 0..<count {
                var symbol = GElf_Sym()
                guard gelf_getsym(data, Int32(index), &symbol) != nil, symbol.st_name != 0,
                    let name = elf_strptr(elf, Int(header.sh_link), Int(symbol.st_name))
                else { continue }
                names.insert(String(cString: name))
            }
        }
        return names
    }

    private func parseNotes(_ data: UnsafeMutablePointer<Elf_Data>, base: Int) -> [RawNote] {
        var notes: [RawNote] = []
        var offset = 0
        var header = GElf_Nhdr()
        var nameOffset = 0, descriptorOffset = 0
        let buffer = UnsafeRawBufferPointer(start: data.pointee.d_buf, count: data.pointee.d_size)
        // Xen's libelf stops at 65536 notes; so do we.
        while notes.count < 65536 {
            let next = gelf_getnote(data, offset, &header, &nameOffset, &descriptorOffset)
            guard next > 0, nameOffset <= buffer.count, Int(header.n_namesz) <= buffer.count - nameOffset,
                descriptorOffset <= buffer.count, Int(header.n_descsz) <= buffer.count - descriptorOffset
            else { break }
            let nameBytes = buffer[nameOffset..<nameOffset + Int(header.n_namesz)].prefix { $0 != 0 }
            let descriptor = Array(buffer[descriptorOffset..<descriptorOffset + Int(header.n_descsz)])
            notes.append(
                RawNote(
                    name: String(decoding: nameBytes, as: UTF8.self), type: header.n_type,
                    descriptor: descriptor, offset: base + descriptorOffset))
            offset = next
        }
        return notes
    }
}
