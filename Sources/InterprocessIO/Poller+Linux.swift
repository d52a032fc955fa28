#if canImport(Glibc)
import Glibc
#endif
import CInterprocessShim
import Foundation
import InterprocessCore
import InterprocessPlatform
import Synchronization

/// The process's one I/O thread: an epoll loop that tells parked connections when their sockets are ready,
/// runs deferred flushes, and accepts on listening sockets. It sleeps in `epoll_wait` when nothing happens,
/// so an idle process uses no CPU.
package final class Poller: Sendable {
    package static let shared = Poller()

    private let epollFD: Int32
    private let timerFD: Int32
    /// The heartbeats' timer, armed for the earliest one due.
    private let beatFD: Int32
    private static let beatToken = UInt64.max
    /// How long a deferred flush waits, so a burst of sends is written at once.
    package static let flushDelayNanos: UInt64 = 50_000
    private struct Registry {
        var handlers: [UInt64: @Sendable (_ events: UInt32) -> Void] = [:]
        var nextToken: UInt64 = 1
        var flushQueue: [any ByteStreamHandler] = []
        var timerArmed = false
        var beats: [Beat] = []
        /// When the heartbeat timer fires next (monotonic nanoseconds; nil: disarmed).
        var beatArmedFor: UInt64?
    }
    /// A connection's heartbeats: its handler (held weakly: a connection that goes away stops them), every
    /// `interval` nanoseconds, the next one at `due`.
    private struct Beat {
        weak var handler: (any ByteStreamHandler)?
        var interval: UInt64
        var due: UInt64
    }
    private let registry = Lock(Registry())

    private init() {
        epollFD = cipc_epoll_create()
        timerFD = cipc_timerfd()
        beatFD = cipc_timerfd()
        precondition(epollFD >= 0 && timerFD >= 0 && beatFD >= 0, "Interprocess: cannot create the epoll instance (errno \(errno))")
        _ = cipc_epoll_arm(epollFD, timerFD, 0, UInt32(CIPC_EV_READ), 0)
        _ = cipc_epoll_arm(epollFD, beatFD, 0, UInt32(CIPC_EV_READ), Self.beatToken)
        let thread = Thread { [self] in run() }
        thread.name = "interprocess-io"
        thread.start()
    }

    /// Registers `fd`; `handler` gets each event (CIPC_EV_* bits) on the I/O thread. Nothing is armed yet.
    package func register(fd: Int32, handler: @escaping @Sendable (UInt32) -> Void) -> UInt64 {
        let token = registry.withLock { r in
            let t = r.nextToken
            r.nextToken += 1
            r.handlers[t] = handler
            return t
        }
        _ = cipc_epoll_arm(epollFD, fd, 0, 0, token)
        return token
    }

    /// Arms one event for `fd` (CIPC_EV_READ and/or CIPC_EV_WRITE).
    package func arm(fd: Int32, token: UInt64, events: UInt32) {
        _ = cipc_epoll_arm(epollFD, fd, 1, events, token)
    }

    package func unregister(fd: Int32, token: UInt64) {
        _ = cipc_epoll_remove(epollFD, fd)
        _ = registry.withLock { $0.handlers.removeValue(forKey: token) }
    }

    /// Runs `handler.flushRequested()` on the I/O thread after ``flushDelayNanos``. Arming a timer wakes no
    /// thread now, so the sender keeps its CPU and the flush carries everything appended meanwhile.
    package func requestFlush(_ handler: any ByteStreamHandler) {
        // The timer is armed and disarmed under the lock, so that its state always matches `timerArmed`.
        registry.withLock { r in
            r.flushQueue.append(handler)
            if r.timerArmed { return }
            r.timerArmed = true
            _ = cipc_timerfd_arm(timerFD, Self.flushDelayNanos)
        }
    }

    /// Withdraws `handler`'s flush requests (its output was written meanwhile). When no request is left the
    /// timer is disarmed, so the I/O thread does not wake: during a long burst of sends, each batch is written
    /// by the sender and a wake-up per batch would take the sender's CPU (decision record 0003).
    package func cancelFlush(_ handler: any ByteStreamHandler) {
        registry.withLock { r in
            r.flushQueue.removeAll { $0 === handler }
            guard r.flushQueue.isEmpty, r.timerArmed else { return }
            r.timerArmed = false
            _ = cipc_timerfd_disarm(timerFD)
        }
    }

    /// Calls `handler.heartbeatDue()` on the I/O thread every `interval` nanoseconds until it returns false (or
    /// the handler is gone). The beats run on this thread rather than as tasks, so that a busy task pool cannot
    /// hold them up: a quiet connection's I/O thread reading is what answers the peer's pings.
    package func scheduleHeartbeats(_ handler: any ByteStreamHandler, every interval: UInt64) {
        let due = Platform.monotonicNanoseconds() + interval
        registry.withLock { r in
            r.beats.append(Beat(handler: handler, interval: max(interval, 1), due: due))
            armBeats(&r)
        }
    }

    /// Arms the heartbeat timer for the earliest beat due, or disarms it when there is none (lock held).
    private func armBeats(_ r: inout Registry) {
        guard let next = r.beats.lazy.map(\.due).min() else {
            if r.beatArmedFor != nil { _ = cipc_timerfd_disarm(beatFD) }
            r.beatArmedFor = nil
            return
        }
        if r.beatArmedFor == next { return }
        r.beatArmedFor = next
        let now = Platform.monotonicNanoseconds()
        _ = cipc_timerfd_arm(beatFD, next > now ? next - now : 0)
    }

    /// The heartbeat timer fired: runs the beats due (outside the lock), drops the ones that ended.
    private func runBeats() {
        var value: UInt64 = 0
        _ = read(beatFD, &value, 8)
        _ = cipc_epoll_arm(epollFD, beatFD, 1, UInt32(CIPC_EV_READ), Self.beatToken)
        let now = Platform.monotonicNanoseconds()
        // The handlers due, held strongly until the end (so that an identity in `ended` cannot be reused meanwhile).
        let due: [any ByteStreamHandler] = registry.withLock { r in
            r.beatArmedFor = nil
            return r.beats.filter { $0.due <= now }.compactMap(\.handler)
        }
        var ended: [ObjectIdentifier] = []
        for handler in due where !handler.heartbeatDue() {
            ended.append(ObjectIdentifier(handler))
        }
        withExtendedLifetime(due) { registry.withLock { r in
            let later = Platform.monotonicNanoseconds()
            r.beats.removeAll { beat in
                guard let handler = beat.handler else { return true }
                return ended.contains(ObjectIdentifier(handler))
            }
            for i in r.beats.indices where r.beats[i].due <= now {
                // The next beat an interval after this one ran (not after it was due: a late beat is not
                // followed by a burst of catching up).
                r.beats[i].due = later + r.beats[i].interval
            }
            armBeats(&r)
        } }
    }

    private func run() {
        var events = [cipc_event](repeating: cipc_event(), count: 64)
        while true {
            let n = events.withUnsafeMutableBufferPointer { cipc_epoll_wait(epollFD, $0.baseAddress, 64, -1) }
            if n < 0 { continue }
            for i in 0..<Int(n) {
                let event = events[i]
                if event.token == Self.beatToken {
                    runBeats()
                    continue
                }
                if event.token == 0 {
                    var value: UInt64 = 0
                    _ = read(timerFD, &value, 8)
                    _ = cipc_epoll_arm(epollFD, timerFD, 1, UInt32(CIPC_EV_READ), 0)
                    // After a disarm the expiration may still be reported once: then the queue is empty, or holds a
                    // request made since, which is flushed a little early.
                    let queue = registry.withLock { r in
                        r.timerArmed = false
                        defer { r.flushQueue.removeAll(keepingCapacity: true) }
                        return r.flushQueue
                    }
                    for handler in queue { handler.flushRequested() }
                    continue
                }
                let handler = registry.withLock { $0.handlers[event.token] }
                handler?(event.events)
            }
        }
    }
}
