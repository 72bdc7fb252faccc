import CLinux
import Glibc
import Synchronization

/// A fixed set of threads for work that blocks (a disk's direct I/O), never Swift's
/// cooperative pool and never an event loop. Each runs `body(index)` to its end; ``join()``
/// waits for all of them without blocking a thread.
public final class WorkerThreads: Sendable {
    private struct State {
        var running: Int
        var waiting: [CheckedContinuation<Void, Never>] = []
    }
    private let state: Locked<State>

    /// Starts `count` threads named `name-0`, `name-1`, … (as far as 15 bytes go).
    ///
    /// - Throws: ``SystemError`` from `pthread_create` (the threads already started run on).
    public init(name: String, count: Int, body: @escaping @Sendable (Int) -> Void) throws(SystemError) {
        state = Locked(State(running: count))
        for index in 0..<count {
            let work = Work(name: "\(name)-\(index)", index: index, body: body, pool: self)
            let box = Unmanaged.passRetained(work).toOpaque()
            var thread = pthread_t()
            let created = pthread_create(
                &thread, nil,
                { raw in
                    let work = Unmanaged<Work>.fromOpaque(raw!).takeRetainedValue()
                    var threadName = work.name.utf8.prefix(15).map { CChar(bitPattern: $0) } + [0]
                    _ = pthread_setname_np(pthread_self(), &threadName)
                    work.body(work.index)
                    work.pool.ended()
                    return nil
                }, box)
            guard created == 0 else {
                Unmanaged<Work>.fromOpaque(box).release()
                state.withLock { $0.running -= count - index }
                throw SystemError("pthread_create", errno: created, context: name)
            }
            pthread_detach(thread)
        }
    }

    private final class Work: Sendable {
        let name: String
        let index: Int
        let body: @Sendable (Int) -> Void
        let pool: WorkerThreads
        init(name: String, index: Int, body: @escaping @Sendable (Int) -> Void, pool: WorkerThreads) {
            self.name = name
            self.index = index
            self.body = body
            self.pool = pool
        }
    }

    private func ended() {
        let waiting: [CheckedContinuation<Void, Never>] = state.withLock { state in
            state.running -= 1
            guard state.running == 0 else { return [] }
            defer { state.waiting.removeAll() }
            return state.waiting
        }
        for continuation in waiting { continuation.resume() }
    }

    /// Threads still running.
    public var running: Int { state.withLock { $0.running } }

    /// Returns once every thread has ended (the caller tells them to end).
    public func join() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let done = state.withLock { state -> Bool in
                guard state.running > 0 else { return true }
                state.waiting.append(continuation)
                return false
            }
            if done { continuation.resume() }
        }
    }
}
