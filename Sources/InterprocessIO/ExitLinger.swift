#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import InterprocessCore
import InterprocessPlatform
import Synchronization

/// When the process exits (by `exit` or returning from `main`), the connections still open deliver what they
/// sent and the peer has not acknowledged: a process may exit right after its last `send`, and those messages
/// must still arrive. All connections together linger at most ``limitNanoseconds``. A process that is killed or
/// crashes cannot do this; its peer is told `peerClosed` and, over TCP, may lose what it had not read yet.
package enum ExitLinger {
    /// The longest an exiting process waits for its peers.
    package static let limitNanoseconds: UInt64 = 2_000_000_000

    private final class Entry: Sendable {
        weak let core: ConnectionCore?
        init(_ core: ConnectionCore) { self.core = core }
    }

    private static let entries = Lock<(list: [Entry], registered: Bool, pruneAt: Int)>(([], false, 64))

    /// Watches `core` until the process exits (a weak reference: a connection let go is not kept).
    package static func watch(_ core: ConnectionCore) {
        let first = entries.withLock { e -> Bool in
            if e.list.count >= e.pruneAt {
                e.list.removeAll { $0.core == nil }
                e.pruneAt = max(64, e.list.count * 2)
            }
            e.list.append(Entry(core))
            defer { e.registered = true }
            return !e.registered
        }
        if first { atexit { ExitLinger.run() } }
    }

    private static func run() {
        let cores = entries.withLock { e in e.list.compactMap(\.core) }
        let deadline = Platform.monotonicNanoseconds() + limitNanoseconds
        for core in cores {
            core.lingerAtExit(until: deadline) { usleep(1000) }
        }
    }
}
