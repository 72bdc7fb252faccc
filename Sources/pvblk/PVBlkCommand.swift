import ArgumentParser
import BlockFront
import Foundation
import PVPlatform
import XenStore

/// `pvblk`: a guest tool on BlockFront. It attaches to a pvhost as a domain and uses that
/// domain's virtual disk over the PV block protocol. Exit status: 0 success, 1 an I/O or
/// connection error, 2 a verification mismatch, 64 bad usage.
@main
struct PVBlkCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pvblk",
        abstract: "Use a virtual disk through Xen's PV block protocol, as a guest of pvhost.",
        subcommands: [Info.self, Read.self, Write.self, Verify.self])
}

struct Connection: ParsableArguments {
    @Option(help: "pvhost's control socket.") var pvhost: String = "/run/pvhost/control"
    @Option(help: "The guest's domain name (pvhost's configuration gives it its disks).") var name: String
    @Option(help: "The disk's vbd number.") var device = 51712

    /// Attaches and connects the disk; prints a clear error and exits 1 on failure.
    func open() async throws -> (BlockFront, ReferencePlatform) {
        do {
            let platform = try ReferencePlatform.attach(socket: pvhost, name: name)
            let disk = try await BlockFront.connect(platform: platform, store: try platform.xenstore(), id: device)
            return (disk, platform)
        } catch {
            FileHandle.standardError.write(Data("pvblk: \(error)\n".utf8))
            throw ExitCode(1)
        }
    }
}

/// Runs `body`, turning a BlockFront error into a message and exit status 1.
func running<T>(_ body: () async throws -> T) async throws -> T {
    do { return try await body() } catch let error as BlockFrontError {
        FileHandle.standardError.write(Data("pvblk: \(error)\n".utf8))
        throw ExitCode(1)
    }
}

extension PVBlkCommand {
    struct Info: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print the disk's size and features.")
        @OptionGroup var connection: Connection
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            let (disk, platform) = try await connection.open()
            let i = disk.info
            if json {
                print(#"{"bytes":\#(i.bytes),"flush":\#(i.flush),"readOnly":\#(i.readOnly),"sectorSize":\#(i.sectorSize),"sectors":\#(i.sectors)}"#)
            } else {
                print("vbd \(connection.device) of domain \(platform.domain.rawValue): \(i.sectors) sectors (\(i.bytes) bytes), sector size \(i.sectorSize), \(i.readOnly ? "read-only" : "read-write"), flush \(i.flush ? "yes" : "no")")
            }
            await disk.close()
        }
    }

    struct Read: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Read bytes from the disk to a file or standard output.")
        @OptionGroup var connection: Connection
        @Option(help: "First 512-byte sector.") var sector: UInt64 = 0
        @Option(help: "Bytes to read (a multiple of the sector size).") var count: Int
        @Option(help: "Write here instead of standard output.") var output: String?

        func run() async throws {
            let (disk, _) = try await connection.open()
            let bytes = try await running { try await disk.read(sector: sector, count: count) }
            if let output { FileManager.default.createFile(atPath: output, contents: Data(bytes)) } else { FileHandle.standardOutput.write(Data(bytes)) }
            await disk.close()
        }
    }

    struct Write: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Write a file (or standard input) to the disk, then flush.")
        @OptionGroup var connection: Connection
        @Option(help: "First 512-byte sector.") var sector: UInt64 = 0
        @Option(help: "Read from here instead of standard input.") var input: String?

        func run() async throws {
            let data = input.flatMap { FileManager.default.contents(atPath: $0) } ?? FileHandle.standardInput.readDataToEndOfFile()
            let (disk, _) = try await connection.open()
            try await running {
                try await disk.write(sector: sector, Array(data))
                if disk.info.flush { try await disk.flush() }
            }
            await disk.close()
        }
    }

    struct Verify: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write a pattern, flush, read it back and compare (and with the backing file, if given).")
        @OptionGroup var connection: Connection
        @Option(help: "First 512-byte sector.") var sector: UInt64 = 0
        @Option(help: "Bytes to write (a multiple of the sector size).") var count = 1 << 20
        @Option(help: "The backing file, to compare with what the backend wrote.") var backing: String?

        func run() async throws {
            let (disk, _) = try await connection.open()
            var state = UInt64(0x9E37_79B9_7F4A_7C15) ^ sector
            let pattern = (0..<count).map { _ -> UInt8 in
                state ^= state << 13; state ^= state >> 7; state ^= state << 17
                return UInt8(truncatingIfNeeded: state)
            }
            let back = try await running { () async throws -> [UInt8] in
                try await disk.write(sector: sector, pattern)
                if disk.info.flush { try await disk.flush() }
                return try await disk.read(sector: sector, count: count)
            }
            await disk.close()
            guard back == pattern else {
                print("MISMATCH: read back differs from what was written")
                throw ExitCode(2)
            }
            if let backing {
                let file = FileHandle(forReadingAtPath: backing)
                try file?.seek(toOffset: sector * 512)
                let onDisk = file.map { Array($0.readData(ofLength: count)) } ?? []
                guard onDisk == pattern else {
                    print("MISMATCH: \(backing) differs from what was written")
                    throw ExitCode(2)
                }
            }
            print("verified \(count) bytes at sector \(sector)\(backing.map { ", and in \($0)" } ?? "")")
        }
    }
}
