import Foundation
@testable import InterprocessCore
import Testing

@Suite("Endpoint parsing")
struct EndpointTests {
    @Test func acceptedForms() throws {
        #expect(try Endpoint(parsing: "unix:/tmp/a.sock") == .unix(path: "/tmp/a.sock"))
        #expect(try Endpoint(parsing: "tcp://127.0.0.1:8080") == .tcp(host: "127.0.0.1", port: 8080))
        #expect(try Endpoint(parsing: "tcp://[::1]:8080") == .tcp(host: "::1", port: 8080))
        #expect(try Endpoint(parsing: "tcp://:8080") == .tcp(host: "127.0.0.1", port: 8080))
        #expect(try Endpoint(parsing: "tcp://localhost:9") == .tcp(host: "127.0.0.1", port: 9))
        #expect(Endpoint.tcp(host: "::1", port: 5).description == "tcp://[::1]:5")
    }

    @Test(arguments: ["", "http://x:1", "tcp://127.0.0.1", "tcp://host:99999", "tcp://::1:80", "unix:", "tcp://[::1:80"])
    func badFormsNameTheAcceptedOnes(_ text: String) {
        #expect {
            try Endpoint(parsing: text)
        } throws: { error in
            let e = error as! IPCError
            return e.code == .invalidEndpoint && e.message.contains("unix:/path/to.sock") && e.message.contains("tcp://")
        }
    }
}

@Suite("Channel options")
struct ChannelOptionsTests {
    @Test func byteLimitBelowTwiceTheCreditStepIsRefused() throws {
        var options = ChannelOptions()
        try options.validate()
        options.maxBytesInFlight = 512 << 10
        try options.validate()
        options.maxBytesInFlight = (512 << 10) - 1
        #expect { try options.validate() } throws: { ($0 as! IPCError).message.contains("maxBytesInFlight must be at least 524288") }
    }

    @Test func deadPeerTimeoutIsOneSecondToADayOrNil() throws {
        var options = ChannelOptions()
        #expect(options.deadPeerTimeout == .seconds(60))
        for valid: Duration? in [nil, .seconds(1), .seconds(86_400)] {
            options.deadPeerTimeout = valid
            try options.validate()
        }
        for invalid: Duration in [.milliseconds(999), .seconds(86_401), .seconds(-1)] {
            options.deadPeerTimeout = invalid
            #expect { try options.validate() } throws: { ($0 as! IPCError).message.contains("deadPeerTimeout must be between 1 second and a day") }
        }
    }

    @Test func heartbeatsDefaultToAQuarterOfTheTimeoutAndAtMostHalfOfIt() throws {
        var options = ChannelOptions()
        #expect(options.heartbeats?.interval == .seconds(15))
        #expect(options.heartbeats?.timeout == .seconds(60))
        options.heartbeatInterval = .seconds(30)
        try options.validate()
        #expect(options.heartbeats?.interval == .seconds(30))
        for invalid: Duration in [.milliseconds(99), .milliseconds(30_001)] {
            options.heartbeatInterval = invalid
            #expect { try options.validate() } throws: { ($0 as! IPCError).message.contains("heartbeatInterval must be between 100 milliseconds and half of deadPeerTimeout") }
        }
        options.deadPeerTimeout = nil
        #expect(options.heartbeats == nil)
    }
}

@Suite("Wire protocol decoding")
struct WireTests {
    let hello = Hello(capacity: 8, maxFrame: 1024, sendCodec: "raw", sendType: "bytes", receiveCodec: "utf8", receiveType: "string")

    private func decode(_ bytes: [UInt8], maxPayload: Int = 1024) throws(IPCError) -> [FrameReader.Event] {
        let reader = FrameReader(mode: .framed, maxPayload: maxPayload)
        var events: [FrameReader.Event] = []
        var offset = 0
        while offset < bytes.count {
            // Feed in small pieces to exercise reassembly.
            let piece = min(7, bytes.count - offset)
            _ = try reader.read { target throws(IPCError) -> Int in
                let n = min(piece, target.count)
                for i in 0..<n { target[i] = bytes[offset + i] }
                return n
            }
            offset += piece
            while let e = try reader.next() { events.append(e) }
        }
        return events
    }

    @Test func helloAndFramesRoundTrip() throws {
        var bytes = hello.encoded()
        bytes.appendControlFrame(.data(seq: 1, payload: [1, 2, 3]))
        bytes.appendControlFrame(.credit(consumed: 7))
        bytes.appendControlFrame(.ping(42))
        bytes.appendControlFrame(.error(code: 3, message: "bad"))
        bytes.appendControlFrame(.close(lastSeq: 1))
        bytes.appendControlFrame(.stop(taken: 9))
        let events = try decode(bytes)
        #expect(events == [.hello(hello), .frame(.data(seq: 1, payload: [1, 2, 3])), .frame(.credit(consumed: 7)), .frame(.ping(42)), .frame(.error(code: 3, message: "bad")), .frame(.close(lastSeq: 1)), .frame(.stop(taken: 9))])
    }

