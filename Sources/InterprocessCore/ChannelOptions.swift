import CoreMetrics
import Logging

/// How a channel behaves. The defaults suit most uses; every field can be changed.
public struct ChannelOptions: Sendable {
    /// How many messages this side buffers for the peer before the peer's `send` suspends: Go's channel
    /// capacity, enforced across the process boundary by credits. 0 makes every send a rendezvous: `send`
    /// returns once the receiving application has taken the value. Memory held per connection is at most
    /// `capacity` messages (each at most ``maxFrameSize`` bytes), and about the sending side's
    /// ``maxBytesInFlight`` when messages are large.
    ///
    /// Default 1024 (ZeroMQ's default high-water mark is 1000): the byte limit keeps large messages to a few
    /// in flight, so a deep window costs memory only for small messages (1024 x 64 B is 64 KiB), where it lets
    /// each write and each read carry more of them (credits are returned every quarter window).
    public var capacity: Int = 1024
    /// The most bytes this side's sender keeps in flight: sent, and not yet taken by the receiving application,
    /// each message counted as its payload plus 16 bytes of framing. A send waits while that much is outstanding
    /// (one message of any size may always be in flight). With ``capacity`` it bounds the memory a stream of large messages occupies in both processes:
    /// a few messages' worth rather than a window of them, which also keeps those bytes warm in the cache.
    /// Default 2 MiB (two or three large messages in flight, so that writing one overlaps reading the one
    /// before); at least 512 KiB.
    public var maxBytesInFlight: Int = Wire.defaultMaxBytesInFlight
    /// The largest message this side accepts (and the largest line in lines mode). Default 16 MiB.
    public var maxFrameSize: Int = 16 << 20
    /// How long the handshake may take before the connection is dropped with a timeout error.
    public var handshakeTimeout: Duration = .seconds(10)
    /// How long closing waits for the peer to acknowledge the end of the stream.
    public var closeTimeout: Duration = .seconds(10)
    /// A peer that stops answering without closing the connection (its process stopped or hung, its host lost
    /// power, the network between broke) is declared gone once nothing at all arrived from it for this long, and
    /// the connection fails with `peerClosed`. Every transport checks it with heartbeats: a side that heard
    /// nothing for ``heartbeatInterval`` sends a ping, which the peer answers at once (its I/O thread reads a
    /// quiet connection), so a quiet but healthy connection costs a ping and a pong per interval and a busy one
    /// nothing. Over TCP the kernel probes too (keepalive, and a limit on how long sent data may stay
    /// unacknowledged). Both sides check on their own: each side's timeout should exceed both sides' intervals.
    /// Default 60 seconds; at least 1 second; nil turns the check off (a silent peer then waits forever; over
    /// TCP the kernel's defaults apply: no keepalive, about 15 minutes of retransmission). A peer process that
    /// exits or is killed is noticed at once either way: its end of the connection closes. A process held at a
    /// debugger's breakpoint is a stopped process: raise the timeout, or set nil, while debugging.
    public var deadPeerTimeout: Duration? = .seconds(60)
    /// How long a side hears nothing before it pings the peer (see ``deadPeerTimeout``). Default nil: a quarter
    /// of ``deadPeerTimeout``. At least 100 milliseconds and at most half of ``deadPeerTimeout``.
    public var heartbeatInterval: Duration?
    /// Unix sockets and TCP: resume a connection whose stream breaks (a network cut, a proxy or load balancer
    /// that drops it, a peer's host that stalls past ``deadPeerTimeout``) instead of failing it. The dialing side
    /// connects again (backing off as the policy says) and the two sides continue where they were: each sends
    /// again what the other did not receive, so every message is delivered exactly once and in order, and the
    /// application sees only a delay. Both sides must offer it (a listener offers it to every client when its
    /// options set it; a client without it is served as before). A connection that finds no new stream within the
    /// policy's deadline fails with `peerClosed` and the count of messages in doubt; so does one whose listener
    /// restarted meanwhile (it does not know the connection). Default nil: a broken stream fails the connection at
    /// once, which is also how a dead peer process is noticed at once (with resume, a dialer whose listener died
    /// keeps trying until the deadline). Shared memory has no stream to break and does not resume; nor does the
    /// socket pair of `IPC.spawn` (there is no endpoint to dial again), nor lines mode (no sequence numbers).
    public var resume: ResumePolicy?
    /// Unix sockets and TCP: how long a peer may stop sending in the middle of a frame (a message, or any other
    /// frame, partly received) before the connection fails with `timeout`. A peer that stops mid-frame is stuck or
    /// hostile; without this bound every receive on the connection would wait for the rest forever. Progress
    /// restarts the clock, so a large message over a slow link is fine. Default 30 seconds; at least 1 second;
    /// nil waits forever.
    public var stalledFrameTimeout: Duration? = .seconds(30)
    /// How long a waiting task polls for input before it sleeps (microseconds). Polling avoids the cost of
    /// waking a sleeping thread when the peer answers quickly; it is bounded, so an idle channel costs no CPU.
    /// 0 disables it; at most 10,000,000 (10 s).
    ///
    /// Busy-poll mode, for processes given cores of their own: a large value (for example 1,000,000, one
    /// second) keeps a waiting task polling instead of sleeping, which removes the wake-up cost from nearly every
    /// message but burns a CPU for as long as it waits (up to that bound each time).
    public var spinMicroseconds: Int = 50
    /// For `shm:` endpoints and `IPC.spawn(sharedMemory: true)`: the size of each direction's ring in bytes, a
    /// power of two from 4 KiB to 1 GiB (default 1 MiB). The listening (or spawning) side decides; the other side
    /// uses what it is given. Messages larger than the ring stream through it in pieces.
    public var sharedMemoryRingSize: Int = 1 << 20
    /// Listeners only: the most connections a listener keeps open at once, counting handshakes in progress. A
    /// client beyond it is refused during its handshake with an error that says so (`peerError` on its side),
    /// and the listener logs it. Each connection costs the process one descriptor (three over shared memory), and
    /// a process that runs out of descriptors cannot even refuse cleanly, so the default, nil, derives the limit
    /// from the process's descriptor limit when the listener starts: a third of what is left above 128 (kept for
    /// everything else), and at least 16. With a soft `RLIMIT_NOFILE` of 1024 that is 298.
    public var maxConnections: Int?
    /// How long a listener's graceful shutdown (`Listener.run()`, when its service group shuts down) lets
    /// the connections it accepted finish before it closes them: their peers close, or their owners close them.
    /// Default 10 seconds; at least 0 (close at once).
    public var drainTimeout: Duration = .seconds(10)
    /// Which peers a Unix-socket listener or client accepts, checked with the kernel's peer credentials.
    public var peerCheck: PeerCheck = .sameUser
    /// Where connection-level events are logged, each line with the endpoint, the peer (`pid 4242 uid 1000` or an
    /// address) and a connection number as metadata: a connection established or closed (debug); a peer that
    /// breaks the protocol, stops answering, or is refused (warning); a listener that cannot accept (warning, or
    /// error when it stops). Nothing is logged per message. Default: no output; pass a logger of your own to see
    /// them.
    public var logger: Logger = Logger(label: "interprocess", factory: { _ in SwiftLogNoOpLogHandler() })
    /// Where connections and listeners report their metrics (swift-metrics): messages and bytes delivered each way,
    /// credit stalls and their time, dead peers, failures by code; per listener, the connections open and those
    /// refused by reason. Messages and bytes are counted per batch (each credit), never per message. Default nil:
    /// the process's `MetricsSystem` (no output until the application bootstraps a backend).
    public var metricsFactory: (any MetricsFactory)?
    /// Whether each message carries the sending task's `ServiceContext` (swift-distributed-tracing) to the
    /// receiving process, so that a trace crosses the process boundary: the process's instrument injects it into a
    /// small block at the start of the message (with a W3C propagator, `traceparent` and `tracestate`), and
    /// ``Receiver/receiveWithContext()`` hands it out with the value. In effect only when both sides set it
    /// (their handshakes say so); otherwise nothing is added to any message. A peer of a release without tracing
    /// refuses a handshake that asks for it. Not for lines mode or in-process channels. Default false.
    public var tracing = false

