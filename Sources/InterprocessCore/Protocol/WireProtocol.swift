// Wire protocol v1: see docs/wire-protocol.md. Everything little-endian, every length checked before use.

/// Constants of wire protocol v1.
package enum Wire {
    /// "IPCH": the first four bytes each side sends.
    package static let helloMagic: [UInt8] = [0x49, 0x50, 0x43, 0x48]
    package static let version: UInt16 = 2
    /// The version of a hello that carries the resume extension (``Hello/Resume``); otherwise a version-2 hello.
    package static let resumeVersion: UInt16 = 3
    /// Hello flag (version 3): the hello continues the session it names rather than starting it.
    package static let resumingFlag: UInt16 = 1
    /// Hello flag (versions 2 and 3): this side takes messages that start with a context block
    /// (``ContextBlock``), and sends them so when the peer's hello sets it too.
    package static let tracingFlag: UInt16 = 2
    /// Largest context block a message may start with (the two length bytes not counted).
    package static let maxContextBlock = 2048
    /// Bytes of a session id.
    package static let sessionIDSize = 16
    /// The session a listener that does not offer resume answers a version-3 hello with; never a dialer's.
    package static let noSession = [UInt8](repeating: 0, count: sessionIDSize)
    /// Fixed part of a hello: magic, version, flags, body length.
    package static let helloHeaderSize = 12
    /// Largest hello body accepted.
    package static let maxHelloBody = 4096
    /// Frame header: length (u32), type (u8), flags (u8), reserved (u16).
    package static let frameHeaderSize = 8
    /// A data frame's payload starts with its sequence number.
    package static let dataPrefixSize = 8
    /// Largest error-frame message accepted.
    package static let maxErrorMessage = 4096
    /// Default largest message payload: 16 MiB.
    package static let defaultMaxFrame = 16 << 20
    /// A receiver sends a credit frame at least every this many bytes of data frames taken (256 KiB), each frame
    /// counted as its payload plus ``dataFrameOverhead``.
    package static let creditBytes = 256 << 10
    /// The most pongs that may wait in a connection's outbox for a peer that does not read them (beyond what
    /// the transport buffers); a peer that pings further is cut off.
    package static let maxUnwrittenPongs = 64
    /// What a data frame adds to its payload in the byte counts of flow control: header and sequence number.
    package static let dataFrameOverhead = frameHeaderSize + dataPrefixSize
    /// A sender's default limit on bytes of data frames sent and not yet taken, and the least it may be set to (twice
    /// ``creditBytes``, so that a credit always arrives before a sender held by the limit runs dry).
    package static let defaultMaxBytesInFlight = 2 << 20
    package static let minMaxBytesInFlight = 2 * creditBytes

    /// A data frame's header and sequence number, for a payload of `payloadCount` bytes, as two little-endian
    /// words: length, type, flags 0 and reserved 0; then the sequence number.
    package static func dataFrameHeader(seq: UInt64, payloadCount: Int) -> (UInt64, UInt64) {
        let first = UInt64(UInt32(truncatingIfNeeded: dataPrefixSize + payloadCount)) | UInt64(FrameType.data.rawValue) << 32
        return (first.littleEndian, seq.littleEndian)
    }
}

/// Frame types of wire protocol v1.
package enum FrameType: UInt8 {
    case data = 1
    case credit = 2
    case close = 3
    case error = 4
    case ping = 5
    case pong = 6
    /// The receiver is gone: it takes no more messages.
    case stop = 7
    case grant = 8
    /// Resumable connections only: the receiver has the peer's close (it will end once it took what it has).
    case closeReceived = 9
}