    @Test func largePayloadIsReassembledInPlace() throws {
        let payload = (0..<200_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        var bytes = hello.encoded()
        bytes.appendControlFrame(.data(seq: 1, payload: payload))
        bytes.appendControlFrame(.close(lastSeq: 1))
        let events = try decode(bytes, maxPayload: 1 << 20)
        #expect(events == [.hello(hello), .frame(.data(seq: 1, payload: payload)), .frame(.close(lastSeq: 1))])
    }

    /// The data frames a sender writes in one append (small payloads) or two (large ones) are the documented
    /// frame, byte for byte, after whatever the buffer held.
    @Test func dataFramesWrittenWholeAreTheDocumentedOnes() {
        for size in [0, 1, 64, 240, 241, 5000] {
            let payload = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 1) }
            var written: [UInt8] = [9, 9], expected: [UInt8] = [9, 9]
            payload.withUnsafeBytes { written.appendDataFrame(seq: 0x0102_0304_0506_0708, payload: $0) }
            expected.appendControlFrame(.data(seq: 0x0102_0304_0506_0708, payload: payload))
            #expect(written == expected, "payload of \(size) bytes")
        }
    }

    @Test func peerTextIsEscapedWhereItIsShown() throws {
        #expect("a\nb\u{1B}[0m\u{202E}\té😀".escapedForDisplay == "a\\u{a}b\\u{1b}[0m\\u{202e}\\u{9}é😀")
        // A type name with a newline, in a mismatch error.
        let local = Hello(capacity: 1, maxFrame: 100, sendCodec: "raw", sendType: "bytes", receiveCodec: "raw", receiveType: "bytes")
        var peer = local
        peer.sendType = "x\nforged"
        #expect { try local.checkCompatible(withPeer: peer) } throws: { error in
            let message = (error as! IPCError).message
            return message.contains("x\\u{a}forged") && !message.contains("\n")
        }
    }

    /// An error message is cut to 4096 bytes on a character boundary.
    @Test func aLongErrorMessageIsCutBetweenCharacters() {
        var bytes: [UInt8] = []
        bytes.appendControlFrame(.error(code: 1, message: String(repeating: "a", count: Wire.maxErrorMessage - 1) + "é"))
        #expect(bytes.count == Wire.frameHeaderSize + 2 + Wire.maxErrorMessage - 1)
        #expect(String(validating: bytes[(Wire.frameHeaderSize + 2)...], as: UTF8.self) != nil)
        // A character that ends exactly at the limit is kept.
        bytes = []
        bytes.appendControlFrame(.error(code: 1, message: String(repeating: "a", count: Wire.maxErrorMessage - 2) + "éx"))
        #expect(bytes.count == Wire.frameHeaderSize + 2 + Wire.maxErrorMessage)
        #expect(String(decoding: bytes.suffix(2), as: UTF8.self) == "é")
    }

    /// Version 2 defines no flags: a frame or hello with its flags or reserved bytes set, or a hello with bytes
    /// after its last field, is refused (on the fast path for data frames too).
    @Test func reservedBitsAndTrailingHelloBytesAreRefused() throws {
        for offset in 5..<8 {
            var bytes = hello.encoded()
            let frame = bytes.count
            bytes.appendControlFrame(.data(seq: 1, payload: [1]))
            bytes[frame + offset] = 1
            #expect { try decode(bytes) } throws: { ($0 as! IPCError).message.contains("flags or reserved bytes set") }
            let reader = FrameReader(mode: .framed, maxPayload: 1024)
            _ = try reader.read { target throws(IPCError) -> Int in
                for (i, b) in bytes.enumerated() { target[i] = b }
                return bytes.count
            }
            #expect(try reader.next() == .hello(hello))
            #expect(reader.nextData() == nil)
            #expect(throws: IPCError.self) { try reader.next() }
        }
        var flagged = hello.encoded()
        flagged[6] = 1
        #expect { try decode(flagged) } throws: { ($0 as! IPCError).message.contains("flags 1 set") }
        var trailing = hello.encoded()
        trailing.append(0)
        trailing[8] += 1
        #expect { try decode(trailing) } throws: { ($0 as! IPCError).message.contains("1 bytes after its last field") }
    }

    /// Before its hello a connection holds a small buffer; a hello that arrives with many frames behind it in the
    /// same reads decodes whole.
    @Test func aHelloWithFramesBehindItInLargeReads() throws {
        var bytes = hello.encoded()
        for i in 0..<200 { bytes.appendControlFrame(.data(seq: UInt64(i + 1), payload: [UInt8](repeating: UInt8(i), count: 100))) }
        let reader = FrameReader(mode: .framed, maxPayload: 1024)
        var events: [FrameReader.Event] = []
        var offset = 0
        while offset < bytes.count {
            let n = try reader.read { target throws(IPCError) -> Int in
                let n = min(target.count, bytes.count - offset)
                for i in 0..<n { target[i] = bytes[offset + i] }
                return n
            }
            #expect(n > 0)
            offset += n
            while let e = try reader.next() { events.append(e) }
        }
        #expect(events.count == 201)
        #expect(events.last == .frame(.data(seq: 200, payload: [UInt8](repeating: 199, count: 100))))
    }

    @Test func wrongMagicIsRefused() {
        #expect { try decode(Array("GET / HTTP/1.1\r\n".utf8)) } throws: { ($0 as! IPCError).code == .protocolViolation }
    }

    @Test func wrongVersionIsAMismatch() {
        var bytes = hello.encoded()
        bytes[4] = 9
        #expect { try decode(bytes) } throws: { e in
            let error = e as! IPCError
            return error.code == .handshakeMismatch && error.message.contains("version 9")
        }
    }

    @Test func hugeLengthIsRefusedBeforeAnyAllocation() {
        var bytes = hello.encoded()
        bytes += [0xFF, 0xFF, 0xFF, 0xFF, FrameType.data.rawValue, 0, 0, 0]  // a 4 GiB data frame
        #expect { try decode(bytes) } throws: { ($0 as! IPCError).code == .frameTooLarge }
    }

    @Test func oversizedHelloIsRefused() {
        var bytes = Wire.helloMagic
        bytes.appendLE(Wire.version)
        bytes.appendLE(UInt16(0))
        bytes.appendLE(UInt32(1 << 30))
        #expect { try decode(bytes) } throws: { ($0 as! IPCError).code == .protocolViolation }
    }

    @Test func unknownFrameTypeIsRefused() {
        var bytes = hello.encoded()
        bytes += [8, 0, 0, 0, 99, 0, 0, 0] + [UInt8](repeating: 0, count: 8)
        #expect { try decode(bytes) } throws: { ($0 as! IPCError).code == .protocolViolation }
    }

    @Test func truncatedFrameAtEndOfStreamIsAnError() throws {
        let reader = FrameReader(mode: .framed, maxPayload: 1024)
        var bytes = hello.encoded()
        bytes.appendControlFrame(.data(seq: 1, payload: [1, 2, 3, 4]))
        bytes.removeLast(2)
        _ = try reader.read { target throws(IPCError) -> Int in
            for (i, b) in bytes.enumerated() { target[i] = b }
            return bytes.count
        }
        #expect(try reader.next() == .hello(hello))
        #expect(try reader.next() == nil)
        #expect { try reader.finish() } throws: { ($0 as! IPCError).code == .peerClosed }
    }

    @Test func linesModeSplitsLinesAndKeepsALastPartialOne() throws {
        let reader = FrameReader(mode: .lines, maxPayload: 100)
        let text = Array("one\r\ntwo\nthree".utf8)
        _ = try reader.read { target throws(IPCError) -> Int in
            for (i, b) in text.enumerated() { target[i] = b }
            return text.count
        }
        #expect(try reader.next() == .frame(.data(seq: 0, payload: Array("one".utf8))))
        #expect(try reader.next() == .frame(.data(seq: 0, payload: Array("two".utf8))))
        #expect(try reader.next() == nil)
        #expect(try reader.finish() == .data(seq: 0, payload: Array("three".utf8)))
    }

    @Test func mismatchNamesBothSides() {
        let peer = Hello(capacity: 1, maxFrame: 1, sendCodec: "json", sendType: "Swift.Int", receiveCodec: "none", receiveType: "none")
        let local = Hello(capacity: 1, maxFrame: 1, sendCodec: "none", sendType: "none", receiveCodec: "utf8", receiveType: "string")
        #expect { try local.checkCompatible(withPeer: peer) } throws: { e in
            let m = (e as! IPCError).message
            return m.contains("Swift.Int") && m.contains("json") && m.contains("string") && m.contains("utf8")
        }
    }
}

