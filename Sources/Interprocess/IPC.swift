@_exported import InterprocessCore
import InterprocessIO
import InterprocessSharedMemory
import InterprocessSockets
import CoreMetrics
import Logging
import Synchronization

/// Entry points: dial or listen on an `Endpoint` and get typed `Sender`s and `Receiver`s.
///
/// ```swift
/// // process 1: listens and sends
/// let listener = try IPC.listen(on: "unix:/tmp/demo.sock", sending: .utf8)
/// let tx = try await listener.accept().sender
/// try await tx.send("Hello from process 1!")
/// try await tx.close()
///
/// // process 2: dials and receives
/// let rx = try await IPC.connect(to: "unix:/tmp/demo.sock", receiving: .utf8)
/// for try await message in rx { print(message) }
/// ```
///
/// Either side may listen and either may dial; the direction of the messages is independent of who dialled.
public enum IPC {
    /// Dials `endpoint` for a two-way connection.
    public static func connect<Out: MessageCodec, In: MessageCodec>(
        to endpoint: Endpoint, sending: Out, receiving: In, options: ChannelOptions = ChannelOptions()
    ) async throws(IPCError) -> Connection<Out.Value, In.Value> {
        try options.validate()
        let socket = try await SocketConnector.connect(to: endpoint)
        let resumable = if case .sharedMemory = endpoint { false } else { options.resume != nil }
        return try await establish(socket, endpoint: endpoint, listening: false, sending: sending, receiving: receiving, options: options, role: "connecting to \(endpoint)", resumable: resumable)!
    }

    /// Dials `endpoint` to send only.
    public static func connect<Out: MessageCodec>(
        to endpoint: Endpoint, sending: Out, options: ChannelOptions = ChannelOptions()
    ) async throws(IPCError) -> Sender<Out.Value> {
        try await connect(to: endpoint, sending: sending, receiving: NoMessages(), options: options).sender
    }

    /// Dials `endpoint` to receive only.
    public static func connect<In: MessageCodec>(
        to endpoint: Endpoint, receiving: In, options: ChannelOptions = ChannelOptions()
    ) async throws(IPCError) -> Receiver<In.Value> {
        try await connect(to: endpoint, sending: NoMessages(), receiving: receiving, options: options).receiver
    }

    /// Listens on `endpoint` for two-way connections.
    public static func listen<Out: MessageCodec, In: MessageCodec>(
        on endpoint: Endpoint, sending: Out, receiving: In, options: ChannelOptions = ChannelOptions()
    ) throws(IPCError) -> Listener<Out, In> {
        try options.validate()
        return Listener(socket: try SocketListener(endpoint: endpoint), sending: sending, receiving: receiving, options: options)
    }

    /// Listens on `endpoint` to send only.
    public static func listen<Out: MessageCodec>(
        on endpoint: Endpoint, sending: Out, options: ChannelOptions = ChannelOptions()
    ) throws(IPCError) -> Listener<Out, NoMessages> {
        try listen(on: endpoint, sending: sending, receiving: NoMessages(), options: options)
    }

    /// Listens on `endpoint` to receive only.
    public static func listen<In: MessageCodec>(
        on endpoint: Endpoint, receiving: In, options: ChannelOptions = ChannelOptions()
    ) throws(IPCError) -> Listener<NoMessages, In> {
        try listen(on: endpoint, sending: NoMessages(), receiving: receiving, options: options)
    }