    /// The defaults described with each option.
    public init() {}

    /// The heartbeats' interval and timeout, nil when they are off.
    package var heartbeats: (interval: Duration, timeout: Duration)? {
        deadPeerTimeout.map { timeout in (heartbeatInterval ?? timeout / 4, timeout) }
    }

    /// A shared-memory ring is a power of two from 4 KiB to 1 GiB (checked on both sides of the hand-over).
    package static func isValid(sharedMemoryRingSize size: Int) -> Bool {
        size >= 4096 && size <= 1 << 30 && size & (size - 1) == 0
    }

    package func validate() throws(IPCError) {
        guard capacity >= 0 && capacity <= Int(UInt32.max) else {
            throw IPCError(.invalidEndpoint, "capacity must be between 0 and \(UInt32.max), not \(capacity)")
        }
        guard maxBytesInFlight >= Wire.minMaxBytesInFlight else {
            throw IPCError(.invalidEndpoint, "maxBytesInFlight must be at least \(Wire.minMaxBytesInFlight) bytes, not \(maxBytesInFlight)")
        }
        guard spinMicroseconds >= 0 && spinMicroseconds <= 10_000_000 else {
            throw IPCError(.invalidEndpoint, "spinMicroseconds must be between 0 and 10,000,000, not \(spinMicroseconds)")
        }
        guard Self.isValid(sharedMemoryRingSize: sharedMemoryRingSize) else {
            throw IPCError(.invalidEndpoint, "sharedMemoryRingSize must be a power of two from 4096 to 1 GiB, not \(sharedMemoryRingSize)")
        }
        if let deadPeerTimeout, deadPeerTimeout < .seconds(1) || deadPeerTimeout > .seconds(86_400) {
            throw IPCError(.invalidEndpoint, "deadPeerTimeout must be between 1 second and a day (or nil), not \(deadPeerTimeout)")
        }
        if let heartbeatInterval, let deadPeerTimeout, heartbeatInterval < .milliseconds(100) || heartbeatInterval > deadPeerTimeout / 2 {
            throw IPCError(.invalidEndpoint, "heartbeatInterval must be between 100 milliseconds and half of deadPeerTimeout (\(deadPeerTimeout)), not \(heartbeatInterval)")
        }
        if let resume, resume.deadline <= .zero || resume.firstBackoff <= .zero || resume.maxBackoff < resume.firstBackoff {
            throw IPCError(.invalidEndpoint, "a ResumePolicy needs a positive deadline and first backoff, and a maxBackoff no shorter than the first, not \(resume)")
        }
        if let stalledFrameTimeout, stalledFrameTimeout < .seconds(1) {
            throw IPCError(.invalidEndpoint, "stalledFrameTimeout must be at least 1 second (or nil), not \(stalledFrameTimeout)")
        }
        if drainTimeout < .zero {
            throw IPCError(.invalidEndpoint, "drainTimeout must be at least 0, not \(drainTimeout)")
        }
        if let maxConnections, maxConnections < 1 {
            throw IPCError(.invalidEndpoint, "maxConnections must be at least 1 (or nil for the default), not \(maxConnections)")
        }
        guard maxFrameSize > 0 && maxFrameSize <= Int(UInt32.max) - Wire.dataPrefixSize else {
            throw IPCError(.invalidEndpoint, "maxFrameSize must be between 1 and \(Int(UInt32.max) - Wire.dataPrefixSize), not \(maxFrameSize)")
        }
    }
}