@Suite("Channel state machine")
struct ChannelStateTests {
    func makeState(capacity: UInt32, peerCapacity: UInt32, maxFrame: UInt32 = 100, maxBytesInFlight: Int = 1 << 20) throws -> ConnectionState {
        let local = Hello(capacity: capacity, maxFrame: maxFrame, sendCodec: "raw", sendType: "bytes", receiveCodec: "raw", receiveType: "bytes")
        var state = ConnectionState(mode: .framed, local: local, hasSender: true, hasReceiver: true, maxBytesInFlight: maxBytesInFlight)
        var peer = local
        peer.capacity = peerCapacity
        try state.apply(hello: peer)
        state.outbox = Outbox()
        return state
    }

    /// Each ping is answered by a pong in the outbox; a peer that lets 64 of them wait unwritten (it does not
    /// read) is cut off on the next ping, and pongs written make room again.
    @Test func pongsWaitingToBeWrittenAreBounded() throws {
        var state = try makeState(capacity: 4, peerCapacity: 4)
        var effects = ConnectionState.Effects()
        for i in 0..<Wire.maxUnwrittenPongs {
            try state.apply(.ping(UInt64(i)), effects: &effects)
        }
        #expect(effects.output)
        #expect(state.outbox.count == Wire.maxUnwrittenPongs * 16)
        #expect(throws: IPCError.self) { try state.apply(.ping(99), effects: &effects) }
        // Written, they no longer count.
        var fresh = try makeState(capacity: 4, peerCapacity: 4)
        for round in 0..<10 {
            for i in 0..<Wire.maxUnwrittenPongs { try fresh.apply(.ping(UInt64(round * 100 + i)), effects: &effects) }
            fresh.outbox.consume(fresh.outbox.count)
        }
        #expect(fresh.outbox.written == UInt64(10 * Wire.maxUnwrittenPongs * 16))
    }

