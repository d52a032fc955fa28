#if canImport(Glibc)
import Glibc
#endif
import CInterprocessShim
import Foundation
import InterprocessSockets

/// A child process started by ``IPC/spawn(_:arguments:sharedMemory:sending:receiving:options:)``.
public struct SpawnedProcess: Sendable {
    /// How a child process ended.
    public enum Termination: Sendable, Equatable {
        /// It exited with this status.
        case exited(Int32)
        /// A signal with this number ended it.
        case signalled(Int32)
    }

    /// The child's process id.
    public let pid: Int32

    package init(pid: Int32) { self.pid = pid }

    /// Waits for the child to end (on a thread of its own, so no task thread is blocked).
    public func wait() async -> Termination {
        let pid = self.pid
        return await withCheckedContinuation { continuation in
            let thread = Thread {
                var code: Int32 = 0
                let kind = cipc_wait(pid, &code)
                continuation.resume(returning: kind == 0 ? .exited(code) : .signalled(code))
            }
            thread.start()
        }
    }

    /// Sends `signal` (default `SIGTERM`) to the child.
    public func kill(signal: Int32 = SIGTERM) {
        _ = Glibc.kill(pid, signal)
    }
}

extension IPC {
    /// The environment variable that tells a child started by ``spawn(_:arguments:sharedMemory:sending:receiving:options:)``
    /// where its parent is (`fd:3`, or `shm-fd:3` for shared memory).
    public static let parentVariable = "INTERPROCESS_PARENT"

    /// Starts `executable` as a child process connected to this one by a channel in each direction: Python's
    /// `multiprocessing.Pipe` plus `Process`, typed. The child calls ``connectToParent(sending:receiving:options:)``.
    ///
    /// The connection is a socket pair the child inherits (as descriptor 3, named in the environment variable
    /// ``parentVariable``), so no name is ever created and only the child can connect. With `sharedMemory`, the
    /// bytes then travel through shared memory handed over that socket pair (see `docs/shared-memory.md`). If the
    /// child dies, this side's operations fail with `peerClosed`.
    public static func spawn<Out: MessageCodec, In: MessageCodec>(
        _ executable: String, arguments: [String] = [], sharedMemory: Bool = false,
        sending: Out, receiving: In, options: ChannelOptions = ChannelOptions()
    ) async throws(IPCError) -> (connection: Connection<Out.Value, In.Value>, child: SpawnedProcess) {
        try options.validate()
        var fds: [Int32] = [-1, -1]
        guard cipc_socketpair(&fds) == 0 else {
            throw IPCError(.systemCallFailed, "creating a socket pair for the child failed", errno: errno)
        }
        let (mine, theirs) = (fds[0], fds[1])
        let value = sharedMemory ? "shm-fd:3" : "fd:3"
        var environment = [String]()
        if var entry = cipc_environment() {
            while let c = entry.pointee {
                let text = String(cString: c)
                if !text.hasPrefix(parentVariable + "=") { environment.append(text) }
                entry += 1
            }
        }
        environment.append("\(parentVariable)=\(value)")
        let argv = [executable] + arguments
        let cArguments: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
        let cEnvironment: [UnsafeMutablePointer<CChar>?] = environment.map { strdup($0) } + [nil]
        let pid = cipc_spawn_env(executable, cArguments, cEnvironment, theirs)
        let spawnError = errno
        for p in cArguments + cEnvironment { free(p) }
        // Only the child may hold its end: then its exit (or crash) is this side's end of stream.
        Glibc.close(theirs)
        guard pid > 0 else {
            Glibc.close(mine)
            throw IPCError(.systemCallFailed, "cannot start \(executable): \(String(cString: strerror(spawnError)))", errno: spawnError)
        }
        let child = SpawnedProcess(pid: pid)
        guard cipc_set_nonblocking_cloexec(mine) == 0 else {
            Glibc.close(mine)
            child.kill(signal: SIGKILL)
            throw IPCError(.systemCallFailed, "preparing the socket pair failed", errno: errno)
        }
        let socket = SocketListener.pairEnd(mine, peer: "child pid \(pid)")
        do {
            let connection = try await establish(
                socket, endpoint: sharedMemory ? .sharedMemory(name: "child") : .unix(path: "(socket pair)"), listening: true,
                sending: sending, receiving: receiving, options: options, role: "connecting to child \(pid)")!
            return (connection, child)
        } catch {
            child.kill(signal: SIGKILL)
            _ = await child.wait()
            throw error
        }
    }

    /// In a child started by ``spawn(_:arguments:sharedMemory:sending:receiving:options:)``: connects to the parent.
    /// Throws `invalidEndpoint` when this process was not started that way.
    public static func connectToParent<Out: MessageCodec, In: MessageCodec>(
        sending: Out, receiving: In, options: ChannelOptions = ChannelOptions()
    ) async throws(IPCError) -> Connection<Out.Value, In.Value> {
        try options.validate()
        guard let raw = getenv(parentVariable) else {
            throw IPCError(.invalidEndpoint, "\(parentVariable) is not set: this process was not started by IPC.spawn")
        }
        let value = String(cString: raw)
        let sharedMemory: Bool
        switch value {
        case "fd:3": sharedMemory = false
        case "shm-fd:3": sharedMemory = true
        default: throw IPCError(.invalidEndpoint, "\(parentVariable)=\(value) is not fd:3 or shm-fd:3")
        }
        // Taken once: a second call, or a grandchild, must not reuse the descriptor.
        unsetenv(parentVariable)
        guard cipc_set_nonblocking_cloexec(3) == 0 else {
            throw IPCError(.invalidEndpoint, "descriptor 3 from the parent is not open (errno \(errno))", errno: errno)
        }
        let socket = SocketListener.pairEnd(3, peer: "parent pid \(getppid())")
        return try await establish(
            socket, endpoint: sharedMemory ? .sharedMemory(name: "parent") : .unix(path: "(socket pair)"), listening: false,
            sending: sending, receiving: receiving, options: options, role: "connecting to the parent")!
    }
}
