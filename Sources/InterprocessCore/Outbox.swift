import DequeModule

/// Bytes waiting to be written, in order: small frames are appended to a tail buffer; a large payload is kept
/// as its own segment (the caller's array, retained rather than copied) so it reaches the kernel with one copy.
/// The writer snapshots segments, writes them without the lock, and then consumes what was written.
package struct Outbox {
    private var segments = Deque<[UInt8]>()
    /// Small frames being appended.
    package var tail: [UInt8] = []
    /// Bytes of `segments.first` already written.
    private var headOffset = 0
    /// Bytes not yet written.
    package private(set) var count = 0

    package init() {}

    package var isEmpty: Bool { count == 0 }

    /// Appends to the tail with `body`, keeping `count` right.
    package mutating func append<R, E: Error>(_ body: (inout [UInt8]) throws(E) -> R) throws(E) -> R {
        let before = tail.count
        defer { count += tail.count - before }
        return try body(&tail)
    }

    /// Appends a whole array as its own segment, without copying it.
    package mutating func appendSegment(_ bytes: [UInt8]) {
        guard !bytes.isEmpty else { return }
        sealTail()
        segments.append(bytes)
        count += bytes.count
    }

    private mutating func sealTail() {
        if !tail.isEmpty {
            segments.append(tail)
            tail = []
            tail.reserveCapacity(4096)
        }
    }

    /// Up to `limit` segments to write next (the first starting at `offset`).
    package mutating func snapshot(limit: Int = 64) -> (segments: [[UInt8]], offset: Int) {
        sealTail()
        return (Array(segments.prefix(limit)), headOffset)
    }

    /// Drops `written` bytes from the front.
    package mutating func consume(_ written: Int) {
        var left = written
        count -= written
        while left > 0, let first = segments.first {
            let remaining = first.count - headOffset
            if left >= remaining {
                left -= remaining
                segments.removeFirst()
                headOffset = 0
            } else {
                headOffset += left
                left = 0
            }
        }
    }
}
