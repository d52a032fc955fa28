#if canImport(Glibc)
import Glibc
#endif
import CInterprocessShim
import InterprocessCore
import InterprocessIO
import InterprocessPlatform
import Synchronization

/// A connected, non-blocking stream socket (Unix domain or TCP) as a ``ByteStream``.
///
/// The descriptor is closed only when no read or write is in progress on another thread, so a number reused by
/// the kernel can never be read or written by mistake.
package final class SocketStream: DeferredFlushing, @unchecked Sendable {
    private let fd: Int32
    package let peerDescription: String
    private let use = DescriptorUse()
    private struct State {
        var closed = false
        var token: UInt64 = 0
        /// Events armed and not yet delivered.
        var interest: UInt32 = 0
        var handler: (any ByteStreamHandler)?
    }
    private let state = Lock(State())

    /// Takes ownership of a connected, non-blocking socket.
    package init(fd: Int32, peerDescription: String) {
        self.fd = fd
        self.peerDescription = peerDescription
    }

    deinit {
        let token = state.withLock { $0.token }
        if !use.released {
            if token != 0 { Poller.shared.unregister(fd: fd, token: token) }
            Glibc.close(fd)
        }
    }

    private func enter() throws(IPCError) {
        if !use.enter() { throw IPCError(.alreadyClosed, "the connection is closed") }
    }

    private func leave() {
        if use.leave() { releaseDescriptor() }
    }

    private func releaseDescriptor() {
        let token = state.withLock { $0.token }
        if token != 0 { Poller.shared.unregister(fd: fd, token: token) }
        Glibc.close(fd)
    }

    /// Hands the descriptor over to a new owner (before ``start(handler:)``): this stream forgets it.
    package func detachDescriptor() -> Int32 {
        state.withLock { s in
            precondition(s.token == 0 && !use.released, "a started or released stream cannot be detached")
            s.closed = true
            use.detach()
        }
        return fd
    }

    /// TCP: has the kernel declare the connection dead once the peer answers nothing for about `timeout`
    /// (``ChannelOptions/deadPeerTimeout``): keepalive probes after `timeout / 2` idle, every `timeout / 6`,
    /// three of them; and sent data may stay unacknowledged for at most `timeout`. Then reads and writes fail
    /// with `ETIMEDOUT`, reported as `peerClosed`.
    package func detectDeadPeer(after timeout: Duration) {
        let seconds = Int32(clamping: timeout.components.seconds)
        var on: Int32 = 1
        var idle = max(seconds / 2, 1)
        var interval = max(seconds / 6, 1)
        var count: Int32 = 3
        var unacknowledged = UInt32(clamping: seconds) * 1000
        let size = socklen_t(MemoryLayout<Int32>.size)
        _ = setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, size)
        _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_KEEPIDLE, &idle, size)
        _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_KEEPINTVL, &interval, size)
        _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_KEEPCNT, &count, size)
        _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_USER_TIMEOUT, &unacknowledged, size)
    }

    /// A call on the connected socket: a connection the kernel timed out (``detectDeadPeer(after:)``) means the
    /// peer is gone, which is `peerClosed`, not the `timeout` of a deadline the caller set.
    private func connectionCall(_ what: @autoclosure () -> String, _ call: () -> Int) throws(IPCError) -> Int? {
        do {
            return try nonBlockingCall(what(), call)
        } catch where error.errno == ETIMEDOUT {
            throw IPCError(.peerClosed, "\(what()): the peer stopped answering (no reply within ChannelOptions.deadPeerTimeout); its host is down or unreachable", errno: ETIMEDOUT)
        }
    }

    package func read(into buffer: UnsafeMutableRawBufferPointer) throws(IPCError) -> ReadOutcome {
        guard buffer.count > 0 else { return .wouldBlock }
        try enter()
        defer { leave() }
        guard let n = try connectionCall("reading from the socket", { Glibc.read(fd, buffer.baseAddress, buffer.count) }) else {
            return .wouldBlock
        }
        return n == 0 ? .endOfStream : .bytes(n)
    }

    package func write(_ segments: [[UInt8]], offset: Int) throws(IPCError) -> Int {
        guard !segments.isEmpty else { return 0 }
        try enter()
        defer { leave() }
        let iov = IOVector()
        return try Self.withPointers(segments[...], offset: offset, iov) { () throws(IPCError) -> Int in
            try connectionCall("writing to the socket", { cipc_writev(fd, iov.bases, iov.lengths, Int32(iov.bases.count)) }) ?? 0
        }
    }

    private final class IOVector {
        var bases: [UnsafeRawPointer?] = []
        var lengths: [Int] = []
    }

    /// Collects pointers to every segment inside nested `withUnsafeBytes` scopes, then runs `body`.
    private static func withPointers<R>(_ segments: ArraySlice<[UInt8]>, offset: Int, _ iov: IOVector, _ body: () throws(IPCError) -> R) throws(IPCError) -> R {
        guard let first = segments.first else { return try body() }
        return try first.withUnsafeBytes { raw in
            iov.bases.append(raw.baseAddress.map { $0 + offset })
            iov.lengths.append(raw.count - offset)
            return Result { () throws(IPCError) -> R in try withPointers(segments.dropFirst(), offset: 0, iov, body) }
        }.get()
    }

    /// Delivers the readiness events to `handler` from now on: starts the stream, or, when it was started by
    /// another owner (a connection that gave it up), changes whom its events go to.
    package func adopt(handler: any ByteStreamHandler) {
        let started = state.withLock { s -> Bool in
            guard s.token != 0 else { return false }
            s.handler = handler
            return true
        }
        if !started { start(handler: handler) }
    }

    package func start(handler: any ByteStreamHandler) {
        let token = Poller.shared.register(fd: fd) { [weak self] events in self?.deliver(events) }
        state.withLock { s in
            s.token = token
            s.handler = handler
        }
    }

    /// Arms one readiness event. The epoll registration is changed under the lock, so two threads arming at
    /// once (or the I/O thread re-arming what is left) can never overwrite each other's interest.
    package func arm(read: Bool, write: Bool) {
        var wanted: UInt32 = 0
        if read { wanted |= UInt32(CIPC_EV_READ) }
        if write { wanted |= UInt32(CIPC_EV_WRITE) }
        state.withLock { s in
            guard !s.closed, s.token != 0 else { return }
            s.interest |= wanted
            Poller.shared.arm(fd: fd, token: s.token, events: s.interest)
        }
    }

    private func deliver(_ events: UInt32) {
        let failed = events & UInt32(CIPC_EV_HUP | CIPC_EV_ERROR) != 0
        let (got, handler) = state.withLock { s -> (UInt32, (any ByteStreamHandler)?) in
            let fired = failed ? s.interest : (s.interest & events)
            s.interest &= ~fired
            if s.interest != 0 && !s.closed {
                Poller.shared.arm(fd: fd, token: s.token, events: s.interest)
            }
            return (fired, s.handler)
        }
        guard got != 0, let handler else { return }
        handler.streamReady(readable: got & UInt32(CIPC_EV_READ) != 0, writable: got & UInt32(CIPC_EV_WRITE) != 0)
    }

    package var flushTarget: (handler: (any ByteStreamHandler)?, closed: Bool) {
        state.withLock { ($0.handler, $0.closed) }
    }

    package func shutdownWrite() {
        guard (try? enter()) != nil else { return }
        defer { leave() }
        _ = Glibc.shutdown(fd, Int32(SHUT_WR))
    }

    package func close() {
        state.withLock { s in
            s.handler = nil
            s.closed = true
        }
        if use.close() { releaseDescriptor() }
    }
}
