import DequeModule
import PVSystem
import Synchronization
import XenABI

/// A ring's I/O threads (``BlockBackend/Settings/ioThreads``): reads and writes handed over by
/// the ring's handler are done side by side, each answered on the ring by the thread that did
/// it, so a device with several requests in flight works on them at once. Blocking I/O stays
/// on these threads, never on an event loop or Swift's cooperative pool.
final class BlockIOPool: Sendable {
    /// What the threads and the pool share.
    private final class Shared: Sendable {
        struct State {
            var jobs = Deque<BlkifRequest>()
            /// Jobs queued or running.
            var busy = 0
            var stopping = false
        }
        let state = Locked(State())
        /// One count per queued job (and one per thread at stop): what the threads wait on.
        let ready: EventFD
        let requests: BlockRequests
        let answer: @Sendable (BlkifResponse) -> Void
        /// Told each time the last job in progress finished (from that job's thread).
        let idle: @Sendable () -> Void

        init(ready: EventFD, requests: BlockRequests, answer: @escaping @Sendable (BlkifResponse) -> Void, idle: @escaping @Sendable () -> Void) {
            self.ready = ready
            self.requests = requests
            self.answer = answer
            self.idle = idle
        }

        /// One thread's life: take a job, do it, answer it; end when told and nothing is left.
        func work() {
            var vectors = IOVectors()
            while true {
                do { try ready.wait() } catch { preconditionFailure("an I/O thread's wait failed: \(error)") }
                let job: BlkifRequest? = state.withLock { state in state.jobs.popFirst() }
                guard let job else {
                    if state.withLock({ $0.stopping }) { return }
                    continue
                }
                answer(requests.perform(job, vectors: &vectors))
                let last = state.withLock { state -> Bool in
                    state.busy -= 1
                    return state.busy == 0
                }
                if last { idle() }
            }
        }
    }

    private let shared: Shared
    private let threads: WorkerThreads

    /// Starts `count` threads performing `requests` and handing each response to `answer`;
    /// `idle` is told whenever the last job in progress has been answered.
    init(
        name: String, count: Int, requests: BlockRequests, answer: @escaping @Sendable (BlkifResponse) -> Void,
        idle: @escaping @Sendable () -> Void
    ) throws(SystemError) {
        let shared = Shared(ready: try EventFD(semaphore: true), requests: requests, answer: answer, idle: idle)
        self.shared = shared
        threads = try WorkerThreads(name: name, count: count) { _ in shared.work() }
    }

    /// Whether jobs are queued or running.
    var isBusy: Bool { shared.state.withLock { $0.busy > 0 } }

    /// Queues a read or write for the next free thread.
    func submit(_ request: BlkifRequest) {
        shared.state.withLock { state in
            state.jobs.append(request)
            state.busy += 1
        }
        post(1)
    }

    private func post(_ count: UInt64) {
        // An eventfd write fails only on overflow (2^64 − 1 jobs) or a closed descriptor.
        do { try shared.ready.notify(count) } catch { preconditionFailure("waking the I/O threads failed: \(error)") }
    }

    /// Lets the threads finish what is queued, then end; returns when they have.
    func stop() async {
        shared.state.withLock { $0.stopping = true }
        post(UInt64(max(threads.running, 1)))
        await threads.join()
    }
}
