import Instrumentation

/// The receiving end of a channel: Go's `v, ok := <-ch`, within a process or across processes.
///
/// `receive()` returns the next value, or `nil` once the sender closed and every value sent before the close
/// was delivered. It is an `AsyncSequence`, so `for try await value in receiver` reads until the end.
/// A receiver may be shared between tasks: each value goes to exactly one of them. Dropping the receiver tells
/// the sending side, whose sends then fail with `receiverGone`.
public final class Receiver<Value: Sendable>: AsyncSequence, Sendable {
    /// A received value.
    public typealias Element = Value
    /// What receiving throws.
    public typealias Failure = IPCError

    // One of `local` and `core` is set. Plain stored properties rather than an enum with payloads: reading a
    // payload out of an enum retained each of its references on every receive, a stored `let` is read in place.
    /// Within a process: the channel.
    @usableFromInline let local: LocalChannel<Value>?
    /// `local` for the inlined fast path, read without a retain (see `Sender.localUnretained`).
    @usableFromInline let localUnretained: Unmanaged<LocalChannel<Value>>?
    /// Across processes: the connection, and how bytes become a value (`isRaw`: the raw codec's values are the
    /// bytes themselves).
    private let core: ConnectionCore?
    @usableFromInline let decode: @Sendable ([UInt8]) throws(IPCError) -> Value
    @usableFromInline let isRaw: Bool

    /// Whether every message starts with a context block (``ContextBlock``), which `decode` skips.
    private let tracing: Bool
    /// The codec's own decoding, for messages whose context block ``receiveWithContext()`` took off.
    private let decodeBody: @Sendable ([UInt8]) throws(IPCError) -> Value

    package init<Codec: MessageCodec<Value>>(core: ConnectionCore, codec: Codec, tracing: Bool = false) {
        self.local = nil
        self.localUnretained = nil
        self.core = core
        self.tracing = tracing
        self.decodeBody = { bytes throws(IPCError) in try codec.decode(bytes) }
        if tracing {
            self.decode = { bytes throws(IPCError) in try codec.decode(ContextBlock.split(bytes).body) }
        } else {
            self.decode = { bytes throws(IPCError) in try codec.decode(bytes) }
        }
        self.isRaw = codec is RawBytesCodec && !tracing
    }

    package init(local channel: LocalChannel<Value>) {
        self.local = channel
        self.localUnretained = Unmanaged.passUnretained(channel)
        self.core = nil
        self.decode = { _ throws(IPCError) in throw IPCError(.decodingFailed, "an in-process channel decodes nothing") }
        self.decodeBody = decode
        self.tracing = false
        self.isRaw = false
    }

    /// A received message's value: through the codec, except for the raw codec, whose values are the bytes
    /// themselves (no call through the codec).
    @inlinable
    func value(of bytes: [UInt8]) throws(IPCError) -> Value {
        isRaw ? unsafeBitCast(bytes, to: Value.self) : try decode(bytes)
    }

    deinit {
        local?.receiverDropped()
        core?.receiverDropped()
    }

    /// The next value, or `nil` after the sender closed and everything before the close was received.
    ///
    /// Throws ``IPCError``: `peerClosed` when the peer died or closed without closing its sender (messages
    /// may be missing), `decodingFailed` for a message that is not a valid value (that message is skipped; the
    /// next `receive` continues with the following one), `peerError`, `protocolViolation`, or `cancelled`
    /// (no value is lost by cancelling).
    @inlinable @inline(__always)
    public func receive() async throws(IPCError) -> Value? {
        // Inlined into the caller, like `Sender.send`: a message already here, or arriving while this task spins
        // (bounded by `spinMicroseconds`), is taken by the synchronous `bytesIfReady` and becomes a value here,
        // without an async call (whose frame, executor check and return cost a shared-memory receive about as much
        // as the rest of it). `@inline(__always)`: without it the optimizer does not inline this function.
        // Within a process a value already there, or arriving while this task polls, is taken here, in code
        // specialized for `Value`.
        if local != nil {
            if let ready = localReceiveSpinning() { return ready }
            return try await receiveParking()
        }
        var parking: Parking?
        if let ready = try bytesIfReady(parking: &parking) {
            guard let bytes = ready else { return nil }
            return try value(of: bytes)
        }
        return try await receiveWaiting(parking!)
    }

