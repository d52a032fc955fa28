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
        return try await establish(socket, endpoint: endpoint, listening: false, sending: sending, receiving: receiving, options: options, role: "connecting to \(endpoint)")
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
        refusal listenerRefusal: IPCError? = nil, onClose: (@Sendable () -> Void)? = nil
    ) async throws(IPCError) -> Connection<Out.Value, In.Value> {
        let lines = sending is LinesCodec || receiving is LinesCodec
        let local = Hello(
            capacity: UInt32(options.capacity), maxFrame: UInt32(options.maxFrameSize),
            sendCodec: sending.name, sendType: sending.name == "none" ? "none" : sending.typeName,
            receiveCodec: receiving.name, receiveType: receiving.name == "none" ? "none" : receiving.typeName)
        var configuration = ConnectionCore.Configuration(
            mode: lines ? .lines : .framed, local: local,
            hasSender: sending.name != "none", hasReceiver: receiving.name != "none",
            spinNanoseconds: UInt64(max(options.spinMicroseconds, 0)) * 1000,
            closeTimeout: options.closeTimeout, maxPayload: options.maxFrameSize, maxBytesInFlight: options.maxBytesInFlight)
        configuration.onClose = onClose
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
        let sharedMemory = if case .sharedMemory = endpoint { true } else { false }
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
            stream = socket.stream
        }
        let core = ConnectionCore(stream: stream, configuration: configuration)
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
                var failure = error
                if error.code == .timeout {
                    failure = IPCError(.timeout, "\(role): the peer did not complete the handshake within \(options.handshakeTimeout); it is not an Interprocess endpoint, or it is stuck")
                }
                core.fail(failure, tellPeer: true)
                throw failure
            }
        }
        core.startHeartbeats()
        logger.debug("connection established", metadata: ["side": listening ? "accepted" : "dialed"])
        return Connection(sender: Sender(core: core, codec: sending), receiver: Receiver(core: core, codec: receiving))
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