/// What each side announces before any frame.
package struct Hello: Equatable, Sendable {
    /// How many unconsumed messages this side buffers for the peer (0: unbuffered rendezvous).
    package var capacity: UInt32
    /// Largest message payload this side accepts.
    package var maxFrame: UInt32
    package var sendCodec: String
    package var sendType: String
    package var receiveCodec: String
    package var receiveType: String
    /// The resume extension (version 3): this side can resume the connection after its stream breaks.
    package var resume: Resume?
    /// This side carries a context block at the start of every message when the peer's hello says so too
    /// (``Wire/tracingFlag``).
    package var tracing = false

    /// A resumable connection's session and how much of the peer's messages this side received.
    package struct Resume: Equatable, Sendable {
        /// Chosen at random by the dialing side; the same for every stream of the connection.
        package var session: [UInt8]
        /// Whether this hello continues the session (on a new stream) rather than starting it.
        package var resuming: Bool
        /// The sequence number of the last data frame this side received from the peer (0 when starting).
        package var received: UInt64

        package init(session: [UInt8], resuming: Bool = false, received: UInt64 = 0) {
            self.session = session
            self.resuming = resuming
            self.received = received
        }
    }

    package init(capacity: UInt32, maxFrame: UInt32, sendCodec: String, sendType: String, receiveCodec: String, receiveType: String, resume: Resume? = nil, tracing: Bool = false) {
        self.tracing = tracing
        self.capacity = capacity
        self.maxFrame = maxFrame
        self.sendCodec = sendCodec
        self.sendType = sendType
        self.receiveCodec = receiveCodec
        self.receiveType = receiveType
        self.resume = resume
    }

    /// The hello without its resume extension: what must stay the same on every stream of a resumed connection.
    package var terms: Hello {
        var terms = self
        terms.resume = nil
        return terms
    }

    package func encoded() -> [UInt8] {
        var body: [UInt8] = []
        body.appendLE(capacity)
        body.appendLE(maxFrame)
        body.appendString8(sendCodec)
        body.appendString16(sendType)
        body.appendString8(receiveCodec)
        body.appendString16(receiveType)
        if let resume {
            precondition(resume.session.count == Wire.sessionIDSize)
            body += resume.session
            body.appendLE(resume.received)
        }
        var out = Wire.helloMagic
        out.appendLE(resume == nil ? Wire.version : Wire.resumeVersion)
        out.appendLE((resume?.resuming == true ? Wire.resumingFlag : 0) | (tracing ? Wire.tracingFlag : 0))
        out.appendLE(UInt32(body.count))
        return out + body
    }

    /// Parses a hello from the start of `bytes`. Returns nil when more bytes are needed, with the size consumed.
    package static func parse(_ bytes: UnsafeRawBufferPointer) throws(IPCError) -> (Hello, Int)? {
        let checked = min(bytes.count, 4)
        for i in 0..<checked where bytes[i] != Wire.helloMagic[i] {
            throw IPCError(.protocolViolation, "the peer does not speak the Interprocess protocol (wrong magic bytes \(hex(bytes, checked))); check that both ends use Interprocess with the same codec mode (the 'lines' mode has no handshake)")
        }
        guard bytes.count >= Wire.helloHeaderSize else { return nil }
        let version = bytes.loadLE(UInt16.self, at: 4)
        guard version == Wire.version || version == Wire.resumeVersion else {
            throw IPCError(.handshakeMismatch, "the peer speaks wire protocol version \(version), this side versions \(Wire.version) and \(Wire.resumeVersion); upgrade the older side")
        }
        let flags = bytes.loadLE(UInt16.self, at: 6)
        let defined = (version == Wire.resumeVersion ? Wire.resumingFlag : 0) | Wire.tracingFlag
        guard flags & ~defined == 0 else {
            throw IPCError(.protocolViolation, "the peer's handshake has flags \(flags) set; version \(version) defines only \(defined)")
        }
        let bodyLength = Int(bytes.loadLE(UInt32.self, at: 8))
        guard bodyLength <= Wire.maxHelloBody else {
            throw IPCError(.protocolViolation, "the peer's handshake claims \(bodyLength) bytes, more than the \(Wire.maxHelloBody) allowed")
        }
        guard bytes.count >= Wire.helloHeaderSize + bodyLength else { return nil }
        var reader = ByteReader(UnsafeRawBufferPointer(rebasing: bytes[Wire.helloHeaderSize..<(Wire.helloHeaderSize + bodyLength)]))
        guard let capacity = reader.read(UInt32.self), let maxFrame = reader.read(UInt32.self),
            let sendCodec = reader.readString8(), let sendType = reader.readString16(),
            let receiveCodec = reader.readString8(), let receiveType = reader.readString16()
        else {
            throw IPCError(.protocolViolation, "the peer's handshake is truncated or malformed (a field runs past its end, or a name is not valid UTF-8)")
        }
        var resume: Resume?
        if version == Wire.resumeVersion {
            guard let session = reader.readBytes(Wire.sessionIDSize), let received = reader.read(UInt64.self) else {
                throw IPCError(.protocolViolation, "the peer's version-\(version) handshake lacks its session id or received count")
            }
            resume = Resume(session: [UInt8](session), resuming: flags & Wire.resumingFlag != 0, received: received)
        }
        guard reader.remaining == 0 else {
            throw IPCError(.protocolViolation, "the peer's handshake has \(reader.remaining) bytes after its last field; version \(version) defines none")
        }
        return (Hello(capacity: capacity, maxFrame: maxFrame, sendCodec: sendCodec, sendType: sendType, receiveCodec: receiveCodec, receiveType: receiveType, resume: resume, tracing: flags & Wire.tracingFlag != 0), Wire.helloHeaderSize + bodyLength)
    }

    /// Checks that `peer` sends what this side receives and receives what this side sends.
    package func checkCompatible(withPeer peer: Hello) throws(IPCError) {
        var problems: [String] = []
        // The peer's names are compared as sent, and escaped where they are shown.
        if peer.sendCodec != receiveCodec || peer.sendType != receiveType {
            problems.append("the peer sends \(peer.sendType.escapedForDisplay) as \(peer.sendCodec.escapedForDisplay) but this side receives \(receiveType) as \(receiveCodec)")
        }
        if peer.receiveCodec != sendCodec || peer.receiveType != sendType {
            problems.append("the peer receives \(peer.receiveType.escapedForDisplay) as \(peer.receiveCodec.escapedForDisplay) but this side sends \(sendType) as \(sendCodec)")
        }
        if !problems.isEmpty {
            throw IPCError(.handshakeMismatch, problems.joined(separator: "; ") + "; use the same element type and codec on both ends")
        }
    }
}

