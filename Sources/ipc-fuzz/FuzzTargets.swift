import InterprocessCore

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

    func run(_ data: UnsafeRawBufferPointer) {
        switch self {
        case .stream: Self.stream(data)
        case .hello: Self.hello(data)
        case .binary: Self.roundTrip(BinaryCodec(FuzzRecord.self), data)
        case .json: Self.roundTrip(JSONCodec(FuzzRecord.self), data)
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
                while let event = try reader.next() {
                    var effects = ConnectionState.Effects()
                    switch event {
                    case .hello(let hello): try state.apply(hello: hello)
                    case .frame(let frame): try state.apply(frame, effects: &effects)
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
