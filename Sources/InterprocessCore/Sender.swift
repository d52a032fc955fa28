/// The sending end of a channel: Go's `ch <- v` across processes.
///
/// `send` suspends while the receiving process's buffer is full (its capacity), so a fast producer cannot
/// overrun a slow consumer. `close()` is Go's `close(ch)`: the receiver gets everything sent before it, then
/// the end. Dropping a sender without closing it closes it too.
///
/// A `Sender` may be shared between tasks; each message is sent whole and in the order `send` calls complete.
public final class Sender<Value: Sendable>: Sendable {
    private let core: ConnectionCore
    private let encode: @Sendable (Value, inout [UInt8]) throws(IPCError) -> Void
    /// Raw bytes: large payloads are handed to the transport as they are, without a copy.
    private let isRaw: Bool

    package init<Codec: MessageCodec<Value>>(core: ConnectionCore, codec: Codec) {
        self.core = core
        self.encode = { value, buffer throws(IPCError) in try codec.encode(value, into: &buffer) }
        self.isRaw = codec is RawBytesCodec
    }

    private static var segmentThreshold: Int { 32 << 10 }

    deinit { core.senderDropped() }

    /// Sends one value, suspending while the receiver's buffer is full.
    ///
    /// Throws ``IPCError`` with code `sendOnClosedChannel` after `close()`, `peerClosed` when the receiving
    /// process went away, `frameTooLarge` when the encoded value exceeds the receiver's limit (nothing is sent
    /// and the channel stays usable), `encodingFailed`, or `cancelled`.
    public func send(_ value: Value) async throws(IPCError) {
        if isRaw, let bytes = value as? [UInt8], bytes.count >= Self.segmentThreshold {
            try await core.send(segment: bytes)
            return
        }
        try await core.send { buffer throws(IPCError) in try encode(value, &buffer) }
    }

    /// Closes the channel: the receiver gets every value sent before, then the end (`nil`).
    ///
    /// Returns once everything sent has been handed to the operating system. On a send-only connection it
    /// also waits, at most the close timeout, for the peer to finish reading and hang up, so that a process
    /// may exit right after `close()` without the kernel discarding what the peer has not read yet.
    /// Closing twice throws `alreadyClosed`.
    public func close() async throws(IPCError) {
        try await core.closeSender()
    }

    /// A description of the peer process, such as `pid 4242 uid 1000` or `127.0.0.1:50112`.
    public var peer: String { core.stream.peerDescription }
}
