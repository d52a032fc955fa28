import DequeModule

/// Bytes waiting to be written, in order: small frames are appended to a tail buffer; a large payload is kept
/// as its own segment (the caller's array, retained rather than copied) so it reaches the kernel with one copy.
/// The writer snapshots segments, writes them without the lock, and then consumes what was written.
///
/// A segment the library filled itself (``Sender/send(byteCount:_:)`` on a socket) is recyclable: once written
/// it is kept as the ``spare`` for the next such message, so a stream of large messages reuses one buffer
/// instead of faulting in fresh pages for each. Callers' arrays are never kept (keeping one would make the
/// caller's next change to it copy the whole array). A tail buffer, once written, becomes the next tail, so that
/// a write costs no allocation: a new 4 KiB tail per write was a large-chunk `malloc`, which makes glibc
/// consolidate every small chunk freed since (a receiver frees one per message taken), a few percent of a
/// receiver's time in a stream of small messages.
package struct Outbox {
    private enum Kind { case caller, recyclable, tail }
    private var segments = Deque<[UInt8]>()
    /// What each of `segments` is: a caller's array (dropped once written), a recyclable one (kept as the
    /// spare), or a sealed tail (kept as the next tail).
    private var kinds = Deque<Kind>()
    /// A written tail, emptied, for the next seal.
    private var spareTail: [UInt8]?
    private static let tailCapacity = 4096
    /// The last recyclable segment written, for reuse.
    package private(set) var spare: [UInt8]?
    /// Segments at least this large are kept as the spare; larger than `maxSpare` are not.
    package static let minSpare = 64 << 10
    package static let maxSpare = 8 << 20
    /// Small frames being appended.
    package var tail: [UInt8] = []
    /// Bytes of `segments.first` already written.
    private var headOffset = 0
    /// Bytes not yet written.
    package private(set) var count = 0
    /// Bytes written since the outbox was made: with ``count``, where an appended frame ends in the stream.
    package private(set) var written: UInt64 = 0

    package init() {}

    package var isEmpty: Bool { count == 0 }

    /// Appends to the tail with `body`, keeping `count` right.
    package mutating func append<R, E: Error>(_ body: (inout [UInt8]) throws(E) -> R) throws(E) -> R {
        let before = tail.count
        defer { count += tail.count - before }
        return try body(&tail)
    }

    /// Appends a whole array as its own segment, without copying it. With `recyclable` (the library made the
    /// array and nothing else holds it), it becomes the ``spare`` once written.
    package mutating func appendSegment(_ bytes: [UInt8], recyclable: Bool = false) {
        guard !bytes.isEmpty else { return }
        sealTail()
        segments.append(bytes)
        kinds.append(recyclable && bytes.count >= Self.minSpare && bytes.count <= Self.maxSpare ? .recyclable : .caller)
        count += bytes.count
    }

    /// Takes the spare buffer, if one is kept.
    package mutating func takeSpare() -> [UInt8]? {
        spare.take()
    }

    private mutating func sealTail() {
        if !tail.isEmpty {
            segments.append(tail)
            kinds.append(.tail)
            if let spare = spareTail.take() {
                tail = spare
            } else {
                tail = []
                tail.reserveCapacity(Self.tailCapacity)
            }
        }
    }

    /// Up to `limit` segments to write next (the first starting at `offset`). The caller drops the snapshot
    /// before it calls ``consume(_:)``, so that a written tail is referenced once and is reused without a copy.
    package mutating func snapshot(limit: Int = 64) -> (segments: [[UInt8]], offset: Int) {
        sealTail()
        return (Array(segments.prefix(limit)), headOffset)
    }

    /// Copies every pending byte into `region` (at least ``count`` bytes) and empties the outbox, as a write of
    /// everything followed by ``consume(_:)`` would. For shared memory, whose writes are copies into the ring.
    package mutating func drain(into region: UnsafeMutableRawBufferPointer) {
        var at = 0
        if !segments.isEmpty {
            sealTail()
            for (i, segment) in segments.enumerated() {
                let skip = i == 0 ? headOffset : 0
                segment.withUnsafeBytes { bytes in
                    (region.baseAddress! + at).copyMemory(from: bytes.baseAddress! + skip, byteCount: bytes.count - skip)
                }
                at += segment.count - skip
            }
            consume(count)
            return
        }
        tail.withUnsafeBytes { bytes in region.baseAddress!.copyMemory(from: bytes.baseAddress!, byteCount: bytes.count) }
        tail.removeAll(keepingCapacity: true)
        written += UInt64(count)
        count = 0
    }

    /// Drops `written` bytes from the front.
    package mutating func consume(_ written: Int) {
        var left = written
        count -= written
        self.written += UInt64(written)
        // Only the first segment's count is taken here: a copy of the segment itself, alive in the loop, would
        // keep a written tail from being unique (and reusing it would copy it).
        while left > 0, let firstCount = segments.first?.count {
            let remaining = firstCount - headOffset
            if left >= remaining {
                left -= remaining
                var done = segments.removeFirst()
                switch kinds.removeFirst() {
                case .caller: break
                case .recyclable: spare = done
                case .tail:
                    // A tail that grew far (a burst of many frames) is not kept.
                    if spareTail == nil && done.capacity <= 16 * Self.tailCapacity {
                        done.removeAll(keepingCapacity: true)
                        spareTail = done
                    }
                }
                headOffset = 0
            } else {
                headOffset += left
                left = 0
            }
        }
    }
}
