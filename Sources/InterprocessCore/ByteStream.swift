/// What a transport provides: an ordered, reliable, non-blocking byte stream plus one readiness callback.
///
/// The channel semantics (handshake, credits, close, errors) live once in ``ConnectionCore``, above this
/// protocol; a transport (Unix socket, TCP, and later shared memory or pipes) only moves bytes and says when it
/// can move more. All methods may be called from any thread.
package protocol ByteStream: AnyObject, Sendable {
    /// Reads what is available now, without waiting.
    func read(into buffer: UnsafeMutableRawBufferPointer) throws(IPCError) -> ReadOutcome
    /// Writes what the stream takes now from `segments` (in order, the first starting at `offset`), without
    /// waiting; returns the number of bytes taken (0: would block).
    func write(_ segments: [[UInt8]], offset: Int) throws(IPCError) -> Int
    /// Starts delivering readiness events to `handler`.
    func start(handler: any ByteStreamHandler)
    /// Asks for one ``ByteStreamHandler/streamReady(readable:writable:)`` call once the stream is readable
    /// (when `read`) or writable (when `write`), or has failed.
    func arm(read: Bool, write: Bool)
    /// Asks for one ``ByteStreamHandler/flushRequested()`` call on the transport's I/O thread after a short
    /// delay, so that a burst of sends is written with one system call.
    func requestFlush()
    /// Ends the sending direction (the peer reads end-of-stream after everything written).
    func shutdownWrite()
    /// Releases the stream. No callbacks follow.
    func close()
    /// A description of the peer for messages and logs (for example `pid 1234 uid 1000`).
    var peerDescription: String { get }
    /// A cheap hint, for polling: false only when a read would certainly find nothing (no input, no end).
    /// Streams that cannot tell cheaply answer true.
    var mayHaveInput: Bool { get }
}

extension ByteStream {
    package var mayHaveInput: Bool { true }
}

package enum ReadOutcome: Equatable {
    case bytes(Int)
    case wouldBlock
    case endOfStream
}

/// Receives a ``ByteStream``'s events on the transport's I/O thread.
package protocol ByteStreamHandler: AnyObject, Sendable {
    func streamReady(readable: Bool, writable: Bool)
    func flushRequested()
}