    /// Checks the peer, runs the handshake (unless a side is in lines mode) and builds the channel ends.
    static func establish<Out: MessageCodec, In: MessageCodec>(
        _ socket: ConnectedSocket, endpoint: Endpoint, listening: Bool, sending: Out, receiving: In, options: ChannelOptions, role: String,
        refusal listenerRefusal: IPCError? = nil, onClose: (@Sendable () -> Void)? = nil,
        resumable resumeOffered: Bool = false, sessions: SessionTable? = nil, registry: ConnectionRegistry? = nil
    ) async throws(IPCError) -> Connection<Out.Value, In.Value>? {
        let lines = sending is LinesCodec || receiving is LinesCodec
        let sharedMemory = if case .sharedMemory = endpoint { true } else { false }
        let resumable = resumeOffered && !lines && !sharedMemory && options.resume != nil
        var local = Hello(
            capacity: UInt32(options.capacity), maxFrame: UInt32(options.maxFrameSize),
            sendCodec: sending.name, sendType: sending.name == "none" ? "none" : sending.typeName,
            receiveCodec: receiving.name, receiveType: receiving.name == "none" ? "none" : receiving.typeName,
            tracing: options.tracing && !lines)
        var configuration = ConnectionCore.Configuration(
            mode: lines ? .lines : .framed, local: local,
            hasSender: sending.name != "none", hasReceiver: receiving.name != "none",
            spinNanoseconds: UInt64(max(options.spinMicroseconds, 0)) * 1000,
            closeTimeout: options.closeTimeout, maxPayload: options.maxFrameSize, maxBytesInFlight: options.maxBytesInFlight)
        let registered = registry?.reserve()
        configuration.onClose = { @Sendable in
            onClose?()
            if let registered { registry?.remove(registered) }
        }
        // A listener answers the dialer's hello in the dialer's version (see ConnectionState.apply(hello:)).
        configuration.answersHello = listening && !sharedMemory
        var resumer: Resumer?
        if resumable, let policy = options.resume {
            // The dialer picks the session id at random; the listener learns it from the dialer's hello.
            var session = [UInt8](repeating: 0, count: Wire.sessionIDSize)
            if !listening {
                var random = SystemRandomNumberGenerator()
                repeat {
                    for i in session.indices { session[i] = random.next() }
                } while session == Wire.noSession
            }
            local.resume = Hello.Resume(session: session)
            configuration.local = local
            let tcpDeadPeer: Duration? = if case .tcp = endpoint { options.deadPeerTimeout } else { nil }
            let check = options.peerCheck
            var dial: (@Sendable () async throws(IPCError) -> SocketStream)?
            if !listening {
                dial = { () async throws(IPCError) -> SocketStream in try await redial(endpoint, check: check, tcpDeadPeer: tcpDeadPeer) }
            }
            let made = Resumer(policy: policy, handshakeTimeout: options.handshakeTimeout, dial: dial)
            configuration.onBreak = { made.broke() }
            resumer = made
        }
        configuration.stalledFrameTimeout = options.stalledFrameTimeout
        configuration.heartbeats = options.heartbeats
        var logger = options.logger
        logger[metadataKey: "endpoint"] = "\(endpoint)"
        logger[metadataKey: "peer"] = "\(socket.stream.peerDescription)"
        logger[metadataKey: "connection"] = "\(connectionNumbers.add(1, ordering: .relaxed).newValue)"
        configuration.logger = logger
        configuration.metrics = ConnectionMetrics(endpoint: "\(endpoint)", factory: options.metricsFactory ?? MetricsSystem.factory)
        let deadline = ContinuousClock.now + options.handshakeTimeout
        // The peer's uid (known for Unix sockets) is checked once, before anything else happens. Shared memory
        // is never handed to a peer whose uid is unknown.
        var refusal = listenerRefusal
        if refusal == nil, endpoint.isLocal, !(socket.peerUID.map(options.peerCheck.allows) ?? !sharedMemory) {
            refusal = IPCError(.permissionDenied, "\(role): the peer runs as uid \(socket.peerUID.map(String.init) ?? "unknown"), which this side does not accept (ChannelOptions.peerCheck)")
        }
        let stream: any ByteStream
        if sharedMemory {
            // A refused peer never gets the memory (nor an error frame: it has no ring to read one from).
            if let refusal {
                socket.stream.close()
                throw refusal
            }
            // The rendezvous socket's descriptor goes to the shared-memory transport, which owns it from now on.
            let peer = socket.stream.peerDescription
            let rendezvous = socket.stream.detachDescriptor()
            stream = listening
                ? try SharedMemorySetup.create(rendezvous: rendezvous, peer: peer, ringCapacity: options.sharedMemoryRingSize)
                : try await SharedMemorySetup.join(rendezvous: rendezvous, peer: peer, deadline: deadline)
        } else {
            if case .tcp = endpoint, let timeout = options.deadPeerTimeout { socket.stream.detectDeadPeer(after: timeout) }
            stream = resumable ? ResumableSocketStream(socket.stream) : socket.stream
        }
        let core = ConnectionCore(stream: stream, configuration: configuration)
        resumer?.attach(core)
        if let registered { registry?.add(core, as: registered) }
        // What this side sends is delivered even if the process exits right after its last send.
        ExitLinger.watch(core)
        if let refusal {
            core.fail(refusal, tellPeer: true)
            throw refusal
        }
        if !lines {
            do {
                try await withDeadline(deadline) { () async throws(IPCError) in try await core.handshake() }
            } catch {
                if resumable, !listening, let peer = core.peerHello, peer.resume == nil {
                    // A version-2 listener, which refuses a version-3 hello: dial again with version 2, and the
                    // connection does not resume.
                    core.fail(error, tellPeer: false)
                    logger.notice("the listener speaks wire protocol version 2: this connection does not resume")
                    let again = try await SocketConnector.connect(to: endpoint)
                    return try await establish(again, endpoint: endpoint, listening: false, sending: sending, receiving: receiving, options: options, role: role, onClose: onClose)
                }
                var failure = error
                if error.code == .timeout {
                    failure = IPCError(.timeout, "\(role): the peer did not complete the handshake within \(options.handshakeTimeout); it is not an Interprocess endpoint, or it is stuck")
                }
                core.fail(failure, tellPeer: true)
                throw failure
            }
        }
        if listening, let offered = core.peerHello?.resume, offered.resuming {
            // The client continues a connection on this new stream: the connection it names takes the stream.
            guard let existing = sessions?.find(offered.session) else {
                let error = IPCError(.peerClosed, "\(role): the peer asks to resume a connection this side does not know (this process restarted, or the connection ended or gave up waiting); what it sent and was not acknowledged may be lost")
                core.refuseResume(error)
                throw error
            }
            guard let newStream = core.surrenderStream() else {
                throw IPCError(.protocolViolation, "\(role): the peer sent frames before its resumed connection was answered")
            }
            try await existing.continueOn(newStream, peerReceived: offered.received)
            return nil
        }
        if listening, let session = core.resumeSession { sessions?.register(session, core) }
        core.startHeartbeats()
        logger.debug("connection established", metadata: ["side": listening ? "accepted" : "dialed", "resumable": "\(core.resumeSession != nil)"])
        // Messages carry a context block when both hellos asked for it (the peer's is the same on every stream of
        // a resumed connection: its terms may not change).
        let tracing = local.tracing && core.peerHello?.tracing == true
        return Connection(sender: Sender(core: core, codec: sending, tracing: tracing), receiver: Receiver(core: core, codec: receiving, tracing: tracing))
    }