/// How a resumable connection (``ChannelOptions/resume``) looks for a new stream after its stream breaks.
public struct ResumePolicy: Sendable, Hashable {
    /// How long, from the break, the connection may be without a stream before it fails. Default 30 seconds.
    public var deadline: Duration
    /// The dialing side's first pause between attempts to connect again, doubled after each failed attempt up to
    /// ``maxBackoff``, each pause drawn at random between half and all of it (so that many clients of one
    /// listener do not come back at the same instant). Default 10 milliseconds.
    public var firstBackoff: Duration
    /// The longest pause between attempts. Default 1 second.
    public var maxBackoff: Duration

    /// A policy with the given deadline and backoff (see each property).
    public init(deadline: Duration = .seconds(30), firstBackoff: Duration = .milliseconds(10), maxBackoff: Duration = .seconds(1)) {
        self.deadline = deadline
        self.firstBackoff = firstBackoff
        self.maxBackoff = maxBackoff
    }
}

/// Which peers may connect over a Unix socket.
public enum PeerCheck: Sendable, Hashable {
    /// Only processes of the same user id (the default).
    case sameUser
    /// Any of these user ids.
    case userIDs(Set<UInt32>)
    /// Anyone who can open the socket file (its mode is 0600, so by default that is still only the owner).
    case anyone
}
