import Foundation
import PVHost
import Testing
import XenABI
import XenBus
import XenStore

/// The XenBus frontend driver in a pvhost guest, against a backend played by dom0.
@Suite("XenBus frontend lifecycle on pvhost", .serialized, .timeLimit(.minutes(5)))
struct XenbusFrontendTests {
    /// Records what the frontend asked of its driver.
    actor Recorder {
        var calls: [String] = []
        func add(_ call: String) { calls.append(call) }
    }

    struct Driver: XenbusFrontendDriver {
        let recorder: Recorder
        var failConnect = false

        func publish(_ transaction: XenStoreTransaction, frontend: String, backend: String, backendID: DomainID) async throws {
            #expect(backendID == .dom0)
            try await transaction.write(XenStorePath(frontend + "/ring-ref"), "8")
            try await transaction.write(XenStorePath(frontend + "/event-channel"), "5")
            await recorder.add("publish")
        }

        func connect(frontend: String, backend: String) async throws {
            await recorder.add("connect")
            struct Refused: Error {}
            if failConnect { throw Refused() }
        }

        func refresh(frontend: String, backend: String) async throws { await recorder.add("refresh") }
        func disconnect() async { await recorder.add("disconnect") }
    }

    /// Polls until `path` reads `value` (or gives up after 5 s).
    func wait(_ store: XenStoreClient, _ path: String, _ value: String) async throws -> Bool {
        for _ in 0..<500 {
            if (try? await store.readString(XenStorePath(path))) == value { return true }
            try await Task.sleep(for: .milliseconds(10))
        }
        return false
    }

    @Test("Initialising → publish at backend InitWait → Initialised → Connected; refresh; close on Closing; removal completes")
    func handshake() async throws {
        let host = try ToolstackTests.Host()
        let guest = try await host.toolstack.createDomain(name: "g")
        let device = Toolstack.Device(type: "vbd", frontend: guest.domain.id, devid: 51712)
        try await host.toolstack.addDevice(device)
        let dom0 = host.toolstack.store
        let recorder = Recorder()
        let frontend = XenbusFrontend(store: try host.client(for: guest), type: "vbd", id: 51712, driver: Driver(recorder: recorder), connectsDirectly: false)
        let running = Task { try await frontend.run() }
        try await dom0.write(XenStorePath(device.backendPath + "/state"), "2")
        #expect(try await wait(dom0, device.frontendPath + "/state", "3"))
        #expect(try await dom0.readString(XenStorePath(device.frontendPath + "/ring-ref")) == "8")
        try await dom0.write(XenStorePath(device.backendPath + "/sectors"), "2048")
        try await dom0.write(XenStorePath(device.backendPath + "/state"), "4")
        #expect(try await wait(dom0, device.frontendPath + "/state", "4"))
        try await dom0.write(XenStorePath(device.backendPath + "/state"), "4")  // capacity change
        // The backend closes once the frontend has: a dom0 task playing blkback's part.
        let backendCloser = Task {
            _ = try await wait(dom0, device.frontendPath + "/state", "6")
            try await dom0.write(XenStorePath(device.backendPath + "/state"), "6")
        }
        #expect(try await host.toolstack.removeDevice(device), "the backend reached Closed")
        try await backendCloser.value
        try await running.value
        let calls = await recorder.calls
        #expect(calls.first == "publish" && calls.contains("connect") && calls.last == "disconnect", "\(calls)")
    }

    @Test("a driver that fails to connect: the error node says why, the device goes to Closing")
    func driverFailure() async throws {
        let host = try ToolstackTests.Host()
        let guest = try await host.toolstack.createDomain(name: "g")
        let device = Toolstack.Device(type: "vif", frontend: guest.domain.id, devid: 0)
        try await host.toolstack.addDevice(device)
        let dom0 = host.toolstack.store
        let frontend = XenbusFrontend(
            store: try host.client(for: guest), type: "vif", id: 0,
            driver: Driver(recorder: Recorder(), failConnect: true), connectsDirectly: false)
        let running = Task { try await frontend.run() }
        try await dom0.write(XenStorePath(device.backendPath + "/state"), "4")  // skipped InitWait
        _ = try await wait(dom0, device.frontendPath + "/state", "5")
        await #expect(throws: XenbusFrontendError.self) { try await running.value }
        #expect(try await dom0.readString(XenStorePath(device.frontendPath + "/state")) == "5")
        let error = try await dom0.readString(XenStorePath("/local/domain/\(guest.domain.id.rawValue)/error/device/vif/0/error"))
        #expect(error.hasPrefix("5 connecting"), "\(error)")
    }

    @Test("a device that is not there, or removed under the frontend, is an error, not a recreated node")
    func missing() async throws {
        let host = try ToolstackTests.Host()
        let guest = try await host.toolstack.createDomain(name: "g")
        let frontend = XenbusFrontend(store: try host.client(for: guest), type: "vbd", id: 768, driver: Driver(recorder: Recorder()), connectsDirectly: false)
        await #expect(throws: XenbusFrontendError.noDevice("device/vbd/768")) { try await frontend.run() }
        await #expect(throws: XenbusFrontendError.removed("device/vbd/768/state")) { try await frontend.switchState(.closed) }
        #expect(try await !host.toolstack.store.exists(XenStorePath("/local/domain/\(guest.domain.id.rawValue)/device/vbd/768")))
    }

    @Test("the backend restarts: the frontend closes, then a new run walks Closed → Initialising → publish → Connected again")
    func backendRestart() async throws {
        let host = try ToolstackTests.Host()
        let guest = try await host.toolstack.createDomain(name: "g")
        let device = Toolstack.Device(type: "vif", frontend: guest.domain.id, devid: 0)
        try await host.toolstack.addDevice(device)
        let dom0 = host.toolstack.store
        let recorder = Recorder()
        let frontend = XenbusFrontend(store: try host.client(for: guest), type: "vif", id: 0, driver: Driver(recorder: recorder), connectsDirectly: true)
        let first = Task { try await frontend.run() }
        try await dom0.write(XenStorePath(device.backendPath + "/state"), "2")
        #expect(try await wait(dom0, device.frontendPath + "/state", "4"), "netfront publishes straight to Connected")
        try await dom0.write(XenStorePath(device.backendPath + "/state"), "4")
        // The backend dies and comes back: Closed, then Initialising, InitWait.
        try await dom0.write(XenStorePath(device.backendPath + "/state"), "6")
        try await first.value
        #expect(try await dom0.readString(XenStorePath(device.frontendPath + "/state")) == "6")
        let second = Task { try await frontend.run() }
        try await dom0.write(XenStorePath(device.backendPath + "/state"), "1")
        try await dom0.write(XenStorePath(device.backendPath + "/state"), "2")
        #expect(try await wait(dom0, device.frontendPath + "/state", "4"), "connected again")
        try await dom0.write(XenStorePath(device.backendPath + "/state"), "5")
        try await second.value
        // A refresh may come between (when the frontend saw the backend's Connected before it
        // closed): it is not part of what is checked.
        let calls = await recorder.calls.filter { $0 != "refresh" }
        #expect(calls == ["publish", "disconnect", "publish", "disconnect"], "\(calls)")
    }
}