    /// The fast path of ``receive()`` within a process, on the channel without a retain (`localUnretained`).
    @inlinable
    func localReceiveSpinning() -> Value?? {
        localUnretained.unsafelyUnwrapped._withUnsafeGuaranteedRef { $0.receiveSpinning() }
    }

    /// The fast path of ``receive()`` across processes (``ConnectionCore/receiveNow()``): the next message's bytes
    /// (`.some(nil)` at the end), or nil with `parking` set when the task must park.
    @usableFromInline
    func bytesIfReady(parking: inout Parking?) throws(IPCError) -> [UInt8]?? {
        switch try core!.receiveNow() {
        case .done(let bytes): return .some(bytes)
        case .park(let next):
            parking = next
            return nil
        }
    }

    /// The slow path of ``receive()`` within a process, once polling found nothing: parks until a value arrives.
    @usableFromInline
    func receiveParking() async throws(IPCError) -> Value? {
        try await local!.receive(spin: false)
    }

    /// The slow path of ``receive()`` across processes: parks until a message arrives (`parking` from
    /// ``bytesIfReady(parking:)``).
    @usableFromInline
    func receiveWaiting(_ parking: Parking) async throws(IPCError) -> Value? {
        guard let bytes = try await core!.receive(after: parking) else { return nil }
        return try value(of: bytes)
    }

    /// The next value with the `ServiceContext` it was sent in, or `nil` at the end of the channel, like
    /// ``receive()``.
    ///
    /// With ``ChannelOptions/tracing`` on both sides, the context is what the process's instrument
    /// (swift-distributed-tracing) extracts from the fields the sending process's instrument injected: start the
    /// work's span with it, and the trace continues across the process boundary:
    ///
    /// ```swift
    /// while let (job, context) = try await receiver.receiveWithContext() {
    ///     try await withSpan("job", context: context, ofKind: .consumer) { _ in try await run(job) }
    /// }
    /// ```
    ///
    /// Otherwise (tracing off on either side, or an in-process channel) the context is empty (`.topLevel`).
    ///
    /// - Throws: what ``receive()`` throws; `decodingFailed` also for a message whose context block is malformed
    ///   (the message is skipped).
    public func receiveWithContext() async throws(IPCError) -> (value: Value, context: ServiceContext)? {
        guard let core, tracing else { return try await receive().map { ($0, ServiceContext.topLevel) } }
        var parking: Parking?
        let message: [UInt8]?
        if let ready = try bytesIfReady(parking: &parking) {
            message = ready
        } else {
            message = try await core.receive(after: parking!)
        }
        guard let message else { return nil }
        let (fields, body) = try ContextBlock.split(message)
        return (try decodeBody(body), ContextBlock.context(from: fields))
    }

    /// The next value, waiting at most `timeout`: `nil` at the end of the channel, like ``receive()``.
    ///
    /// Throws ``IPCError/Code/timeout`` when no value arrived in time; nothing is taken then.
    public func receive(timeout: Duration) async throws(IPCError) -> Value? {
        if let ready = try tryReceive() { return ready }
        do {
            return try await select {
                onReceive { $0 }
                SelectCase.timeout(timeout) {
                    throw IPCError(.timeout, "no value arrived within \(timeout)")
                }
            }
        } catch let error as IPCError {
            throw error
        } catch {
            throw IPCError(.cancelled, "the receive failed: \(error)")
        }
    }

    /// A value if one can be taken without waiting. Returns `.some(nil)` at the end of the channel,
    /// `nil` when nothing is there yet.
    public func tryReceive() throws(IPCError) -> Value?? {
        guard let core else { return local!.tryReceive() }
        guard let step = try core.pollReceive() else { return nil }
        guard let bytes = step else { return .some(nil) }
        return .some(try value(of: bytes))
    }

    /// A ``select(_:)`` case that takes the next value (`nil` at the end of the channel) and passes it to
    /// `body`. If another case is chosen, no value is taken.
    public func onReceive<Result>(_ body: @escaping (Value?) throws -> Result) -> SelectCase<Result> {
        if let channel = local {
            return SelectCase(.operation(SelectOperation(
                poll: {
                    guard let value = channel.tryReceive() else { return nil }
                    return { try body(value) }
                },
                register: { waiter, index in channel.registerReceive(waiter, index: index).map { id in { channel.unregister(id) } } },
                claimed: { value in try body(value as! Value?) })))
        }
        let core = core!
        return SelectCase(.operation(SelectOperation(
            poll: {
                guard let step = try core.pollReceive() else { return nil }
                guard let bytes = step else { return { try body(nil) } }
                let value = try self.value(of: bytes)
                return { try body(value) }
            },
            register: { waiter, _ in core.watch(waiter, receiving: true).map { id in { core.unwatch(id) } } },
            claimed: { value in try body(value as! Value?) })))
    }

