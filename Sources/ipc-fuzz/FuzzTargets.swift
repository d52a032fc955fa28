import InterprocessCore
import InterprocessSharedMemory

/// What a peer or a message can feed the decoding code, one target per entry point that reads untrusted bytes.
/// Each target either accepts the input or throws an `IPCError`; anything else (a crash, a trap, a hang, memory
/// beyond the stated limits, a value that does not survive a round trip) is a bug. Run by libFuzzer
/// (`ipc-fuzz` built with `-sanitize=fuzzer`, see `.ci/run`) and, over the committed corpus, by the tests.
enum FuzzTarget: String, CaseIterable, Sendable {
    /// A peer's whole byte stream (hello, then frames), delivered in pieces, into a receiving connection state.
    case stream
    /// A hello on its own.
    case hello
    /// A message for the binary `Codable` codec.
    case binary
    /// A message for the JSON `Codable` codec.
    case json
    /// A shared-memory peer that writes the incoming ring's position, end flag and bytes at will.
    case ring

    func run(_ data: UnsafeRawBufferPointer) {
        switch self {
        case .stream: Self.stream(data)
        case .hello: Self.hello(data)
        case .binary: Self.roundTrip(BinaryCodec(FuzzRecord.self), data)
        case .json: Self.roundTrip(JSONCodec(FuzzRecord.self), data)
        case .ring: Self.ring(data)
        }
    }

    static let capacity: UInt32 = 16
    static let maxFrame = 1 << 16
    static var local: Hello {
        Hello(capacity: capacity, maxFrame: UInt32(maxFrame), sendCodec: "raw", sendType: "bytes", receiveCodec: "raw", receiveType: "bytes")
    }

    /// The first byte sets the size of the pieces the rest arrives in (1-256 bytes), as reads of a socket would.
    /// Messages are taken as they arrive (as a receiving task would), so a well-behaved peer is never over its
    /// capacity; one that is must be refused.
    static func stream(_ data: UnsafeRawBufferPointer) {
        guard let first = data.first else { return }
        let piece = Int(first) + 1
        let input = UnsafeRawBufferPointer(rebasing: data.dropFirst())
        let reader = FrameReader(mode: .framed, maxPayload: maxFrame)
        var state = ConnectionState(mode: .framed, local: local, hasSender: true, hasReceiver: true, maxBytesInFlight: 1 << 20)
        var offset = 0
        do {
            while offset < input.count {
                let n = try reader.read { buffer throws(IPCError) in
                    let count = min(buffer.count, piece, input.count - offset)
                    buffer.baseAddress!.copyMemory(from: input.baseAddress! + offset, byteCount: count)
                    return count
                }
                offset += n
                // As a connection reads: whole data frames through the fast path first, anything else through next().
                while true {
                    var effects = ConnectionState.Effects()
                    if let (seq, payload) = reader.nextData() {
                        try state.receiveData(seq: seq, payload: payload)
                    } else if let event = try reader.next() {
                        switch event {
                        case .hello(let hello): try state.apply(hello: hello)
                        case .frame(let frame): try state.apply(frame, effects: &effects)
                        }
                    } else {
                        break
                    }
                    check(state.inbox.count <= Int(capacity), "the inbox holds \(state.inbox.count) messages, over the capacity")
                    while case .message(let message, _) = state.receive() {
                        check(message.count <= maxFrame, "a message of \(message.count) bytes passed the frame limit")
                    }
                }
                check(reader.pendingBytes <= maxFrame + 64 << 10, "the reader holds \(reader.pendingBytes) bytes")
                // Bounded output: credits and pongs only, never more than a few frames per frame received.
                check(state.outbox.count <= 64 << 10, "the outbox holds \(state.outbox.count) bytes")
            }
            _ = state.applyEndOfStream()
            _ = try reader.finish()
        } catch {
            check(!error.message.isEmpty, "an error without a message")
        }
    }

