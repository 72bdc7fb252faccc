#if canImport(Glibc)
    import Glibc
#endif

/// Polling a shared ring before sleeping on its event channel: under a steady load the other
/// end publishes again within microseconds, and looking costs less than a notification and a
/// wake-up. The end that polls does not ask for a notification meanwhile.
public enum RingPolling {
    /// Calls `look` (yielding the processor between calls) until it answers true (something
    /// to consume: returns true), nil (nothing can come: returns false) or `nanoseconds` have
    /// passed (returns false).
    public static func wait(nanoseconds: UInt64, look: () -> Bool?) -> Bool {
        let deadline = MonotonicClock.now() &+ nanoseconds
        while true {
            guard let found = look() else { return false }
            if found { return true }
            if MonotonicClock.now() >= deadline { return false }
            sched_yield()
        }
    }
}
