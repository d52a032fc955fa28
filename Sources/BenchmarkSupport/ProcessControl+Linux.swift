#if canImport(Glibc)
import Glibc
#endif
import CInterprocessShim

/// What `ipc bench` and the test helper need from the system beyond the public API: a clock, CPU pinning, peak
/// memory, a socket pair and spawning a process with an inherited descriptor. Not part of any library product.
package enum ProcessControl {
    /// Nanoseconds of a monotonic clock.
    package static func monotonicNanoseconds() -> UInt64 { cipc_monotonic_ns() }

    /// Pins the calling thread (and the threads it starts afterwards) to `cpu`; false when not allowed.
    @discardableResult
    package static func pinToCPU(_ cpu: Int) -> Bool { cipc_pin_to_cpu(Int32(cpu)) == 0 }

    /// This process's peak resident memory in KiB.
    package static func peakResidentKiB() -> Int { cipc_peak_rss_kib() }

    /// A connected pair of Unix stream sockets (close-on-exec), or nil with errno set.
    package static func socketPair() -> (Int32, Int32)? {
        var fds: [Int32] = [-1, -1]
        guard cipc_socketpair(&fds) == 0 else { return nil }
        return (fds[0], fds[1])
    }

    /// Starts `path` with `arguments` (`arguments[0]` is the program's name), the current environment, and
    /// `inheritFD` as its descriptor 3 (none when negative). The pid, or nil with errno set.
    package static func spawn(_ path: String, arguments: [String], inheritFD: Int32 = -1) -> pid_t? {
        var cArguments: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) }
        cArguments.append(nil)
        defer { for p in cArguments { free(p) } }
        let pid = cipc_spawn(path, cArguments, inheritFD)
        return pid > 0 ? pid : nil
    }

    /// Waits for `pid` to end: its exit code, or 128 + the signal that ended it; nil when it cannot be waited for.
    package static func wait(_ pid: pid_t) -> Int32? {
        var code: Int32 = 0
        guard cipc_wait(pid, &code) == 0 else { return nil }
        return code
    }
}