    @Test func senderStopsAtThePeersCapacityAndResumesOnCredit() throws {
        var state = try makeState(capacity: 4, peerCapacity: 3)
        for _ in 0..<3 {
            #expect(state.canSend() == .ready)
            _ = try state.appendData { $0 += [1] }
        }
        #expect(state.canSend() == .wait)
        var effects = ConnectionState.Effects()
        try state.apply(.credit(consumed: 1), effects: &effects)
        #expect(effects.wake)
        #expect(state.canSend() == .ready)
    }

    @Test func receiverRejectsMessagesBeyondItsCapacity() throws {
        var state = try makeState(capacity: 2, peerCapacity: 2)
        var effects = ConnectionState.Effects()
        try state.apply(.data(seq: 1, payload: [1]), effects: &effects)
        try state.apply(.data(seq: 2, payload: [2]), effects: &effects)
        #expect(throws: IPCError.self) { try state.apply(.data(seq: 3, payload: [3]), effects: &effects) }
    }

    @Test func outOfOrderSequenceIsAViolation() throws {
        var state = try makeState(capacity: 8, peerCapacity: 8)
        var effects = ConnectionState.Effects()
        #expect { try state.apply(.data(seq: 2, payload: [1]), effects: &effects) } throws: { ($0 as! IPCError).message.contains("lost") }
    }

    @Test func closeDrainsThenEnds() throws {
        var state = try makeState(capacity: 8, peerCapacity: 8)
        var effects = ConnectionState.Effects()
        try state.apply(.data(seq: 1, payload: [1]), effects: &effects)
        try state.apply(.close(lastSeq: 1), effects: &effects)
        // Once the peer has closed, every message taken is acknowledged at once (the peer may wait to exit).
        #expect(state.receive() == .message([1], grantCredit: true))
        #expect(state.receive() == .end)
    }

    @Test func closeThatClaimsMoreThanArrivedIsAViolation() throws {
        var state = try makeState(capacity: 8, peerCapacity: 8)
        var effects = ConnectionState.Effects()
        #expect(throws: IPCError.self) { try state.apply(.close(lastSeq: 5), effects: &effects) }
    }

    @Test func endOfStreamWithoutCloseIsPeerClosed() throws {
        var state = try makeState(capacity: 8, peerCapacity: 8)
        state.applyEndOfStream()
        guard case .failed(let error) = state.receive() else {
            Issue.record("expected a failure")
            return
        }
        #expect(error.code == .peerClosed)
    }

    /// A connection that breaks under a sender reports the messages sent and not acknowledged as taken: they may
    /// or may not have arrived. None in doubt: none reported.
    @Test func aBrokenConnectionReportsTheMessagesInDoubt() throws {
        var state = try makeState(capacity: 8, peerCapacity: 8)
        for _ in 0..<5 { _ = try state.appendData { $0 += [1] } }
        var effects = ConnectionState.Effects()
        try state.apply(.credit(consumed: 2), effects: &effects)
        state.applyEndOfStream()
        guard case .failed(let error) = state.canSend() else {
            Issue.record("expected a failure")
            return
        }
        #expect(error.code == .peerClosed)
        #expect(error.messagesInDoubt == 3)
        #expect(error.description.contains("3 messages sent and not acknowledged may not have arrived"))
        var acknowledged = try makeState(capacity: 8, peerCapacity: 8)
        _ = try acknowledged.appendData { $0 += [1] }
        try acknowledged.apply(.credit(consumed: 1), effects: &effects)
        acknowledged.fail(IPCError(.peerClosed, "gone"))
        guard case .failed(let clean) = acknowledged.canSend() else {
            Issue.record("expected a failure")
            return
        }
        #expect(clean.messagesInDoubt == nil)
    }

    @Test func creditsAreGrantedEveryQuarterWindow() throws {
        var state = try makeState(capacity: 8, peerCapacity: 8)
        var effects = ConnectionState.Effects()
        for seq in 1...4 { try state.apply(.data(seq: UInt64(seq), payload: [0]), effects: &effects) }
        #expect(state.receive() == .message([0], grantCredit: false))
        #expect(state.receive() == .message([0], grantCredit: true))
        #expect(state.granted == 2)
    }