    /// A resumable connection's dialer connects again: the peer is checked as the first time.
    private static func redial(_ endpoint: Endpoint, check: PeerCheck, tcpDeadPeer: Duration?) async throws(IPCError) -> SocketStream {
        let socket = try await SocketConnector.connect(to: endpoint)
        if endpoint.isLocal, !(socket.peerUID.map(check.allows) ?? false) {
            socket.stream.close()
            let uid = socket.peerUID.map { String($0) } ?? "unknown"
            throw IPCError(.permissionDenied, "resuming the connection to \(endpoint): the peer runs as uid \(uid), which this side does not accept (ChannelOptions.peerCheck)")
        }
        if let tcpDeadPeer { socket.stream.detectDeadPeer(after: tcpDeadPeer) }
        return socket.stream
    }
}

extension PeerCheck {
    func allows(uid: UInt32) -> Bool {
        switch self {
        case .anyone: true
        case .sameUser: uid == currentUID()
        case .userIDs(let set): set.contains(uid)
        }
    }
}

/// Both ends of one connection, as returned by ``IPC`` and ``Listener``.
public struct Connection<Out: Sendable, In: Sendable>: Sendable {
    /// Sends to the peer.
    public let sender: Sender<Out>
    /// Receives from the peer.
    public let receiver: Receiver<In>
    /// A description of the peer (`pid 4242 uid 1000` for Unix sockets, `host:port` for TCP).
    public var peer: String { sender.peer }
}

/// Numbers the connections of this process for log metadata.
private let connectionNumbers = Atomic<UInt64>(0)
