import Foundation
import Testing
import XenABI
import XenStore

/// xenstored advisories replayed against both daemons: each must survive, leave another client
/// unharmed, and give the result written down here (the same for both, unless noted).
@Suite("xenstored advisories, replayed", .serialized, .timeLimit(.minutes(5)))
struct XenStoreAdvisoryTests {
    /// A second client's round trip: the daemon is alive and serving others.
    static func unharmed(_ kind: StoreDaemon, _ socket: String) async throws {
        let other = try kind.client(socket)
        try await other.write("/tool/advisory/other", "still here")
        #expect(try await other.readString("/tool/advisory/other") == "still here")
    }

    @Test("RELEASE of a domain never introduced is answered, and nothing else changes", arguments: StoreDaemon.allCases)
    func releaseUnknown(_ kind: StoreDaemon) async throws {
        let (socket, handle) = try await kind.start()
        defer { withExtendedLifetime(handle) {} }
        let store = try kind.client(socket)
        let result: Result<Void, XenStoreError>
        do {
            try await store.release(DomainID(77))
            result = .success(())
        } catch {
            result = .failure(error)
        }
        // Both daemons answer with an error naming the missing domain (ENOENT in C xenstored 4.17).
        guard case .failure(let error) = result else {
            Issue.record("\(kind): RELEASE of an unknown domain answered OK")
            return
        }
        #expect("\(error)".contains("ENOENT") || "\(error)".lowercased().contains("not found") || "\(error)".contains("EINVAL"), "\(kind): \(error)")
        try await Self.unharmed(kind, socket)
    }

    @Test("CVE-2022-42321: a 500-deep path is made and removed from the top without exhausting the daemon's stack", arguments: StoreDaemon.allCases)
    func deepNesting(_ kind: StoreDaemon) async throws {
        let (socket, handle) = try await kind.start()
        defer { withExtendedLifetime(handle) {} }
        let store = try kind.client(socket)
        let depth = 500
        let path = "/tool/deep" + String(repeating: "/a", count: depth)
        try await store.write(XenStorePath(path), "bottom")
        #expect(try await store.readString(XenStorePath(path)) == "bottom")
        try await store.remove("/tool/deep")
        await #expect(throws: XenStoreError.self) { try await store.read(XenStorePath(path)) }
        try await Self.unharmed(kind, socket)
    }

    @Test("RESET_WATCHES sent inside a transaction ends the connection's transactions too; nothing of it is committed", arguments: StoreDaemon.allCases)
    func resetWatchesInTransaction(_ kind: StoreDaemon) async throws {
        let (socket, handle) = try await kind.start()
        defer { withExtendedLifetime(handle) {} }
        let store = try kind.client(socket)
        let id = try await store.startTransaction()
        _ = try await store.call(.write("/tool/advisory/tx", value: Array("in".utf8)), transaction: id)
        let reply = try? await store.call(.resetWatches, transaction: id)
        // Both daemons (C xenstored 4.17 and ours) answer OK and drop every watch and every
        // transaction of the connection: the transaction's end is ENOENT, its write never lands.
        #expect(reply == .ok, "\(kind): \(String(describing: reply))")
        await #expect { try await store.endTransaction(id, commit: true) } throws: { error in "\(error)".contains("ENOENT") }
        await #expect(throws: XenStoreError.self) { try await store.read("/tool/advisory/tx") }
        try await Self.unharmed(kind, socket)
    }
}