    @Test func senderStopsAtItsByteLimitAndResumesOnCredit() throws {
        var state = try makeState(capacity: 64, peerCapacity: 64, maxFrame: 4 << 20, maxBytesInFlight: 512 << 10)
        let chunk = [UInt8](repeating: 1, count: 200 << 10)
        // 0, 200 and 400 KiB outstanding are under the limit; 600 KiB is not.
        for _ in 0..<3 {
            #expect(state.canSend() == .ready)
            _ = try state.appendData(segment: chunk)
        }
        // Each message counts with its 16 bytes of framing.
        #expect(state.canSend() == .wait)
        #expect(state.untakenBytes == 3 * ((200 << 10) + 16))
        var effects = ConnectionState.Effects()
        try state.apply(.credit(consumed: 1), effects: &effects)
        #expect(state.untakenBytes == 2 * ((200 << 10) + 16))
        #expect(state.canSend() == .ready)
        // A message larger than the limit still goes, alone.
        try state.apply(.credit(consumed: 3), effects: &effects)
        #expect(state.untakenBytes == 0)
        _ = try state.appendData { $0 += [UInt8](repeating: 2, count: 1 << 20) }
        #expect(state.untakenBytes == (1 << 20) + 16)
        #expect(state.canSend() == .wait)
    }

    @Test func emptyMessagesCountAgainstTheByteLimit() throws {
        // Whatever capacity the peer announces, empty messages cannot pile up without bound.
        var state = try makeState(capacity: 64, peerCapacity: UInt32.max, maxBytesInFlight: 512 << 10)
        var sent = 0
        while state.canSend() == .ready && sent <= 1 << 20 {
            _ = try state.appendData { _ in }
            sent += 1
        }
        #expect(sent == (512 << 10) / 16)
    }

    @Test func creditsAreGrantedEveryCreditBytesTaken() throws {
        // A quarter of this window is 32 messages; 256 KiB of payload comes first.
        var state = try makeState(capacity: 128, peerCapacity: 128, maxFrame: 4 << 20)
        var effects = ConnectionState.Effects()
        let chunk = [UInt8](repeating: 1, count: 100 << 10)
        for seq in 1...6 { try state.apply(.data(seq: UInt64(seq), payload: chunk), effects: &effects) }
        var credits: [Bool] = []
        for _ in 1...6 {
            guard case .message(let message, let credit) = state.receive(), message.count == chunk.count else {
                Issue.record("expected a message")
                return
            }
            credits.append(credit)
        }
        // A credit once 300 KiB (at least 256 KiB) was taken, twice.
        #expect(credits == [false, false, true, false, false, true])
        #expect(state.granted == 6)
    }

    @Test func rendezvousReceiverGrantsWhileAReceiveWaitsAndSenderSendsOnlyWhatIsGranted() throws {
        var receiving = try makeState(capacity: 0, peerCapacity: 0)
        var sending = try makeState(capacity: 0, peerCapacity: 0)
        var effects = ConnectionState.Effects()
        #expect(sending.canSend() == .wait, "nothing granted: a capacity-0 send waits")
        #expect { try receiving.apply(.data(seq: 1, payload: [1]), effects: &effects) } throws: { ($0 as! IPCError).code == .protocolViolation }

        receiving = try makeState(capacity: 0, peerCapacity: 0)
        let granted = receiving.beginWaiting(), grantedAgain = receiving.beginWaiting()
        #expect(granted, "a waiting receive grants the next message")
        #expect(!grantedAgain, "a second waiting receive changes nothing")
        #expect(receiving.outbox.count == Wire.frameHeaderSize + 8)
        try sending.apply(.grant(upTo: 1), effects: &effects)
        #expect(sending.canSend() == .ready)
        _ = try sending.appendData { $0 += [7] }
        #expect(sending.canSend() == .wait, "one message per grant")

        try receiving.apply(.data(seq: 1, payload: [7]), effects: &effects)
        #expect(receiving.receive() == .message([7], grantCredit: true), "taken while another receive waits: credit and a new grant")
        let firstEnds = receiving.endWaiting(), secondEnds = receiving.endWaiting()
        #expect(!firstEnds, "the other receive still waits: the new grant stands")
        #expect(secondEnds, "nobody waits any more and nothing arrived: the grant is withdrawn")
        try sending.apply(.credit(consumed: 1), effects: &effects)
        try sending.apply(.grant(upTo: 2), effects: &effects)
        #expect(sending.canSend() == .ready)
        try sending.apply(.grant(upTo: 1), effects: &effects)
        #expect(sending.canSend() == .wait, "a withdrawn grant")

        // A message sent under a grant withdrawn meanwhile is accepted and queued for the next receive.
        try receiving.apply(.data(seq: 2, payload: [8]), effects: &effects)
        #expect(receiving.receive() == .message([8], grantCredit: true))
        #expect { try receiving.apply(.data(seq: 3, payload: [9]), effects: &effects) } throws: { ($0 as! IPCError).code == .protocolViolation }

        var buffered = try makeState(capacity: 4, peerCapacity: 4)
        let bufferedGrant = buffered.beginWaiting()
        #expect(!bufferedGrant, "no grants at a capacity above 0")
        #expect { try buffered.apply(.grant(upTo: 1), effects: &effects) } throws: { ($0 as! IPCError).code == .protocolViolation }
        #expect { try sending.apply(.grant(upTo: 5), effects: &effects) } throws: { ($0 as! IPCError).code == .protocolViolation }
    }

