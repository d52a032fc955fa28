import CInterprocessShim

/// What the waiting code of every layer needs from the operating system, and nothing else: a monotonic clock and
/// the two ways to pause a polling thread. Everything else that touches the system lives in the transports.
package enum Platform {
    /// Nanoseconds of a monotonic clock (`CLOCK_MONOTONIC`); only differences are meaningful.
    @inline(__always)
    package static func monotonicNanoseconds() -> UInt64 { cipc_monotonic_ns() }

    /// The CPU's spin-loop hint: a few cycles, the core stays with this thread.
    @inline(__always)
    package static func relaxCPU() { cipc_cpu_relax() }

    /// Gives the CPU to another runnable thread, if any (a peer that shares this CPU must get to run).
    @inline(__always)
    package static func yieldCPU() { cipc_yield() }
}
