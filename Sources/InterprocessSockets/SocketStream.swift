#if canImport(Glibc)
import Glibc
#endif
import CInterprocessShim
import InterprocessCore
import Synchronization

/// A connected, non-blocking stream socket (Unix domain or TCP) as a ``ByteStream``.
///
/// The descriptor is closed only when no read or write is in progress on another thread, so a number reused by
/// the kernel can never be read or written by mistake.
package final class SocketStream: ByteStream, @unchecked Sendable {
    private let fd: Int32
    package let peerDescription: String
    private struct State {
        var users = 0
        var closed = false
        var released = false
        var token: UInt64 = 0
        /// Events armed and not yet delivered.
        var interest: UInt32 = 0
        var handler: (any ByteStreamHandler)?
    }
    private let state = Mutex(State())

    /// Takes ownership of a connected, non-blocking socket.
    package init(fd: Int32, peerDescription: String) {
        self.fd = fd
        self.peerDescription = peerDescription
    }

    deinit {
        let (released, token) = state.withLock { ($0.released, $0.token) }
        if !released {
            if token != 0 { Poller.shared.unregister(fd: fd, token: token) }
            Glibc.close(fd)
        }
    }

    private func enter() throws(IPCError) {
        let ok = state.withLock { s -> Bool in
            if s.closed { return false }
            s.users += 1
            return true
        }
        if !ok { throw IPCError(.alreadyClosed, "the connection is closed") }
    }

    private func leave() {
        let release = state.withLock { s -> UInt64? in
            s.users -= 1
            guard s.closed && s.users == 0 && !s.released else { return nil }
            s.released = true
            return s.token
        }
        if let token = release { releaseDescriptor(token) }
    }

    private func releaseDescriptor(_ token: UInt64) {
        if token != 0 { Poller.shared.unregister(fd: fd, token: token) }
        Glibc.close(fd)
    }

    package func read(into buffer: UnsafeMutableRawBufferPointer) throws(IPCError) -> ReadOutcome {
        guard buffer.count > 0 else { return .wouldBlock }
        try enter()
        defer { leave() }
        guard let n = try nonBlockingCall("reading from the socket", { Glibc.read(fd, buffer.baseAddress, buffer.count) }) else {
            return .wouldBlock
        }
        return n == 0 ? .endOfStream : .bytes(n)
    }

    package func write(_ bytes: UnsafeRawBufferPointer) throws(IPCError) -> Int {
        guard bytes.count > 0 else { return 0 }
        try enter()
        defer { leave() }
        return try nonBlockingCall("writing to the socket", { Glibc.send(fd, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL)) }) ?? 0
    }

    package func start(handler: any ByteStreamHandler) {
        let token = Poller.shared.register(fd: fd) { [weak self] events in self?.deliver(events) }
        state.withLock { s in
            s.token = token
            s.handler = handler
        }
    }

    package func arm(read: Bool, write: Bool) {
        var wanted: UInt32 = 0
        if read { wanted |= UInt32(CIPC_EV_READ) }
        if write { wanted |= UInt32(CIPC_EV_WRITE) }
        let armWith = state.withLock { s -> (UInt32, UInt64)? in
            guard !s.closed, s.token != 0 else { return nil }
            s.interest |= wanted
            return (s.interest, s.token)
        }
        if let (events, token) = armWith { Poller.shared.arm(fd: fd, token: token, events: events) }
    }

    private func deliver(_ events: UInt32) {
        let failed = events & UInt32(CIPC_EV_HUP | CIPC_EV_ERROR) != 0
        let fired = state.withLock { s -> (UInt32, UInt32, (any ByteStreamHandler)?) in
            let fired = failed ? s.interest : (s.interest & events)
            s.interest &= ~fired
            return (fired, s.interest, s.handler)
        }
        let (got, remaining, handler) = fired
        if remaining != 0 {
            let token = state.withLock { $0.token }
            Poller.shared.arm(fd: fd, token: token, events: remaining)
        }
        guard got != 0, let handler else { return }
        handler.streamReady(readable: got & UInt32(CIPC_EV_READ) != 0, writable: got & UInt32(CIPC_EV_WRITE) != 0)
    }

    package func requestFlush() {
        guard let handler = state.withLock({ $0.closed ? nil : $0.handler }) else { return }
        Poller.shared.requestFlush(handler)
    }

    package func shutdownWrite() {
        guard (try? enter()) != nil else { return }
        defer { leave() }
        _ = Glibc.shutdown(fd, Int32(SHUT_WR))
    }

    package func close() {
        let release = state.withLock { s -> UInt64? in
            if s.closed { return nil }
            s.closed = true
            s.handler = nil
            guard s.users == 0 else { return nil }
            s.released = true
            return s.token
        }
        if let token = release { releaseDescriptor(token) }
    }
}
