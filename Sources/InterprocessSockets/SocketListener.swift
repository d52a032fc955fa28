#if canImport(Glibc)
import Glibc
#endif
import CInterprocessShim
import InterprocessCore
import InterprocessIO
import InterprocessPlatform
import Synchronization

/// A socket just accepted or connected, with what the kernel says about the peer.
package struct ConnectedSocket: Sendable {
    package var stream: SocketStream
    /// The peer's user id, for Unix sockets.
    package var peerUID: UInt32?
}

/// Resumes tasks waiting for a descriptor to become ready, from the I/O thread.
final class ReadinessWaiters: Sendable {
    private let waiters = Lock<(list: [CheckedContinuation<Bool, Never>], closed: Bool)>(([], false))

    /// Returns false if closed.
    func wait(arm: () -> Void) async -> Bool {
        await withCheckedContinuation { c in
            let closed = waiters.withLock { w -> Bool in
                if w.closed { return true }
                w.list.append(c)
                return false
            }
            if closed { c.resume(returning: false) } else { arm() }
        }
    }

    func fire() {
        let list = waiters.withLock { w in
            defer { w.list = [] }
            return w.list
        }
        for c in list { c.resume(returning: true) }
    }

    func close() {
        let list = waiters.withLock { w in
            w.closed = true
            defer { w.list = [] }
            return w.list
        }
        for c in list { c.resume(returning: false) }
    }
}

/// A listening Unix-domain or TCP socket.
///
/// Unix socket files are created mode 0600 (before `listen`, so there is no moment when others could connect).
/// A socket file left by a dead process is replaced; one that a live process is listening on is not touched.
/// The file is removed when the listener closes, if it is still the one this listener created.
package final class SocketListener: Sendable {
    /// The endpoint actually bound (with the real port when port 0 was asked for).
    package let endpoint: Endpoint
    private let fd: Int32
    private let token: Lock<UInt64>
    private let waiters = ReadinessWaiters()
    private let unixFile: (path: String, device: UInt64, inode: UInt64)?
    private let isClosed = Lock(false)

    package init(endpoint requested: Endpoint, backlog: Int32 = 128) throws(IPCError) {
        let address = try SocketAddress(requested)
        let fd = try address.makeSocket()
        var ok = false
        defer { if !ok { Glibc.close(fd) } }
        if case .unix(let path) = requested {
            try Self.removeStaleSocket(path)
        } else if case .sharedMemory = requested {
            // An abstract name: no file, nothing stale; a live listener makes bind fail with EADDRINUSE.
        } else {
            var one: Int32 = 1
            _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        }
        let rc = address.withSockAddr { Glibc.bind(fd, $0, $1) }
        if rc != 0 {
            let err = errno
            if err == EADDRINUSE, case .sharedMemory(let name) = requested {
                throw IPCError(.addressInUse, "another process is listening on shm:\(name); stop it or choose another name", errno: err)
            }
            throw errnoError("binding \(requested)", err)
        }
        if case .unix(let path) = requested {
            guard chmod(path, 0o600) == 0 else {
                let err = errno
                unlink(path)
                throw errnoError("setting mode 0600 on \(path)", err)
            }
            var info = stat()
            _ = stat(path, &info)
            unixFile = (path, UInt64(info.st_dev), UInt64(info.st_ino))
            endpoint = requested
        } else if case .sharedMemory = requested {
            unixFile = nil
            endpoint = requested
        } else {
            unixFile = nil
            if let (host, port) = SocketAddress.describe(fd: fd, peer: false) {
                endpoint = .tcp(host: host, port: port)
            } else {
                endpoint = requested
            }
        }
        _ = try systemCall("listening on \(requested)") { Glibc.listen(fd, backlog) }
        self.fd = fd
        let waiters = self.waiters
        token = Lock(Poller.shared.register(fd: fd) { _ in waiters.fire() })
        ok = true
    }

    /// Replaces a socket file nobody listens on; refuses to touch a live socket or a file that is not a socket.
    private static func removeStaleSocket(_ path: String) throws(IPCError) {
        var info = stat()
        guard lstat(path, &info) == 0 else { return }
        guard (info.st_mode & S_IFMT) == S_IFSOCK else {
            throw IPCError(.addressInUse, "\(path) exists and is not a socket; remove it or choose another path")
        }
        let probe = cipc_socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard probe >= 0 else { throw errnoError("creating a socket", errno) }
        defer { Glibc.close(probe) }
        let address = try SocketAddress.unix(path: path)
        let rc = address.withSockAddr { Glibc.connect(probe, $0, $1) }
        if rc == 0 {
            throw IPCError(.addressInUse, "another process is listening on \(path); stop it or choose another path")
        }
        let err = errno
        guard err == ECONNREFUSED else {
            throw errnoError("checking the existing socket \(path)", err)
        }
        unlink(path)
    }

    /// The next connection. Throws `alreadyClosed` once the listener is closed.
    package func accept() async throws(IPCError) -> ConnectedSocket {
        while true {
            if isClosed.withLock({ $0 }) { throw IPCError(.alreadyClosed, "the listener is closed") }
            let client: Int32?
            do throws(IPCError) {
                client = try nonBlockingCall("accepting a connection", { cipc_accept_nonblocking(fd) })
            } catch where error.errno.map(Self.connectionFailedBeforeAccept) == true {
                // That connection is gone; the listener is fine.
                continue
            }
            if let client { return try Self.describe(client, unix: endpoint.isLocal) }
            let token = self.token.withLock { $0 }
            let open = await waiters.wait { Poller.shared.arm(fd: fd, token: token, events: UInt32(CIPC_EV_READ)) }
            if !open { throw IPCError(.alreadyClosed, "the listener is closed") }
        }
    }

    /// Errors of `accept` that concern the one connection being accepted (reset or failed before it was taken),
    /// not the listener: accepting goes on.
    private static func connectionFailedBeforeAccept(_ err: Int32) -> Bool {
        [ECONNABORTED, EPROTO, ENETDOWN, ENOPROTOOPT, EHOSTDOWN, ENONET, EHOSTUNREACH, EOPNOTSUPP, ENETUNREACH].contains(err)
    }

    /// Errors of `accept` that say the process or system is out of a resource (descriptors, buffers, memory) for
    /// now: the pending connection stays in the backlog, and accepting again later can succeed.
    package static func isExhaustion(_ error: IPCError) -> Bool {
        guard let err = error.errno else { return false }
        return [EMFILE, ENFILE, ENOBUFS, ENOMEM].contains(err)
    }

    /// One end of a Unix socket pair (already non-blocking), with the peer's credentials.
    package static func pairEnd(_ fd: Int32, peer: String) -> ConnectedSocket {
        enlargeSendBuffer(fd)
        var pid: pid_t = 0
        var uid: uid_t = 0
        var gid: gid_t = 0
        let known = cipc_peer_credentials(fd, &pid, &uid, &gid) == 0
        return ConnectedSocket(stream: SocketStream(fd: fd, peerDescription: peer), peerUID: known ? uid : nil)
    }

    /// A Unix socket's send buffer (which also bounds what the peer's receive queue holds) is raised from the
    /// kernel's default of about 200 KiB to 1 MiB: a large message then needs a fifth as many rounds of "write
    /// until the kernel is full, wait for the I/O thread to say it drained" (decision record 0010). TCP keeps the
    /// kernel's autotuning.
    private static func enlargeSendBuffer(_ fd: Int32) {
        var size: Int32 = 1 << 20
        _ = setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
    }

    static func describe(_ fd: Int32, unix: Bool) throws(IPCError) -> ConnectedSocket {
        if unix {
            enlargeSendBuffer(fd)
            var pid: pid_t = 0
            var uid: uid_t = 0
            var gid: gid_t = 0
            if cipc_peer_credentials(fd, &pid, &uid, &gid) == 0 {
                return ConnectedSocket(stream: SocketStream(fd: fd, peerDescription: "pid \(pid) uid \(uid)"), peerUID: uid)
            }
            return ConnectedSocket(stream: SocketStream(fd: fd, peerDescription: "unknown unix peer"), peerUID: nil)
        }
        var one: Int32 = 1
        _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        let peer = SocketAddress.describe(fd: fd, peer: true).map { "\($0.host):\($0.port)" } ?? "unknown tcp peer"
        return ConnectedSocket(stream: SocketStream(fd: fd, peerDescription: peer), peerUID: nil)
    }

    package func close() {
        let first = isClosed.withLock { closed -> Bool in
            defer { closed = true }
            return !closed
        }
        guard first else { return }
        Poller.shared.unregister(fd: fd, token: token.withLock { $0 })
        waiters.close()
        Glibc.close(fd)
        if let file = unixFile {
            var info = stat()
            if lstat(file.path, &info) == 0 && UInt64(info.st_dev) == file.device && UInt64(info.st_ino) == file.inode {
                unlink(file.path)
            }
        }
    }

    deinit { close() }
}

