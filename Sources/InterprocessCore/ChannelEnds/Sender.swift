/// The sending end of a channel: Go's `ch <- v`, within a process or across processes.
///
/// `send` suspends while the channel is full (its capacity), so a fast producer cannot overrun a slow
/// consumer; on a channel of capacity 0 it returns only once a receiver has taken the value. `close()` is Go's
/// `close(ch)`: the receiver gets everything sent before it, then the end. Dropping a sender without closing
/// it closes it too.
///
/// A `Sender` may be shared between tasks; each message is sent whole and in the order `send` calls complete.
public final class Sender<Value: Sendable>: Sendable {
    // One of `local` and `core` is set. Plain stored properties rather than an enum with payloads: reading a
    // payload out of an enum retained each of its references on every send, a stored `let` is read in place.
    /// Within a process: the channel.
    @usableFromInline let local: LocalChannel<Value>?
    /// `local` for the inlined fast path, used without a retain: a retain (and the release after) of the channel,
    /// which the receiving task retains and releases as well, would move its reference count's cache line between
    /// the two CPUs on every send. `local` keeps it alive as long as this sender lives.
    @usableFromInline let localUnretained: Unmanaged<LocalChannel<Value>>?
    /// Across processes: the connection, and how a value becomes bytes (`isRaw`: the raw codec's values are the
    /// bytes themselves).
    private let core: ConnectionCore?
    private let encode: @Sendable (Value, inout [UInt8]) throws(IPCError) -> Void
    @usableFromInline let isRaw: Bool

    /// With `tracing`, every message starts with the sending task's context block (``ContextBlock``), and so
    /// goes through `encode` whatever the codec.
    package init<Codec: MessageCodec<Value>>(core: ConnectionCore, codec: Codec, tracing: Bool = false) {
        self.local = nil
        self.localUnretained = nil
        self.core = core
        if tracing {
            self.encode = { value, buffer throws(IPCError) in
                ContextBlock.appendCurrent(to: &buffer)
                try codec.encode(value, into: &buffer)
            }
        } else {
            self.encode = { value, buffer throws(IPCError) in try codec.encode(value, into: &buffer) }
        }
        self.isRaw = codec is RawBytesCodec && !tracing
    }

    package init(local channel: LocalChannel<Value>) {
        self.local = channel
        self.localUnretained = Unmanaged.passUnretained(channel)
        self.core = nil
        self.encode = { _, _ in }
        self.isRaw = false
    }

    /// Raw payloads at least this large are handed to the transport as they are, without a copy.
    private static var segmentThreshold: Int { 32 << 10 }

    /// Appends `value` as one data frame: a large raw payload as its own segment (kept, not copied), a small one
    /// copied into the outbox (what the raw codec does, without the call through the codec), anything else
    /// through the codec into the outbox.
    private static func append(_ value: Value, to state: inout ConnectionState, encode: (Value, inout [UInt8]) throws(IPCError) -> Void, isRaw: Bool) throws(IPCError) -> UInt64 {
        if isRaw {
            // The raw codec's values are byte arrays: no dynamic cast needed to see one.
            let bytes = unsafeBitCast(value, to: [UInt8].self)
            return try state.appendData(bytes: bytes, asSegment: bytes.count >= segmentThreshold)
        }
        return try state.appendData { buffer throws(IPCError) in try encode(value, &buffer) }
    }

    deinit {
        local?.senderDropped()
        core?.senderDropped()
    }

    /// Sends one value, suspending while the channel is full (and, at capacity 0, until a receiver took it).
    ///
    /// Throws ``IPCError`` with code `sendOnClosedChannel` after `close()`, `receiverGone` when the receiver
    /// was dropped, `peerClosed` when the receiving process went away, `frameTooLarge` when the encoded value
    /// exceeds the receiver's limit (nothing is sent and the channel stays usable), `encodingFailed`, or
    /// `cancelled` (nothing was sent; except that a capacity-0 send to another process whose value already left
    /// returns instead, and the value is delivered unless the receiver goes away).
    @inlinable
    public func send(_ value: Value) async throws(IPCError) {
        // Inlined into the caller, so that a send with credit available completes in the synchronous
        // `trySendOnce` without an async call of its own (the callee's frame from the task allocator, the executor
        // check on entry). Its closure's context lives on the thread's stack (in an async function it comes from
        // the task's allocator on every call). A raw value's bytes are handed over
        // here, where `Value` is concrete: in the unspecialized callee the cast was a retain and a release per send.
        // Within a process a value that a parked receiver takes or that finds room completes here too, in code
        // specialized for `Value` (the channel's `trySend` is inlinable).
        if let local = localUnretained {
            if try local._withUnsafeGuaranteedRef({ channel in Result { () throws(IPCError) in try channel.trySend(value) } }).get() { return }
        } else if isRaw {
            // The value is lent by address: passed as an array (a new value of another type, for the compiler), it
            // was retained for the call and released after it.
            if try withUnsafePointer(to: value, { (pointer) throws(IPCError) in try trySendRaw(at: UnsafeRawPointer(pointer)) }) { return }
        } else if try trySendOnce(value) {
            return
        }
        try await sendWaiting(value)
    }

