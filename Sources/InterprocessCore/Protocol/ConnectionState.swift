import DequeModule

/// The channel semantics of one connection, as a plain state machine: it takes events (a frame arrived, the
/// application wants to send or receive, the stream ended) and says what to do. No I/O and no locking here;
/// ``ConnectionCore`` owns one behind a mutex and carries out its decisions.
///
/// Flow control: the receiver announces a capacity N in its hello. The sender may have at most
/// `max(N, 1)` data frames that the receiver has not yet taken; the receiver reports what it has taken with
/// cumulative credit frames. Capacity 0 is a rendezvous: the sender also waits until its own message is taken.
///
/// Capacity 0 is a rendezvous across processes as in Go: the receiver *grants* one message (a grant frame) while a
/// receive or a select's receive case waits, and takes the grant back when none waits any more; the sender sends
/// only what was granted, so a send (or a select's send case) is ready only while somebody receives.
///
/// Bytes are bounded too, on the sender's side: it sends only while the bytes of its data frames not yet taken
/// are below its own limit (so a stream of large messages holds a few of them in each process, not a window of
/// them). The receiver's part is to credit at least every ``Wire/creditBytes`` of data frames taken, which keeps a
/// sender waiting on bytes from waiting forever.
package struct ConnectionState {
    package enum Mode: Sendable { case framed, lines }

    package let mode: Mode
    package let local: Hello
    package var peer: Hello?
    /// Whether this side receives data at all (its hello names a receive codec): checked on every data frame.
    private let carriesIncoming: Bool

    /// Why the connection can no longer be used, once it cannot.
    package var failure: IPCError?
    /// The peer's byte stream ended.
    package var endOfStream = false

    // Receiving direction.
    package var inbox = Deque<[UInt8]>()
    /// Sequence number of the last data frame received.
    package var received: UInt64 = 0
    /// Messages the application has taken.
    package var taken: UInt64 = 0
    /// The cumulative count last reported to the peer in a credit frame.
    package var granted: UInt64 = 0
    /// Bytes of data frames (payload and ``Wire/dataFrameOverhead``) taken since the last credit frame.
    private var takenBytesSinceCredit = 0
    /// Bytes of data frames (payload and overhead) taken up to the last credit frame.
    private var creditedBytes = 0
    /// The peer closed its sending direction after this sequence number.
    package var peerClosedAfter: UInt64?
    package var receiverDone: Bool
    /// Rendezvous receiver: receives (and select receive cases) waiting for a message now.
    package private(set) var waitingReceives = 0
    /// Rendezvous receiver: what the last grant frame offered, and the most any grant offered (a message sent
    /// under a grant taken back meanwhile is still accepted).
    private var grantOffered: UInt64 = 0
    private var grantCeiling: UInt64 = 0

    // Sending direction.
    /// Rendezvous sender: the peer's last grant (it waits for messages up to this sequence number).
    package private(set) var peerGrant: UInt64 = 0
    package var nextSeq: UInt64 = 1
    /// The peer has taken every message up to this sequence number.
    package var peerConsumed: UInt64 = 0
    /// Messages sent that the peer has not yet acknowledged as taken.
    package var unacknowledged: UInt64 { (nextSeq - 1) - peerConsumed }
    /// The counted sizes (payload and ``Wire/dataFrameOverhead``) of the messages sent and not yet taken (after
    /// `peerConsumed`), oldest first, and their sum.
    private var untakenSizes = Deque<Int>()
    package private(set) var untakenBytes = 0
    /// Bytes of data frames (payload and overhead) the peer acknowledged as taken.
    private var acknowledgedBytes = 0
    /// Sends wait while `untakenBytes` is at least this (one message of any size may always be in flight).
    package let maxBytesInFlight: Int
    package var senderClosed: Bool
    /// The peer's receiver is gone (it sent a stop frame): sends fail.
    package var peerReceiverGone = false
    /// Bytes waiting to be written, in order.
    package var outbox = Outbox()
    /// Where each pong not yet written ends in the outbox's stream of bytes: at most `Wire.maxUnwrittenPongs`.
    private var unwrittenPongs = Deque<UInt64>()

    // Resuming (both hellos carry ``Hello/Resume``).
    /// This side sends its hello only once the peer's arrived (the listening side: its answer depends on the
    /// dialer's, whose version it answers in and which may continue a session).
    private let answersHello: Bool
    /// An answering side's hello is in the outbox.
    private var answered = false
    /// The connection continues on a new stream after its stream breaks (both sides offered it).
    package private(set) var resumable = false
    /// The session this connection is (resumable connections).
    package private(set) var session: [UInt8]?
    /// Resumable sender: every data frame sent and not yet acknowledged as taken, whole, oldest first (the frames
    /// after `peerConsumed`, whose sizes `untakenSizes` lists), to be sent again on a new stream.
    private var retransmit = RetransmitBuffer()
    /// The peer received this side's close (``Frame/closeReceived(lastSeq:)``): its receiver needs nothing more.
    package private(set) var closeAcknowledged = false
    /// The stream broke and no new one continues the connection yet: the outbox is rebuilt when one does.
    package private(set) var broken = false
    /// A dialing side continued the session on a new stream: its hello went first, and nothing else goes until
    /// the peer's hello says what it received.
    package private(set) var awaitingResumeHello = false

    package init(mode: Mode, local: Hello, hasSender: Bool, hasReceiver: Bool, maxBytesInFlight: Int = Wire.defaultMaxBytesInFlight, answersHello: Bool = false) {
        self.mode = mode
        self.local = local
        self.maxBytesInFlight = maxBytesInFlight
        self.senderClosed = !hasSender
        self.receiverDone = !hasReceiver
        self.carriesIncoming = !local.receiveCodec.isEmpty && local.receiveCodec != "none"
        self.answersHello = answersHello && mode == .framed
        if mode == .lines {
            peer = Hello(capacity: UInt32.max, maxFrame: UInt32.max, sendCodec: local.receiveCodec, sendType: local.receiveType, receiveCodec: local.sendCodec, receiveType: local.sendType)
        } else if !self.answersHello {
            outbox.append { $0 += local.encoded() }
        }
    }

    private var receiveWindow: UInt64 {
        @inline(__always) get { UInt64(max(local.capacity, 1)) }
    }

    // MARK: Frames from the peer

    /// What applying frames asks the driver to do.
    package struct Effects {
        /// Waiting tasks should re-check the state.
        package var wake = false
        /// The outbox has new bytes (a pong, an error frame).
        package var output = false
        /// A credit acknowledged messages not acknowledged before (a batch was delivered: see ``totals(final:)``).
        package var credited = false

        package init() {}
    }

    package mutating func apply(hello: Hello) throws(IPCError) {
        if awaitingResumeHello {
            try applyResumeHello(hello)
            return
        }
        guard peer == nil else { throw IPCError(.protocolViolation, "the peer sent a second handshake") }
        peer = hello
        let offered = local.resume == nil ? nil : hello.resume
        // The answering side answers first, whatever it decides (the peer reads why it is refused after a hello),
        // in the peer's version, except to a hello that continues a session: the connection it continues answers
        // on this new stream, or the side refuses it (``refuseResume()``). A version-3 hello that this side does
        // not offer resume to gets a version-3 hello with a zero session: "no resume", which a dialer tells apart
        // from a version-2 listener's hello (one that will refuse its version).
        if answersHello, hello.resume?.resuming != true {
            let answer: [UInt8]
            if let offered {
                session = offered.session
                answer = resumeHello(resuming: false).encoded()
            } else if hello.resume != nil {
                var declining = local.terms
                declining.resume = Hello.Resume(session: Wire.noSession)
                answer = declining.encoded()
            } else {
                answer = local.terms.encoded()
            }
            outbox.append { $0 += answer }
            answered = true
        }
        if !answersHello, local.resume != nil, hello.resume == nil {
            // Only a version-2 listener sends a version-2 hello to a version-3 one, and it refuses the version.
            throw IPCError(.handshakeMismatch, "the peer speaks wire protocol version 2, which does not resume; connect again without ChannelOptions.resume (IPC.connect does so by itself)")
        }
        try local.checkCompatible(withPeer: hello)
        guard let offered else { return }
        if answersHello {
            session = offered.session
            resumable = true
        } else {
            // The listener does not offer resume: the connection ends when its stream does.
            if offered.session == Wire.noSession && !offered.resuming { return }
            guard offered.session == local.resume!.session, !offered.resuming else {
                throw IPCError(.protocolViolation, "the peer answered with another session than the one this side started")
            }
            session = offered.session
            resumable = true
        }
    }

    /// The peer did not speak the protocol as expected, or this side refuses it: the error frame that tells it
    /// why, after this side's hello if it answers and has not yet (a dialer reads a hello before anything else).
    package mutating func appendErrorFrame(code: IPCError.Code, message: String) {
        guard mode == .framed else { return }
        if answersHello && !answered {
            answered = true
            let hello = local.terms.encoded()
            outbox.append { $0 += hello }
        }
        outbox.append { $0.appendControlFrame(.error(code: code.value, message: message)) }
    }

    /// This side's hello for a resumable connection's stream.
    private func resumeHello(resuming: Bool) -> Hello {
        var hello = local
        hello.resume = Hello.Resume(session: session ?? local.resume!.session, resuming: resuming, received: resuming ? received : 0)
        return hello
    }

    /// Applies one frame. Throws for anything the protocol forbids; the connection is then failed.
    package mutating func apply(_ frame: Frame, effects: inout Effects) throws(IPCError) {
        switch frame {
        case .data(let seq, let payload):
            try receiveData(seq: seq, payload: payload)
            effects.wake = true
        case .credit(let consumed):
            guard consumed < nextSeq else {
                throw IPCError(.protocolViolation, "the peer acknowledged message \(consumed) but only \(nextSeq - 1) were sent")
            }
            if consumed > peerConsumed {
                for _ in peerConsumed..<consumed {
                    let size = untakenSizes.removeFirst()
                    untakenBytes -= size
                    acknowledgedBytes += size
                    if resumable { retransmit.dropFirst(size) }
                }
                peerConsumed = consumed
                effects.wake = true
                effects.credited = true
            }
        case .close(let lastSeq):
            guard lastSeq == received else {
                throw IPCError(.protocolViolation, "the peer closed after message \(lastSeq) but \(received) arrived; messages were lost")
            }
            peerClosedAfter = lastSeq
            effects.wake = true
            if appendCreditIfDue() { effects.output = true }
            // A resumable sender needs to know that its close arrived: until then, the end of its stream is a break.
            if resumable && !awaitingResumeHello {
                outbox.append { $0.appendControlFrame(.closeReceived(lastSeq: lastSeq)) }
                effects.output = true
            }
        case .error(let code, let message):
            if awaitingResumeHello {
                failure = IPCError(.peerClosed, "the peer does not continue this connection (it restarted, or gave up waiting for it): \(message)", underlying: "peer code \(code)")
            } else {
                failure = IPCError(.peerError, "the peer reported an error and closed the connection: \(message)", underlying: "peer code \(code)")
            }
            effects.wake = true
        case .ping(let nonce):
            while let end = unwrittenPongs.first, end <= outbox.written { unwrittenPongs.removeFirst() }
            guard unwrittenPongs.count < Wire.maxUnwrittenPongs else {
                throw IPCError(.protocolViolation, "the peer keeps sending pings without reading the pongs (\(Wire.maxUnwrittenPongs) wait to be written); a peer must read what it is sent")
            }
            outbox.append { $0.appendControlFrame(.pong(nonce)) }
            unwrittenPongs.append(outbox.written + UInt64(outbox.count))
            effects.output = true
        case .pong:
            break
        case .stop:
            peerReceiverGone = true
            effects.wake = true
        case .closeReceived(let lastSeq):
            guard resumable, senderClosed, lastSeq == nextSeq - 1 else {
                throw IPCError(.protocolViolation, "the peer acknowledged a close after message \(lastSeq), which this side did not send")
            }
            closeAcknowledged = true
        case .grant(let upTo):
            guard peer?.capacity == 0, upTo == peerConsumed || upTo == peerConsumed + 1 else {
                throw IPCError(.protocolViolation, "the peer granted message \(upTo) while \(peerConsumed) were taken; grants are sent only at capacity 0, for the next message")
            }
            peerGrant = upTo
            effects.wake = true
        }
    }

    /// Data frame `seq` arrived: queued for the application (dropped once the receiver is gone). Waiting tasks
    /// should re-check the state.
    /// (`payload` is consumed: moved into the inbox rather than retained there and released by the caller.)
    package mutating func receiveData(seq: UInt64, payload: consuming [UInt8]) throws(IPCError) {
        try checkIncoming(seq: seq)
        received += 1
        if !receiverDone { inbox.append(payload) }
    }

    /// What was delivered each way so far, for metrics: messages (and their payload bytes) this side sent that the
    /// peer acknowledged as taken, and messages this side's application took, as far as this side credited them
    /// (so that the figures move once per credit), or all of them (`final`, when the connection ends).
    package struct Totals: Equatable, Sendable {
        package var delivered: UInt64 = 0
        package var deliveredBytes = 0
        package var received: UInt64 = 0
        package var receivedBytes = 0

        package init() {}

        package static func - (lhs: Totals, rhs: Totals) -> Totals {
            var d = Totals()
            d.delivered = lhs.delivered - rhs.delivered
            d.deliveredBytes = lhs.deliveredBytes - rhs.deliveredBytes
            d.received = lhs.received - rhs.received
            d.receivedBytes = lhs.receivedBytes - rhs.receivedBytes
            return d
        }
    }

    package func totals(final: Bool) -> Totals {
        var t = Totals()
        t.delivered = peerConsumed
        t.deliveredBytes = acknowledgedBytes - Int(peerConsumed) * Wire.dataFrameOverhead
        if final {
            t.received = taken
            t.receivedBytes = creditedBytes + takenBytesSinceCredit - Int(taken) * Wire.dataFrameOverhead
        } else {
            t.received = granted
            t.receivedBytes = creditedBytes - Int(granted) * Wire.dataFrameOverhead
        }
        return t
    }

    /// Checks that data frame `seq` may arrive now.
    // `@inline(__always)` on the small non-mutating members used from mutating ones and under the connection's lock:
    // called out of line, each took a copy of the whole state (a 376-byte memcpy) on every message.
    @inline(__always)
    private func checkIncoming(seq: UInt64) throws(IPCError) {
        guard peerClosedAfter == nil else {
            throw IPCError(.protocolViolation, "the peer sent a message after closing its sending side")
        }
        if mode == .framed {
            guard seq == received + 1 else {
                throw IPCError(.protocolViolation, "the peer sent message \(seq) after message \(received); messages were lost or reordered")
            }
            guard seq <= taken + receiveWindow, local.capacity > 0 || seq <= grantCeiling else {
                throw IPCError(.protocolViolation, "the peer sent message \(seq) without credit (this side has taken \(taken) of capacity \(local.capacity)); the peer ignores flow control")
            }
        }
        guard carriesIncoming else {
            throw IPCError(.protocolViolation, "the peer sent a message on a direction that carries none")
        }
    }

    /// Data frame `seq` arrived and the application takes it at once, where it lies (nothing is queued before
    /// it). Returns whether a credit frame was appended.
    package mutating func takeInPlace(seq: UInt64, size: Int) throws(IPCError) -> Bool {
        precondition(inbox.isEmpty, "a message read in place must be the next one")
        try checkIncoming(seq: seq)
        received += 1
        taken += 1
        takenBytesSinceCredit += size + Wire.dataFrameOverhead
        let credit = appendCreditIfDue()
        return updateGrant() || credit
    }

    /// The peer's stream ended (read returned end-of-file). Returns whether a credit for the messages taken
    /// since the last one was appended (write it: the peer may be waiting for it to exit).
    @discardableResult
    package mutating func applyEndOfStream() -> Bool {
        endOfStream = true
        if mode == .lines && peerClosedAfter == nil { peerClosedAfter = received }
        return appendCreditIfDue()
    }

    package mutating func fail(_ error: IPCError) {
        if failure == nil { failure = error }
    }

    // MARK: Receiving

    package enum ReceiveDecision: Equatable {
        case message([UInt8], grantCredit: Bool)
        case end
        case failed(IPCError)
        /// Nothing yet: wait for input.
        case wait
    }

    /// The next message or outcome. With `peek`, only says what it would be (`.message([], …)` when a message
    /// is there) and changes nothing: a select uses it to tell whether a receive could complete now.
    package mutating func receive(peek: Bool = false) -> ReceiveDecision {
        if peek, !inbox.isEmpty { return .message([], grantCredit: false) }
        if let message = inbox.popFirst() {
            taken += 1
            takenBytesSinceCredit += message.count + Wire.dataFrameOverhead
            let credit = appendCreditIfDue()
            return .message(message, grantCredit: updateGrant() || credit)
        }
        // Everything the peer sent before its close was delivered: that direction ended cleanly, whatever
        // happened to the connection afterwards (a credit that could not be written, say).
        if peerClosedAfter != nil { return .end }
        if let failure { return .failed(failure) }
        if endOfStream { return .failed(endedWithoutClose) }
        return .wait
    }

    /// The peer's stream ended without a close frame.
    package var endedWithoutClose: IPCError {
        IPCError(.peerClosed, "the peer closed the connection without closing its sender after \(received) messages; it crashed or exited early, and messages it meant to send may be missing")
    }

    /// Appends a credit frame once a quarter of the window, or ``Wire/creditBytes`` of data frames, has been taken
    /// since the last one, so the sender always hears in time to keep three quarters of its window busy, and a
    /// sender held by its byte limit hears before it runs dry.
    private mutating func appendCreditIfDue() -> Bool {
        guard mode == .framed, !awaitingResumeHello else { return false }
        // Once the peer's sending direction has ended, every message taken is acknowledged at once: the peer may
        // be an exiting process that waits to hear that nothing it sent can be lost.
        guard taken - granted >= max(receiveWindow / 4, 1) || taken > granted && takenBytesSinceCredit >= Wire.creditBytes
            || taken > granted && (endOfStream || peerClosedAfter != nil)
        else { return false }
        granted = taken
        creditedBytes += takenBytesSinceCredit
        takenBytesSinceCredit = 0
        outbox.append { $0.appendControlFrame(.credit(consumed: taken)) }
        return true
    }

    /// A receive (or a select's receive case) starts waiting for a message. On a rendezvous this grants the peer
    /// the next message. Returns whether a frame was appended (write it at once: the peer waits for it).
    package mutating func beginWaiting() -> Bool {
        guard isRendezvousReceiver else { return false }
        waitingReceives += 1
        return updateGrant()
    }

    /// A receive that ``beginWaiting()`` counted ends (with a message or without). When none waits any more and
    /// nothing arrived, the grant is taken back. Returns whether a frame was appended.
    package mutating func endWaiting() -> Bool {
        guard isRendezvousReceiver else { return false }
        waitingReceives = max(waitingReceives - 1, 0)
        return updateGrant()
    }

    private var isRendezvousReceiver: Bool {
        @inline(__always) get { mode == .framed && local.capacity == 0 && carriesIncoming }
    }

    /// Rendezvous receiver: offers the next message while a receive waits (or a granted one arrived and is not
    /// taken yet), else nothing beyond what was taken; appends a grant frame when that changes.
    private mutating func updateGrant() -> Bool {
        guard isRendezvousReceiver, !receiverDone, failure == nil, !endOfStream, peerClosedAfter == nil, !awaitingResumeHello else { return false }
        let wanted = waitingReceives > 0 || received > taken ? taken + 1 : taken
        guard wanted != grantOffered else { return false }
        grantOffered = wanted
        grantCeiling = max(grantCeiling, wanted)
        outbox.append { $0.appendControlFrame(.grant(upTo: wanted)) }
        return true
    }

    /// A window this small needs every credit written at once; larger ones can wait for a batch.
    package var creditIsUrgent: Bool {
        @inline(__always) get { receiveWindow <= 4 }
    }

    /// Lines mode has no credits: the reader stops reading while the inbox is full, and the kernel's buffers
    /// push back on the sender.
    package var wantsMoreInput: Bool {
        @inline(__always) get {
            mode == .framed || receiverDone || inbox.count < Int(local.capacity == 0 ? 1 : local.capacity)
        }
    }

    // MARK: Sending

    package enum SendDecision: Equatable {
        case ready
        case failed(IPCError)
        case wait
    }

    /// Whether a data frame may be appended now.
    @inline(__always)
    package func canSend() -> SendDecision {
        if senderClosed {
            return .failed(IPCError(.sendOnClosedChannel, "send was called after close() on this sender; create a new connection to send more"))
        }
        if peerReceiverGone { return .failed(inDoubt(Self.receiverGoneError)) }
        if let failure { return .failed(inDoubt(failure)) }
        if endOfStream {
            return .failed(inDoubt(IPCError(.peerClosed, "the peer closed the connection; its receiver is gone, so nothing more can be sent")))
        }
        guard let peer, !awaitingResumeHello else { return .wait }
        if mode == .lines { return .ready }
        guard peer.capacity > 0 || nextSeq <= peerGrant else { return .wait }
        return unacknowledged < UInt64(max(peer.capacity, 1)) && untakenBytes < maxBytesInFlight ? .ready : .wait
    }

    /// Appends one data frame whose payload `encode` writes. Returns its sequence number.
    package mutating func appendData(_ encode: (inout [UInt8]) throws(IPCError) -> Void) throws(IPCError) -> UInt64 {
        let framed = mode == .framed
        let seq = nextSeq
        let limit = Int(peer?.maxFrame ?? UInt32(Wire.defaultMaxFrame))
        let frameStart = outbox.tail.count
        let payload = try outbox.append { buffer throws(IPCError) -> Int in
            let start = buffer.count
            if framed {
                buffer.appendDataFrameHeader(seq: seq)
            }
            do throws(IPCError) {
                try encode(&buffer)
            } catch {
                buffer.removeSubrange(start...)
                throw error
            }
            let payload = buffer.count - start - (framed ? Wire.frameHeaderSize + Wire.dataPrefixSize : 0)
            guard payload <= limit else {
                buffer.removeSubrange(start...)
                throw Self.tooLarge(payload, limit)
            }
            if framed {
                buffer.storeLE(UInt32(payload + Wire.dataPrefixSize), at: start)
            } else {
                buffer.append(UInt8(ascii: "\n"))
            }
            return payload
        }
        if framed {
            recordSent(payload)
            if resumable { outbox.tail.withUnsafeBytes { retransmit.append(UnsafeRawBufferPointer(rebasing: $0[frameStart...])) } }
        }
        nextSeq += 1
        return seq
    }

    /// Checks that a message of `size` bytes may be sent now (credit, and the peer's size limit).
    @inline(__always)
    package func checkSend(size: Int) throws(IPCError) -> Bool {
        switch canSend() {
        case .failed(let error): throw error
        case .wait: return false
        case .ready:
            let limit = Int(peer?.maxFrame ?? UInt32(Wire.defaultMaxFrame))
            guard size <= limit else { throw Self.tooLarge(size, limit) }
            return true
        }
    }

    /// A data frame written in place by the driver (after ``checkSend(size:)`` allowed it) is about to be
    /// published: checks that nothing closed meanwhile and returns its sequence number.
    package mutating func commitInPlaceData(size: Int) throws(IPCError) -> UInt64 {
        if case .failed(let error) = canSend() { throw error }
        recordSent(size)
        defer { nextSeq += 1 }
        return nextSeq
    }

    /// A data frame with `size` payload bytes was appended (framed mode): it counts against the byte limit until
    /// the peer takes it, with its frame header (``Wire/dataFrameOverhead``), so that even empty messages are
    /// bounded by the limit (and with them this list, whatever capacity the peer announces).
    private mutating func recordSent(_ size: Int) {
        let counted = size + Wire.dataFrameOverhead
        untakenSizes.append(counted)
        untakenBytes += counted
    }

    /// Appends one data frame whose payload is `payload` itself, kept as a segment rather than copied.
    package mutating func appendData(segment payload: [UInt8], recyclable: Bool = false) throws(IPCError) -> UInt64 {
        try appendData(bytes: payload, asSegment: true, recyclable: recyclable)
    }

    /// Appends one data frame whose payload is `payload`: copied into the outbox's tail (its length known, the
    /// header is written whole and nothing is undone when it is too large), or with `asSegment` kept as a
    /// segment of its own rather than copied.
    package mutating func appendData(bytes payload: [UInt8], asSegment: Bool = false, recyclable: Bool = false) throws(IPCError) -> UInt64 {
        guard mode == .framed else {
            return try appendData { $0 += payload }
        }
        let limit = Int(peer?.maxFrame ?? UInt32(Wire.defaultMaxFrame))
        guard payload.count <= limit else { throw Self.tooLarge(payload.count, limit) }
        let seq = nextSeq
        let frameStart = outbox.tail.count
        outbox.append { buffer in
            if asSegment {
                buffer.appendDataFrameHeader(seq: seq, length: Wire.dataPrefixSize + payload.count)
            } else {
                payload.withUnsafeBytes { buffer.appendDataFrame(seq: seq, payload: $0) }
            }
        }
        if resumable {
            outbox.tail.withUnsafeBytes { retransmit.append(UnsafeRawBufferPointer(rebasing: $0[frameStart...])) }
            if asSegment { payload.withUnsafeBytes { retransmit.append($0) } }
        }
        if asSegment { outbox.appendSegment(payload, recyclable: recyclable) }
        recordSent(payload.count)
        nextSeq += 1
        return seq
    }

    private static func tooLarge(_ size: Int, _ limit: Int) -> IPCError {
        IPCError(.frameTooLarge, "a \(size)-byte message is larger than the \(limit) bytes the receiving side accepts; nothing was sent. Send smaller messages or raise maxFrameSize on the receiving side")
    }

    /// Whether a rendezvous send of `seq` is complete (the receiver took it).
    package func isTaken(_ seq: UInt64) -> SendDecision {
        if peerConsumed >= seq { return .ready }
        if peerReceiverGone { return .failed(inDoubt(Self.receiverGoneError)) }
        if let failure { return .failed(inDoubt(failure)) }
        if endOfStream {
            return .failed(inDoubt(IPCError(.peerClosed, "the peer closed the connection before taking the message")))
        }
        return .wait
    }

    /// `error`, as the sending side reports it: with the count of messages sent and not acknowledged as taken
    /// (``IPCError/messagesInDoubt``), when there are any.
    package func inDoubt(_ error: IPCError) -> IPCError {
        guard mode == .framed, unacknowledged > 0 else { return error }
        var error = error
        error.messagesInDoubt = Int(unacknowledged)
        return error
    }

    package static var receiverGoneError: IPCError {
        IPCError(.receiverGone, "the receiving side dropped its receiver: it takes no more messages, and those it had not taken were discarded")
    }

    /// The application dropped its receiver: tells the peer (a stop frame) when the peer still sends to
    /// this side, so that its sends fail at once instead of waiting for credit forever. Returns whether a frame
    /// was appended.
    package mutating func dropReceiver() -> Bool {
        guard !receiverDone else { return false }
        receiverDone = true
        inbox.removeAll()
        guard mode == .framed, failure == nil, !endOfStream, peerClosedAfter == nil,
              let peer, peer.sendCodec != "none", !awaitingResumeHello else { return false }
        outbox.append { $0.appendControlFrame(.stop(taken: taken)) }
        return true
    }

    package var isRendezvous: Bool {
        @inline(__always) get { mode == .framed && peer?.capacity == 0 }
    }

    /// Closes the sending direction; appends the close frame.
    package mutating func closeSender() throws(IPCError) {
        guard !senderClosed else {
            throw IPCError(.alreadyClosed, "close() was called twice on the same sender")
        }
        senderClosed = true
        if mode == .framed && failure == nil && !awaitingResumeHello {
            outbox.append { $0.appendControlFrame(.close(lastSeq: nextSeq - 1)) }
        }
    }

    // MARK: Resuming

    package enum BreakOutcome: Equatable {
        /// Not resumable, failed already, or the peer was done: the connection ends as it would without resume.
        case end
        /// The connection goes on once a new stream continues it (``continueOnNewStream(peerReceived:)``).
        case resume
        /// The stream was known to be broken already.
        case resuming
    }

    /// The stream ended or failed. Decides whether the connection goes on, on a new stream: it is resumable, has
    /// not failed, and the peer may still send or take something.
    package mutating func streamBroke() -> BreakOutcome {
        guard resumable, failure == nil, let peer else { return .end }
        if broken { return .resuming }
        if !awaitingResumeHello {
            // The peer said all it will say and took all it will take: the end of its stream is its goodbye.
            let peerSenderDone = peer.sendCodec == "none" || peerClosedAfter != nil
            let peerReceiverDone = peer.receiveCodec == "none" || peerReceiverGone || closeAcknowledged
            if peerSenderDone && peerReceiverDone { return .end }
        }
        broken = true
        awaitingResumeHello = false
        return .resume
    }

    /// A new stream continues the connection (nothing is read from or written to the old one any more; the
    /// caller holds both roles). What was not yet written is dropped: the outbox is rebuilt on the new stream.
    /// The dialing side's hello goes first, and the rest once the peer's hello arrives
    /// (``applyResumeHello(_:)``); the listening side, which read the dialer's hello already
    /// (``Hello/Resume/received`` in `peerReceived`), answers and sends the rest at once.
    package mutating func continueOnNewStream(peerReceived: UInt64?) throws(IPCError) {
        precondition(resumable && broken)
        broken = false
        outbox = Outbox()
        unwrittenPongs.removeAll()
        let hello = resumeHello(resuming: true).encoded()
        outbox.append { $0 += hello }
        if let peerReceived {
            try resend(after: peerReceived)
        } else {
            awaitingResumeHello = true
        }
    }

    /// An answering side that does not know the session a hello continues: its answer, a hello that continues
    /// nothing (an error frame follows).
    package mutating func refuseResume() {
        guard answersHello, let resume = peer?.resume, resume.resuming else { return }
        var answer = local.terms
        answer.resume = Hello.Resume(session: resume.session, resuming: false)
        let bytes = answer.encoded()
        outbox.append { $0 += bytes }
        answered = true
    }

    /// The dialing side's new stream: the listener's hello says what it received.
    private mutating func applyResumeHello(_ hello: Hello) throws(IPCError) {
        if let resume = hello.resume, !resume.resuming {
            throw IPCError(.peerClosed, "the peer does not continue this connection (it restarted, or the connection ended there or gave up waiting); what was sent and not acknowledged may be lost")
        }
        guard let resume = hello.resume, resume.resuming, resume.session == session, hello.terms == peer?.terms else {
            throw IPCError(.protocolViolation, "the peer answered a resumed connection with a handshake for another session or other terms")
        }
        awaitingResumeHello = false
        try resend(after: resume.received)
    }

    /// Writes what the peer needs on a new stream: this side's cumulative credit, its grant, its stop, the data
    /// frames after `peerReceived`, and its close.
    private mutating func resend(after peerReceived: UInt64) throws(IPCError) {
        guard peerReceived >= peerConsumed, peerReceived < nextSeq else {
            throw IPCError(.protocolViolation, "the peer resumed having received message \(peerReceived), but it had taken \(peerConsumed) and \(nextSeq - 1) were sent")
        }
        if mode == .framed && taken > 0 {
            granted = taken
            creditedBytes += takenBytesSinceCredit
            takenBytesSinceCredit = 0
            outbox.append { $0.appendControlFrame(.credit(consumed: taken)) }
        }
        if isRendezvousReceiver {
            grantOffered = .max
            _ = updateGrant()
        }
        if receiverDone, failure == nil, peerClosedAfter == nil, let peer, peer.sendCodec != "none" {
            outbox.append { $0.appendControlFrame(.stop(taken: taken)) }
        }
        var skip = 0
        for (i, size) in untakenSizes.enumerated() where UInt64(i) < peerReceived - peerConsumed { skip += size }
        let frames = retransmit.bytes(from: skip)
        outbox.append { $0 += frames }
        if senderClosed, peer?.receiveCodec != "none" {
            outbox.append { $0.appendControlFrame(.close(lastSeq: nextSeq - 1)) }
        }
        if let peerClosedAfter {
            outbox.append { $0.appendControlFrame(.closeReceived(lastSeq: peerClosedAfter)) }
        }
    }
}

/// The data frames a resumable sender keeps until the peer acknowledges them, back to back: dropped from the front
/// as credits arrive, so its size is bounded by the peer's window and the bytes-in-flight limit.
struct RetransmitBuffer {
    private var bytes: [UInt8] = []
    private var head = 0

    mutating func append(_ frame: UnsafeRawBufferPointer) {
        bytes.append(contentsOf: frame)
    }

    mutating func dropFirst(_ count: Int) {
        head += count
        if head == bytes.count {
            bytes.removeAll(keepingCapacity: bytes.capacity <= 1 << 20)
            head = 0
        } else if head >= 64 << 10 && head * 2 >= bytes.count {
            bytes.removeSubrange(..<head)
            head = 0
        }
    }

    /// The frames kept, from `offset` bytes past the oldest.
    func bytes(from offset: Int) -> [UInt8] {
        Array(bytes[(head + offset)...])
    }

    var count: Int { bytes.count - head }
}
