import Foundation
import PVSystem
import Testing
import TestSupport

@Suite("UNIX sockets: paths, appearance", .timeLimit(.minutes(1)))
struct UNIXSocketTests {
    @Test("a path longer than sun_path is ENAMETOOLONG for connect and listen, naming the path")
    func pathTooLong() {
        let path = "/tmp/" + String(repeating: "x", count: 120)
        #expect {
            _ = try SeqpacketSocket.connect(to: path)
        } throws: { error in
            (error as? SystemError)?.errno == .fileNameTooLong && (error as? SystemError)?.context == path
        }
        #expect {
            _ = try SeqpacketSocket.listen(at: path)
        } throws: { error in
            (error as? SystemError)?.errno == .fileNameTooLong
        }
        #expect {
            _ = try StreamListener(unixSocket: path)
        } throws: { error in
            (error as? SystemError)?.errno == .fileNameTooLong
        }
    }

    @Test("a listener's file is there only once it listens, with no temporary file left beside it; it goes when the listener does")
    func appearsListening() throws {
        let directory = temporaryPath("pvkit-sock")
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/socket"
        do {
            let listener = try StreamListener(unixSocket: path)
            _ = try StreamDescriptor.connect(unixSocket: path)
            #expect(try FileManager.default.contentsOfDirectory(atPath: directory) == ["socket"], "only the socket itself")
            withExtendedLifetime(listener) {}
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory) == [], "removed with the listener")
    }
}