    /// A description of the peer: a process, or `this process` for an in-process channel.
    public var peer: String {
        core?.stream.peerDescription ?? "this process"
    }

    /// Iterates a receiver: each step is a ``Receiver/receive()``.
    public struct AsyncIterator: AsyncIteratorProtocol {
        let receiver: Receiver<Value>
        /// The next value, or `nil` at the end of the channel.
        public mutating func next() async throws(IPCError) -> Value? { try await receiver.receive() }
        /// The next value, or `nil` at the end of the channel.
        public mutating func next(isolation actor: isolated (any Actor)?) async throws(IPCError) -> Value? {
            try await receiver.receive()
        }
    }

    /// An iterator that receives until the end of the channel.
    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(receiver: self) }
}

extension Receiver where Value == [UInt8] {
    /// Receives the next message and runs `body` on its bytes where they lie: zero-copy.
    ///
    /// Over shared memory, `body` reads the message in the ring itself, and the ring space is released when
    /// `body` returns; elsewhere (or when the message was already copied out, for example by a waiting
    /// `select`) `body` reads the message's own array. The buffer is only valid inside `body`. Returns `body`'s
    /// result, or `nil` at the end of the channel, like ``receive()``. The message is taken even when `body`
    /// throws (its error is rethrown).
    ///
    /// The bytes in the ring are memory the peer process can write: a peer that breaks the protocol can change
    /// them while `body` reads. Copy what you must validate before trusting it when the peer is not trusted.
    ///
    /// - Throws: what ``receive()`` throws, or `body`'s error.
    public nonisolated(nonsending) func receive<R>(_ body: (UnsafeRawBufferPointer) throws -> R) async throws -> R? {
        if let core, isRaw { return try await core.receive(inPlace: body) }
        guard let bytes = try await receive() else { return nil }
        return try bytes.withUnsafeBytes(body)
    }

    /// Receives up to `maxCount` messages in one call: waits for the first like ``receive()``, then takes, in
    /// order, those that are already here, without waiting for more. Returns nil at the end of the channel.
    ///
    /// One call costs about what one `receive()` does, so a consumer of many small messages spends far less per
    /// message (the sender may use ``Sender/send(contentsOf:)``, or not: the messages are the same). Taken
    /// messages count against the channel's capacity no longer, as with `receive()`. On a receiver whose codec is
    /// not ``RawBytesCodec``, where a message could fail to decode in the middle of a batch, each call returns
    /// one message.
    ///
    /// - Throws: what ``receive()`` throws.
    public func receive(upTo maxCount: Int) async throws(IPCError) -> [[UInt8]]? {
        precondition(maxCount > 0, "maxCount must be positive")
        if let core, isRaw { return try await core.receive(upTo: maxCount) }
        if let local {
            guard let first = try await local.receive() else { return nil }
            var batch = [first]
            while batch.count < maxCount, case let value?? = local.tryReceive() { batch.append(value) }
            return batch
        }
        return try await receive().map { [$0] }
    }

    /// Receives a fixed-size value sent with ``Sender/send(bytesOf:)``, read straight from the ring over shared
    /// memory. `nil` at the end of the channel.
    ///
    /// - Throws: `decodingFailed` when the message's size is not `MemoryLayout<T>.size` (the message is skipped),
    ///   or what ``receive()`` throws.
    public func receive<T: BitwiseCopyable>(as type: T.Type) async throws(IPCError) -> T? {
        do {
            return try await receive { bytes throws(IPCError) -> T in
                guard bytes.count == MemoryLayout<T>.size else {
                    throw IPCError(.decodingFailed, "a message of \(bytes.count) bytes is not a \(T.self) (\(MemoryLayout<T>.size) bytes); both sides must send and receive the same type")
                }
                return bytes.loadUnaligned(as: T.self)
            }
        } catch let error as IPCError {
            throw error
        } catch {
            throw IPCError(.decodingFailed, "receiving a \(T.self) failed: \(error)")
        }
    }
}