/// Dials an endpoint.
package enum SocketConnector {
    package static func connect(to endpoint: Endpoint) async throws(IPCError) -> ConnectedSocket {
        let address = try SocketAddress(endpoint)
        let fd = try address.makeSocket()
        var ok = false
        defer { if !ok { Glibc.close(fd) } }
        var rc = address.withSockAddr { Glibc.connect(fd, $0, $1) }
        var err = rc == 0 ? 0 : errno
        while err == EINTR {
            rc = address.withSockAddr { Glibc.connect(fd, $0, $1) }
            err = rc == 0 ? 0 : errno
        }
        if err == EINPROGRESS || err == EAGAIN {
            // Wait until the socket is writable, then read the outcome.
            let waiters = ReadinessWaiters()
            let token = Poller.shared.register(fd: fd) { _ in waiters.fire() }
            _ = await waiters.wait { Poller.shared.arm(fd: fd, token: token, events: UInt32(CIPC_EV_WRITE)) }
            Poller.shared.unregister(fd: fd, token: token)
            var soError: Int32 = 0
            var length = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &soError, &length)
            err = soError
        }
        if err != 0 {
            if err == EAGAIN {
                throw IPCError(.connectionRefused, "connecting to \(endpoint): the listener's backlog is full; try again", errno: err)
            }
            throw errnoError("connecting to \(endpoint)", err)
        }
        let connected: ConnectedSocket
        if endpoint.isLocal {
            connected = try SocketListener.describe(fd, unix: true)
        } else {
            connected = try SocketListener.describe(fd, unix: false)
        }
        ok = true
        return connected
    }
}

extension Endpoint {
    /// Carried by a Unix socket (a file, or the rendezvous of shared memory): the peer's uid is known.
    package var isLocal: Bool {
        switch self {
        case .unix, .sharedMemory: true
        case .tcp: false
        }
    }
}
