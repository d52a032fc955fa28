import InterprocessPlatform
import Logging
import Synchronization

/// Drives one connection: holds its decisions (``IOState``, which holds the protocol's ``ConnectionState``) behind
/// a mutex, carries out the actions they return, and moves bytes through a ``ByteStream``.
///
/// I/O is done by whoever needs it, to avoid thread hops (each costs a 60-80 us wake-up on the machines this was
/// measured on). A task that must wait for input takes the *reader role*, reads and decodes inline, spinning
/// for a bounded time; only then does it park and hand the role to the transport's I/O thread, which reads when
/// the stream is readable and wakes the waiting tasks. Writes are coalesced: a send appends its frame to the
/// outbox; a lone send (or any send about to wait) writes inline, while a burst of sends leaves the writing to
/// one deferred flush on the I/O thread, so many frames go out in one system call.
package final class ConnectionCore: ByteStreamHandler, @unchecked Sendable {
    package struct Configuration: Sendable {
        package var mode: ConnectionState.Mode
        package var local: Hello
        package var hasSender: Bool
        package var hasReceiver: Bool
        package var spinNanoseconds: UInt64
        package var closeTimeout: Duration
        package var maxPayload: Int
        package var maxBytesInFlight: Int
        /// Called when the connection's stream is closed (by whoever owns the connection count, a listener).
        package var onClose: (@Sendable () -> Void)?
        /// How long input may stop inside a frame before the connection fails (nil: forever).
        package var stalledFrameTimeout: Duration?
        /// Heartbeats (``ConnectionCore/startHeartbeats()``): how often a quiet side pings, and after how long a
        /// silent peer is gone (nil: no heartbeats).
        package var heartbeats: (interval: Duration, timeout: Duration)?
        /// Where the connection's events are logged (with its metadata set): a failure, the close.
        package var logger: Logger?
        /// The connection's metrics (nil: none), updated per credit, never per message.
        package var metrics: ConnectionMetrics?
        /// This side sends its hello once the peer's arrived (a listener that offers resuming).
        package var answersHello = false
        /// A resumable connection's stream broke and the connection waits for a new one
        /// (``continueOn(_:peerReceived:)``): called once per break, on whatever thread noticed it.
        package var onBreak: (@Sendable () -> Void)?

        package init(mode: ConnectionState.Mode, local: Hello, hasSender: Bool, hasReceiver: Bool, spinNanoseconds: UInt64, closeTimeout: Duration, maxPayload: Int, maxBytesInFlight: Int = Wire.defaultMaxBytesInFlight) {
            self.mode = mode
            self.local = local
            self.hasSender = hasSender
            self.hasReceiver = hasReceiver
            self.spinNanoseconds = spinNanoseconds
            self.closeTimeout = closeTimeout
            self.maxPayload = maxPayload
            self.maxBytesInFlight = maxBytesInFlight
        }
    }

    /// Everything this connection decides, held under ``locked``.
    package typealias State = IOState<CheckedContinuation<Void, Never>, SelectWaiter>

    package let stream: any ByteStream
    /// The stream when frames can be written and read in place (shared memory), cast once. This connection holds
    /// it (``InPlaceStream/beginHold()``) until ``closeStream()``: its calls made under the lock while the state
    /// is not closed use the `held` methods, without counting themselves as the stream's users one by one.
    let ring: (any InPlaceStream)?
    /// Whether the hold on ``ring`` was ended.
    private let ringHoldEnded = Atomic<Bool>(false)
    package let configuration: Configuration
    /// This side receives at capacity 0: its receives grant the peer one message each (no fast path).
    let rendezvousReceiver: Bool
    let reader: FrameReader
    /// Whether the state was last told that input ends inside a frame (see `pump`). Like ``reader``, touched
    /// only by the holder of the reader role.
    @exclusivity(unchecked) private var toldInsideFrame = false
    let locked: Lock<State>
    /// Whether waiting tasks spin on the CPU hint before they yield (not when the peer shares this CPU).
    private let spinAdvisor = SpinAdvisor()
    /// The task of ``watchForStall(armedAt:after:)``, if one is armed.
    private let stallWatch = Lock<Task<Void, Never>?>(nil)
    /// ``send(byteCount:inPlace:)`` without a ring: below this a message is copied into the outbox's tail.
    static let smallCopy = 32 << 10

    package init(stream: any ByteStream, configuration: Configuration) {
        self.stream = stream
        let ring = configuration.mode == .framed ? stream as? any InPlaceStream : nil
        // A stream closed already is read and written as a plain stream (every call reports the close).
        self.ring = ring?.beginHold() == true ? ring : nil
        self.configuration = configuration
        self.rendezvousReceiver = configuration.mode == .framed && configuration.local.capacity == 0 && configuration.hasReceiver
        self.reader = FrameReader(mode: configuration.mode == .framed ? .framed : .lines, maxPayload: configuration.maxPayload)
        self.locked = Lock(State(channel: ConnectionState(mode: configuration.mode, local: configuration.local, hasSender: configuration.hasSender, hasReceiver: configuration.hasReceiver, maxBytesInFlight: configuration.maxBytesInFlight, answersHello: configuration.answersHello)))
        stream.start(handler: self)
    }

    // MARK: Handshake

    /// Sends this side's hello and waits for the peer's. Throws on mismatch (after telling the peer why).
    package func handshake() async throws(IPCError) {
        flushNow()
        _ = try await waitFor { state throws(IPCError) -> Bool? in
            if let failure = state.channel.failure { throw failure }
            if state.channel.peer != nil { return true }
            if state.channel.endOfStream {
                throw IPCError(.peerClosed, "the peer closed the connection during the handshake; it may have refused this side (check its log), or it is not an Interprocess endpoint")
            }
            return nil
        }
    }

    // MARK: Receiving

    /// The next message's bytes, or nil once the peer closed and everything before the close was taken.
    package func receive() async throws(IPCError) -> [UInt8]? {
        switch try receiveNow() {
        case .done(let message): return message
        case .park(let parking): return try await receive(after: parking)
        }
    }

    /// The synchronous part of ``receive()``: the next message (or the end) when it is here or arrives while
    /// this task reads and spins, with no async call (an async call's frame and return cost more than the rest of
    /// a shared-memory receive); otherwise the task must park, and continues with ``receive(after:)``.
    func receiveNow() throws(IPCError) -> WaitRound<[UInt8]?> {
        if let ready = try tryReceive() { return .done(ready) }
        if rendezvousReceiver { return .park(.rendezvous) }
        if ring != nil { return try receiveFromRing() }
        switch try waitRound(spin: true, inPlace: false, read: { pump() ? .progressed : .waiting(1) }, { state throws(IPCError) in
            try state.takeMessage(noteWait: true)
        }) {
        case .done(let (message, flag)):
            afterTaken(message, flag)
            return .done(message)
        case .park(let parking):
            return .park(parking)
        }
    }

    /// ``receive()`` once ``receiveNow()`` said to park.
    func receive(after parking: Parking) async throws(IPCError) -> [UInt8]? {
        if parking.rendezvous { return try await receiveRendezvous() }
        var parking = parking
        while true {
            try await park(parking)
            switch try receiveNow() {
            case .done(let message): return message
            case .park(let next): parking = next
            }
        }
    }

    /// ``receive()`` from shared memory: the data frames that lie whole at the front of the ring are copied from
    /// there into their messages' arrays (one copy each; through the frame reader it was two, and five more
    /// locks): the first is taken, the rest go to the inbox, all under one lock. Anything else (control frames,
    /// a frame larger than ``ringTakeLimit``, one not yet whole) is read as ``receive(inPlace:)`` reads it, a
    /// larger data frame through the frame reader. (`ring!` rather than a binding: see ``writeToRing(_:)``.)
    private func receiveFromRing() throws(IPCError) -> WaitRound<[UInt8]?> {
        var taken: [UInt8]?
        var readInPlaceWithCredit: Bool?
        let round = try waitRound(spin: true, inPlace: true, read: {
            if reader.pendingBytes == 0 {
                switch takeFrames(from: ring!, first: &taken) {
                case .taken(let credit):
                    readInPlaceWithCredit = credit
                    return .progressed
                case .failed: return .progressed
                case .none: break
                }
            }
            return readInPlace(ring!, upTo: Self.ringTakeLimit, { taken = [UInt8]($0) }, delivered: &readInPlaceWithCredit)
        }) { state throws(IPCError) -> ([UInt8]?, Bool)? in
            if let credit = readInPlaceWithCredit { return (nil, credit) }
            return try state.takeMessage(noteWait: true)
        }
        switch round {
        case .park(let parking):
            return .park(parking)
        case .done(let (message, flag)):
            if let taken {
                if flag { afterAppend(data: false) }
                return .done(taken)
            }
            afterTaken(message, flag)
            return .done(message)
        }
    }

    /// ``receive()`` at capacity 0: the receive counts as waiting from its first look until it ends, whichever way
    /// (a message, the end, an error, cancellation), so that the peer is granted one message only while it waits.
    private func receiveRendezvous() async throws(IPCError) -> [UInt8]? {
        if locked.withLock({ $0.channel.beginWaiting() }) { afterAppend(data: false) }
        var counted = true
        defer {
            if counted, locked.withLock({ $0.channel.endWaiting() }) { afterAppend(data: false) }
        }
        let (message, flag) = try await waitFor { state throws(IPCError) -> ([UInt8]?, Bool)? in
            guard state.channel.receive(peek: true) != .wait else { return nil }
            // Ends the wait before taking: the grant stays as it is (the message it granted is here).
            counted = false
            let changed = state.channel.endWaiting()
            guard let (message, flag) = try state.takeMessage() else { return nil }
            return (message, flag || message != nil && changed)
        }
        afterTaken(message, flag)
        return message
    }

    /// Most data frames taken from the ring at once by ``receiveFromRing()``: the rest wait there.
    private static let ringBatch = 256
    /// Larger data frames are read by ``receiveFromRing()`` through the frame reader, which copies a payload out
    /// piece by piece as it is published (taken whole, a large message was copied only once all of it was in
    /// the ring: no overlap with the writer's copy).
    private static let ringTakeLimit = 64 << 10

    /// Copies the data frames that lie whole at the front of the ring (at most ``ringBatch``) into arrays: the
    /// first into `first` (taken, as if read in place), the others into the inbox, under one lock. Caller holds
    /// the reader role, the frame reader holds nothing and the inbox is empty. Returns whether a credit frame was
    /// appended (`.taken`), or that nothing was (no whole data frame at the front, or the first one broke the
    /// protocol: then the connection failed).
    private func takeFrames(from ring: any InPlaceStream, first: inout [UInt8]?) -> TakeOutcome {
        let headerSize = Wire.frameHeaderSize + Wire.dataPrefixSize
        var outcome = TakeOutcome.none
        var violation: IPCError?
        var wake = false
        let capacity = min(ring.inPlaceCapacity, Self.ringTakeLimit)
        // Under the lock first, so that the ring is read only while the state is open (the connection's hold on
        // the stream keeps its memory mapped until then).
        locked.withLock { state in
            guard !state.closed else { return }
            try? ring.consumeReadableHeld { bytes -> Int in
                guard let bytes else { return 0 }
                // Each frame's fields are read from shared memory once, into locals, and checked before use; its
                // payload is copied out before the frame is applied, so the peer cannot change it meanwhile. All
                // applied at once (gathering them into a list first would cost a retain, a release and an append per
                // message).
                var count = 0
                var at = 0
                do throws(IPCError) {
                    while count < Self.ringBatch, bytes.count - at >= headerSize {
                        let length = Int(bytes.loadLE(UInt32.self, at: at))
                        let frameSize = Wire.frameHeaderSize + length
                        guard bytes[at + 4] == FrameType.data.rawValue, length >= Wire.dataPrefixSize,
                              length - Wire.dataPrefixSize <= configuration.maxPayload, frameSize <= capacity,
                              bytes.count - at >= frameSize else { break }
                        let seq = bytes.loadLE(UInt64.self, at: at + Wire.frameHeaderSize)
                        let message = [UInt8](UnsafeRawBufferPointer(rebasing: bytes[(at + headerSize)..<(at + frameSize)]))
                        if count == 0 {
                            outcome = .taken(credit: try state.channel.takeInPlace(seq: seq, size: message.count))
                            first = message
                        } else {
                            try state.channel.receiveData(seq: seq, payload: message)
                        }
                        count += 1
                        at += frameSize
                    }
                } catch {
                    violation = error
                }
                // Messages went to the inbox: news, even with nobody parked yet, so that a task which looked before
                // (and found the reader role taken) does not park beside them.
                wake = count > 1 && state.newsArrived()
                if at > 0 { state.noteInput() }
                return at
            }
        }
        if let violation {
            fail(violation, tellPeer: true)
            if case .none = outcome { outcome = .failed }
        }
        if wake { wakeAll() }
        return outcome
    }

    private enum TakeOutcome { case none, taken(credit: Bool), failed }

    /// Up to `maxCount` messages: waits for the first like ``receive()``, then takes the ones already here under
    /// one lock, without waiting for more. Nil at the end.
    package func receive(upTo maxCount: Int) async throws(IPCError) -> [[UInt8]]? {
        guard let first = try await receive() else { return nil }
        guard maxCount > 1 else { return [first] }
        let (batch, credit) = locked.withLock { state -> ([[UInt8]], Bool) in
            // Sized once: grown from one element, the array was reallocated about six times per call.
            var batch: [[UInt8]] = []
            batch.reserveCapacity(min(maxCount, 1 + state.channel.inbox.count))
            batch.append(first)
            var credit = false
            while batch.count < maxCount, case .message(let bytes, let grant) = state.channel.receive() {
                batch.append(bytes)
                credit = credit || grant
            }
            return (batch, credit)
        }
        if credit { afterAppend(data: false) }
        return batch
    }

    /// After ``IOState/takeMessage(noteWait:)`` gave a message (`flag`: a credit frame was appended) or the end
    /// (`flag`: the first time).
    func afterTaken(_ message: [UInt8]?, _ flag: Bool) {
        guard flag else { return }
        if message != nil {
            afterAppend(data: false)
        } else {
            // The end arrived: if the sending side is done too, tear down in the background. The teardown waits
            // (bounded) for the peer's end of stream, which must not hold up the caller's `nil`.
            Task { await self.finishIfDone(wait: false) }
        }
    }

    /// A message if one is already here, without waiting: `.some(nil)` at the end, `nil` when none is here.
    package func tryReceive() throws(IPCError) -> [UInt8]?? {
        let step = try locked.withLock { state throws(IPCError) in try state.takeMessage() }
        guard let (message, flag) = step else { return nil }
        afterTaken(message, flag)
        return .some(message)
    }

    /// Like ``tryReceive()``, but first reads what the stream has now (without waiting), so that a message
    /// already sent counts as here.
    package func pollReceive() throws(IPCError) -> [UInt8]?? {
        if let ready = try tryReceive() { return ready }
        _ = pollInput()
        return try tryReceive()
    }

    /// Reads and applies what the stream has now, without waiting: a non-blocking receive, send or select poll
    /// then sees the messages, credits and grants the peer already sent. When another task holds the reader
    /// role and the stream may have input, it waits (yielding, bounded by ``pollPatienceNanos``) until that
    /// task finished a read it began after this call, or gave the role up; a reader that is merely waiting for
    /// input (the stream shows none) is not waited for. Returns whether the state is as fresh as the stream.
    package func pollInput() -> Bool {
        var firstRound: UInt64?
        var deadline: UInt64 = 0
        while true {
            let (took, rounds) = locked.withLock { state in (state.takeReaderRole(fromIOThread: true), state.readRounds) }
            if took {
                _ = pump()
                releaseReader(armIfWaiters: true)
                return true
            }
            guard stream.mayHaveInput else { return false }
            if let firstRound {
                // Two rounds on: a read that began after this call ended.
                if rounds &- firstRound >= 2 { return true }
                if Platform.monotonicNanoseconds() >= deadline { return false }
            } else {
                firstRound = rounds
                deadline = Platform.monotonicNanoseconds() + Self.pollPatienceNanos
            }
            Platform.yieldCPU()
        }
    }

    /// How long a poll waits at most for another task's read in progress (see ``pollInput()``). A read takes
    /// microseconds, but its thread may be preempted for milliseconds on a busy machine (a bound of 2 ms let a
    /// select take its default about once in 12 runs of the conformance test on two busy cores); the bound only
    /// guards against a reading thread that does not run at all.
    private static let pollPatienceNanos: UInt64 = 250_000_000

    // MARK: Sending

    /// Sends `count` messages in order: as many as credit allows are appended under one lock and written together
    /// at once; for the rest it waits for credit like `send`. `append(i, &state)` appends message `i`. If that
    /// throws, the messages before it are sent and the rest are not.
    package func send(batch count: Int, _ append: (Int, inout ConnectionState) throws(IPCError) -> UInt64) async throws(IPCError) {
        var next = 0
        while next < count {
            var appended = 0
            var failure: IPCError?
            let writeNow = locked.withLock { state -> Bool in
                // A loan in progress or a rendezvous: one at a time, below.
                if state.isLending || state.channel.isRendezvous { return false }
                appending: while next + appended < count {
                    switch state.channel.canSend() {
                    case .ready: break
                    case .wait: break appending
                    case .failed(let error):
                        failure = error
                        break appending
                    }
                    do throws(IPCError) {
                        _ = try append(next + appended, &state.channel)
                    } catch {
                        failure = error
                        break appending
                    }
                    appended += 1
                }
                // The caller handed over everything it has: written now (by this task, or by the writer at work,
                // which writes until the outbox is empty).
                return appended > 0 && state.takeWriterRole()
            }
            if writeNow { writeInline(data: true) }
            next += appended
            if let failure { throw failure }
            if next < count {
                let index = next
                try await send { state throws(IPCError) in try append(index, &state) }
                next += 1
            }
        }
    }

    /// The fast path of `send`: appends and decides the write under one lock, with no suspension point.
    /// Returns false when the send must wait (no credit, a rendezvous, or the handshake not done yet).
    package func trySend(_ append: (inout ConnectionState) throws(IPCError) -> UInt64) throws(IPCError) -> Bool {
        try sendNow(append, allowRendezvous: false) == .sent
    }

    /// ``trySend(_:)`` of a raw payload over shared memory: the frame is written straight into the ring, under the
    /// lock (one copy of the payload; through the outbox it was two, with the outbox's bookkeeping), when nothing
    /// waits in the outbox and nobody else writes. It is published at once or with the rest of its burst, as
    /// ``decideWrite(_:data:)`` decides for any send; until then it is pending output (`staged`). Returns nil
    /// when this path does not apply (the caller sends as usual), otherwise whether it was sent (false: no credit
    /// now).
    package func trySend(raw payload: UnsafeRawBufferPointer) throws(IPCError) -> Bool? {
        let frameSize = Wire.dataFrameOverhead + payload.count
        guard ring != nil, frameSize <= Self.directLimit else { return nil }
        return try locked.withLock { state throws(IPCError) -> Bool? in
            guard state.mayWriteDirectly else { return nil }
            guard try state.channel.checkSend(size: payload.count) else { return false }
            // The room is taken first (against the consumer position kept, rarely read again), so that whether to
            // publish now is decided before the frame is written. No room, or a peer gone or breaking the ring:
            // the usual path waits or reports it.
            guard let region = try? ring!.reserveHeld(frameSize) else { return nil }
            _ = state.stageDirect()
            let publish = decideWrite(&state, data: true)
            region.storeBytes(of: Wire.dataFrameHeader(seq: state.channel.nextSeq, payloadCount: payload.count), as: (UInt64, UInt64).self)
            UnsafeMutableRawBufferPointer(rebasing: region[Wire.dataFrameOverhead...]).copyMemory(from: payload)
            ring!.commitHeld(frameSize, publish: publish)
            _ = try state.channel.commitInPlaceData(size: payload.count)
            if publish, state.ringWritten() { stream.cancelFlush() }
            return true
        }
    }

    /// Frames up to this size are written straight into the ring by ``trySend(raw:)``; larger payloads go to the
    /// outbox as segments of their own (not copied there), which the writer copies into the ring piece by piece.
    private static let directLimit = 32 << 10

    /// What ``sendNow(_:allowRendezvous:)`` did.
    package enum SendAttempt: Equatable { case sent, awaitingTake(UInt64), wouldBlock }

    /// Appends a data frame now if credit allows (under one lock, no suspension point). On a rendezvous (only
    /// when allowed, as a select does) the frame is then on its way and the caller waits with ``awaitTaken(_:)``.
    package func sendNow(_ append: (inout ConnectionState) throws(IPCError) -> UInt64, allowRendezvous: Bool = true) throws(IPCError) -> SendAttempt {
        let step: (UInt64, Bool, Bool)? = try locked.withLock { state throws(IPCError) in
            let rendezvous = state.channel.isRendezvous
            if state.isLending { return nil }
            switch state.channel.canSend() {
            case .failed(let error): throw error
            case .wait: return nil
            case .ready:
                if rendezvous && !allowRendezvous { return nil }
                let seq = try append(&state.channel)
                return (seq, rendezvous, decideWrite(&state, data: true) && !writeToRing(&state))
            }
        }
        guard let (seq, rendezvous, writeNow) = step else { return .wouldBlock }
        if writeNow { writeInline(data: true) }
        return rendezvous ? .awaitingTake(seq) : .sent
    }

    /// Waits until the peer took message `seq` (a rendezvous). Cancelling cannot unsend a message that left:
    /// the wait then ends early and the message is still delivered unless the peer goes away.
    package func awaitTaken(_ seq: UInt64) async throws(IPCError) {
        do {
            _ = try await waitFor { state throws(IPCError) -> Bool? in
                switch state.channel.isTaken(seq) {
                case .ready: return true
                case .wait: return nil
                case .failed(let error): throw error
                }
            }
        } catch where error.code == .cancelled {
            return
        }
    }

    /// Registers a select's case: `waiter` is notified on the next change. Returns nil when the case may
    /// proceed now (a message, the end or a failure is here; or, for a send, credit or a failure).
    package func watch(_ waiter: SelectWaiter, receiving: Bool) -> UInt64? {
        let watch = locked.withLock { $0.watch(waiter, receiving: receiving, rendezvousReceiver: rendezvousReceiver) }
        if watch.granted { afterAppend(data: false) }
        if watch.armRead { stream.arm(read: true, write: false) }
        return watch.id
    }

    package func unwatch(_ id: UInt64) {
        let changed = locked.withLock { $0.unwatch(id) }
        if changed { afterAppend(data: false) }
    }

    /// Appends one data frame once credit allows (waiting for it, reading meanwhile) and arranges for it to be
    /// written; at capacity 0, returns once the peer took it. The caller tried ``trySend(_:)`` first.
    package func send(_ append: (inout ConnectionState) throws(IPCError) -> UInt64) async throws(IPCError) {
        // The caller's send found no credit: a stall (unless it is a rendezvous, which always waits).
        let stalledAt = configuration.metrics == nil ? 0 : Platform.monotonicNanoseconds()
        let seq: UInt64 = try await waitFor { state throws(IPCError) -> UInt64? in
            if state.isLending { return nil }
            switch state.channel.canSend() {
            case .failed(let error): throw error
            case .wait: return nil
            case .ready: return try append(&state.channel)
            }
        }
        afterAppend(data: true)
        if locked.withLock({ $0.channel.isRendezvous }) {
            try await awaitTaken(seq)
        } else if let metrics = configuration.metrics {
            metrics.creditStall(nanoseconds: Platform.monotonicNanoseconds() &- stalledAt)
        }
    }

    /// Closes the sending direction: the peer receives everything sent so far, then the end.
    ///
    /// Without `waitForPeer` this is Go's `close`: it never waits; the close frame goes out after everything
    /// sent before it, and the teardown continues in the background. With `waitForPeer` it returns once
    /// everything was written and, when this side receives nothing more, the peer hung up (bounded by the
    /// close timeout), so that the process may exit without the kernel discarding what the peer has not read.
    package func closeSender(waitForPeer: Bool) async throws(IPCError) {
        let lines = try locked.withLock { state throws(IPCError) -> Bool in
            try state.channel.closeSender()
            return state.channel.mode == .lines
        }
        flushNow()
        // Sends waiting for credit (or, at capacity 0, for a receiver) fail now, with nothing sent.
        wakeAll()
        guard waitForPeer else {
            if lines {
                Task {
                    try? await self.waitUntilWritten()
                    self.stream.shutdownWrite()
                    await self.finishIfDone(wait: false)
                }
            } else {
                Task { await self.finishIfDone(wait: false) }
            }
            return
        }
        let timeout = configuration.closeTimeout
        do {
            try await withDeadline(.now + timeout) { () async throws(IPCError) in try await self.waitUntilWritten() }
        } catch where error.code == .timeout {
            Task { await self.finishIfDone(wait: false) }
            throw IPCError(.timeout, "the peer did not read what was sent within the close timeout (\(timeout)); it is stuck or not reading. The rest is still written in the background while this process lives")
        }
        if lines { stream.shutdownWrite() }
        if locked.withLock({ $0.channel.receiverDone }) {
            await finishIfDone(wait: true)
        } else {
            // The application is still reading, so the teardown (which waits for the peer's end of stream)
            // runs in the background once the receiving direction is done.
            Task { await self.finishIfDone(wait: false) }
        }
    }

    /// Waits until the outbox is written out; throws the connection's failure if it fails first.
    private func waitUntilWritten() async throws(IPCError) {
        _ = try await waitFor { state throws(IPCError) -> Bool? in
            // A task that waits is noted, so that the writer wakes it when done.
            if state.outputDrained(note: state.channel.failure == nil) { return true }
            if let failure = state.channel.failure { throw state.channel.inDoubt(failure) }
            return nil
        }
    }

    /// The sender was dropped without `close()`: close it for the peer.
    package func senderDropped() {
        let changed = locked.withLock { state in
            guard !state.channel.senderClosed else { return false }
            try? state.channel.closeSender()
            return true
        }
        if changed {
            flushNow()
            Task { await self.finishIfDone(wait: false) }
        }
    }

    package func receiverDropped() {
        if locked.withLock({ $0.channel.dropReceiver() }) {
            flushNow()
            wakeAll()
        }
        Task { await self.finishIfDone(wait: false) }
    }

    /// Tears the connection down when both directions are done: flush, end the sending direction, wait
    /// (bounded by the close timeout) for the peer to end its side, and close the stream.
    package func finishIfDone(wait: Bool) async {
        let start = locked.withLock { $0.beginTeardown() }
        switch start {
        case nil: return
        case false?:
            if wait { await waitClosed() }
            return
        case true?:
            break
        }
        // A failed connection only lingers long enough for the peer to read why; a clean close waits for the
        // peer to finish reading (bounded by the close timeout).
        let failed = locked.withLock { $0.channel.failure != nil }
        let deadline = ContinuousClock.now + (failed ? min(configuration.closeTimeout, .milliseconds(500)) : configuration.closeTimeout)
        flushNow()
        // Wait for the output to drain, then for the peer's end of stream (reading and discarding), so that no
        // unread bytes make the kernel reset the connection and drop what the peer has not read yet.
        while ContinuousClock.now < deadline {
            let (drained, ended) = locked.withLock { state in
                (state.outputDrained(note: false) || state.writeFailed, state.channel.endOfStream)
            }
            if drained {
                stream.shutdownWrite()
                if ended { break }
            }
            let outcome: Void? = try? await withDeadline(deadline) { () async throws(IPCError) in
                _ = try await self.waitFor(spin: false) { state throws(IPCError) -> Bool? in
                    if state.channel.endOfStream { return true }
                    if drained { return nil }
                    return state.outputDrained() ? true : nil
                }
            }
            if outcome == nil { break }
        }
        closeStream()
    }

    private func closeStream() {
        let (waiters, watchers, failure) = locked.withLock { state in
            let failure = state.channel.failure
            let (waiters, watchers) = state.close()
            return (waiters, watchers, failure)
        }
        configuration.logger?.debug("connection closed", metadata: failure.map { ["error": "\($0.code)"] })
        reportMetrics(final: true)
        stream.close()
        // Every held call was made under the lock before the state closed, so none is in progress now.
        if ring != nil, !ringHoldEnded.exchange(true, ordering: .acquiringAndReleasing) { ring!.endHold() }
        configuration.onClose?()
        for w in waiters { w.resume() }
        for w in watchers { w.watcher.notify() }
    }

    private func waitClosed() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let now = !locked.withLock { $0.waitForClose(c) }
            if now { c.resume() }
        }
    }

    /// Fails the connection: tells the peer why (best effort) and wakes everyone.
    /// `warn`: log it as a warning whatever its code (see ``log(_:warn:)``).
    package func fail(_ error: IPCError, tellPeer: Bool, warn: Bool = false) {
        let (first, handshaken) = locked.withLock { state -> (Bool, Bool) in
            guard state.channel.failure == nil else { return (false, false) }
            state.channel.fail(error)
            if tellPeer { state.channel.appendErrorFrame(code: error.code, message: error.message) }
            return (true, state.channel.peer != nil)
        }
        guard first else { return }
        // A handshake that fails is reported by whoever made the connection (the caller's error, the listener's log).
        if handshaken {
            log(error, warn: warn)
            if error.code != .alreadyClosed && error.code != .cancelled { configuration.metrics?.failed(error.code) }
        }
        flushNow()
        wakeAll()
        Task { await self.finishIfDone(wait: false) }
    }

    /// Logs why the connection failed: a peer that broke the protocol or stalled inside a frame (and, with `warn`,
    /// one that stopped answering) as a warning; anything else (the peer went away or reported an error, a
    /// handshake this side refused, which a listener logs itself) as debug; this side's own close not at all.
    private func log(_ error: IPCError, warn: Bool) {
        guard let logger = configuration.logger, error.code != .alreadyClosed, error.code != .cancelled else { return }
        if warn || error.code == .protocolViolation || error.code == .timeout {
            logger.warning("connection failed: \(error.message)", metadata: ["error": "\(error.code)"])
        } else {
            logger.debug("connection failed: \(error.message)", metadata: ["error": "\(error.code)"])
        }
    }

    // MARK: Resuming

    /// The stream ended or failed: true when the connection goes on, on a new stream (``continueOn(_:peerReceived:)``),
    /// see ``ConnectionState/streamBroke()``. The first time, the old stream is let go and ``Configuration/onBreak``
    /// called.
    private func streamBroke() -> Bool {
        guard let swappable = stream as? any SwappableStream else { return false }
        switch locked.withLock({ $0.channel.streamBroke() }) {
        case .end: return false
        case .resuming: return true
        case .resume:
            breaks.wrappingAdd(1, ordering: .relaxed)
            brokenAt.store(Platform.monotonicNanoseconds(), ordering: .relaxed)
            swappable.detach()
            configuration.logger?.debug("connection interrupted; resuming")
            configuration.onBreak?()
            wakeAll()
            return true
        }
    }

    /// How many times the stream broke (and the connection resumed or waits to), and when it last did
    /// (monotonic nanoseconds).
    private let breaks = Atomic<UInt64>(0)
    private let brokenAt = Atomic<UInt64>(0)

    /// The last break: its number (``breaks``), when it happened (monotonic nanoseconds), and whether the
    /// connection is still without a stream since.
    package var lastBreak: (number: UInt64, at: UInt64, broken: Bool) {
        let broken = isBroken
        return (breaks.load(ordering: .relaxed), brokenAt.load(ordering: .relaxed), broken)
    }

    /// Whether this connection resumes after its stream breaks (both sides offered it), and its session.
    package var resumeSession: [UInt8]? {
        locked.withLock { $0.channel.resumable ? $0.channel.session : nil }
    }

    /// The peer's hello (after the handshake).
    package var peerHello: Hello? { locked.withLock { $0.channel.peer } }

    /// Continues the connection on `newStream`, a new stream of the same transport, once its old one broke (or now,
    /// when the peer continues it while this side has not noticed the break yet). The dialing side passes no
    /// `peerReceived` (its hello goes first, and the rest once the peer's hello says what it received); the
    /// listening side, which read the dialer's hello, passes what that hello says it received. Throws when the
    /// connection cannot go on (it failed, closed or ended meanwhile); `newStream` is closed then.
    package func continueOn(_ newStream: any ByteStream, peerReceived: UInt64?) async throws(IPCError) {
        guard let swappable = stream as? any SwappableStream else {
            newStream.close()
            throw IPCError(.protocolViolation, "this connection does not resume")
        }
        // The roles are taken once the task or thread holding them lets go (it is reading or writing right now: a
        // matter of microseconds, unless its thread is preempted, or a spinning reader's budget).
        let giveUpAt = Platform.monotonicNanoseconds() + Self.roleWaitNanos
        var attempts = 0
        while true {
            let step = locked.withLock { state -> Bool? in
                if state.channel.failure != nil || state.closed { return nil }
                switch state.channel.streamBroke() {
                case .end: return nil
                case .resume, .resuming: break
                }
                return state.takeRolesForResume()
            }
            guard let step else {
                newStream.close()
                throw locked.withLock { $0.channel.failure } ?? IPCError(.alreadyClosed, "the connection ended before it could be resumed")
            }
            if step { break }
            attempts += 1
            if Platform.monotonicNanoseconds() >= giveUpAt {
                newStream.close()
                throw IPCError(.timeout, "the connection's reader or writer stayed busy for \(Self.roleWaitNanos / 1_000_000_000) s; the new stream was dropped")
            }
            if attempts < 16 {
                await Task.yield()
            } else {
                try? await Task.sleep(for: .microseconds(200))
            }
        }
        swappable.detach()
        reader.restart(expectingHello: peerReceived == nil)
        toldInsideFrame = false
        let failure = locked.withLock { state -> IPCError? in
            do throws(IPCError) {
                try state.channel.continueOnNewStream(peerReceived: peerReceived)
                return nil
            } catch {
                return error
            }
        }
        swappable.attach(newStream)
        if let failure {
            locked.withLock { $0.writerBroke() }
            releaseReader(armIfWaiters: false)
            fail(failure, tellPeer: false)
            throw failure
        }
        configuration.logger?.debug("connection resumed", metadata: ["peer": "\(newStream.peerDescription)"])
        // This task holds the writer role: what the new stream starts with goes out now.
        writeOutbox()
        releaseReader(armIfWaiters: true)
        wakeAll()
    }

    /// How long ``continueOn(_:peerReceived:)`` waits at most for the reader and the writer to let go.
    private static let roleWaitNanos: UInt64 = 5_000_000_000

    /// Waits until a new stream continued the connection (the dialing side: until the peer's hello on it arrived).
    /// Throws the connection's failure; returns false when the new stream broke too.
    package func waitUntilContinued() async throws(IPCError) -> Bool {
        try await waitFor(spin: false) { state throws(IPCError) -> Bool? in
            if let failure = state.channel.failure { throw state.channel.inDoubt(failure) }
            if state.closed { throw IPCError(.alreadyClosed, "the connection is closed") }
            if state.channel.broken { return false }
            return state.channel.awaitingResumeHello ? nil : true
        }
    }

    /// A client asked this connection (a new one, its hello read) to continue a session this side does not know:
    /// it answers that it continues nothing, and fails with `error`.
    package func refuseResume(_ error: IPCError) {
        locked.withLock { $0.channel.refuseResume() }
        fail(error, tellPeer: true)
    }

    /// Whether the connection is between streams now (or waits for the peer's answer on a new one).
    /// False once the connection failed or closed: then there is nothing to resume.
    package var isBroken: Bool {
        locked.withLock { ($0.channel.broken || $0.channel.awaitingResumeHello) && $0.channel.failure == nil && !$0.closed }
    }

    /// Drops a new stream whose peer did not answer in time: the connection looks for another.
    package func abandonStream() {
        _ = streamBroke()
    }

    /// A resumable connection found no new stream in time: it fails with `error` (plus the messages in doubt).
    package func giveUpResuming(_ error: IPCError) {
        guard isBroken else { return }
        fail(error, tellPeer: false)
    }

    /// Gives this connection's stream to another connection (``continueOn(_:peerReceived:)``), which it continues:
    /// this one ends without closing it. Nil when the stream holds more than the peer's hello (the peer sent
    /// frames before it was answered) or is busy.
    package func surrenderStream() -> (any ByteStream)? {
        guard let swappable = stream as? any SwappableStream else { return nil }
        let ok = locked.withLock { state -> Bool in
            guard state.takeRolesForResume() else { return false }
            guard state.channel.outbox.isEmpty && reader.pendingBytes == 0 else {
                state.releaseRoles()
                return false
            }
            return true
        }
        guard ok, let surrendered = swappable.surrender() else {
            fail(IPCError(.protocolViolation, "the peer sent frames before its resumed connection was answered"), tellPeer: true)
            return nil
        }
        closeStream()
        return surrendered
    }

    // MARK: Heartbeats

    /// Starts the heartbeats of ``Configuration/heartbeats`` (``IOState/heartbeat(now:interval:timeout:)``), run by
    /// the transport's I/O thread: every interval a quiet connection pings its peer, and one that has heard nothing
    /// for the timeout fails with `peerClosed`. They end with the connection.
    package func startHeartbeats() {
        guard configuration.mode == .framed, let (interval, _) = configuration.heartbeats else { return }
        stream.scheduleHeartbeats(every: Self.nanoseconds(interval))
    }

    package func heartbeatDue() -> Bool {
        guard let (interval, timeout) = configuration.heartbeats else { return false }
        return heartbeat(now: Platform.monotonicNanoseconds(), interval: Self.nanoseconds(interval), timeout: Self.nanoseconds(timeout))
    }

    private static func nanoseconds(_ duration: Duration) -> UInt64 {
        let (seconds, attoseconds) = duration.components
        return UInt64(max(seconds, 0)) * 1_000_000_000 + UInt64(max(attoseconds, 0) / 1_000_000_000)
    }

    /// One heartbeat; false once the connection is done.
    private func heartbeat(now: UInt64, interval: UInt64, timeout: UInt64) -> Bool {
        switch locked.withLock({ $0.heartbeat(now: now, interval: interval, timeout: timeout) }) {
        case .stop:
            return false
        case .alive(let arm):
            if arm { stream.arm(read: true, write: false) }
        case .ping(let arm):
            if arm { stream.arm(read: true, write: false) }
            flushNow()
        case .dead(let silent):
            // A resumable connection looks for a new stream (the peer may be reachable again).
            if streamBroke() { return true }
            configuration.metrics?.deadPeer()
            let seconds = Double(silent / 1_000_000) / 1000
            fail(IPCError(.peerClosed, "the peer stopped answering: nothing arrived from it for \(seconds) s, not even an answer to a heartbeat; its process is stopped or hung, or the network between is cut (ChannelOptions.deadPeerTimeout)"), tellPeer: true, warn: true)
            return false
        }
        return true
    }

    // MARK: Waiting

    /// Runs `check` under the lock until it returns a value. In between, this task reads input itself
    /// (spinning for a bounded time) or parks until another reader or the I/O thread has news.
    func waitFor<T: Sendable>(spin: Bool = true, _ check: (inout State) throws(IPCError) -> T?) async throws(IPCError) -> T {
        try await waitFor(spin: spin, inPlace: false, read: { pump() ? .progressed : .waiting(1) }, check)
    }

    /// ``waitFor(spin:_:)`` with the reader's step given: `read` (holding the reader role) reads what it can and
    /// says how many bytes it waits for. With `inPlace` (shared memory, reading where the bytes lie), a parked
    /// task is woken once that many are readable, and the I/O thread does not read for it.
    nonisolated(nonsending) func waitFor<T: Sendable>(spin: Bool, inPlace: Bool, read: () -> ReadStep, _ check: (inout State) throws(IPCError) -> T?) async throws(IPCError) -> T {
        while true {
            switch try waitRound(spin: spin, inPlace: inPlace, read: read, check) {
            case .done(let value): return value
            case .park(let parking): try await park(parking)
            }
        }
    }

    /// The synchronous part of ``waitFor(spin:inPlace:read:_:)``: runs `check`, reading (and spinning) meanwhile
    /// when this task can take the reader role, until `check` gives a value or the task must park. Parking is
    /// left to the caller, so that a caller whose value is here or arrives while it spins makes no async call.
    func waitRound<T>(spin: Bool, inPlace: Bool, read: () -> ReadStep, _ check: (inout State) throws(IPCError) -> T?) throws(IPCError) -> WaitRound<T> {
        var spinner: SpinWait?
        /// This wait spins on the CPU hint and has not yet told the advisor how that went.
        var spinning = false
        var holdingReader = false
        while true {
            var generation: UInt64 = 0
            let (step, flush, arm): (WaitStep<T>, Bool, Bool) = try locked.withLock { state throws(IPCError) in
                generation = state.generation
                if holdingReader { state.beginReadRound() }
                let result: T?
                do throws(IPCError) {
                    result = try check(&state)
                } catch {
                    // Parked tasks still need input: the I/O thread reads for them.
                    if holdingReader, state.releaseReader() { stream.arm(read: true, write: false) }
                    throw error
                }
                if let result {
                    let arm = holdingReader && state.releaseReader()
                    return (.done(result), false, arm)
                }
                let (next, write) = state.mustWait(holdingReader: holdingReader)
                return (next == .read ? .read : .park, write, false)
            }
            if flush { writeOutbox() }
            if arm { stream.arm(read: true, write: false) }
            switch step {
            case .done(let value):
                return .done(value)
            case .read:
                holdingReader = true
                var step = read()
                // The clock is read only once there is something to wait for.
                if case .waiting = step, spinner == nil {
                    let relax = spin ? spinAdvisor.spinNanoseconds() : 0
                    spinner = SpinWait(budgetNanoseconds: spin ? configuration.spinNanoseconds : 0, yieldAfterNanoseconds: relax)
                    spinning = relax > 0
                }
                // Poll the stream's cheap hint until it may have input, so that a spinning reader notices the
                // peer's bytes at once and takes no lock meanwhile; then read again. On a ring, whose hint is
                // a few loads from memory (the clock is read only every 16th poll), the bytes the hint saw are
                // read at once; the state is looked at again once something was read.
                if ring != nil {
                    while case .waiting(let needed) = step,
                          spinner!.poll(clockEvery: 16, until: { ring!.hasReadable(atLeast: needed) }) {
                        step = read()
                    }
                } else if case .waiting = step, spinner!.poll(until: { stream.mayHaveInput }) {
                    continue
                }
                guard case .waiting(let needed) = step else {
                    // Input came: whether it came while this task still spun on the CPU hint.
                    if spinning {
                        spinAdvisor.record(paidOff: !spinner!.isYielding)
                        spinning = false
                    }
                    continue
                }
                if spinning { spinAdvisor.record(paidOff: false) }
                return .park(Parking(handingOverReader: true, seen: generation, inPlace: inPlace ? needed : nil))
            case .park:
                return .park(Parking(handingOverReader: false, seen: generation, inPlace: nil))
            }
        }
    }

    /// Suspends until woken (see ``Parking``), then throws if the task was cancelled.
    func park(_ parking: Parking) async throws(IPCError) {
        let handingOverReader = parking.handingOverReader, seen = parking.seen, inPlace = parking.inPlace
        let id = locked.withLock { $0.nextWaiterID() }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                let resumeNow = locked.withLock { state -> Bool in
                    !state.park(id, c, seen: seen, holdingReader: handingOverReader, inPlace: inPlace != nil, cancelled: Task.isCancelled)
                }
                if resumeNow {
                    if handingOverReader { releaseReader(armIfWaiters: true) }
                    c.resume()
                } else if handingOverReader {
                    if let inPlace, ring != nil {
                        ring!.armRead(atLeast: inPlace)
                    } else {
                        stream.arm(read: true, write: false)
                    }
                }
            }
        } onCancel: {
            let c = locked.withLock { $0.cancelWaiter(id, inPlace: inPlace != nil) }
            c?.resume()
        }
        if Task.isCancelled {
            throw IPCError(.cancelled, "the operation was cancelled; no message was taken")
        }
    }

    func wakeAll() {
        let (waiters, watchers) = locked.withLock { $0.wakeAll() }
        for w in waiters { w.waiter.resume() }
        for w in watchers { w.watcher.notify() }
    }

    /// Gives up the reader role. When tasks are parked waiting for input, the role goes to the I/O thread.
    func releaseReader(armIfWaiters: Bool) {
        let arm = locked.withLock { state -> Bool in
            if armIfWaiters { return state.releaseReader() }
            state.dropReader()
            return false
        }
        if arm { stream.arm(read: true, write: false) }
    }

    // MARK: Reading

    /// Reads what is available (at most `limit` bytes) and applies it (caller holds the reader role). Returns
    /// whether anything that could unblock a waiter happened. Keeps the reader role. `bytesRead` counts the bytes
    /// taken from the stream.
    func pump(releasingReader: Bool = false, limit: Int = .max, bytesRead: UnsafeMutablePointer<Int>? = nil) -> Bool {
        if locked.withLock({ $0.channel.failure != nil }) { return drainAfterFailure(releasingReader: releasingReader) }
        var tally = PumpTally()
        var ended = false
        var remaining = limit
        // Complete frames may already be buffered (a bounded read stops short of decoding nothing).
        var wanted = locked.withLock { decodeAndApply(&$0, &tally) }
        // Once a message is here for the waiting tasks and a credit's worth of bytes was read, the messages are
        // handed over rather than more read first: reading on would hold a large message back until the next ones
        // were read too, and its credit with it, so that the sender runs dry and sleeps (decision record 0010).
        // (`limit - remaining` is what this pump has read.)
        reads: for _ in 0..<16 where wanted && remaining > 0 && tally.applied < 4096 && !(tally.effects.wake && limit - remaining >= Wire.creditBytes) {
            var outcome = ReadOutcome.wouldBlock
            var streamFailed = false
            do {
                _ = try reader.read { buffer throws(IPCError) -> Int in
                    let room = buffer.count <= remaining ? buffer : UnsafeMutableRawBufferPointer(rebasing: buffer[..<remaining])
                    do throws(IPCError) {
                        outcome = try stream.read(into: room)
                    } catch {
                        streamFailed = true
                        throw error
                    }
                    if case .bytes(let n) = outcome { return n }
                    return 0
                }
            } catch {
                // A resumable connection whose stream failed goes on once a new stream continues it.
                if !(streamFailed && streamBroke()) { tally.protocolError = error }
                break
            }
            switch outcome {
            case .bytes(let n):
                remaining -= n
                bytesRead?.pointee += n
                wanted = locked.withLock { state in
                    state.noteInput()
                    return decodeAndApply(&state, &tally)
                }
            case .wouldBlock:
                break reads
            case .endOfStream:
                if streamBroke() { break reads }
                ended = true
                locked.withLock { state in
                    do throws(IPCError) {
                        if let last = try reader.finish() {
                            tally.applied += 1
                            try state.channel.apply(last, effects: &tally.effects)
                        }
                        if state.channel.applyEndOfStream() { tally.effects.output = true }
                    } catch {
                        tally.protocolError = error
                    }
                }
                break reads
            }
        }
        // The state hears about input only while it ends inside a frame (and once more when it no longer does),
        // so that a stream of whole frames takes no extra lock.
        let insideFrame = reader.pendingBytes > 0
        if limit - remaining > 0, insideFrame || toldInsideFrame, configuration.mode == .framed, let timeout = configuration.stalledFrameTimeout {
            let armedAt = locked.withLock { $0.inputRead(progress: reader.totalRead, insideFrame: insideFrame) }
            toldInsideFrame = insideFrame
            if let armedAt { watchForStall(armedAt: armedAt, after: timeout) }
        }
        if tally.applied == 0 && !ended && tally.protocolError == nil { return false }
        // The I/O thread gives the role back before waking anyone, so a woken task can take it.
        if releasingReader { locked.withLock { $0.dropReader() } }
        if let protocolError = tally.protocolError {
            fail(protocolError, tellPeer: protocolError.code != .peerClosed && protocolError.code != .peerError)
            return true
        }
        if tally.effects.output { flushNow() }
        wakeAll()
        if tally.effects.credited { reportMetrics() }
        return releasingReader || tally.effects.wake || ended
    }

    /// Fails the connection if the peer sends nothing more for `timeout` while the input ends inside a frame (a
    /// peer that stops mid-frame would otherwise leave every receive waiting forever).
    private func watchForStall(armedAt: UInt64, after timeout: Duration) {
        // Holds the connection weakly and is cancelled when the connection goes away, so that it does not outlive it.
        stallWatch.withLock { $0.take() }?.cancel()
        let task = Task { [weak self] in
            try? await Task.sleep(for: timeout)
            guard !Task.isCancelled else { return }
            guard let self else { return }
            switch self.locked.withLock({ $0.stallTimerFired(armedAt: armedAt) }) {
            case .stalled:
                self.fail(IPCError(.timeout, "the peer sent part of a frame and then nothing for \(timeout); it is stuck or not an Interprocess endpoint (ChannelOptions.stalledFrameTimeout)"), tellPeer: true)
            case .rearm(let progress):
                self.watchForStall(armedAt: progress, after: timeout)
            case .idle:
                break
            }
        }
        stallWatch.withLock { $0 = task }
    }

    deinit {
        stallWatch.withLock { $0 }?.cancel()
    }

    /// What one ``pump(releasingReader:limit:bytesRead:)`` decoded and applied.
    private struct PumpTally {
        var effects = ConnectionState.Effects()
        var protocolError: IPCError?
        var applied = 0
    }

    /// Decodes every complete frame the reader holds and applies it at once (lock held: no list of events is
    /// built, and a read costs one lock). Returns whether more input is wanted. A method rather than a function
    /// nested in `pump`, whose captured variables were checked for exclusive access at run time on every frame.
    private func decodeAndApply(_ state: inout State, _ tally: inout PumpTally) -> Bool {
        do throws(IPCError) {
            while true {
                if let (seq, payload) = reader.nextData() {
                    tally.applied += 1
                    try state.channel.receiveData(seq: seq, payload: payload)
                    tally.effects.wake = true
                    continue
                }
                guard let event = try reader.next() else { break }
                tally.applied += 1
                switch event {
                case .hello(let hello):
                    try state.channel.apply(hello: hello)
                    tally.effects.wake = true
                    // An answering side's hello, or what a resumed connection sends again.
                    if !state.channel.outbox.isEmpty { tally.effects.output = true }
                case .frame(let frame):
                    try state.channel.apply(frame, effects: &tally.effects)
                }
            }
        } catch {
            tally.protocolError = error
            return false
        }
        return state.channel.wantsMoreInput
    }

    /// After a failure nothing more is decoded: input is read and dropped until the peer's end of stream.
    private func drainAfterFailure(releasingReader: Bool) -> Bool {
        var scratch = [UInt8](repeating: 0, count: 16 << 10)
        var ended = false
        var progressed = false
        reads: for _ in 0..<16 {
            let outcome = scratch.withUnsafeMutableBytes { buffer in (try? stream.read(into: buffer)) ?? .endOfStream }
            switch outcome {
            case .bytes: progressed = true
            case .wouldBlock: break reads
            case .endOfStream:
                ended = true
                break reads
            }
        }
        guard progressed || ended else { return false }
        locked.withLock { state in
            if ended { state.channel.applyEndOfStream() }
            if releasingReader { state.dropReader() }
        }
        wakeAll()
        return true
    }

    // MARK: Writing

    /// After `send` appended a data frame (`data`) or `receive` appended a credit frame: write now, or leave
    /// it to one deferred flush on the I/O thread. A send less than `burstNanos` after the previous one is part
    /// of a burst and is coalesced, written once a quarter of the peer's window has accumulated (so the peer
    /// always has work while more is on the way); a lone send (a request, a ping-pong) is written at once. Once
    /// a deferred flush is pending, later sends join the burst without a look at the clock (the flush bounds
    /// their delay).
    /// Anything still pending when a task is about to wait is written by that task before it waits, and a
    /// deferred flush on the I/O thread writes the tail of a burst that ends without a wait.
    func afterAppend(data: Bool) {
        // A credit (or another control frame) was appended: a batch of messages was taken, whose totals are
        // taken under the same lock.
        let metrics = data ? nil : configuration.metrics
        var delta: ConnectionState.Totals?
        let writeNow = locked.withLock { state in
            if metrics != nil { delta = state.totalsToReport() }
            return decideWrite(&state, data: data) && !writeToRing(&state)
        }
        if writeNow { writeInline(data: data) }
        if let metrics, let delta { metrics.record(delta) }
    }

    /// Reports what was delivered each way since the last report (``ConnectionMetrics``): after a credit was
    /// appended or applied, that is once per batch of messages, and when the connection closes.
    func reportMetrics(final: Bool = false) {
        guard let metrics = configuration.metrics, let delta = locked.withLock({ $0.totalsToReport(final: final) }) else { return }
        metrics.record(delta)
    }

    /// Larger outboxes are left to ``writeOutbox()``: the ring's `write` publishes every 256 KiB, so that the
    /// reader copies a large message out while the rest is copied in, and not under the connection's lock.
    private static let ringWriteLimit = 64 << 10

    /// Shared memory: writes the whole outbox into the ring at once, under the lock (held by the caller, who
    /// took the writer role in ``decideWrite(_:data:)``), when it fits in the room there is. Writing into the
    /// ring is a copy and a release store: done under the lock it needs no snapshot of the outbox and none of the
    /// five more locks ``writeInline(data:)`` takes. Returns true when written (the writer role is given back);
    /// false when ``writeInline(data:)`` must write it (not a ring, too much or too little room, a failure).
    private func writeToRing(_ state: inout State) -> Bool {
        // `ring!` rather than `guard let ring`: a binding is a copy, a retain and a release per call, slow ones
        // for a stream referred to weakly (its count lives in a side table).
        guard ring != nil, state.mayWriteRing else { return false }
        let count = state.channel.outbox.count
        guard count <= Self.ringWriteLimit else { return false }
        do {
            if count > 0 {
                guard try ring!.writeHeld(count, publish: true, writing: { state.channel.outbox.drain(into: $0) }) else { return false }
            } else {
                try ring!.publishWrittenHeld()
            }
        } catch {
            return false
        }
        if state.ringWritten() { stream.cancelFlush() }
        return true
    }

    /// Decides how appended output gets written (``IOState/outputAppended(data:now:)``, lock held, the clock read
    /// only when the decision needs it): true when the caller writes it now (it took the writer role); a deferred
    /// flush is asked for here, under the lock, so that the request cannot cross a ``writeOutbox()`` withdrawing it.
    private func decideWrite(_ state: inout State, data: Bool) -> Bool {
        let now = data && state.flushNeedsClock ? Platform.monotonicNanoseconds() : 0
        switch state.outputAppended(data: data, now: now) {
        case .writeNow:
            return true
        case .requestFlush:
            stream.requestFlush()
            return false
        case .none:
            return false
        }
    }

    /// Writes the outbox (caller took the writer role in ``decideWrite(_:data:)``).
    private func writeInline(data: Bool) {
        writeOutbox()
        // Measure the next gap from the end of this write, not its start.
        if data {
            let now = Platform.monotonicNanoseconds()
            locked.withLock { $0.sendWritten(now: now) }
        }
    }

    /// The process is exiting (called from an exit handler, on whatever thread exits; other threads may still
    /// run). Messages this side sent that the peer has not yet acknowledged must not be lost: the outbox is
    /// written, the sending direction ended, and, over a socket, input is read until the peer has acknowledged
    /// everything or ended its side, so that no unread input makes the kernel reset the connection (a TCP peer
    /// that gets a reset drops what it has not read yet). Bounded by `deadline` (monotonic nanoseconds); `pause`
    /// waits a moment between attempts.
    package func lingerAtExit(until deadline: UInt64, pause: () -> Void) {
        func unacknowledged(_ state: borrowing State) -> Bool {
            state.channel.unacknowledged > 0 && state.channel.failure == nil && !state.channel.endOfStream
        }
        guard locked.withLock({ !$0.closed && (unacknowledged($0) || $0.hasPendingOutput) }) else { return }
        while Platform.monotonicNanoseconds() < deadline {
            flushNow()
            if locked.withLock({ $0.outputDrained(note: false) || $0.writeFailed || $0.closed }) { break }
            pause()
        }
        guard ring == nil else { return }  // shared memory keeps what was written for the peer, whatever happens here
        stream.shutdownWrite()
        while Platform.monotonicNanoseconds() < deadline, locked.withLock({ !$0.closed && unacknowledged($0) }) {
            if locked.withLock({ $0.takeReaderRole(fromIOThread: true) }) {
                let progressed = pump()
                locked.withLock { $0.dropReader() }
                if progressed { continue }
            }
            pause()
        }
    }

    /// Writes the outbox now if nobody else is writing it.
    func flushNow() {
        if locked.withLock({ $0.takeWriterRole() }) { writeOutbox() }
    }

    private typealias Snapshot = (segments: [[UInt8]], offset: Int)

    private static func write(taking snapshot: inout Snapshot?, to stream: any ByteStream) throws(IPCError) -> Int {
        guard let (segments, offset) = snapshot.take() else { return 0 }
        return try stream.write(segments, offset: offset)
    }

    /// Writes until the outbox is empty or the stream would block (then the I/O thread continues when it is
    /// writable). Caller holds the writer role.
    func writeOutbox() {
        while true {
            var wakeWaiters = false
            var next = locked.withLock { state -> Snapshot? in
                switch state.nextWrite() {
                case .write:
                    return state.channel.outbox.snapshot()
                case .done(let publishStaged, let cancelFlush, let wake):
                    // Frames written into the ring and nothing after them are published here. (If that fails,
                    // the peer is gone or broke the ring: the next read reports it.)
                    if publishStaged { try? ring!.publishWritten() }
                    // Everything is written (or nothing more can be): the deferred flush asked for would find
                    // nothing to do, so it is withdrawn and the I/O thread need not wake.
                    if cancelFlush { stream.cancelFlush() }
                    wakeWaiters = wake
                    return nil
                }
            }
            guard next != nil else {
                if wakeWaiters { wakeAll() }
                return
            }
            let written: Int
            do throws(IPCError) {
                // The write takes the snapshot and drops it, so that a tail it wrote is referenced by the outbox
                // alone again when `consume` keeps it for reuse (a second reference would make reusing it copy it).
                written = try Self.write(taking: &next, to: stream)
            } catch {
                if streamBroke() {
                    locked.withLock { $0.writerBroke() }
                    return
                }
                let mayRead = locked.withLock { $0.writeFailedTakingReader() }
                // The peer may have said why it closed (an error frame before its end of stream): read that
                // first, so the error reported is the peer's reason rather than a bare broken pipe.
                if mayRead {
                    _ = pump()
                    releaseReader(armIfWaiters: true)
                }
                // A write after the peer's end of stream (a last credit) fails because the peer is gone: what
                // the receiver reports is how its stream ended, not the broken pipe.
                let ended = locked.withLock { $0.channel.endOfStream && $0.channel.peerClosedAfter == nil ? $0.channel.endedWithoutClose : nil }
                fail(ended ?? error, tellPeer: false)
                return
            }
            let blocked: Bool
            (blocked, wakeWaiters) = locked.withLock { $0.wrote(written) }
            if blocked {
                stream.arm(read: false, write: true)
                if wakeWaiters { wakeAll() }
                return
            }
            wakeAll()
        }
    }

    // MARK: ByteStreamHandler (I/O thread)

    package func streamReady(readable: Bool, writable: Bool) {
        let resumeWrite = writable && locked.withLock { $0.streamWritable() }
        if resumeWrite {
            writeOutbox()
            wakeAll()
        }
        if readable {
            switch locked.withLock({ $0.streamReadable() }) {
            case .nothing: break
            case .wakeInPlaceReaders: wakeAll()
            case .read:
                if !pump(releasingReader: true) {
                    locked.withLock { $0.ioThreadReadNothing() }
                    stream.arm(read: true, write: false)
                } else if locked.withLock({ $0.keepReading() }) {
                    // A quiet connection (heartbeats): the I/O thread goes on reading for it.
                    stream.arm(read: true, write: false)
                }
            }
        }
    }

    package func flushRequested() {
        // The safety net for the tail of a burst. If the lock is busy, its owner is active and will write (or
        // wait, which writes): try again later rather than contend for the lock from the I/O thread.
        let take = locked.withLockIfAvailable { $0.deferredFlushDue() }
        switch take {
        case true?: writeOutbox()
        case false?: break
        case nil: stream.requestFlush()
        }
    }
}

