import InterprocessCore
import InterprocessIO
import InterprocessPlatform

/// The stream of a resumable socket connection: one ``SocketStream`` at a time, replaced by a new one when it
/// breaks (``SwappableStream``). Between streams, reads find nothing and writes take nothing; what was armed
/// meanwhile is armed on the next stream. Deferred flushes and heartbeats belong to the connection, not to one
/// stream, so they go on across streams.
package final class ResumableSocketStream: DeferredFlushing, SwappableStream, @unchecked Sendable {
    private struct State {
        var inner: SocketStream?
        var handler: (any ByteStreamHandler)?
        var closed = false
        var armedRead = false
        var armedWrite = false
        var peerDescription: String
    }
    private let state: Lock<State>

    package init(_ stream: SocketStream) {
        state = Lock(State(inner: stream, peerDescription: stream.peerDescription))
    }

    private var current: SocketStream? { state.withLock { $0.inner } }

    package func read(into buffer: UnsafeMutableRawBufferPointer) throws(IPCError) -> ReadOutcome {
        guard let inner = current else { return .wouldBlock }
        return try inner.read(into: buffer)
    }

    package func write(_ segments: [[UInt8]], offset: Int) throws(IPCError) -> Int {
        guard let inner = current else { return 0 }
        return try inner.write(segments, offset: offset)
    }

    package func start(handler: any ByteStreamHandler) {
        let inner = state.withLock { s -> SocketStream? in
            s.handler = handler
            return s.inner
        }
        inner?.adopt(handler: handler)
    }

    package func arm(read: Bool, write: Bool) {
        let inner = state.withLock { s -> SocketStream? in
            if s.inner == nil {
                s.armedRead = s.armedRead || read
                s.armedWrite = s.armedWrite || write
            }
            return s.inner
        }
        inner?.arm(read: read, write: write)
    }

    package func shutdownWrite() {
        current?.shutdownWrite()
    }

    package func close() {
        let inner = state.withLock { s -> SocketStream? in
            s.closed = true
            s.handler = nil
            return s.inner.take()
        }
        inner?.close()
    }

    package var peerDescription: String { state.withLock { $0.peerDescription } }

    package var mayHaveInput: Bool { current != nil }

    package var flushTarget: (handler: (any ByteStreamHandler)?, closed: Bool) {
        state.withLock { ($0.handler, $0.closed) }
    }

    package func detach() {
        state.withLock { $0.inner.take() }?.close()
    }

    package func attach(_ stream: any ByteStream) {
        guard let socket = stream as? SocketStream else {
            preconditionFailure("a socket connection continues on a socket stream")
        }
        let (handler, read, write) = state.withLock { s -> ((any ByteStreamHandler)?, Bool, Bool) in
            guard !s.closed, let handler = s.handler else { return (nil, false, false) }
            s.inner?.close()
            s.inner = socket
            s.peerDescription = socket.peerDescription
            defer {
                s.armedRead = false
                s.armedWrite = false
            }
            return (handler, s.armedRead, s.armedWrite)
        }
        guard let handler else {
            socket.close()
            return
        }
        socket.adopt(handler: handler)
        if read || write { socket.arm(read: read, write: write) }
    }

    package func surrender() -> (any ByteStream)? {
        state.withLock { s -> SocketStream? in
            s.closed = true
            s.handler = nil
            return s.inner.take()
        }
    }
}
