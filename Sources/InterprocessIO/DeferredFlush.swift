import InterprocessCore

/// A stream whose deferred flushes (``ByteStream/requestFlush()``) run on the process's I/O thread: it only says
/// which handler to call, and whether the stream is closed (a closed stream asks for no flush).
package protocol DeferredFlushing: ByteStream {
    var flushTarget: (handler: (any ByteStreamHandler)?, closed: Bool) { get }
}

extension DeferredFlushing {
    package func requestFlush() {
        let target = flushTarget
        guard !target.closed, let handler = target.handler else { return }
        Poller.shared.requestFlush(handler)
    }

    package func cancelFlush() {
        guard let handler = flushTarget.handler else { return }
        Poller.shared.cancelFlush(handler)
    }

    package func scheduleHeartbeats(every interval: UInt64) {
        let target = flushTarget
        guard !target.closed, let handler = target.handler else { return }
        Poller.shared.scheduleHeartbeats(handler, every: interval)
    }
}