private enum WaitStep<T> { case done(T), read, park }

/// How a round of waiting ended: with the value, or with the task to park.
@usableFromInline
enum WaitRound<T> { case done(T), park(Parking) }

/// A task about to park (``ConnectionCore/park(_:)``). With `handingOverReader`, it holds the reader role and
/// gives it to the I/O thread, which reads once the stream is readable. It does not park if a wake-up happened
/// since it looked at the state (generation `seen`). With `inPlace` (a count of bytes), it waits to read a frame
/// in place: the I/O thread wakes it once that many bytes are readable instead of reading them itself.
@usableFromInline
struct Parking: Sendable {
    fileprivate let handingOverReader: Bool
    fileprivate let seen: UInt64
    fileprivate let inPlace: Int?
    /// Not a park: a receive at capacity 0, which has no synchronous part and goes on in
    /// ``ConnectionCore/receive(after:)``.
    fileprivate var rendezvous = false

    fileprivate static let rendezvous = Parking(handingOverReader: false, seen: 0, inPlace: nil, rendezvous: true)
}

/// What one read in place did: read or decoded something (look at the state again), or nothing until this many
/// bytes are readable.
enum ReadStep { case progressed, waiting(Int) }

/// Runs `body`, failing with a timeout error at `deadline`.
package func withDeadline<T: Sendable>(_ deadline: ContinuousClock.Instant, _ body: @escaping @Sendable () async throws(IPCError) -> T) async throws(IPCError) -> T {
    let result: Result<T, IPCError> = await withTaskGroup(of: Result<T, IPCError>?.self) { group in
        group.addTask {
            do throws(IPCError) { return .success(try await body()) } catch { return .failure(error) }
        }
        group.addTask {
            try? await Task.sleep(until: deadline, clock: .continuous)
            return nil
        }
        let first = await group.next()!
        group.cancelAll()
        return first ?? .failure(IPCError(.timeout, "the operation did not complete in time"))
    }
    return try result.get()
}