extension String {
    /// The string with every character that could forge or hide text where it is shown (control characters,
    /// escape sequences, line and paragraph separators, bidirectional overrides) written as `\u{...}`, so
    /// that a peer's text cannot start a new log line or restyle a terminal.
    package var escapedForDisplay: String {
        var out = ""
        out.reserveCapacity(utf8.count)
        for scalar in unicodeScalars {
            switch scalar.value {
            case 0x00...0x1F, 0x7F...0x9F, 0x2028, 0x2029, 0x200E, 0x200F, 0x202A...0x202E, 0x2066...0x2069:
                out += "\\u{" + String(scalar.value, radix: 16) + "}"
            default:
                out.unicodeScalars.append(scalar)
            }
        }
        return out
    }
}

private func hex(_ bytes: UnsafeRawBufferPointer, _ count: Int) -> String {
    (0..<count).map { i in
        let s = String(bytes[i], radix: 16)
        return s.count == 1 ? "0" + s : s
    }.joined(separator: " ")
}

/// A frame decoded from the stream. Data payloads are owned arrays (the message bytes, without sequence number).
package enum Frame: Sendable, Equatable {
    case data(seq: UInt64, payload: [UInt8])
    /// The receiver has taken every message up to and including `consumed` (cumulative).
    case credit(consumed: UInt64)
    /// The peer will send no more data; `lastSeq` is the sequence number of its last data frame (0 if none).
    case close(lastSeq: UInt64)
    case error(code: UInt16, message: String)
    case ping(UInt64)
    case pong(UInt64)
    /// The peer's receiver is gone after taking `taken` messages; later ones are discarded.
    case stop(taken: UInt64)
    /// Rendezvous (capacity 0) only: the receiver waits for messages up to and including `upTo` (it offers
    /// `taken + 1` while a receive waits, and takes the offer back with `taken` when none waits any more).
    case grant(upTo: UInt64)
    /// Resumable connections only: this side received the peer's close after message `lastSeq`, so the peer's
    /// sending direction needs nothing more from the connection (the end of the stream after it is a goodbye).
    case closeReceived(lastSeq: UInt64)
}

extension Array where Element == UInt8 {

    package mutating func appendLE<T: FixedWidthInteger>(_ value: T) {
        // Byte by byte, low first: a few `append`s are cheaper than the generic `append(contentsOf:)` of a raw
        // buffer (which showed in every frame header and codec field), and the order is the same on any host.
        var rest = value
        for _ in 0..<MemoryLayout<T>.size {
            append(UInt8(truncatingIfNeeded: rest))
            rest >>= 8
        }
    }

    package mutating func appendString8(_ s: String) {
        let utf8 = Array(s.utf8.prefix(255))
        append(UInt8(utf8.count))
        append(contentsOf: utf8)
    }

    package mutating func appendString16(_ s: String) {
        let utf8 = Array(s.utf8.prefix(Int(UInt16.max)))
        appendLE(UInt16(utf8.count))
        append(contentsOf: utf8)
    }

    /// Appends a frame header for a payload of `length` bytes.

    package mutating func appendFrameHeader(_ type: FrameType, length: Int) {
        appendLE(UInt32(truncatingIfNeeded: length))
        append(type.rawValue)
        append(0)
        appendLE(UInt16(0))
    }

    /// A data frame's header and sequence number, for a body of `length` bytes (sequence number and payload; 0
    /// when the payload is appended afterwards and the length filled in with ``storeLE(_:at:)``): one append of
    /// 16 bytes, cheaper than the 16 single-byte ones of ``appendFrameHeader(_:length:)`` and ``appendLE(_:)`` on
    /// every message.
    package mutating func appendDataFrameHeader(seq: UInt64, length: Int = 0) {
        Swift.withUnsafeBytes(of: Wire.dataFrameHeader(seq: seq, payloadCount: length - Wire.dataPrefixSize)) { raw in
            raw.withMemoryRebound(to: UInt8.self) { append(contentsOf: $0) }
        }
    }