    /// The input is a program for the peer, one step per byte (its low two bits; operands follow it): publish the
    /// next n bytes (n from one byte) at the write position; set the write position to any 64-bit value; set the
    /// end flag; read up to n bytes through the stream. Whatever the peer does, a read returns only bytes below a
    /// position the peer published (the stream may still return bytes up to one it read before the peer moved it
    /// back: those were published), never more than a ring's worth at once, or it refuses the ring as corrupt and
    /// from then on returns nothing.
    static func ring(_ data: UnsafeRawBufferPointer) {
        let capacity = 4096
        guard let (stream, peer) = try? SharedMemorySetup.unconnected(ringCapacity: capacity) else { fatalError("no shared memory") }
        var input = ByteReader(data)
        var written: UInt64 = 0
        var highest: UInt64 = 0
        var read: UInt64 = 0
        var corrupt = false
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: capacity * 2, alignment: 8)
        defer { buffer.deallocate() }
        while let step = input.read(UInt8.self) {
            switch step & 3 {
            case 0:
                guard let n = input.read(UInt8.self), let bytes = input.readBytes(min(Int(n), input.remaining)) else { return }
                for (i, byte) in bytes.enumerated() { peer.data.storeBytes(of: byte, toByteOffset: (Int(truncatingIfNeeded: written) &+ i) & (capacity - 1), as: UInt8.self) }
                written &+= UInt64(bytes.count)
                highest = max(highest, written)
                peer.head.storeBytes(of: written.littleEndian, as: UInt64.self)
            case 1:
                guard let position = input.read(UInt64.self) else { return }
                written = position
                highest = max(highest, written)
                peer.head.storeBytes(of: written.littleEndian, as: UInt64.self)
            case 2:
                peer.writerClosed.storeBytes(of: UInt32(1), as: UInt32.self)
            default:
                let n = Int(input.read(UInt8.self) ?? 0) * 16 + 1
                do {
                    switch try stream.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[..<n])) {
                    case .bytes(let count):
                        check(!corrupt, "a read succeeded after the ring was refused")
                        check(count <= n && count <= capacity && read.addingReportingOverflow(UInt64(count)).partialValue <= highest,
                              "read \(count) bytes at \(read); the peer's positions went up to \(highest)")
                        read &+= UInt64(count)
                    case .wouldBlock, .endOfStream:
                        break
                    }
                } catch {
                    check(error.code == .protocolViolation || error.code == .alreadyClosed, "the ring was refused with \(error.code)")
                    corrupt = true
                }
            }
        }
        stream.close()
    }

    static func hello(_ data: UnsafeRawBufferPointer) {
        do {
            guard let (hello, used) = try Hello.parse(data) else { return }
            check(used <= data.count, "the hello used \(used) of \(data.count) bytes")
            // What parses must encode back to the same bytes (no field is dropped or guessed).
            check(hello.encoded() == Array(data[..<used]), "the hello does not encode back to what was parsed")
            try local.checkCompatible(withPeer: hello)
        } catch {
            check(!error.message.isEmpty, "an error without a message")
        }
    }

    /// A message either fails to decode with an `IPCError`, or decodes to a value that encodes, and decodes from
    /// that encoding to an equal value (floating-point fields compared bit for bit; dictionaries have no order,
    /// so the encodings themselves may differ).
    static func roundTrip<Codec: MessageCodec<FuzzRecord>>(_ codec: Codec, _ data: UnsafeRawBufferPointer) {
        let value: FuzzRecord
        do {
            value = try codec.decode(Array(data))
        } catch {
            check(!error.message.isEmpty, "an error without a message")
            return
        }
        do {
            var bytes: [UInt8] = []
            try codec.encode(value, into: &bytes)
            check(try codec.decode(bytes) == value, "a decoded value does not survive a round trip")
        } catch {
            check(false, "a decoded value fails to round-trip: \(error)")
        }
    }

    static func check(_ condition: Bool, _ message: @autoclosure () -> String) {
        if !condition { fatalError("fuzz target: \(message())") }
    }
}

/// A message type with a field of each kind the codecs treat differently.
struct FuzzRecord: Codable, Sendable, Equatable {
    enum Kind: Codable, Sendable, Equatable {
        case none
        case count(Int)
        case named(String, tags: [String])
    }

    struct Inner: Codable, Sendable, Equatable {
        var flag: Bool
        var ratio: Float?
        var data: [UInt8]

        static func == (a: Inner, b: Inner) -> Bool {
            a.flag == b.flag && a.ratio?.bitPattern == b.ratio?.bitPattern && a.data == b.data
        }
    }

    var id: UInt64
    var delta: Int32
    var value: Double
    var name: String
    var inner: Inner?
    var list: [Int16]
    var table: [String: Int]
    var kind: Kind

    static func == (a: FuzzRecord, b: FuzzRecord) -> Bool {
        a.id == b.id && a.delta == b.delta && a.value.bitPattern == b.value.bitPattern && a.name == b.name && a.inner == b.inner
            && a.list == b.list && a.table == b.table && a.kind == b.kind
    }
}