    /// ``trySend(_:)`` for the raw codec's values (`isRaw`, always across processes). Over shared memory the
    /// frame goes straight into the ring when it can (``ConnectionCore/trySend(raw:)``).
    @usableFromInline
    func trySendRaw(_ bytes: [UInt8]) throws(IPCError) -> Bool {
        try withUnsafePointer(to: bytes) { (pointer) throws(IPCError) in try trySendRaw(at: UnsafeRawPointer(pointer)) }
    }

    /// ``trySendRaw(_:)`` of the `[UInt8]` at `value`, borrowed (the raw codec's `Value` is `[UInt8]`).
    @usableFromInline
    func trySendRaw(at value: UnsafeRawPointer) throws(IPCError) -> Bool {
        let bytes = value.assumingMemoryBound(to: [UInt8].self)
        if let sent = try bytes.pointee.span.withUnsafeBytes({ raw throws(IPCError) in try core!.trySend(raw: raw) }) { return sent }
        let copy = bytes.pointee
        return try core!.trySend { state throws(IPCError) in try state.appendData(bytes: copy, asSegment: copy.count >= Self.segmentThreshold) }
    }

    /// The slow path of ``send(_:)``: waits for credit, or sends within a process. Each path gets its own
    /// closure literal: one closure value used for both had its context allocated on the heap per send.
    @usableFromInline
    func sendWaiting(_ value: Value) async throws(IPCError) {
        if let local { return try await local.send(value) }
        try await core!.send { state throws(IPCError) in try Self.append(value, to: &state, encode: encode, isRaw: isRaw) }
    }

    /// Sends `values` in order, as separate messages, in fewer steps than one ``send(_:)`` each: across processes,
    /// as many as the channel's capacity allows are queued under one lock and written with one system call,
    /// then it waits for room like `send` for the rest. The receiver sees ordinary messages (it may take them
    /// one by one or with ``Receiver/receive(upTo:)``).
    ///
    /// Throws what ``send(_:)`` throws. If a value cannot be sent (it encodes to more than the receiver accepts,
    /// say), the values before it were sent and the ones after it are not.
    public func send(contentsOf values: some Collection<Value>) async throws(IPCError) {
        if let local {
            for value in values { try await local.send(value) }
        } else if let core {
            let values = Array(values)
            try await core.send(batch: values.count) { i, state throws(IPCError) -> UInt64 in
                try Self.append(values[i], to: &state, encode: encode, isRaw: isRaw)
            }
        }
    }

    /// Sends `value` only if that completes without waiting; returns whether it was sent.
    ///
    /// On a channel of capacity 0 within a process, that means a receiver is waiting. Across processes a
    /// capacity-0 send always waits for the other process to take the value, so it never succeeds here (use
    /// ``send(_:)`` or ``select(_:)``). Across processes it first reads what the peer already sent, so room the
    /// receiver made is seen. Throws what ``send(_:)`` throws (`sendOnClosedChannel` after `close()`).
    public func trySend(_ value: Value) throws(IPCError) -> Bool {
        if try trySendOnce(value) { return true }
        guard let core, core.pollInput() else { return false }
        return try trySendOnce(value)
    }

    /// ``trySend(_:)`` without reading the peer's news first.
    @usableFromInline
    func trySendOnce(_ value: Value) throws(IPCError) -> Bool {
        if isRaw { return try trySendRaw(unsafeBitCast(value, to: [UInt8].self)) }
        if let core {
            return try core.trySend { state throws(IPCError) in try Self.append(value, to: &state, encode: encode, isRaw: isRaw) }
        }
        return try local!.trySend(value)
    }

    /// Closes the channel: the receiver gets every value sent before, then the end (`nil`). Go's `close(ch)`.
    ///
    /// Never waits for the receiver. Sends still waiting when the channel is closed fail with
    /// `sendOnClosedChannel`. Closing twice throws `alreadyClosed`. Across processes, what was sent is written
    /// in the background while this process lives: a process about to exit calls ``closeAndWait()`` instead.
    public func close() async throws(IPCError) {
        if let core { try await core.closeSender(waitForPeer: false) } else { try local!.close() }
    }