    @Test func closingTwiceIsAnError() throws {
        var state = try makeState(capacity: 8, peerCapacity: 8)
        try state.closeSender()
        #expect { try state.closeSender() } throws: { ($0 as! IPCError).code == .alreadyClosed }
        #expect(state.canSend() == .failed(IPCError(.sendOnClosedChannel, "send was called after close() on this sender; create a new connection to send more")))
    }

    @Test func droppingTheReceiverTellsThePeerAndItsSendsFail() throws {
        var receiving = try makeState(capacity: 8, peerCapacity: 8)
        var effects = ConnectionState.Effects()
        try receiving.apply(.data(seq: 1, payload: [1]), effects: &effects)
        #expect(receiving.receive() == .message([1], grantCredit: false))
        try receiving.apply(.data(seq: 2, payload: [2]), effects: &effects)
        let told = receiving.dropReceiver()
        #expect(told)
        #expect(receiving.inbox.isEmpty)
        let again = receiving.dropReceiver()
        #expect(!again, "a second drop sends nothing more")
        // Messages still in flight are accepted and discarded.
        try receiving.apply(.data(seq: 3, payload: [3]), effects: &effects)
        #expect(receiving.inbox.isEmpty)

        var sending = try makeState(capacity: 8, peerCapacity: 8)
        _ = try sending.appendData { $0 += [1] }
        try sending.apply(.stop(taken: 1), effects: &effects)
        #expect(effects.wake)
        guard case .failed(let error) = sending.canSend() else {
            Issue.record("a send after the peer's stop must fail")
            return
        }
        #expect(error.code == .receiverGone)
        guard case .failed(let pending) = sending.isTaken(1) else {
            Issue.record("a rendezvous waiting for its message to be taken must fail")
            return
        }
        #expect(pending.code == .receiverGone)
    }

    @Test func tooLargeMessageIsRefusedAndNothingIsQueued() throws {
        var state = try makeState(capacity: 8, peerCapacity: 8)
        #expect { _ = try state.appendData { $0 += [UInt8](repeating: 0, count: 101) } } throws: { ($0 as! IPCError).code == .frameTooLarge }
        #expect(state.outbox.isEmpty)
        #expect(state.nextSeq == 1)
    }

    @Test func aWrittenTailBufferIsReusedAndBytesStayInOrder() {
        var outbox = Outbox()
        func address(_ bytes: [UInt8]) -> UnsafeRawPointer? { bytes.withUnsafeBytes { $0.baseAddress } }
        var written: [UInt8] = []
        /// "Writes" a snapshot: appends its bytes to `written`, returns their count. The snapshot is dropped on
        /// return, as the connection's writer drops it before consuming.
        func write(_ snapshot: (segments: [[UInt8]], offset: Int)) -> Int {
            var count = 0
            for (i, segment) in snapshot.segments.enumerated() {
                written += segment[(i == 0 ? snapshot.offset : 0)...]
                count += segment.count - (i == 0 ? snapshot.offset : 0)
            }
            return count
        }
        func writeAll() {
            let count = write(outbox.snapshot())
            outbox.consume(count)
        }
        outbox.append { $0 += [1, 2, 3] }
        let first = address(outbox.tail)
        writeAll()
        outbox.append { $0 += [4, 5] }
        writeAll()
        // The first tail, written and emptied, is the tail now: no allocation per write.
        #expect(address(outbox.tail) == first)
        #expect(outbox.tail.isEmpty && outbox.isEmpty)
        outbox.append { $0 += [6] }
        outbox.appendSegment([7, 8])
        outbox.append { $0 += [9] }
        writeAll()
        #expect(written == [1, 2, 3, 4, 5, 6, 7, 8, 9])
    }

    @Test func drainingCopiesEveryPendingByteInOrderAndKeepsTheTail() {
        var outbox = Outbox()
        func drain() -> [UInt8] {
            var region = [UInt8](repeating: 0xAA, count: outbox.count + 4)
            let count = outbox.count
            region.withUnsafeMutableBytes { outbox.drain(into: $0) }
            #expect(outbox.isEmpty && outbox.count == 0)
            #expect(region[count...].allSatisfy { $0 == 0xAA }, "wrote past the pending bytes")
            return Array(region[..<count])
        }
        // The tail alone: copied, and the same buffer stays the tail.
        outbox.append { $0 += [1, 2, 3] }
        let tail = outbox.tail.withUnsafeBytes { $0.baseAddress }
        #expect(drain() == [1, 2, 3])
        #expect(outbox.tail.withUnsafeBytes { $0.baseAddress } == tail)
        // Segments, a tail between them, and a first segment partly written already.
        outbox.append { $0 += [4, 5] }
        outbox.appendSegment([6, 7, 8, 9])
        outbox.append { $0 += [10] }
        outbox.consume(1)
        #expect(drain() == [5, 6, 7, 8, 9, 10])
        outbox.append { $0 += [11] }
        #expect(drain() == [11])
    }
}

