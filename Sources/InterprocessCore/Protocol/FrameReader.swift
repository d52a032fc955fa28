import InterprocessPlatform
import Synchronization

/// Incremental decoder of the byte stream a peer sends: first its hello, then frames (or, in lines mode,
/// newline-delimited text). Bytes are read straight into the decoder's buffer; a large data payload is read
/// straight into the array that becomes the message, so it is copied once, by the kernel. That array is a
/// recycled one when the receiver handed one back (``recycle(_:)``: the in-place receive does, for messages that
/// were never given to the caller as arrays), so a stream of large messages does not fault in fresh pages each.
///
/// Every length is checked against the configured maximum before anything is allocated for it.
/// Not thread-safe (except ``recycle(_:)``): only the holder of a connection's reader role touches it.
package final class FrameReader {
    package enum Mode: Sendable { case framed, lines }

    package enum Event: Equatable {
        case hello(Hello)
        case frame(Frame)
    }

    private let mode: Mode
    private let maxPayload: Int
    // Only the reader role touches these (see above), so the dynamic exclusivity check on every access (a few
    // percent of a receiver's time in a stream of small messages) buys nothing.
    @exclusivity(unchecked) private var buffer: UnsafeMutableRawBufferPointer
    @exclusivity(unchecked) private var start = 0
    @exclusivity(unchecked) private var end = 0
    @exclusivity(unchecked) private var expectingHello: Bool
    /// A data payload too large for the buffer, being read in place.
    @exclusivity(unchecked) private var large: (seq: UInt64, payload: [UInt8], filled: Int)?
    /// Payloads above this go straight into their own array.
    private static let directThreshold = 64 << 10
    private static let bufferSize = 256 << 10
    /// Until the hello is in, the buffer needs to hold a hello and no more: a connection that never completes its
    /// handshake (a flood of them, say) costs 8 KiB, not the full buffer, which it gets once its hello is parsed.
    private static let helloBufferSize = 8 << 10
    /// A large payload's array handed back by the receiver, reused for the next large payload.
    private let spare = Lock<[UInt8]?>(nil)

    package init(mode: Mode, maxPayload: Int) {
        self.mode = mode
        self.maxPayload = maxPayload
        self.expectingHello = mode == .framed
        buffer = .allocate(byteCount: mode == .framed ? Self.helloBufferSize : Self.bufferSize, alignment: 16)
    }

    deinit { buffer.deallocate() }

    /// Bytes read since the reader was made.
    package private(set) var totalRead: UInt64 = 0

    /// A resumed connection's new stream: whatever was received of the old one and not decoded (part of a frame)
    /// is dropped (the peer sends that frame again), and the new stream starts with a hello (`expectingHello`) or
    /// with frames (its hello was read already).
    package func restart(expectingHello: Bool) {
        start = 0
        end = 0
        large = nil
        self.expectingHello = expectingHello && mode == .framed
    }

    /// Bytes received but not yet decoded (for truncation checks).
    package var pendingBytes: Int { end - start + (large?.filled ?? 0) }

    /// How many more bytes complete the frame (or hello) that the received bytes start: 0 when nothing is
    /// pending or a complete one is (``next()`` decodes it). A reader that must stop at a frame boundary reads
    /// at most this much.
    package var bytesToFrameEnd: Int {
        if let large { return large.payload.count - large.filled }
        let have = end - start
        guard mode == .framed, have > 0 else { return 0 }
        let bytes = UnsafeRawBufferPointer(rebasing: buffer[start..<end])
        let headerSize = expectingHello ? Wire.helloHeaderSize : Wire.frameHeaderSize
        guard have >= headerSize else { return headerSize - have }
        let bodyLength = Int(bytes.loadLE(UInt32.self, at: expectingHello ? 8 : 0))
        return max(headerSize + bodyLength - have, 0)
    }

    /// Calls `body` with the memory the next read should fill; `body` returns how many bytes it stored.
    package func read(_ body: (UnsafeMutableRawBufferPointer) throws(IPCError) -> Int) throws(IPCError) -> Int {
        if var pending = large {
            large = nil
            defer { large = pending }
            let filled = pending.filled
            var result: Result<Int, IPCError> = .success(0)
            pending.payload.withUnsafeMutableBytes { all in
                result = Result { () throws(IPCError) -> Int in try body(UnsafeMutableRawBufferPointer(rebasing: all[filled...])) }
            }
            let n = try result.get()
            pending.filled += n
            totalRead &+= UInt64(n)
            return n
        }
        if start == end {
            // Everything read was decoded: read to the front again, so a stream of small frames keeps using the
            // same few cache lines instead of walking through the whole buffer (and reads stay large).
            start = 0
            end = 0
        } else if end == buffer.count {
            if start > 0 {
                compact()
            } else if mode == .lines && buffer.count <= maxPayload {
                resize(to: min(buffer.count * 2, maxPayload + 2))
            }
        }
        let n = try body(UnsafeMutableRawBufferPointer(rebasing: buffer[end...]))
        end += n
        totalRead &+= UInt64(n)
        return n
    }

    private func compact() {
        let live = end - start
        if live > 0 { buffer.baseAddress!.copyMemory(from: buffer.baseAddress! + start, byteCount: live) }
        start = 0
        end = live
    }

    /// Moves what is buffered to the front of a new buffer of `size` bytes.
    private func resize(to size: Int) {
        let bigger = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 16)
        if end > start { bigger.baseAddress!.copyMemory(from: buffer.baseAddress! + start, byteCount: end - start) }
        end -= start
        start = 0
        buffer.deallocate()
        buffer = bigger
    }

    /// The next complete event in what has been read, or nil when more bytes are needed.
    package func next() throws(IPCError) -> Event? {
        if let pending = large {
            guard pending.filled == pending.payload.count else { return nil }
            large = nil
            return .frame(.data(seq: pending.seq, payload: pending.payload))
        }
        let available = UnsafeRawBufferPointer(rebasing: buffer[start..<end])
        switch mode {
        case .lines:
            return try nextLine(available)
        case .framed where expectingHello:
            guard let (hello, used) = try Hello.parse(available) else { return nil }
            start += used
            expectingHello = false
            resize(to: Self.bufferSize)
            return .hello(hello)
        case .framed:
            return try nextFrame(available)
        }
    }

    /// The next frame when it is a data frame that lies whole in the buffer, within the size limit: the common
    /// case, decoded without building an ``Event``. Nil for anything else (which ``next()`` then decodes and
    /// checks), including when more bytes are needed.
    package func nextData() -> (seq: UInt64, payload: [UInt8])? {
        guard mode == .framed, !expectingHello, large == nil else { return nil }
        let have = end - start
        guard have >= Wire.frameHeaderSize + Wire.dataPrefixSize else { return nil }
        let bytes = UnsafeRawBufferPointer(rebasing: buffer[start..<end])
        let length = Int(bytes.loadLE(UInt32.self, at: 0))
        // Type, flags and reserved bytes in one comparison: a data frame with anything set in the latter is left
        // to `next()`, which refuses it.
        guard bytes.loadLE(UInt32.self, at: 4) == UInt32(FrameType.data.rawValue), length >= Wire.dataPrefixSize, length - Wire.dataPrefixSize <= maxPayload,
              have >= Wire.frameHeaderSize + length
        else { return nil }
        start += Wire.frameHeaderSize + length
        let seq = bytes.loadLE(UInt64.self, at: Wire.frameHeaderSize)
        let payloadStart = Wire.frameHeaderSize + Wire.dataPrefixSize
        return (seq, Self.array(UnsafeRawBufferPointer(rebasing: bytes[payloadStart..<(Wire.frameHeaderSize + length)])))
    }

    private func nextFrame(_ bytes: UnsafeRawBufferPointer) throws(IPCError) -> Event? {
        guard bytes.count >= Wire.frameHeaderSize else { return nil }
        let length = Int(bytes.loadLE(UInt32.self, at: 0))
        let rawType = bytes[4]
        guard let type = FrameType(rawValue: rawType) else {
            throw IPCError(.protocolViolation, "the peer sent a frame of unknown type \(rawType); the stream is corrupt or the peer speaks another protocol")
        }
        guard bytes[5] == 0, bytes[6] == 0, bytes[7] == 0 else {
            throw IPCError(.protocolViolation, "the peer sent a \(type) frame with flags or reserved bytes set (\(bytes[5]), \(bytes[6]), \(bytes[7])); version \(Wire.version) defines none (they must be 0)")
        }
        let limit: Int
        switch type {
        case .data: limit = Wire.dataPrefixSize + maxPayload
        case .error: limit = 2 + Wire.maxErrorMessage
        case .credit, .close, .ping, .pong, .stop, .grant, .closeReceived: limit = 8
        }
        guard length <= limit else {
            if type == .data {
                throw IPCError(.frameTooLarge, "the peer sent a \(length - Wire.dataPrefixSize)-byte message; this side accepts at most \(maxPayload) bytes (raise maxFrameSize on the receiving side or send smaller messages)")
            }
            throw IPCError(.protocolViolation, "the peer sent a \(type) frame of \(length) bytes; at most \(limit) are allowed")
        }
        guard length >= (type == .error ? 2 : 8) else {
            throw IPCError(.protocolViolation, "the peer sent a \(type) frame of only \(length) bytes")
        }
        let body = Wire.frameHeaderSize
        if type == .data, length - Wire.dataPrefixSize > Self.directThreshold, bytes.count < body + length {
            // Large payload: read the rest of it straight into the message's own array.
            guard bytes.count >= body + Wire.dataPrefixSize else { return nil }
            let seq = bytes.loadLE(UInt64.self, at: body)
            let payloadLength = length - Wire.dataPrefixSize
            let have = bytes.count - body - Wire.dataPrefixSize
            let received = UnsafeRawBufferPointer(rebasing: bytes[(body + Wire.dataPrefixSize)...])
            let payload = recycledArray(count: payloadLength, startingWith: received)
                ?? [UInt8](unsafeUninitializedCapacity: payloadLength) { storage, count in
                    UnsafeMutableRawPointer(storage.baseAddress!).copyMemory(from: received.baseAddress!, byteCount: have)
                    count = payloadLength
                }
            start = end
            large = (seq, payload, have)
            return try next()
        }
        guard bytes.count >= body + length else { return nil }
        start += body + length
        let b = UnsafeRawBufferPointer(rebasing: bytes[body..<(body + length)])
        switch type {
        case .data:
            let seq = b.loadLE(UInt64.self, at: 0)
            return .frame(.data(seq: seq, payload: Self.array(UnsafeRawBufferPointer(rebasing: b[Wire.dataPrefixSize...]))))
        case .credit: return .frame(.credit(consumed: b.loadLE(UInt64.self, at: 0)))
        case .close: return .frame(.close(lastSeq: b.loadLE(UInt64.self, at: 0)))
        case .ping: return .frame(.ping(b.loadLE(UInt64.self, at: 0)))
        case .pong: return .frame(.pong(b.loadLE(UInt64.self, at: 0)))
        case .stop: return .frame(.stop(taken: b.loadLE(UInt64.self, at: 0)))
        case .grant: return .frame(.grant(upTo: b.loadLE(UInt64.self, at: 0)))
        case .closeReceived: return .frame(.closeReceived(lastSeq: b.loadLE(UInt64.self, at: 0)))
        case .error:
            let code = b.loadLE(UInt16.self, at: 0)
            // The peer's text is shown in errors and logs: escaped, so it cannot forge a line there.
            return .frame(.error(code: code, message: String(decoding: b[2...], as: UTF8.self).escapedForDisplay))
        }
    }

    /// Keeps `payload` (a large message's array that nothing else holds) for the next large payload.
    package func recycle(_ payload: consuming [UInt8]) {
        guard payload.count > Self.directThreshold, payload.count <= Outbox.maxSpare else { return }
        spare.withLock { $0 = payload }
    }

    /// The spare array resized to `count` (if it is big enough, and not more than twice too big), starting with
    /// `head`; the rest of it is filled by the reads that follow.
    private func recycledArray(count: Int, startingWith head: UnsafeRawBufferPointer) -> [UInt8]? {
        guard var reused = spare.withLock({ $0.take() }), reused.count >= count, reused.count / 2 <= count else { return nil }
        reused.removeLast(reused.count - count)
        reused.withUnsafeMutableBytes { $0.baseAddress!.copyMemory(from: head.baseAddress!, byteCount: head.count) }
        return reused
    }

    /// A copy of `bytes` as an array, with one `memcpy` (the generic `Array(slice)` copies element-wise). Built
    /// from the raw buffer rather than with `init(unsafeUninitializedCapacity:)`, whose unspecialized entry point
    /// looks up the array storage's metadata on every call.
    private static func array(_ bytes: UnsafeRawBufferPointer) -> [UInt8] {
        [UInt8](bytes)
    }

    private func nextLine(_ bytes: UnsafeRawBufferPointer) throws(IPCError) -> Event? {
        guard let newline = bytes.firstIndex(of: UInt8(ascii: "\n")) else {
            if bytes.count > maxPayload {
                throw IPCError(.frameTooLarge, "the peer sent a line longer than \(maxPayload) bytes; raise maxFrameSize or send shorter lines")
            }
            return nil
        }
        start += newline + 1
        var line = newline
        if line > 0 && bytes[line - 1] == UInt8(ascii: "\r") { line -= 1 }
        return .frame(.data(seq: 0, payload: Array(bytes[0..<line])))
    }

    /// Called at end of stream: in lines mode a last line without newline is delivered; in framed mode any
    /// partial frame is a truncation error.
    package func finish() throws(IPCError) -> Frame? {
        if mode == .lines {
            guard end > start else { return nil }
            defer { start = end }
            return .data(seq: 0, payload: Array(UnsafeRawBufferPointer(rebasing: buffer[start..<end])))
        }
        if pendingBytes > 0 {
            throw IPCError(.peerClosed, "the peer's stream ended inside a frame (\(pendingBytes) bytes of an incomplete frame); the peer crashed or closed its socket mid-message")
        }
        return nil
    }
}