    /// Closes the channel like ``close()``, then waits until the receiving process has read everything and
    /// hung up (at most `ChannelOptions.closeTimeout`), so that this process may exit at once without the kernel
    /// discarding what the peer has not read yet. On a two-way connection whose receiver is still in use, it
    /// waits only until everything was written. For an in-process channel it is ``close()``.
    public func closeAndWait() async throws(IPCError) {
        if let core { try await core.closeSender(waitForPeer: true) } else { try local!.close() }
    }

    /// A description of the peer: `pid 4242 uid 1000` or `127.0.0.1:50112` across processes, `this process`
    /// for an in-process channel.
    public var peer: String {
        core?.stream.peerDescription ?? "this process"
    }

    /// A ``select(_:)`` case that sends `value`, then runs `body`. If another case is chosen, nothing is sent.
    public func onSend<Result>(_ value: Value, _ body: @escaping () throws -> Result) -> SelectCase<Result> {
        if let channel = local {
            return SelectCase(.operation(SelectOperation(
                poll: { try channel.trySend(value) ? { try body() } : nil },
                register: { waiter, _ in channel.registerSend(waiter).map { id in { channel.unregister(id) } } },
                claimed: { _ in try body() })))
        }
        let core = core!, encode = encode, isRaw = isRaw
        return SelectCase(.operation(SelectOperation(
            poll: {
                // What the peer announced (room, a receiver's grant or its withdrawal) is read first, so that the
                // case is ready exactly when the channel is.
                _ = core.pollInput()
                let attempt = try core.sendNow { state throws(IPCError) in
                    try Self.append(value, to: &state, encode: encode, isRaw: isRaw)
                }
                switch attempt {
                case .wouldBlock: return nil
                case .sent: return { try body() }
                case .awaitingTake(let seq):
                    return {
                        try await core.awaitTaken(seq)
                        return try body()
                    }
                }
            },
            register: { waiter, _ in core.watch(waiter, receiving: false).map { id in { core.unwatch(id) } } },
            claimed: { _ in try body() })))
    }
}

extension Sender where Value == [UInt8] {
    /// Sends a message of `byteCount` bytes that `body` writes where the receiver will read them: zero-copy.
    ///
    /// Over shared memory (`shm:` endpoints, and a child spawned with `sharedMemory: true`), `body` gets the
    /// message's place in the ring itself; when the ring has no room for it now (the receiver is behind), or
    /// the message is larger than the ring, `body` writes into a private buffer instead, which is sent as
    /// usual, so this never waits for room: like ``send(_:)`` it waits only while the channel is at its
    /// capacity. Other transports always use the private buffer. The buffer is only valid inside `body`; write every byte you mean to send (in
    /// the ring, unwritten bytes hold what an earlier message left there).
    ///
    /// If `body` throws, nothing is sent and its error is rethrown. Other sends on this sender wait while
    /// `body` runs, so keep it short. On a sender whose codec is not ``RawBytesCodec``, the bytes are sent
    /// through the codec like any `[UInt8]` value.
    ///
    /// - Throws: what ``send(_:)`` throws, or `body`'s error.
    public nonisolated(nonsending) func send(byteCount: Int, _ body: (UnsafeMutableRawBufferPointer) throws -> Void) async throws {
        precondition(byteCount >= 0, "byteCount must not be negative")
        if let core, isRaw {
            try await core.send(byteCount: byteCount, inPlace: body)
        } else {
            let bytes = try [UInt8](unsafeUninitializedCapacity: byteCount) { buffer, count in
                buffer.initialize(repeating: 0)
                try body(UnsafeMutableRawBufferPointer(buffer))
                count = byteCount
            }
            try await send(bytes)
        }
    }

    /// Sends the bytes of a fixed-size value (its memory as it is, `MemoryLayout<T>.size` bytes), written
    /// straight into the ring over shared memory. The receiver reads it with ``Receiver/receive(as:)``.
    /// Only for plain values whose bytes mean the same in both processes: no pointers, references or
    /// padding-dependent data.
    public func send<T: BitwiseCopyable>(bytesOf value: T) async throws(IPCError) {
        do {
            try await send(byteCount: MemoryLayout<T>.size) { $0.storeBytes(of: value, as: T.self) }
        } catch let error as IPCError {
            throw error
        } catch {
            throw IPCError(.encodingFailed, "sending a \(T.self) failed: \(error)")
        }
    }
}