struct Nested: Codable, Equatable, Sendable {
    enum Kind: String, Codable { case a, b }
    var name: String
    var kind: Kind
    var values: [Double]
    var optional: Int?
    var missing: String?
    var map: [String: [Int]]
    var bytes: [UInt8]
    var flags: [Bool?]
    var inner: Inner?
    struct Inner: Codable, Equatable { var x: Int8; var y: UInt64 }
}

@Suite("Binary codec")
struct BinaryCodecTests {
    let value = Nested(name: "héllo", kind: .b, values: [1.5, -2], optional: 7, missing: nil, map: ["k": [1, 2], "e": []], bytes: [0, 255], flags: [true, nil, false], inner: .init(x: -3, y: .max))

    @Test func roundTripsNestedValues() throws {
        let codec = BinaryCodec(Nested.self)
        var bytes: [UInt8] = []
        try codec.encode(value, into: &bytes)
        #expect(try codec.decode(bytes) == value)
        // Smaller than JSON for the same value.
        var json: [UInt8] = []
        try JSONCodec(Nested.self).encode(value, into: &json)
        #expect(bytes.count < json.count * 2)
    }

    @Test func topLevelOptionalsAndPrimitives() throws {
        var bytes: [UInt8] = []
        try BinaryCodec(Int?.self).encode(nil, into: &bytes)
        #expect(try BinaryCodec(Int?.self).decode(bytes) == nil)
        bytes = []
        try BinaryCodec(String.self).encode("x", into: &bytes)
        #expect(try BinaryCodec(String.self).decode(bytes) == "x")
    }

    struct Golden: Codable, Equatable {
        var a: UInt16
        var s: String
        var b: [UInt8]
        var o: Int?
        var f: Bool
        var d: Double
    }

    /// The layout of docs/wire-protocol.md ("Binary codec"), byte for byte: the primitive fast paths must write
    /// exactly what the format says.
    @Test func layoutIsTheDocumentedOne() throws {
        var bytes: [UInt8] = []
        let value = Golden(a: 0x0102, s: "hi", b: [9], o: nil, f: true, d: 1.0)
        try BinaryCodec(Golden.self).encode(value, into: &bytes)
        let expected: [UInt8] = [44, 0, 0, 0,  // the struct's region: 44 bytes of keyed entries
            1, 0x61, 2, 0, 0, 0, 0x02, 0x01,  // "a": UInt16, little-endian
            1, 0x73, 2, 0, 0, 0, 0x68, 0x69,  // "s": UTF-8
            1, 0x62, 1, 0, 0, 0, 9,  // "b": the bytes themselves
            1, 0x66, 1, 0, 0, 0, 1,  // "f": one byte (a nil optional writes no entry)
            1, 0x64, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xF0, 0x3F]  // "d": IEEE 754 bits
        #expect(bytes == expected)
        #expect(try BinaryCodec(Golden.self).decode(bytes) == value)
    }

    struct Outer: Codable { var inner: Inner; struct Inner: Codable { var y: UInt64 } }

