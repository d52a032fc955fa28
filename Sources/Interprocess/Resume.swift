import InterprocessCore
import InterprocessPlatform
import InterprocessSockets
import Synchronization

/// A listener's resumable connections by session, so that a client that connects again to continue one
/// (``ChannelOptions/resume``) finds it. Entries are weak: a connection that is gone is not kept.
final class SessionTable: Sendable {
    private final class Entry: Sendable {
        weak let core: ConnectionCore?
        init(_ core: ConnectionCore) { self.core = core }
    }
    private let entries = Lock<[[UInt8]: Entry]>([:])

    func register(_ session: [UInt8], _ core: ConnectionCore) {
        entries.withLock { table in
            // Entries of connections gone are dropped as new ones come, so the table stays as large as the
            // connections alive.
            if table.count >= 64, table.count.isPowerOf2 {
                table = table.filter { $0.value.core != nil }
            }
            table[session] = Entry(core)
        }
    }

    func find(_ session: [UInt8]) -> ConnectionCore? {
        entries.withLock { $0[session]?.core }
    }
}

extension Int {
    fileprivate var isPowerOf2: Bool { self > 0 && self & (self - 1) == 0 }
}

/// Finds a new stream for a resumable connection whose stream broke. The dialing side connects again (with
/// jittered exponential backoff, until the policy's deadline); the listening side waits for the client to come
/// back (``SessionTable``) and gives up at the deadline.
final class Resumer: Sendable {
    private let core = Lock<WeakCore>(WeakCore())
    private let running = Atomic<Bool>(false)
    private let policy: ResumePolicy
    /// The dialing side: how to connect again (nil: the listening side, which waits).
    private let dial: (@Sendable () async throws(IPCError) -> SocketStream)?
    private let handshakeTimeout: Duration

    private struct WeakCore { weak var core: ConnectionCore? }

    init(policy: ResumePolicy, handshakeTimeout: Duration, dial: (@Sendable () async throws(IPCError) -> SocketStream)?) {
        self.policy = policy
        self.handshakeTimeout = handshakeTimeout
        self.dial = dial
    }

    func attach(_ core: ConnectionCore) {
        self.core.withLock { $0.core = core }
    }

    private var connection: ConnectionCore? { core.withLock { $0.core } }

    /// The connection's stream broke (``ConnectionCore/Configuration/onBreak``).
    func broke() {
        guard !running.exchange(true, ordering: .acquiringAndReleasing) else { return }
        Task { await self.run() }
    }

    private func run() async {
        if dial != nil {
            await reconnect(until: .now + policy.deadline)
        } else {
            await awaitClient()
        }
        running.store(false, ordering: .releasing)
        // A break after the loop ended and before the flag fell found it set: look again.
        if connection?.isBroken == true { broke() }
    }

    /// The listening side: gives up once the connection went a whole deadline without a stream since a break.
    private func awaitClient() async {
        while let (number, at, broken) = connection?.lastBreak, broken {
            let nanos = Double(at) + Double(policy.deadline.components.seconds) * 1e9 + Double(policy.deadline.components.attoseconds) / 1e9
            let wait = nanos - Double(Platform.monotonicNanoseconds())
            if wait > 0 { try? await Task.sleep(for: .nanoseconds(Int64(wait))) }
            guard let now = connection?.lastBreak, now.broken else { return }
            if now.number == number {
                giveUp()
                return
            }
        }
    }

    private func giveUp() {
        connection?.giveUpResuming(IPCError(.peerClosed, "the connection broke and was not resumed within \(policy.deadline) (ChannelOptions.resume); the peer is gone or unreachable"))
    }

    private func reconnect(until deadline: ContinuousClock.Instant) async {
        guard let dial else { return }
        var backoff = policy.firstBackoff
        while let core = connection, core.isBroken {
            guard ContinuousClock.now < deadline else {
                giveUp()
                return
            }
            let attemptEnd = min(deadline, .now + handshakeTimeout)
            if let stream = try? await withDeadline(attemptEnd, { () async throws(IPCError) in try await dial() }) {
                do {
                    try await core.continueOn(stream, peerReceived: nil)
                    let continued = try await withDeadline(attemptEnd) { () async throws(IPCError) in try await core.waitUntilContinued() }
                    if continued { return }
                } catch where error.code == .timeout {
                    // The peer did not answer in time: that stream is dropped, and another is tried.
                    core.abandonStream()
                } catch {
                    // The connection failed (the listener does not know it, or it was closed): nothing to resume.
                    return
                }
            }
            let pause = Double(backoff.components.seconds) + Double(backoff.components.attoseconds) / 1e18
            try? await Task.sleep(for: .seconds(pause * Double.random(in: 0.5...1)))
            backoff = min(backoff * 2, policy.maxBackoff)
        }
    }
}
