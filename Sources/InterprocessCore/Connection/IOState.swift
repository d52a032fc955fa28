/// Who does a connection's I/O, when output is written, and who waits: the decisions of a connection beside
/// the protocol's own (``ConnectionState``, held in ``channel``), as a value that takes events and returns what
/// to do.
///
/// It takes no lock, makes no system call and reads no clock: ``ConnectionCore`` holds it behind a mutex, passes
/// the time in where a decision needs it (see ``flushNeedsClock``), and carries out the returned actions (read,
/// write, arm the stream, ask for or withdraw a deferred flush, resume tasks). `Waiter` and `Watcher` are what
/// is resumed and notified; the tests use plain numbers.
///
/// Invariants (checked by the property tests against a model):
/// - one reader at a time (``reader``), one writer at a time (``writer``); a loan holds the writer role;
/// - a task parked for input never waits with nobody reading: while ``waiters`` is not empty and input is wanted,
///   the reader role is held (by a task that will read, or by the I/O thread, whose stream is armed);
/// - output never waits with nobody to write it: pending output has a writer or a deferred flush asked for;
/// - a wake-up bumps ``generation``, so a task that looked at the state before it does not park.
package struct IOState<Waiter, Watcher> {
    /// Who reads the stream.
    package enum Reader: Equatable, Sendable {
        case free
        /// A task reads inline (receiving, polling, or waiting and spinning).
        case task
        /// The transport's I/O thread: the stream is armed for reading, and the thread reads (or wakes the tasks
        /// waiting to read in place) once it is readable. A poll may take the role back (see
        /// ``takeReaderRole(fromIOThread:)``).
        case ioThread
        /// The I/O thread reads now.
        case ioThreadReading
    }

    /// Who writes the stream.
    package enum Writer: Equatable, Sendable {
        case idle
        /// A task or the I/O thread writes the outbox until it is empty.
        case writing
        /// The writer found no room: the stream is armed for writing, and the I/O thread continues.
        case waitingForRoom
        /// A message is being written in place (a loan): other sends wait, so that sequence numbers stay in the
        /// order the frames are published.
        case lending
    }

    package var channel: ConnectionState
    package private(set) var reader = Reader.free
    package private(set) var writer = Writer.idle

    // Flush policy: when appended frames are written.
    package private(set) var flushScheduled = false
    private var lastAppendNanos: UInt64 = 0
    /// When the pending deferred flush was asked for (the batch it stands for began).
    private var flushRequestedNanos: UInt64 = 0
    /// Data frames appended since the writer last took the outbox.
    private var unflushedFrames = 0
    /// A receive waited for the peer since the last send: the next send answers something (a request after its
    /// reply, a ping after its pong) and is written at once, however short the gap since the last one.
    private var waitedForInput = false

    /// Shared memory: data frames were written straight into the ring and not yet published. Output pending, as
    /// the outbox's is; whatever writes to the ring next publishes them.
    private var staged = false
    /// A task waits for the writer to give up its role (a loan, or a wait for everything to be written): the
    /// writer wakes everyone when it does, or when its write blocks for room.
    private var writerWaited = false

    package private(set) var waiters: [(id: UInt64, waiter: Waiter)] = []
    /// Selects waiting on this connection, notified (once) on the next wake-up.
    package private(set) var watchers: [(id: UInt64, watcher: Watcher)] = []
    /// Rendezvous receiver: the select receive cases counted as waiting (``ConnectionState/beginWaiting()``)
    /// until they are unwatched; kept apart from `watchers`, which a wake-up empties.
    private var receiveWatches: [UInt64] = []
    /// Tasks parked to read in place: the I/O thread then wakes them instead of reading, so the next message stays
    /// where it lies.
    private var inPlaceWaiting = 0
    /// Bumped on every wake-up, so a task that decided to park can tell whether news arrived meanwhile.
    package private(set) var generation: UInt64 = 0
    private var nextID: UInt64 = 0

    private var tearingDown = false
    /// A write failed: the stream takes no more bytes.
    package private(set) var writeFailed = false
    package private(set) var closed = false
    private var closedWaiters: [Waiter] = []

    /// Burst detection: a send within this time of the end of the previous one leaves its write to a deferred
    /// flush.
    package static var burstNanos: UInt64 { 5_000 }
    /// A burst's batch gathered this long is written by the sender itself: well before a transport's deferred
    /// flush (50 µs on this package's transports) would wake the I/O thread in the middle of the burst.
    package static var batchNanos: UInt64 { 25_000 }
    /// An outbox at least this large is written at once even in a burst.
    package static var flushThreshold: Int { 32 << 10 }

    package init(channel: ConnectionState) {
        self.channel = channel
    }

    // MARK: Metrics

    /// The totals last reported to the metrics.
    private var reportedTotals = ConnectionState.Totals()

    /// What was delivered each way since the last call, or nil when nothing was (`final`: when the connection ends,
    /// everything taken, credited or not).
    package mutating func totalsToReport(final: Bool = false) -> ConnectionState.Totals? {
        let now = channel.totals(final: final)
        guard now != reportedTotals else { return nil }
        defer { reportedTotals = now }
        return now - reportedTotals
    }

    // MARK: Heartbeats

    /// Reads of the stream that took input (by anyone): the heartbeat's evidence that the peer is alive.
    private var inputReads: UInt64 = 0
    /// ``inputReads`` at the heartbeat that last saw it change, and that heartbeat's time (0: none yet).
    private var heardReads: UInt64 = 0
    private var heardNanos: UInt64 = 0
    /// When the first ping of the current silence went out (nil: none since input was last heard).
    private var silencePingNanos: UInt64?
    private var pingsSent: UInt64 = 0
    /// No task took the reader role since the last heartbeat: the I/O thread keeps reading (re-arming after each
    /// read) so that the peer's pings are answered at once, whatever this side's application does.
    private var quiet = false

    /// A read took input from the stream.
    @inline(__always)
    package mutating func noteInput() {
        inputReads &+= 1
    }

    /// What a heartbeat asks the driver to do.
    package enum HeartbeatAction: Equatable {
        /// The connection is done (closed, failed or ended): no more heartbeats.
        case stop
        /// Heard from the peer within the interval. `arm`: the I/O thread took the reader role (arm the stream).
        case alive(arm: Bool)
        /// Nothing heard for an interval: a ping was appended (write it).
        case ping(arm: Bool)
        /// Nothing heard for the timeout, in nanoseconds (at least the timeout): the peer is gone.
        case dead(silentNanos: UInt64)
    }

    /// A heartbeat at `now` (every `interval`, monotonic nanoseconds; `interval` at most half of `timeout`): the
    /// peer is alive while anything was read from it since the previous heartbeat, or since one less than
    /// `timeout` ago. A side that heard nothing for an interval pings (the peer answers with a pong, which is
    /// input), and the I/O thread reads whenever no task does, so that the peer's pings are answered promptly
    /// too. The silence is measured from the heartbeat that last saw input, which is no earlier than the input
    /// itself, so the peer is never declared gone before `timeout` of real silence; and not before it had
    /// `timeout - interval` to answer this silence's first ping (a late heartbeat, on a busy machine, may find
    /// the whole timeout gone before it could ping).
    package mutating func heartbeat(now: UInt64, interval: UInt64, timeout: UInt64) -> HeartbeatAction {
        if closed || tearingDown || writeFailed || channel.failure != nil || channel.endOfStream || channel.mode != .framed { return .stop }
        if channel.broken || channel.awaitingResumeHello {
            // Between streams (resuming): the silence of the next stream is measured from its start.
            heardNanos = 0
            return .alive(arm: false)
        }
        if inputReads != heardReads || heardNanos == 0 {
            heardReads = inputReads
            heardNanos = now
            silencePingNanos = nil
        }
        let silent = now &- heardNanos
        if silent >= timeout, let pinged = silencePingNanos, now &- pinged >= timeout - interval {
            return .dead(silentNanos: silent)
        }
        quiet = true
        let arm = keepReading()
        guard silent >= interval else { return .alive(arm: arm) }
        if silencePingNanos == nil { silencePingNanos = now }
        pingsSent &+= 1
        let nonce = pingsSent
        channel.outbox.append { $0.appendControlFrame(.ping(nonce)) }
        return .ping(arm: arm)
    }

    /// Whether the I/O thread takes the reader role to keep a quiet connection's input read (see ``quiet``): true
    /// when it did (the caller arms the stream).
    package mutating func keepReading() -> Bool {
        guard quiet, reader == .free, channel.wantsMoreInput, !closed, channel.failure == nil, !channel.endOfStream else { return false }
        reader = .ioThread
        return true
    }

    @inline(__always)
    package var hasPendingOutput: Bool { staged || !channel.outbox.isEmpty }
    @inline(__always)
    package var hasWaiters: Bool { !waiters.isEmpty || !watchers.isEmpty }
    package var isLending: Bool { writer == .lending }

    // MARK: Reader role

    /// Takes the reader role for a task if it is free and input is wanted (and the connection is open), or
    /// when the I/O thread holds it while nobody waits (it then reads only to keep a quiet connection answering
    /// heartbeats: the task reads inline instead).
    /// `fromIOThread`: also when the I/O thread holds it for waiting tasks and waits for the stream to become
    /// readable (a non-blocking poll reads what is there now rather than report nothing). Either way the thread,
    /// woken later, finds the role taken and leaves the reading to the task, which hands the role back on release
    /// if anyone waits.
    @inline(__always)
    package mutating func takeReaderRole(fromIOThread: Bool = false) -> Bool {
        guard reader == .free || reader == .ioThread && (fromIOThread || !hasWaiters), channel.wantsMoreInput, !closed else { return false }
        reader = .task
        quiet = false
        return true
    }

    /// The reading task is done. Returns true when parked tasks or watching selects still wait for news: the role
    /// then goes to the I/O thread, and the caller arms the stream for reading.
    @inline(__always)
    package mutating func releaseReader() -> Bool {
        if hasWaiters && channel.wantsMoreInput && !closed {
            reader = .ioThread
            return true
        }
        reader = .free
        return false
    }

    /// The reader role is given up whatever waits (the I/O thread hands it back before waking the tasks it read
    /// for, so that one of them can take it).
    package mutating func dropReader() {
        reader = .free
    }

    /// What the I/O thread does when the stream is readable.
    package enum ReadableAction: Equatable { case nothing, wakeInPlaceReaders, read }

    package mutating func streamReadable() -> ReadableAction {
        guard reader == .ioThread else { return .nothing }
        // A task waits to read the next message in place: give the role back and wake it (and everyone) rather
        // than copy the message out.
        let inPlace = inPlaceWaiting > 0
        guard !inPlace && channel.wantsMoreInput else {
            reader = .free
            return inPlace ? .wakeInPlaceReaders : .nothing
        }
        reader = .ioThreadReading
        return .read
    }

    /// The I/O thread's read found nothing: it keeps the role and waits again (the caller arms the stream).
    package mutating func ioThreadReadNothing() {
        reader = .ioThread
    }

    // MARK: Waiting

    /// What a task that found nothing to take does next.
    package enum WaitStep: Equatable { case read, park }

    /// A task looked at the state and must wait (`holdingReader`: it holds the reader role). Returns whether it
    /// reads (it holds the reader role then) or parks, and whether it must first write the pending output (it
    /// then holds the writer role): about to wait for the peer, whatever is pending must go out first.
    @inline(__always)
    package mutating func mustWait(holdingReader: Bool) -> (step: WaitStep, write: Bool) {
        var write = false
        if hasPendingOutput && writer == .idle {
            writer = .writing
            write = true
        }
        if holdingReader || takeReaderRole() { return (.read, write) }
        return (.park, write)
    }

    /// A new waiter or watcher identity.
    package mutating func nextWaiterID() -> UInt64 {
        nextID += 1
        return nextID
    }

    /// Parks `waiter`, unless news arrived since the task looked (generation `seen`), the connection closed, the
    /// task is `cancelled`, or nobody would read for it: then it returns false and the caller looks again at once.
    /// `holdingReader`: the task holds the reader role and hands it to the I/O thread (the caller arms the stream).
    /// `inPlace`: it waits to read a frame in place.
    ///
    /// A task that found the reader role taken decided to park; if the reader gave the role up before the task
    /// parked (it took the last message, which bumps no generation), nobody reads for it now: it must look again
    /// and read itself, or it would sleep beside input nobody reads.
    package mutating func park(_ id: UInt64, _ waiter: Waiter, seen: UInt64, holdingReader: Bool, inPlace: Bool, cancelled: Bool) -> Bool {
        if cancelled || closed || generation != seen { return false }
        if !holdingReader && reader == .free && channel.wantsMoreInput { return false }
        waiters.append((id, waiter))
        if inPlace { inPlaceWaiting += 1 }
        if holdingReader { reader = .ioThread }
        return true
    }

    /// A parked task was cancelled: removes it (to be resumed by the caller) if nothing woke it yet.
    package mutating func cancelWaiter(_ id: UInt64, inPlace: Bool) -> Waiter? {
        guard let i = waiters.firstIndex(where: { $0.id == id }) else { return nil }
        if inPlace { inPlaceWaiting = max(inPlaceWaiting - 1, 0) }
        return waiters.remove(at: i).waiter
    }

    /// News arrived (messages went to the inbox) while the caller held the lock: a task that looked before does
    /// not park. Returns whether anyone waits, to be woken with ``wakeAll()``.
    @inline(__always)
    package mutating func newsArrived() -> Bool {
        generation &+= 1
        return hasWaiters
    }

    /// A reading task begins another round (it looks at the state, then reads): counted, so that a poll finding
    /// the role taken can wait for a read that began after it (``readRounds``).
    @inline(__always)
    package mutating func beginReadRound() {
        readRounds &+= 1
    }

    /// Rounds begun by reading tasks (``beginReadRound()``).
    package private(set) var readRounds: UInt64 = 0

    /// Something changed: every parked task and watching select is to be resumed (they look again).
    package mutating func wakeAll() -> (waiters: [(id: UInt64, waiter: Waiter)], watchers: [(id: UInt64, watcher: Watcher)]) {
        generation &+= 1
        inPlaceWaiting = 0
        defer {
            waiters.removeAll(keepingCapacity: true)
            if !watchers.isEmpty { watchers = [] }
        }
        return (waiters, watchers)
    }

    /// What ``watch(_:receiving:rendezvousReceiver:)`` decided.
    package struct Watch: Equatable {
        /// The watch's identity, or nil when the case may proceed now.
        package var id: UInt64?
        /// The reader role went to the I/O thread: arm the stream for reading.
        package var armRead = false
        /// A grant frame was appended: have it written.
        package var granted = false
    }

    /// Registers a select's case, to be notified on the next change, unless it may proceed now (a message, the
    /// end or a failure is here; for a send, credit or a failure; or the connection is closed).
    package mutating func watch(_ watcher: Watcher, receiving: Bool, rendezvousReceiver: Bool) -> Watch {
        let ready = receiving ? channel.receive(peek: true) != .wait : channel.canSend() != .wait
        if ready || closed { return Watch() }
        let id = nextWaiterID()
        watchers.append((id, watcher))
        var result = Watch(id: id)
        // At capacity 0 a waiting receive case grants the peer one message (taken back when unwatched).
        if receiving && rendezvousReceiver {
            receiveWatches.append(id)
            result.granted = channel.beginWaiting()
        }
        // Somebody must read for the news to arrive: hand the reader role to the I/O thread if it is free.
        if reader == .free && channel.wantsMoreInput {
            reader = .ioThread
            result.armRead = true
        }
        return result
    }

    /// A select no longer watches: returns whether a grant changed (a frame to write).
    package mutating func unwatch(_ id: UInt64) -> Bool {
        watchers.removeAll { $0.id == id }
        guard let i = receiveWatches.firstIndex(of: id) else { return false }
        receiveWatches.remove(at: i)
        return channel.endWaiting()
    }

    // MARK: Receiving

    /// The next message and whether a credit frame was appended; or nil (the end) and whether the end is reported
    /// for the first time; or nil when there is nothing yet. `noteWait`: a receive that waits when nothing is
    /// here notes it, so that the next send, which answers what arrives, is written at once.
    @inline(__always)
    package mutating func takeMessage(noteWait: Bool = false) throws(IPCError) -> ([UInt8]?, Bool)? {
        switch channel.receive() {
        case .message(let bytes, let credit): return (bytes, credit)
        case .end:
            defer { channel.receiverDone = true }
            return (nil, !channel.receiverDone)
        case .failed(let error): throw error
        case .wait:
            if noteWait { waitedForInput = true }
            return nil
        }
    }

    // MARK: Writer role and flushing

    /// Whether ``outputAppended(data:now:)`` of a data frame needs the time: not when the frame is written at
    /// once whatever the time; outside a burst, yes; inside one (a deferred flush is pending), every 16th frame
    /// (on every frame, reading the clock was a noticeable share of a sender's time).
    @inline(__always)
    package var flushNeedsClock: Bool {
        let frames = unflushedFrames + 1
        if channel.isRendezvous || frames >= batchFrames || waitedForInput { return false }
        return !flushScheduled || frames % 16 == 0
    }

    /// A burst is written once this many data frames gathered: a quarter of the peer's window.
    @inline(__always)
    private var batchFrames: Int { max(Int(channel.peer?.capacity ?? 1) / 4, 1) }

    /// How appended output gets written.
    package enum WriteDecision: Equatable {
        /// The caller writes it now: it took the writer role.
        case writeNow
        /// Someone writes already, a deferred flush is due, or nothing is pending.
        case none
        /// Ask the transport for a deferred flush (under the same lock, so that the request cannot cross a
        /// writer withdrawing it).
        case requestFlush
    }

    /// A data frame (`data`) or a control frame (a credit or a grant) was appended; `now` is the time when
    /// ``flushNeedsClock`` said it is needed (otherwise ignored).
    ///
    /// A data frame less than ``burstNanos`` after the previous send is part of a burst and coalesced, written
    /// once a quarter of the peer's window has gathered (so the peer always has work while more is on the way)
    /// or once the batch is ``batchNanos`` old; a lone send (a request, a ping-pong), one answering a receive
    /// that waited, and a rendezvous are written at once. A control frame is written at once: a credit is due only
    /// once per quarter window, and the sender must never stall for it.
    @inline(__always)
    package mutating func outputAppended(data: Bool, now: UInt64) -> WriteDecision {
        var urgent: Bool
        if data {
            let needsClock = flushNeedsClock
            unflushedFrames += 1
            urgent = channel.isRendezvous || unflushedFrames >= batchFrames || waitedForInput
            if !urgent && needsClock {
                if !flushScheduled {
                    urgent = now &- lastAppendNanos >= Self.burstNanos
                    lastAppendNanos = now
                    flushRequestedNanos = now
                } else {
                    urgent = now &- flushRequestedNanos >= Self.batchNanos
                }
            }
            waitedForInput = false
        } else {
            urgent = true
        }
        urgent = urgent || channel.outbox.count >= Self.flushThreshold
        if writer != .idle || !hasPendingOutput { return .none }
        if urgent {
            writer = .writing
            return .writeNow
        }
        if !flushScheduled {
            flushScheduled = true
            return .requestFlush
        }
        return .none
    }

    /// An inline write by a sender ended at `now`: the next gap is measured from here, not from its start.
    @inline(__always)
    package mutating func sendWritten(now: UInt64) {
        lastAppendNanos = now
    }

    /// Takes the writer role to write the pending output, if nobody writes and there is some.
    @inline(__always)
    package mutating func takeWriterRole() -> Bool {
        guard writer == .idle && hasPendingOutput else { return false }
        writer = .writing
        return true
    }

    /// The deferred flush came due (on the I/O thread): whether it writes (it took the writer role).
    package mutating func deferredFlushDue() -> Bool {
        flushScheduled = false
        return takeWriterRole()
    }

    /// What the writer does next (it holds the writer role).
    package enum NextWrite: Equatable {
        /// Write the outbox (a snapshot of it), after publishing what is staged.
        case write
        /// Done: the role is given back. `publishStaged`: frames written into the ring wait to be published;
        /// `cancelFlush`: withdraw the deferred flush asked for (it would find nothing to do); `wake`: a task
        /// waited for the writer.
        case done(publishStaged: Bool, cancelFlush: Bool, wake: Bool)
    }

    @inline(__always)
    package mutating func nextWrite() -> NextWrite {
        guard !channel.outbox.isEmpty, !closed, !writeFailed else {
            let publish = staged && !closed && !writeFailed
            staged = false
            writer = .idle
            let cancel = flushScheduled
            flushScheduled = false
            let wake = writerWaited
            writerWaited = false
            return .done(publishStaged: publish, cancelFlush: cancel, wake: wake)
        }
        unflushedFrames = 0
        // The ring's write publishes frames written before it without publishing, first thing.
        staged = false
        return .write
    }

    /// The writer wrote `count` bytes of its snapshot. Returns true when the stream took nothing: the writer then
    /// waits for room (the caller arms the stream for writing), and `wake` says whether a task waited for the
    /// writer (a loan must not wait for the peer to make room: it copies instead).
    @inline(__always)
    package mutating func wrote(_ count: Int) -> (blocked: Bool, wake: Bool) {
        channel.outbox.consume(count)
        guard count == 0 else { return (false, false) }
        writer = .waitingForRoom
        defer { writerWaited = false }
        return (true, writerWaited)
    }

    /// The stream is writable: whether a writer waiting for room goes on (it holds the role again).
    package mutating func streamWritable() -> Bool {
        guard writer == .waitingForRoom else { return false }
        writer = .writing
        return true
    }

    /// A write failed: the stream takes no more bytes. Returns whether the caller took the reader role, to read
    /// what the peer said before it closed.
    package mutating func writeFailedTakingReader() -> Bool {
        writer = .idle
        writeFailed = true
        guard reader == .free else { return false }
        reader = .task
        return true
    }

    /// Whether everything appended was written; if not, the asking task waits for the writer (`note`).
    package mutating func outputDrained(note: Bool = true) -> Bool {
        if !hasPendingOutput && writer == .idle { return true }
        if note { writerWaited = true }
        return false
    }

    // MARK: Resuming

    /// The stream broke under a writer (a resumable connection goes on): nothing is written until a new stream
    /// continues the connection, whose driver takes the role (``takeRolesForResume()``).
    package mutating func writerBroke() {
        writer = .waitingForRoom
    }

    /// A new stream is about to continue the connection: takes both roles when nobody is reading or writing
    /// right now (a reader or writer at work would touch the old stream's bytes), so that the frame reader
    /// and the outbox can be started again. False: try again in a moment.
    package mutating func takeRolesForResume() -> Bool {
        guard !closed, reader == .free || reader == .ioThread, writer == .idle || writer == .waitingForRoom else { return false }
        reader = .task
        writer = .writing
        staged = false
        unflushedFrames = 0
        // The frame reader starts again at a frame boundary.
        insideFrame = false
        return true
    }

    /// Gives back both roles taken by ``takeRolesForResume()`` when the stream is not swapped after all.
    package mutating func releaseRoles() {
        reader = .free
        writer = .idle
    }

    // MARK: Writing straight into a ring (shared memory)

    /// Whether a small frame may be written straight into the ring now: nothing waits in the outbox, nobody
    /// writes, the connection is open and not a rendezvous.
    @inline(__always)
    package var mayWriteDirectly: Bool {
        writer == .idle && channel.outbox.isEmpty && !closed && !writeFailed && !channel.isRendezvous
    }

    /// A frame is about to be written straight into the ring (``mayWriteDirectly``): it is staged output, whose
    /// publishing ``outputAppended(data:now:)`` decides next. Returns whether output was staged before.
    @inline(__always)
    package mutating func stageDirect() -> Bool {
        defer { staged = true }
        return staged
    }

    /// Everything pending was written into the ring and published by the writer: the role is given back. Returns
    /// whether a deferred flush asked for must be withdrawn.
    @inline(__always)
    package mutating func ringWritten() -> Bool {
        staged = false
        writer = .idle
        unflushedFrames = 0
        defer { flushScheduled = false }
        return flushScheduled
    }

    /// Whether the writer may write the outbox straight into the ring (it holds the role and the connection is
    /// open).
    package var mayWriteRing: Bool { !closed && !writeFailed }

    // MARK: Loans

    /// What a loan (``ConnectionCore/send(byteCount:inPlace:)``) does now.
    package enum LoanStep: Equatable {
        /// Claimed: the writer role and the loan are the caller's.
        case claimed
        /// Frames appended before (a credit, say) go first: write them, then try again.
        case flushFirst
        /// Write the message into a buffer of its own instead (no room now, or the writer waits for room).
        case copy
        /// Wait (no credit, another loan, or a write about to end).
        case wait
    }

    /// Claims the ring for a loan of `byteCount` bytes; `hasRoom` says whether the ring has room for its frame
    /// (asked only when the loan could be claimed: reading the peer's position costs a cache miss).
    @inline(__always)
    package mutating func claimLoan(byteCount: Int, hasRoom: () -> Bool) throws(IPCError) -> LoanStep {
        if writer == .lending { return .wait }
        guard try channel.checkSend(size: byteCount) else { return .wait }
        switch writer {
        case .idle: break
        case .waitingForRoom: return .copy
        case .writing, .lending:
            // A write in progress ends soon.
            writerWaited = true
            return .wait
        }
        if hasPendingOutput { return .flushFirst }
        guard hasRoom() else { return .copy }
        writer = .lending
        return .claimed
    }

    /// A loan ended (published or not). Returns whether the caller writes the outbox (output was appended
    /// meanwhile: it keeps the writer role) and whether it wakes the waiting tasks.
    @inline(__always)
    package mutating func endLoan() -> (write: Bool, wake: Bool) {
        waitedForInput = false
        writer = hasPendingOutput ? .writing : .idle
        // A task that decided to park before this sees the change (and does not park); parked ones are woken.
        generation &+= 1
        return (writer == .writing, hasWaiters)
    }

    // MARK: Teardown

    /// Both directions are done (or the connection failed): whether the caller tears down now (true), another
    /// caller already does (false), or it is not time yet (nil).
    package mutating func beginTeardown() -> Bool? {
        let failed = channel.failure != nil
        guard (channel.senderClosed || failed) && (channel.receiverDone || failed) else { return nil }
        if tearingDown { return false }
        tearingDown = true
        return true
    }

    /// The stream closes: everything waiting is to be resumed (and notified), once.
    package mutating func close() -> (waiters: [Waiter], watchers: [(id: UInt64, watcher: Watcher)]) {
        closed = true
        generation &+= 1
        inPlaceWaiting = 0
        channel.fail(IPCError(.alreadyClosed, "the connection is closed"))
        defer {
            closedWaiters = []
            waiters = []
            watchers = []
        }
        return (closedWaiters + waiters.map(\.waiter), watchers)
    }

    // MARK: A peer stopped inside a frame

    /// Input read so far (in bytes, as the frame reader counts it), whether it ends inside a frame, and whether a
    /// timer watches for that frame's rest.
    package private(set) var inputProgress: UInt64 = 0
    package private(set) var insideFrame = false
    package private(set) var stallTimerArmed = false

    package enum StallCheck: Equatable {
        /// Nothing arrived since the timer was armed, and the input still ends inside a frame: the peer stalled.
        case stalled
        /// Input arrived meanwhile and still ends inside a frame: watch again from this progress.
        case rearm(UInt64)
        /// The frame was completed: stop watching.
        case idle
    }

    /// A read round ended with `progress` bytes read in all, inside a frame or not. Returns the progress to arm a
    /// stall timer with, when input ends inside a frame and no timer watches yet.
    package mutating func inputRead(progress: UInt64, insideFrame: Bool) -> UInt64? {
        inputProgress = progress
        self.insideFrame = insideFrame
        guard insideFrame, !stallTimerArmed, !closed else { return nil }
        stallTimerArmed = true
        return progress
    }

    /// The stall timer armed at `armedAt` fired.
    package mutating func stallTimerFired(armedAt: UInt64) -> StallCheck {
        // Between streams nothing can arrive, and the frame cut short is sent again whole on the next stream.
        guard insideFrame, !closed, channel.failure == nil, !channel.broken, !channel.awaitingResumeHello else {
            stallTimerArmed = false
            return .idle
        }
        if inputProgress == armedAt {
            stallTimerArmed = false
            return .stalled
        }
        return .rearm(inputProgress)
    }

    /// Waits for the close, unless it happened (false: resume `waiter` at once).
    package mutating func waitForClose(_ waiter: Waiter) -> Bool {
        if closed { return false }
        closedWaiters.append(waiter)
        return true
    }
}

extension IOState: Sendable where Waiter: Sendable, Watcher: Sendable {}
