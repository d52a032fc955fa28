#if canImport(Glibc)
import Glibc
#endif
import CInterprocessShim
import Foundation
import InterprocessCore
import Synchronization

/// The process's one I/O thread: an epoll loop that tells parked connections when their sockets are ready,
/// runs deferred flushes, and accepts on listening sockets. It sleeps in `epoll_wait` when nothing happens,
/// so an idle process uses no CPU.
final class Poller: Sendable {
    static let shared = Poller()

    private let epollFD: Int32
    private let wakeFD: Int32
    private struct Registry {
        var handlers: [UInt64: @Sendable (_ events: UInt32) -> Void] = [:]
        var nextToken: UInt64 = 1
        var flushQueue: [any ByteStreamHandler] = []
        var wakePending = false
    }
    private let registry = Mutex(Registry())

    private init() {
        epollFD = cipc_epoll_create()
        wakeFD = cipc_eventfd()
        precondition(epollFD >= 0 && wakeFD >= 0, "Interprocess: cannot create the epoll instance (errno \(errno))")
        _ = cipc_epoll_arm(epollFD, wakeFD, 0, UInt32(CIPC_EV_READ), 0)
        let thread = Thread { [self] in run() }
        thread.name = "interprocess-io"
        thread.start()
    }

    /// Registers `fd`; `handler` gets each event (CIPC_EV_* bits) on the I/O thread. Nothing is armed yet.
    func register(fd: Int32, handler: @escaping @Sendable (UInt32) -> Void) -> UInt64 {
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
    func arm(fd: Int32, token: UInt64, events: UInt32) {
        _ = cipc_epoll_arm(epollFD, fd, 1, events, token)
    }

    func unregister(fd: Int32, token: UInt64) {
        _ = cipc_epoll_remove(epollFD, fd)
        _ = registry.withLock { $0.handlers.removeValue(forKey: token) }
    }

    /// Runs `handler.flushRequested()` on the I/O thread soon.
    func requestFlush(_ handler: any ByteStreamHandler) {
        let signal = registry.withLock { r -> Bool in
            r.flushQueue.append(handler)
            if r.wakePending { return false }
            r.wakePending = true
            return true
        }
        if signal {
            var one: UInt64 = 1
            _ = write(wakeFD, &one, 8)
        }
    }

    private func run() {
        var events = [cipc_event](repeating: cipc_event(), count: 64)
        while true {
            let n = events.withUnsafeMutableBufferPointer { cipc_epoll_wait(epollFD, $0.baseAddress, 64, -1) }
            if n < 0 { continue }
            for i in 0..<Int(n) {
                let event = events[i]
                if event.token == 0 {
                    var value: UInt64 = 0
                    _ = read(wakeFD, &value, 8)
                    _ = cipc_epoll_arm(epollFD, wakeFD, 1, UInt32(CIPC_EV_READ), 0)
                    let queue = registry.withLock { r in
                        r.wakePending = false
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