    /// A whole data frame, header and payload. A small payload (a frame of at most 256 bytes) goes in the same
    /// append as the header, from a copy on the stack: each append checks the array's uniqueness and capacity
    /// and copies on its own.
    package mutating func appendDataFrame(seq: UInt64, payload: UnsafeRawBufferPointer) {
        let length = Wire.dataPrefixSize + payload.count
        guard payload.count <= 256 - Wire.dataFrameOverhead else {
            appendDataFrameHeader(seq: seq, length: length)
            append(contentsOf: payload)
            return
        }
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: Wire.dataFrameOverhead + payload.count) { frame in
            let raw = UnsafeMutableRawBufferPointer(frame)
            raw.storeBytes(of: Wire.dataFrameHeader(seq: seq, payloadCount: payload.count), as: (UInt64, UInt64).self)
            UnsafeMutableRawBufferPointer(rebasing: raw[Wire.dataFrameOverhead...]).copyMemory(from: payload)
            append(contentsOf: frame)
        }
    }

    /// Overwrites a little-endian u32 at `offset`.
    package mutating func storeLE(_ value: UInt32, at offset: Int) {
        withUnsafeMutableBytes { $0.storeBytes(of: value.littleEndian, toByteOffset: offset, as: UInt32.self) }
    }

    package mutating func appendControlFrame(_ frame: Frame) {
        switch frame {
        case .data(let seq, let payload):
            appendFrameHeader(.data, length: Wire.dataPrefixSize + payload.count)
            appendLE(seq)
            append(contentsOf: payload)
        case .credit(let consumed):
            appendFrameHeader(.credit, length: 8)
            appendLE(consumed)
        case .close(let lastSeq):
            appendFrameHeader(.close, length: 8)
            appendLE(lastSeq)
        case .error(let code, let message):
            // Cut on a character boundary: a message never ends inside a UTF-8 sequence (a cut is one when the
            // first byte left out is not a continuation byte).
            let utf8 = Array(message.utf8)
            var cut = Swift.min(utf8.count, Wire.maxErrorMessage)
            while cut < utf8.count, cut > 0, utf8[cut] & 0xC0 == 0x80 { cut -= 1 }
            let text = utf8[..<cut]
            appendFrameHeader(.error, length: 2 + text.count)
            appendLE(code)
            append(contentsOf: text)
        case .ping(let nonce):
            appendFrameHeader(.ping, length: 8)
            appendLE(nonce)
        case .pong(let nonce):
            appendFrameHeader(.pong, length: 8)
            appendLE(nonce)
        case .stop(let taken):
            appendFrameHeader(.stop, length: 8)
            appendLE(taken)
        case .grant(let upTo):
            appendFrameHeader(.grant, length: 8)
            appendLE(upTo)
        case .closeReceived(let lastSeq):
            appendFrameHeader(.closeReceived, length: 8)
            appendLE(lastSeq)
        }
    }
}

extension UnsafeRawBufferPointer {

    package func loadLE<T: FixedWidthInteger>(_: T.Type, at offset: Int) -> T {
        T(littleEndian: loadUnaligned(fromByteOffset: offset, as: T.self))
    }
}

/// Bounds-checked sequential reads from untrusted bytes.
package struct ByteReader {
    package let bytes: UnsafeRawBufferPointer
    package var offset = 0
    package init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    package var remaining: Int { bytes.count - offset }

    package mutating func read<T: FixedWidthInteger>(_: T.Type) -> T? {
        guard remaining >= MemoryLayout<T>.size else { return nil }
        defer { offset += MemoryLayout<T>.size }
        return bytes.loadLE(T.self, at: offset)
    }

    package mutating func readBytes(_ count: Int) -> UnsafeRawBufferPointer? {
        guard count >= 0, remaining >= count else { return nil }
        defer { offset += count }
        return UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + count)])
    }

    /// A string of at most 255 bytes, nil when truncated or not valid UTF-8 (names are compared byte for byte, so
    /// one is never repaired: two different invalid names would compare equal).
    package mutating func readString8() -> String? {
        guard let n = read(UInt8.self), let raw = readBytes(Int(n)) else { return nil }
        return String(validating: raw, as: UTF8.self)
    }

    /// A string of at most 65535 bytes, like ``readString8()``.
    package mutating func readString16() -> String? {
        guard let n = read(UInt16.self), let raw = readBytes(Int(n)) else { return nil }
        return String(validating: raw, as: UTF8.self)
    }
}
