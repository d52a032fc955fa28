/// The receiving end of a channel: Go's `v, ok := <-ch` across processes.
///
/// `receive()` returns the next value, or `nil` once the sender closed and every value sent before the close
/// was delivered. It is an `AsyncSequence`, so `for try await value in receiver` reads until the end.
/// A receiver may be shared between tasks: each value goes to exactly one of them.
public final class Receiver<Value: Sendable>: AsyncSequence, Sendable {
    public typealias Element = Value
    public typealias Failure = IPCError

    private let core: ConnectionCore
    private let decode: @Sendable ([UInt8]) throws(IPCError) -> Value

    package init<Codec: MessageCodec<Value>>(core: ConnectionCore, codec: Codec) {
        self.core = core
        self.decode = { bytes throws(IPCError) in try codec.decode(bytes) }
    }

    deinit { core.receiverDropped() }

    /// The next value, or `nil` after the sender closed and everything before the close was received.
    ///
    /// Throws ``IPCError``: `peerClosed` when the peer died or closed without closing its sender (messages
    /// may be missing), `decodingFailed` for a message that is not a valid value (that message is skipped; the
    /// next `receive` continues with the following one), `peerError`, `protocolViolation`, or `cancelled`
    /// (no value is lost by cancelling).
    public func receive() async throws(IPCError) -> Value? {
        guard let bytes = try await core.receive() else { return nil }
        return try decode(bytes)
    }

    /// A value if one has already arrived, without waiting. Returns `.some(nil)` at the end of the channel,
    /// `nil` when nothing is there yet.
    public func tryReceive() throws(IPCError) -> Value?? {
        guard let step = try core.tryReceive() else { return nil }
        guard let bytes = step else { return .some(nil) }
        return .some(try decode(bytes))
    }

    /// A description of the peer process.
    public var peer: String { core.stream.peerDescription }

    public struct AsyncIterator: AsyncIteratorProtocol {
        let receiver: Receiver<Value>
        public mutating func next() async throws(IPCError) -> Value? { try await receiver.receive() }
        public mutating func next(isolation actor: isolated (any Actor)?) async throws(IPCError) -> Value? {
            try await receiver.receive()
        }
    }

    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(receiver: self) }
}