    /// A decoding error names where in the value it happened.
    @Test func decodingErrorsNameTheCodingPath() throws {
        // "inner" holds "y" with 4 bytes where a UInt64 needs 8.
        let bytes: [UInt8] = [20, 0, 0, 0, 5] + Array("inner".utf8) + [10, 0, 0, 0, 1, 0x79, 4, 0, 0, 0, 1, 2, 3, 4]
        #expect { try BinaryCodec(Outer.self).decode(bytes) } throws: { error in
            let text = "\(error)"
            return (error as! IPCError).code == .decodingFailed && text.contains("inner.y") && text.contains("expected 8 bytes")
        }
    }

    @Test func corruptInputIsADecodingErrorNotACrash() throws {
        var bytes: [UInt8] = []
        try BinaryCodec(Nested.self).encode(value, into: &bytes)
        // Every truncation and a set of single-byte corruptions must throw or decode, never crash.
        for cut in 0..<bytes.count {
            _ = try? BinaryCodec(Nested.self).decode(Array(bytes[0..<cut]))
        }
        for i in stride(from: 0, to: bytes.count, by: 3) {
            var copy = bytes
            copy[i] ^= 0xFF
            _ = try? BinaryCodec(Nested.self).decode(copy)
        }
        #expect { try BinaryCodec(Nested.self).decode(Array(bytes[0..<(bytes.count / 2)])) } throws: { ($0 as! IPCError).code == .decodingFailed }
    }

    /// A tree: a value holding values of its own type, so a keyed container of one key type is in use while
    /// another of the same type is asked for.
    struct Tree: Codable, Equatable, Sendable {
        var label: String
        var children: [Tree]
        var first: Box?
        final class Box: Codable, Equatable, @unchecked Sendable {
            let tree: Tree
            init(_ tree: Tree) { self.tree = tree }
            static func == (a: Box, b: Box) -> Bool { a.tree == b.tree }
        }

        static func make(_ depth: Int, _ seed: Int) -> Tree {
            guard depth > 0 else { return Tree(label: "leaf \(seed)", children: [], first: nil) }
            let children = (0..<(seed % 3 + 1)).map { make(depth - 1, seed * 7 + $0) }
            return Tree(label: "node \(seed)", children: children, first: seed % 2 == 0 ? Box(make(depth - 1, seed + 1)) : nil)
        }
    }

    /// Reads its keys in the reverse of the order it wrote them, and asks for one that is not there.
    struct Reversed: Codable, Equatable, Sendable {
        var a: Int, b: String, c: [UInt8]
        enum CodingKeys: String, CodingKey { case a, b, c, absent }
        init(a: Int, b: String, c: [UInt8]) { (self.a, self.b, self.c) = (a, b, c) }
        func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(a, forKey: .a)
            try container.encode(b, forKey: .b)
            try container.encode(c, forKey: .c)
        }
        init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            c = try container.decode([UInt8].self, forKey: .c)
            b = try container.decode(String.self, forKey: .b)
            a = try container.decode(Int.self, forKey: .a)
            guard !container.contains(.absent), container.allKeys.map(\.stringValue) == ["a", "b", "c"] else {
                throw DecodingError.dataCorrupted(.init(codingPath: [], debugDescription: "keys"))
            }
        }
    }

    /// A pair of numbers, and a value that holds a nested container of the pair's key type while it decodes two
    /// other pairs with it: the nested one comes last on the wire and is read first.
    struct Pair: Codable, Equatable, Sendable {
        var x: Int, y: Int
        enum CodingKeys: String, CodingKey { case x, y }
    }
    struct HoldsNested: Codable, Equatable, Sendable {
        var a: Pair, b: Pair, n: Pair
        enum CodingKeys: String, CodingKey { case a, b, n }
        init(a: Pair, b: Pair, n: Pair) { (self.a, self.b, self.n) = (a, b, n) }
        init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            let nested = try container.nestedContainer(keyedBy: Pair.CodingKeys.self, forKey: .n)
            a = try container.decode(Pair.self, forKey: .a)
            b = try container.decode(Pair.self, forKey: .b)
            n = Pair(x: try nested.decode(Int.self, forKey: .x), y: try nested.decode(Int.self, forKey: .y))
        }
    }

    /// A container stays the caller's for as long as the value that asked for it is being decoded, whatever is
    /// decoded meanwhile and wherever it lies in the message.
    @Test func aContainerHeldAcrossOtherValuesKeepsReadingItsOwn() throws {
        let codec = BinaryCodec(HoldsNested.self)
        for i in 0..<3 {
            let value = HoldsNested(a: Pair(x: 1, y: 2), b: Pair(x: 3, y: i), n: Pair(x: 5, y: 6))
            var bytes: [UInt8] = []
            try codec.encode(value, into: &bytes)
            #expect(try codec.decode(bytes) == value)
        }
    }

    /// One codec keeps its encoder's and decoder's containers between messages (docs/design.md): whatever came before (nested values of one type, values read out of order, failed decodes), each
    /// message must come out byte for byte as a fresh codec writes it, and decode to the value.
    @Test func aCodecReusedForManyValuesCodesEachAsAFreshOne() throws {
        let trees = BinaryCodec(Tree.self), reversed = BinaryCodec(Reversed.self)
        for seed in 0..<200 {
            let tree = Tree.make(seed % 4, seed)
            var bytes: [UInt8] = [], fresh: [UInt8] = []
            try trees.encode(tree, into: &bytes)
            try BinaryCodec(Tree.self).encode(tree, into: &fresh)
            #expect(bytes == fresh)
            #expect(try trees.decode(bytes) == tree)
            // A corrupt message fails part-way through, with containers handed out; the next one still decodes.
            var corrupt = bytes
            corrupt[corrupt.count / 2] ^= 0xFF
            _ = try? trees.decode(corrupt)
            _ = try? trees.decode(Array(bytes.dropLast(3)))

            let value = Reversed(a: -seed, b: "b\(seed)", c: [UInt8(seed % 256)])
            bytes = []
            try reversed.encode(value, into: &bytes)
            #expect(try reversed.decode(bytes) == value)
        }
    }

    /// Tasks sharing one codec each get their own values back.
    @Test func aCodecSharedByConcurrentTasks() async throws {
        let codec = BinaryCodec(Tree.self)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for task in 0..<8 {
                group.addTask {
                    for i in 0..<300 {
                        let tree = Tree.make(i % 3, task * 1000 + i)
                        var bytes: [UInt8] = []
                        try codec.encode(tree, into: &bytes)
                        let back = try codec.decode(bytes)
                        #expect(back == tree)
                    }
                }
            }
            try await group.waitForAll()
        }
    }
}
