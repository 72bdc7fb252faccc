import Glibc

/// The project's one clock: `CLOCK_MONOTONIC` in nanoseconds, for timeouts, deadlines and
/// polling budgets (never wall time).
public enum MonotonicClock {
    /// Nanoseconds since an arbitrary point (boot). C: `clock_gettime(CLOCK_MONOTONIC)`.
    @inline(__always)
    public static func now() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return UInt64(time.tv_sec) &* 1_000_000_000 &+ UInt64(time.tv_nsec)
    }

    /// `duration` in nanoseconds, negative durations as 0, saturating at `UInt64.max`.
    public static func nanoseconds(_ duration: Duration) -> UInt64 {
        let (seconds, attoseconds) = duration.components
        guard seconds >= 0, attoseconds >= 0 || seconds > 0 else { return 0 }
        let (whole, overflow) = UInt64(seconds).multipliedReportingOverflow(by: 1_000_000_000)
        guard !overflow else { return .max }
        let (total, overflow2) = whole.addingReportingOverflow(UInt64(max(0, attoseconds) / 1_000_000_000))
        return overflow2 ? .max : total
    }
}

/// Wall time, for time stamps written for people and tools (pcap records); never for
/// intervals, which take ``MonotonicClock``.
public enum WallClock {
    /// Seconds and microseconds since the Unix epoch. C: `clock_gettime(CLOCK_REALTIME)`.
    public static func now() -> (seconds: Int, microseconds: Int) {
        var time = timespec()
        clock_gettime(CLOCK_REALTIME, &time)
        return (time.tv_sec, time.tv_nsec / 1000)
    }
}
