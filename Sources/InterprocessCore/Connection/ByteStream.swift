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
    /// Withdraws a ``requestFlush()`` that is no longer needed (the output was written meanwhile), so that the
    /// I/O thread need not wake for it.
    func cancelFlush()
    /// Calls the handler's ``ByteStreamHandler/heartbeatDue()`` on the transport's I/O thread every `interval`
    /// (nanoseconds) until it returns false. The I/O thread holds the handler weakly meanwhile.
    func scheduleHeartbeats(every interval: UInt64)
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

/// A ``ByteStream`` whose bytes lie in memory this process maps (shared memory), so that a frame can be written
/// where the peer will read it and read where the peer wrote it. Every region handed out is contiguous.
///
/// The regions are valid only inside the closures that receive them; the stream's memory stays mapped until
/// they return, even if the stream is closed meanwhile.
package protocol InPlaceStream: ByteStream {
    /// The most bytes that can be readable or writable at once.
    var inPlaceCapacity: Int { get }
    /// Runs `body` with the bytes published and not yet consumed (empty when none), or nil when none are left
    /// and the writer closed its direction or is gone. `body` may call ``consume(_:)``.
    func withReadableBytes<R>(_ body: (UnsafeRawBufferPointer?) throws -> R) throws -> R
    /// Consumes the first `count` bytes of the readable region (inside ``withReadableBytes(_:)`` only).
    func consume(_ count: Int)
    /// Runs `body` with `count` bytes of room at the write position, or nil when that much is not free now.
    /// `body` may call ``publish(_:)``.
    func withWritableBytes<R>(_ count: Int, _ body: (UnsafeMutableRawBufferPointer?) throws -> R) throws -> R
    /// Publishes the first `count` bytes of the writable region (inside ``withWritableBytes(_:_:)`` only).
    func publish(_ count: Int)
    /// Runs `body` with the readable bytes as ``withReadableBytes(_:)`` does, then consumes as many as it returns.
    /// (Callers in the per-message path use this rather than capturing the stream to call ``consume(_:)``:
    /// capturing it retains it, and a stream others refer to weakly keeps its count in a side table.)
    func consumeReadable(_ body: (UnsafeRawBufferPointer?) throws -> Int) throws
    /// Writes `count` bytes with `body` at the write position and publishes them (`publish`), or only writes them,
    /// to be published with whatever is published next (a later write, ``publishWritten()``); false, without
    /// running `body`, when that much room is not free now. Bytes written and not yet published take room but
    /// are not readable; every write that publishes publishes them too.
    func write(_ count: Int, publish: Bool, writing body: (UnsafeMutableRawBufferPointer) -> Void) throws -> Bool
    /// Publishes the bytes written without publishing, if any.
    func publishWritten() throws
    /// A cheap check without a lock: whether at least `count` bytes are readable, or the stream ended.
    func hasReadable(atLeast count: Int) -> Bool
    /// Whether `count` bytes of room are free now.
    func hasRoom(_ count: Int) -> Bool
    /// Like `arm(read: true, write: false)`, but ready only once at least `count` bytes are readable (or the
    /// stream ended): for a reader waiting for the rest of a frame it reads in place.
    func armRead(atLeast count: Int)

    /// Keeps the stream's memory mapped and its descriptors open until ``endHold()``, even across ``close()``, so
    /// that the holder's calls of the `held` methods below need not count themselves as users one by one (two
    /// atomic read-modify-writes per call, on the per-message path). False when the stream is already closed.
    func beginHold() -> Bool
    /// Ends a hold begun with ``beginHold()``; the stream is released now if it was closed meanwhile.
    func endHold()
    /// ``write(_:publish:writing:)`` by a holder (``beginHold()``) before its ``endHold()``.
    func writeHeld(_ count: Int, publish: Bool, writing body: (UnsafeMutableRawBufferPointer) -> Void) throws -> Bool
    /// ``publishWritten()`` by a holder.
    func publishWrittenHeld() throws
    /// By a holder that is the one writer: `count` bytes of room at the write position, or nil when that much is
    /// not free now. The caller writes them and then calls ``commitHeld(_:publish:)``; nothing else is written
    /// between the two calls. Throws when the peer is gone or broke the ring.
    func reserveHeld(_ count: Int) throws -> UnsafeMutableRawBufferPointer?
    /// Takes the `count` bytes written into the room ``reserveHeld(_:)`` gave, and publishes them with everything
    /// written before (`publish`), or leaves them to be published with the next publish.
    func commitHeld(_ count: Int, publish: Bool)
    /// ``consumeReadable(_:)`` by a holder.
    func consumeReadableHeld(_ body: (UnsafeRawBufferPointer?) throws -> Int) throws
}

/// A ``ByteStream`` that a resumable connection continues on a new stream of the same transport when the one it
/// has breaks (see ``ConnectionCore/continueOn(_:peerReceived:)``).
package protocol SwappableStream: ByteStream {
    /// Stops using the current stream and closes it: until ``attach(_:)``, reads find nothing and writes take
    /// nothing (arming is remembered for the next stream).
    func detach()
    /// Continues on `stream` (connected by the same transport; started or not). A closed swappable stream closes it.
    func attach(_ stream: any ByteStream)
    /// Gives the current stream up to a new owner, unclosed; this one is closed and has none any more.
    func surrender() -> (any ByteStream)?
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
    /// A heartbeat (``ByteStream/scheduleHeartbeats(every:)``); false ends them.
    func heartbeatDue() -> Bool
}
