import Testing
import XenABI
import XenBus

/// Every (own, backend) pair, table-driven, for both kinds of frontend.
@Suite("XenBus frontend state machine", .timeLimit(.minutes(5)))
struct FrontendStateMachineTests {
    typealias S = XenbusState
    typealias A = FrontendStateMachine.Action

    /// The expected action for every pair the handshake can meet; anything else waits.
    static func expected(own: S, backend: S, direct: Bool) -> A {
        switch (own, backend) {
        case (.initialising, .initWait), (.initialising, .initialised), (.initialising, .connected):
            return .publish(then: direct ? .connected : .initialised)
        case (.initialised, .connected): return .connect
        case (.connected, .connected): return .refresh
        case (.initialised, .unknown), (.connected, .unknown), (.initialising, .closing), (.initialised, .closing),
            (.connected, .closing), (.initialised, .closed), (.connected, .closed), (.closing, .closing), (.closing, .closed):
            return .close
        case (.closed, .initialising), (.closed, .initWait): return .switchTo(.initialising)
        default: return .wait
        }
    }

    @Test("every state pair", arguments: [false, true])
    func everyPair(direct: Bool) {
        for own in S.allCases {
            for backend in S.allCases {
                var machine = FrontendStateMachine(connectsDirectly: direct)
                #expect(
                    machine.next(own: own, backend: backend) == Self.expected(own: own, backend: backend, direct: direct),
                    "own \(own), backend \(backend), direct \(direct)")
            }
        }
    }

    @Test("a normal blkfront handshake: 1/2 publish → 3/2 wait → 3/4 connect → 4/4 refresh → 4/5 close")
    func handshake() {
        var machine = FrontendStateMachine(connectsDirectly: false)
        #expect(machine.next(own: .initialising, backend: .initialising) == .wait)
        #expect(machine.next(own: .initialising, backend: .initWait) == .publish(then: .initialised))
        #expect(machine.next(own: .initialised, backend: .initWait) == .wait)
        #expect(machine.next(own: .initialised, backend: .connected) == .connect)
        #expect(machine.next(own: .connected, backend: .connected) == .refresh)
        #expect(machine.next(own: .connected, backend: .closing) == .close)
    }

    @Test("the reconnect ladder from a backend still connected: Closing, Closed, Initialising, then publish at InitWait")
    func reconnect() {
        var machine = FrontendStateMachine(connectsDirectly: true)
        machine.restart()
        #expect(machine.next(own: .connected, backend: .connected) == .switchTo(.closing))
        #expect(machine.next(own: .closing, backend: .connected) == .wait)
        #expect(machine.next(own: .closing, backend: .closing) == .switchTo(.closed))
        #expect(machine.next(own: .closed, backend: .closing) == .wait)
        #expect(machine.next(own: .closed, backend: .closed) == .switchTo(.initialising))
        #expect(machine.next(own: .initialising, backend: .closed) == .wait)
        #expect(machine.next(own: .initialising, backend: .initWait) == .publish(then: .connected))
        #expect(!machine.reconnecting)
    }
}
