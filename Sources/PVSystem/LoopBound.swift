/// A value that only one event loop's thread touches: the scratch of a ring's handler, a
/// connection's buffers, a parser's state. Reached from anywhere else it stops the process
/// (a precondition, not a race), so state confined to a loop needs no lock and no claim of
/// its own (as swift-nio's `NIOLoopBound`).
///
/// ```swift
/// let scratch = LoopBound(Scratch(), on: loop)
/// loop.execute { scratch.value.responses.removeAll(keepingCapacity: true) }
/// ```
public final class LoopBound<Value: ~Copyable>: @unchecked Sendable {  // @unchecked: every access checks that it runs on `loop`'s thread
    /// The loop whose thread owns the value.
    public let loop: EventLoop
    private var stored: Value

    /// Binds `value` to `loop` (made anywhere; touched only on the loop from now on).
    public init(_ value: consuming sending Value, on loop: EventLoop) {
        self.loop = loop
        stored = value
    }

    /// The value. On the loop's thread only.
    public var value: Value {
        _read {
            precondition(loop.inLoop, "a value bound to \(loop.name) was touched off its thread")
            yield stored
        }
        _modify {
            precondition(loop.inLoop, "a value bound to \(loop.name) was touched off its thread")
            yield &stored
        }
    }
}
