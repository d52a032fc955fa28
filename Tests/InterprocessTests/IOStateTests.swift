import PropertyBased
import Testing

@testable import InterprocessCore
import InterprocessPlatform

/// The connection's I/O decisions (``IOState``) on their own: no stream, no lock, no clock, no task. Waiters and
/// watchers are plain task numbers.
typealias TestIOState = IOState<Int, Int>

private func makeIOState(peerCapacity: UInt32 = 16) throws -> TestIOState {
    let local = Hello(capacity: 16, maxFrame: 1 << 16, sendCodec: "raw", sendType: "bytes", receiveCodec: "raw", receiveType: "bytes")
    var channel = ConnectionState(mode: .framed, local: local, hasSender: true, hasReceiver: true, maxBytesInFlight: 1 << 20)
    var peer = local
    peer.capacity = peerCapacity
    try channel.apply(hello: peer)
    channel.outbox = Outbox()
    return TestIOState(channel: channel)
}

private func appendData(_ state: inout TestIOState) throws {
    _ = try state.channel.appendData { $0 += [1, 2, 3] }
}

/// The writer writes everything, as ``ConnectionCore``'s writer does when the stream takes it all.
private func writeAll(_ state: inout TestIOState) {
    while case .write = state.nextWrite() {
        _ = state.wrote(state.channel.outbox.count)
    }
}

@Suite("Connection I/O state machine")
struct IOStateTests {
    /// Input that ends inside a frame arms one timer; the timer fails the connection only if nothing arrived
    /// since it was armed, watches again if something did, and stops once the frame is complete.
    @Test func aPeerThatStopsInsideAFrameIsDetected() throws {
        var state = try makeIOState()
        #expect(state.inputRead(progress: 100, insideFrame: false) == nil)
        #expect(state.inputRead(progress: 150, insideFrame: true) == 150)
        // One timer at a time.
        #expect(state.inputRead(progress: 180, insideFrame: true) == nil)
        #expect(state.stallTimerFired(armedAt: 150) == .rearm(180))
        #expect(state.stallTimerFired(armedAt: 180) == .stalled)
        #expect(!state.stallTimerArmed)
        // A frame completed before the timer fired: nothing to do, and the next partial frame arms again.
        var other = try makeIOState()
        #expect(other.inputRead(progress: 10, insideFrame: true) == 10)
        #expect(other.inputRead(progress: 20, insideFrame: false) == nil)
        #expect(other.stallTimerFired(armedAt: 10) == .idle)
        #expect(other.inputRead(progress: 30, insideFrame: true) == 30)
        #expect(other.stallTimerFired(armedAt: 30) == .stalled)
    }

    /// A quiet connection's heartbeats: the I/O thread reads for it (a task may still take the role), a ping goes
    /// out after an interval without input, input heard resets the silence, and a peer silent for the timeout is
    /// gone (never earlier: the silence counts from the heartbeat that last saw input).
    @Test func heartbeatsPingAQuietPeerAndDeclareASilentOneGone() throws {
        var state = try makeIOState()
        let ms: UInt64 = 1_000_000, interval = 250 * ms, timeout = 1000 * ms
        let h1 = state.heartbeat(now: 1000 * ms, interval: interval, timeout: timeout)
        #expect(h1 == .alive(arm: true))
        #expect(state.reader == .ioThread)
        #expect(state.channel.outbox.isEmpty)
        // Nobody waits: a receiving task reads inline rather than park behind the I/O thread.
        let took = state.takeReaderRole()
        #expect(took)
        state.dropReader()
        let h2 = state.heartbeat(now: 1250 * ms, interval: interval, timeout: timeout)
        #expect(h2 == .ping(arm: true))
        #expect(!state.channel.outbox.isEmpty)
        state.channel.outbox = Outbox()
        // The I/O thread read the pong: it keeps reading while the connection stays quiet.
        state.noteInput()
        let h3 = state.streamReadable()
        #expect(h3 == .read)
        state.dropReader()
        let h4 = state.keepReading()
        #expect(h4)
        #expect(state.reader == .ioThread)
        let h5 = state.heartbeat(now: 1500 * ms, interval: interval, timeout: timeout)
        #expect(h5 == .alive(arm: false))
        #expect(state.channel.outbox.isEmpty)
        // Silent from 1500 ms on.
        let h6 = state.heartbeat(now: 1750 * ms, interval: interval, timeout: timeout)
        #expect(h6 == .ping(arm: false))
        let h7 = state.heartbeat(now: 2499 * ms, interval: interval, timeout: timeout)
        #expect(h7 == .ping(arm: false))
        let h8 = state.heartbeat(now: 2500 * ms, interval: interval, timeout: timeout)
        #expect(h8 == .dead(silentNanos: timeout))
        // A heartbeat late by more than the timeout pings first, and gives the peer the rest of the timeout.
        var late = try makeIOState()
        let l1 = late.heartbeat(now: 1000 * ms, interval: interval, timeout: timeout)
        #expect(l1 == .alive(arm: true))
        let l2 = late.heartbeat(now: 2100 * ms, interval: interval, timeout: timeout)
        #expect(l2 == .ping(arm: false))
        let l3 = late.heartbeat(now: 2849 * ms, interval: interval, timeout: timeout)
        #expect(l3 == .ping(arm: false))
        let l4 = late.heartbeat(now: 2850 * ms, interval: interval, timeout: timeout)
        #expect(l4 == .dead(silentNanos: 1850 * ms))
        // A closed connection beats no more.
        _ = state.close()
        let h9 = state.heartbeat(now: 2600 * ms, interval: interval, timeout: timeout)
        #expect(h9 == .stop)
    }

    @Test func oneReaderAtATimeAndParkedTasksGetTheIOThread() throws {
        var state = try makeIOState()
        let r1 = state.takeReaderRole()
        #expect(r1)
        let r2 = state.takeReaderRole()
        #expect(!r2)
        // Task 2 finds the role taken and parks: the reader, done, hands the role to the I/O thread for it.
        let seen = state.generation
        let r3 = state.mustWait(holdingReader: false).step
        #expect(r3 == .park)
        let parked = state.park(state.nextWaiterID(), 2, seen: seen, holdingReader: false, inPlace: false, cancelled: false)
        #expect(parked)
        let arm = state.releaseReader()
        #expect(arm)
        #expect(state.reader == .ioThread)
        let r4 = state.streamReadable()
        #expect(r4 == .read)
        state.dropReader()
        let r5 = state.wakeAll().waiters.map(\.waiter)
        #expect(r5 == [2])
        #expect(state.reader == .free)
    }

    /// The lost wake-up: task 2 saw the reader role taken and decided to park; the reader took the last message
    /// and gave the role up (no wake-up: nothing arrived for anybody else) before task 2 parked. Parking then
    /// would leave nobody reading: it is refused, and task 2 looks again and reads itself.
    @Test func aTaskDoesNotParkOnceTheReaderItCountedOnLeft() throws {
        var state = try makeIOState()
        let r6 = state.takeReaderRole()
        #expect(r6)
        let seen = state.generation
        let r7 = state.mustWait(holdingReader: false).step
        #expect(r7 == .park)
        let arm = state.releaseReader()
        #expect(!arm)
        let parked = state.park(state.nextWaiterID(), 2, seen: seen, holdingReader: false, inPlace: false, cancelled: false)
        #expect(!parked)
        let r8 = state.mustWait(holdingReader: false).step
        #expect(r8 == .read)
    }

    /// The same for a select: a watch registered while a task reads keeps the I/O thread reading once that task
    /// is done.
    @Test func aWatchingSelectKeepsTheIOThreadReading() throws {
        var state = try makeIOState()
        let r9 = state.takeReaderRole()
        #expect(r9)
        let watch = state.watch(7, receiving: true, rendezvousReceiver: false)
        #expect(watch.id != nil)
        #expect(!watch.armRead)
        let arm = state.releaseReader()
        #expect(arm)
        #expect(state.reader == .ioThread)
    }

    @Test func aTaskWaitingToReadInPlaceIsWokenRatherThanReadFor() throws {
        var state = try makeIOState()
        let r10 = state.takeReaderRole()
        #expect(r10)
        let parked = state.park(state.nextWaiterID(), 1, seen: state.generation, holdingReader: true, inPlace: true, cancelled: false)
        #expect(parked)
        #expect(state.reader == .ioThread)
        let r11 = state.streamReadable()
        #expect(r11 == .wakeInPlaceReaders)
        #expect(state.reader == .free)
    }

    @Test func aWakeUpSinceTheLookKeepsATaskFromParking() throws {
        var state = try makeIOState()
        let r12 = state.takeReaderRole()
        #expect(r12)
        let seen = state.generation
        _ = state.wakeAll()
        let parked = state.park(state.nextWaiterID(), 1, seen: seen, holdingReader: true, inPlace: false, cancelled: false)
        #expect(!parked)
    }

    @Test func aLoneSendIsWrittenAtOnceAndABurstWaitsForItsDeferredFlush() throws {
        var state = try makeIOState(peerCapacity: 64)
        try appendData(&state)
        #expect(state.flushNeedsClock)
        let r13 = state.outputAppended(data: true, now: 1_000_000)
        #expect(r13 == .writeNow)
        writeAll(&state)
        state.sendWritten(now: 1_000_100)
        // 1 µs later: a burst. Its write is left to one deferred flush, asked for once.
        try appendData(&state)
        let r14 = state.outputAppended(data: true, now: 1_001_100)
        #expect(r14 == .requestFlush)
        try appendData(&state)
        #expect(!state.flushNeedsClock)
        let r15 = state.outputAppended(data: true, now: 0)
        #expect(r15 == .none)
        #expect(state.flushScheduled)
        // The deferred flush writes the batch.
        let r16 = state.deferredFlushDue()
        #expect(r16)
        writeAll(&state)
        #expect(state.writer == .idle)
        #expect(!state.hasPendingOutput)
    }

    @Test func aBurstIsWrittenByTheSenderOnceAQuarterWindowGathered() throws {
        var state = try makeIOState(peerCapacity: 16)
        try appendData(&state)
        let r17 = state.outputAppended(data: true, now: 10_000)
        #expect(r17 == .writeNow)
        writeAll(&state)
        state.sendWritten(now: 10_000)
        var decisions: [TestIOState.WriteDecision] = []
        for _ in 0..<4 {
            try appendData(&state)
            decisions.append(state.outputAppended(data: true, now: 10_500))
        }
        // Frames 1-3 join the burst; the fourth is a quarter of the peer's 16 and is written without a clock read.
        #expect(decisions == [.requestFlush, .none, .none, .writeNow])
    }

    @Test func aBatchGatheredForLongIsWrittenByTheSender() throws {
        var state = try makeIOState(peerCapacity: 1024)
        try appendData(&state)
        _ = state.outputAppended(data: true, now: 100_000)
        writeAll(&state)
        state.sendWritten(now: 100_000)
        try appendData(&state)
        let r18 = state.outputAppended(data: true, now: 100_001)
        #expect(r18 == .requestFlush)
        // Inside the burst the clock is wanted every 16th frame only; the 16th finds the batch old enough.
        var asked = 0
        var last = TestIOState.WriteDecision.none
        for _ in 0..<15 {
            try appendData(&state)
            if state.flushNeedsClock { asked += 1 }
            last = state.outputAppended(data: true, now: 100_001 + TestIOState.batchNanos)
        }
        #expect(asked == 1)
        #expect(last == .writeNow)
    }

    @Test func aSendAnsweringAWaitIsWrittenAtOnce() throws {
        var state = try makeIOState(peerCapacity: 64)
        try appendData(&state)
        _ = state.outputAppended(data: true, now: 50_000)
        writeAll(&state)
        state.sendWritten(now: 50_000)
        let r19 = try state.takeMessage(noteWait: true)
        #expect(r19 == nil)
        try appendData(&state)
        #expect(!state.flushNeedsClock)
        let r20 = state.outputAppended(data: true, now: 0)
        #expect(r20 == .writeNow)
    }

    @Test func aWriterWithoutRoomWaitsForTheStreamAndALoanCopiesMeanwhile() throws {
        var state = try makeIOState()
        try appendData(&state)
        let r21 = state.outputAppended(data: false, now: 0)
        #expect(r21 == .writeNow)
        let r22 = state.nextWrite()
        #expect(r22 == .write)
        let r23 = state.wrote(0)
        #expect(r23 == (blocked: true, wake: false))
        #expect(state.writer == .waitingForRoom)
        let r24 = try state.claimLoan(byteCount: 8, hasRoom: { true })
        #expect(r24 == .copy)
        let r25 = state.streamWritable()
        #expect(r25)
        #expect(state.writer == .writing)
        // A loan that finds a write in progress waits, and the writer wakes it when done.
        let r26 = try state.claimLoan(byteCount: 8, hasRoom: { true })
        #expect(r26 == .wait)
        _ = state.wrote(state.channel.outbox.count)
        let r27 = state.nextWrite()
        #expect(r27 == .done(publishStaged: false, cancelFlush: false, wake: true))
        let r28 = try state.claimLoan(byteCount: 8, hasRoom: { true })
        #expect(r28 == .claimed)
        #expect(state.isLending)
        let r29 = state.outputAppended(data: false, now: 0)
        #expect(r29 == .none)
        let ended = state.endLoan()
        #expect(ended == (write: false, wake: false))
    }
}

// MARK: Random event sequences against a model

/// What can happen to a connection, by whom (`task` 0-2; the I/O thread for the stream's events), with `amount`
/// choosing a variant (nanoseconds for `advance`).
enum IOEventKind: CaseIterable, Sendable {
    case takeReader, releaseReader, poll, look, park, cancel, wake, readable, ioReadDone, appendData, appendControl, direct, drain,
         writable, deferredFlush, loan, endLoan, credit, advance, close, watch, unwatch, heartbeat
}

struct IOEvent: Sendable, CustomStringConvertible {
    var kind: IOEventKind
    var task: Int
    var amount: Int
    var description: String { "\(kind)(\(task), \(amount))" }
}

/// The few rules a reader of the driver would state: who holds which role, who is parked, who waits for the
/// writer. The state machine must agree with it after every event, and keep its invariants.
private struct IOModel {
    enum Holder: Equatable { case task(Int), ioThread, ioThreadReading }
    enum Task: Equatable {
        case running
        /// Looked, found the reader role taken, and decided to park (at generation `seen`).
        case decided(seen: UInt64)
        case parked(id: UInt64, inPlace: Bool)
    }
    enum Writer: Equatable { case idle, writing, waitingForRoom, lending(Int) }

    var reader: Holder?
    var writer = Writer.idle
    var tasks = [Task](repeating: .running, count: 3)
    var watches: [Int: UInt64] = [:]
    var flushScheduled = false
    var writerWaited = false
    var closed = false
    var now: UInt64 = 1_000_000
    var generation: UInt64 = 0
    /// Heartbeats: reads that took input, the count and time the last heartbeat that saw it change saw, and
    /// whether the I/O thread keeps reading (no task took the reader role since the last heartbeat).
    var inputReads = 0
    var heardReads = 0
    var heardNanos: UInt64?
    var silencePing: UInt64?
    var quiet = false

    /// A task may take the reader role: it is free, or the I/O thread holds it with nobody waiting.
    var readerTakeable: Bool {
        !closed && (reader == nil || reader == .ioThread && parked.isEmpty && watches.isEmpty)
    }

    var parked: Set<Int> { Set(tasks.indices.filter { if case .parked = tasks[$0] { true } else { false } }) }
}

private func check(_ events: [IOEvent]) throws {
    var state = try makeIOState(peerCapacity: 16)
    var model = IOModel()
    // A decision that does not need the clock must not depend on it.
    let poison: UInt64 = 0xDEAD_BEEF_0000

    func wakeEveryone() {
        let (waiters, watchers) = state.wakeAll()
        #expect(Set(waiters.map(\.waiter)) == model.parked)
        #expect(Set(watchers.map(\.watcher)) == Set(model.watches.keys))
        for i in model.parked { model.tasks[i] = .running }
        model.watches = [:]
    }
    func release(_ arm: Bool) {
        #expect(arm == ((!model.parked.isEmpty || !model.watches.isEmpty) && !model.closed))
        model.reader = arm ? .ioThread : nil
    }
    /// The writer writes until done, or (`blocks`) finds no room on its first write.
    func writeEverything(blocks: Bool) {
        model.writer = .writing
        while true {
            switch state.nextWrite() {
            case .write:
                if blocks {
                    let (blocked, wake) = state.wrote(0)
                    #expect(blocked)
                    #expect(wake == model.writerWaited)
                    model.writer = .waitingForRoom
                    model.writerWaited = false
                    if wake { wakeEveryone() }
                    return
                }
                let r30 = state.wrote(state.channel.outbox.count)
                #expect(r30 == (blocked: false, wake: false))
            case .done(_, let cancelFlush, let wake):
                #expect(cancelFlush == model.flushScheduled)
                #expect(wake == model.writerWaited)
                model.writer = .idle
                model.flushScheduled = false
                model.writerWaited = false
                if wake { wakeEveryone() }
                return
            }
        }
    }
    func afterAppend(_ decision: TestIOState.WriteDecision, writerWasIdle: Bool, scheduledBefore: Bool, blocks: Bool) {
        switch decision {
        case .writeNow:
            #expect(writerWasIdle)
            writeEverything(blocks: blocks)
        case .requestFlush:
            #expect(writerWasIdle && !scheduledBefore)
            model.flushScheduled = true
        case .none:
            #expect(!writerWasIdle || scheduledBefore || !state.hasPendingOutput)
        }
    }

    for event in events {
        let i = event.task
        let before = state.generation
        let blocks = event.amount % 3 == 0
        switch event.kind {
        case .takeReader:
            guard model.tasks[i] == .running, model.reader != .task(i) else { continue }
            let took = state.takeReaderRole()
            #expect(took == model.readerTakeable)
            if took {
                model.reader = .task(i)
                model.quiet = false
            }
        case .releaseReader:
            guard model.reader == .task(i) else { continue }
            release(state.releaseReader())
        case .look:
            guard model.tasks[i] == .running else { continue }
            let holding = model.reader == .task(i)
            let seen = state.generation
            let pending = state.hasPendingOutput
            let takeable = model.readerTakeable
            let (step, write) = state.mustWait(holdingReader: holding)
            #expect(write == (pending && model.writer == .idle))
            #expect(step == (holding || takeable ? .read : .park))
            if write { writeEverything(blocks: blocks) }
            if step == .read {
                if !holding { model.quiet = false }
                model.reader = .task(i)
            } else {
                model.tasks[i] = .decided(seen: seen)
            }
        case .park:
            let holding = model.reader == .task(i)
            let seen: UInt64
            switch model.tasks[i] {
            case .running where holding: seen = state.generation
            case .decided(let s): seen = s
            default: continue
            }
            let id = state.nextWaiterID()
            let inPlace = event.amount % 2 == 0
            let parked = state.park(id, i, seen: seen, holdingReader: holding, inPlace: inPlace, cancelled: false)
            let expected = !model.closed && seen == state.generation && (holding || model.reader != nil)
            #expect(parked == expected)
            if parked {
                model.tasks[i] = .parked(id: id, inPlace: inPlace)
                if holding { model.reader = .ioThread }
            } else {
                model.tasks[i] = .running
                if holding { release(state.releaseReader()) }
            }
        case .cancel:
            guard case .parked(let id, let inPlace) = model.tasks[i] else { continue }
            let r31 = state.cancelWaiter(id, inPlace: inPlace)
            #expect(r31 == i)
            model.tasks[i] = .running
        case .wake:
            wakeEveryone()
        case .readable:
            let inPlace = model.tasks.contains { if case .parked(_, true) = $0 { true } else { false } }
            let action = state.streamReadable()
            guard model.reader == .ioThread else {
                #expect(action == .nothing)
                continue
            }
            #expect(action == (inPlace ? .wakeInPlaceReaders : .read))
            if action == .wakeInPlaceReaders {
                model.reader = nil
                wakeEveryone()
            } else {
                model.reader = .ioThreadReading
            }
        case .ioReadDone:
            guard model.reader == .ioThreadReading else { continue }
            if event.amount % 2 == 0 {
                // Something arrived: the I/O thread gives the role back and wakes everyone, then goes on reading
                // if the connection is quiet.
                state.noteInput()
                model.inputReads += 1
                state.dropReader()
                model.reader = nil
                wakeEveryone()
                let kept = state.keepReading()
                #expect(kept == (model.quiet && !model.closed))
                if kept { model.reader = .ioThread }
            } else {
                // Nothing: it waits again.
                state.ioThreadReadNothing()
                model.reader = .ioThread
            }
        case .poll:
            // A non-blocking poll reads what is there, taking the role from an I/O thread that waits, then
            // gives it back (to the I/O thread if anyone waits).
            guard model.tasks[i] == .running, model.reader != .task(i) else { continue }
            let took = state.takeReaderRole(fromIOThread: true)
            #expect(took == ((model.reader == nil || model.reader == .ioThread) && !model.closed))
            guard took else { continue }
            model.reader = .task(i)
            model.quiet = false
            release(state.releaseReader())
        case .appendData:
            guard model.tasks[i] == .running, !state.isLending, state.channel.canSend() == .ready else { continue }
            try appendData(&state)
            let needsClock = state.flushNeedsClock
            let idle = model.writer == .idle, scheduled = model.flushScheduled
            var probe = state
            let decision = state.outputAppended(data: true, now: needsClock ? model.now : poison)
            if !needsClock {
                let r32 = probe.outputAppended(data: true, now: poison &+ 12_345_678)
                #expect(r32 == decision)
            }
            afterAppend(decision, writerWasIdle: idle, scheduledBefore: scheduled, blocks: blocks)
            if decision == .writeNow { state.sendWritten(now: model.now) }
        case .appendControl:
            guard model.tasks[i] == .running else { continue }
            state.channel.outbox.append { $0.appendControlFrame(.ping(UInt64(event.amount))) }
            let idle = model.writer == .idle
            let decision = state.outputAppended(data: false, now: poison)
            #expect(decision == (idle ? .writeNow : .none))
            afterAppend(decision, writerWasIdle: idle, scheduledBefore: model.flushScheduled, blocks: blocks)
        case .direct:
            guard model.tasks[i] == .running, state.mayWriteDirectly, try state.channel.checkSend(size: 8) else { continue }
            #expect(model.writer == .idle)
            let scheduled = model.flushScheduled
            _ = state.stageDirect()
            let decision = state.outputAppended(data: true, now: state.flushNeedsClock ? model.now : poison)
            let publish = decision == .writeNow
            _ = try state.channel.commitInPlaceData(size: 8)
            if decision == .requestFlush {
                #expect(!scheduled)
                model.flushScheduled = true
            }
            if publish {
                let r33 = state.ringWritten()
                #expect(r33 == model.flushScheduled)
                model.flushScheduled = false
            }
        case .drain:
            guard model.tasks[i] == .running else { continue }
            let drained = state.outputDrained()
            #expect(drained == (!state.hasPendingOutput && model.writer == .idle))
            if !drained { model.writerWaited = true }
        case .writable:
            let resumed = state.streamWritable()
            #expect(resumed == (model.writer == .waitingForRoom))
            if resumed { writeEverything(blocks: blocks) }
        case .deferredFlush:
            let took = state.deferredFlushDue()
            #expect(took == (model.writer == .idle && state.hasPendingOutput))
            model.flushScheduled = false
            if took { writeEverything(blocks: blocks) }
        case .loan:
            guard model.tasks[i] == .running, model.writer != .lending(i) else { continue }
            let credit = try state.channel.checkSend(size: 8)
            let hasRoom = event.amount % 4 != 0
            let pending = state.hasPendingOutput
            let step = try state.claimLoan(byteCount: 8, hasRoom: { hasRoom })
            let expected: TestIOState.LoanStep
            switch model.writer {
            case .lending: expected = .wait
            case _ where !credit: expected = .wait
            case .waitingForRoom: expected = .copy
            case .writing: expected = .wait
            case .idle: expected = pending ? .flushFirst : hasRoom ? .claimed : .copy
            }
            #expect(step == expected)
            if step == .claimed { model.writer = .lending(i) }
            if step == .flushFirst {
                let r34 = state.takeWriterRole()
                #expect(r34)
                writeEverything(blocks: blocks)
            }
        case .endLoan:
            guard model.writer == .lending(i) else { continue }
            if event.amount % 2 == 0 { _ = try state.channel.commitInPlaceData(size: 8) }
            let pending = state.hasPendingOutput
            let (write, wake) = state.endLoan()
            #expect(write == pending)
            #expect(wake == (!model.parked.isEmpty || !model.watches.isEmpty))
            model.writer = .idle
            if write { writeEverything(blocks: blocks) }
            if wake { wakeEveryone() }
        case .credit:
            var effects = ConnectionState.Effects()
            try state.channel.apply(.credit(consumed: state.channel.nextSeq - 1), effects: &effects)
        case .advance:
            model.now += UInt64(event.amount)
        case .close:
            guard !model.closed else { continue }
            let (waiters, watchers) = state.close()
            #expect(Set(waiters) == model.parked)
            #expect(Set(watchers.map(\.watcher)) == Set(model.watches.keys))
            model.closed = true
            for t in model.parked { model.tasks[t] = .running }
            model.watches = [:]
        case .watch:
            guard model.tasks[i] == .running, model.watches[i] == nil else { continue }
            let receiving = event.amount % 2 == 0
            let ready = receiving ? state.channel.receive(peek: true) != .wait : state.channel.canSend() != .wait
            let readerWasFree = model.reader == nil
            let watch = state.watch(i, receiving: receiving, rendezvousReceiver: false)
            #expect((watch.id == nil) == (ready || model.closed))
            guard let id = watch.id else { continue }
            model.watches[i] = id
            #expect(watch.armRead == readerWasFree)
            if watch.armRead { model.reader = .ioThread }
        case .heartbeat:
            let interval: UInt64 = 50_000, timeout: UInt64 = 200_000
            let action = state.heartbeat(now: model.now, interval: interval, timeout: timeout)
            if model.closed {
                #expect(action == .stop)
                continue
            }
            if model.inputReads != model.heardReads || model.heardNanos == nil {
                model.heardReads = model.inputReads
                model.heardNanos = model.now
                model.silencePing = nil
            }
            let silent = model.now - model.heardNanos!
            if silent >= timeout, let pinged = model.silencePing, model.now - pinged >= timeout - interval {
                // The driver fails the connection now; the sequence ends here.
                #expect(action == .dead(silentNanos: silent))
                return
            }
            model.quiet = true
            let arm = model.reader == nil
            if arm { model.reader = .ioThread }
            #expect(action == (silent >= interval ? .ping(arm: arm) : .alive(arm: arm)))
            if silent >= interval && model.silencePing == nil { model.silencePing = model.now }
            if case .ping = action, state.takeWriterRole() {
                #expect(model.writer == .idle)
                writeEverything(blocks: blocks)
            }
        case .unwatch:
            guard let id = model.watches[i] else { continue }
            let r35 = state.unwatch(id)
            #expect(!r35)
            model.watches[i] = nil
        }

        // The model's view of the roles.
        let reader: TestIOState.Reader = switch model.reader {
        case nil: .free
        case .task?: .task
        case .ioThread?: .ioThread
        case .ioThreadReading?: .ioThreadReading
        }
        #expect(state.reader == reader, "after \(event)")
        let writer: TestIOState.Writer = switch model.writer {
        case .idle: .idle
        case .writing: .writing
        case .waitingForRoom: .waitingForRoom
        case .lending: .lending
        }
        #expect(state.writer == writer, "after \(event)")
        #expect(state.flushScheduled == model.flushScheduled, "after \(event)")
        #expect(state.generation >= before)
        // Nobody waits for news with nobody reading.
        if state.hasWaiters && !model.closed {
            #expect(state.reader != .free, "a task or select waits with nobody reading, after \(event)")
        }
        // No output waits with nobody to write it.
        if state.hasPendingOutput && !model.closed {
            #expect(state.writer != .idle || state.flushScheduled, "output pending with no writer and no flush, after \(event)")
        }
        #expect(state.waiters.count == model.parked.count)
    }
}

@Suite("Connection I/O state machine, random events")
struct IOStatePropertyTests {
    @Test func theStateMachineAgreesWithTheModelAndKeepsItsInvariants() async {
        let event = zip(Gen<IOEventKind>.case, Gen.int(in: 0...2), Gen.int(in: 0...40_000))
            .map { IOEvent(kind: $0, task: $1, amount: $2) }
        await propertyCheck(count: 400, input: event.array(of: 1...120)) { events in
            try check(events)
        }
    }
}

@Suite("Spin advice")
struct SpinAdvisorTests {
    @Test func waitsStopSpinningAfterFruitlessSpinsAndProbeNowAndThen() {
        let advisor = SpinAdvisor()
        #expect(advisor.spinNanoseconds() == SpinWait.defaultYieldAfterNanoseconds)
        for _ in 0..<(SpinAdvisor.fruitlessLimit - 1) { advisor.record(paidOff: false) }
        #expect(advisor.spinNanoseconds() == SpinWait.defaultYieldAfterNanoseconds, "still spinning before the limit")
        advisor.record(paidOff: false)
        let advice = (0..<SpinAdvisor.probeEvery).map { _ in advisor.spinNanoseconds() }
        #expect(advice.filter { $0 == 0 }.count == SpinAdvisor.probeEvery - 1, "one probe per \(SpinAdvisor.probeEvery) waits")
        // A spin that paid off (the peer answered while this side spun) brings spinning back.
        advisor.record(paidOff: true)
        #expect(advisor.spinNanoseconds() == SpinWait.defaultYieldAfterNanoseconds)
    }

    @Test func aWaitWithoutSpinPhaseYieldsFromTheStart() {
        let wait = SpinWait(budgetNanoseconds: 1_000_000, yieldAfterNanoseconds: 0)
        #expect(wait.isYielding)
        var spinning = SpinWait(budgetNanoseconds: 1_000_000)
        #expect(!spinning.isYielding)
        let paused = spinning.pause()
        #expect(paused)
    }
}

// MARK: The protocol between two ends, over a simulated wire

enum WireEventKind: CaseIterable, Sendable {
    case send, deliverToReceiver, deliverToSender, take
}

/// Moves up to `limit` bytes of `from`'s outbox through `reader` (in pieces, as a stream delivers them) into `to`,
/// applying every frame that becomes whole.
private func transfer(from: inout ConnectionState, to: inout ConnectionState, through reader: FrameReader, limit: Int) throws {
    let (segments, offset) = from.outbox.snapshot()
    var bytes: [UInt8] = []
    for (i, segment) in segments.enumerated() { bytes += segment[(i == 0 ? offset : 0)...] }
    let count = min(limit, bytes.count)
    var fed = 0
    while fed < count {
        _ = try reader.read { buffer throws(IPCError) -> Int in
            let piece = min(buffer.count, count - fed, 1000)
            bytes.withUnsafeBytes { source in buffer.baseAddress!.copyMemory(from: source.baseAddress! + fed, byteCount: piece) }
            fed += piece
            return piece
        }
        while true {
            if let (seq, payload) = reader.nextData() {
                try to.receiveData(seq: seq, payload: payload)
                continue
            }
            guard let event = try reader.next() else { break }
            switch event {
            case .hello(let hello): try to.apply(hello: hello)
            case .frame(let frame):
                var effects = ConnectionState.Effects()
                try to.apply(frame, effects: &effects)
            }
        }
    }
    from.outbox.consume(count)
}

@Suite("Protocol between two ends, random events")
struct ProtocolPropertyTests {
    /// A sender and a receiver `ConnectionState` joined by a simulated wire that delivers their bytes in random
    /// pieces at random times, while messages of random sizes (up to 200 KiB) are sent and taken. Every message
    /// arrives once, whole and in order; the sender never has more than the receiver's capacity in flight, nor
    /// (beyond one message) more than its byte limit; the receiver never holds more than its capacity; and once
    /// the wire is drained everything sent was taken and the sender may send again.
    @Test func messagesArriveOnceInOrderWithinTheWindow() async {
        let event = zip(Gen<WireEventKind>.case, Gen.int(in: 0...5000))
        await propertyCheck(count: 200, input: event.array(of: 1...150)) { events in
            try exchange(events)
        }
    }

    private func exchange(_ events: [(WireEventKind, Int)]) throws {
        let capacity: UInt32 = 8
        let maxBytesInFlight = 512 << 10
        let hello = Hello(capacity: capacity, maxFrame: 1 << 20, sendCodec: "raw", sendType: "bytes", receiveCodec: "raw", receiveType: "bytes")
        var sender = ConnectionState(mode: .framed, local: hello, hasSender: true, hasReceiver: true, maxBytesInFlight: maxBytesInFlight)
        var receiver = ConnectionState(mode: .framed, local: hello, hasSender: true, hasReceiver: true, maxBytesInFlight: maxBytesInFlight)
        let toReceiver = FrameReader(mode: .framed, maxPayload: 1 << 20)
        let toSender = FrameReader(mode: .framed, maxPayload: 1 << 20)
        var sent: [[UInt8]] = []
        var taken = 0
        var largest = 0

        func take() throws {
            while case .message(let bytes, _) = receiver.receive() {
                try #require(taken < sent.count, "a message nobody sent")
                #expect(bytes == sent[taken], "message \(taken) changed or out of order")
                taken += 1
            }
        }

        for (kind, amount) in events {
            switch kind {
            case .send:
                guard sender.canSend() == .ready else { continue }
                let size = amount % 10 == 0 ? amount * 40 : amount % 300
                var payload = [UInt8](repeating: UInt8(truncatingIfNeeded: sent.count), count: size)
                withUnsafeBytes(of: UInt64(sent.count)) { tag in for (i, b) in tag.prefix(size).enumerated() { payload[i] = b } }
                _ = try sender.appendData(bytes: payload)
                sent.append(payload)
                largest = max(largest, size + 16)
            case .deliverToReceiver:
                try transfer(from: &sender, to: &receiver, through: toReceiver, limit: amount * 53)
            case .deliverToSender:
                try transfer(from: &receiver, to: &sender, through: toSender, limit: amount * 53)
            case .take:
                if amount % 2 == 0 { try take() } else if case .message(let bytes, _) = receiver.receive() {
                    #expect(bytes == sent[taken], "message \(taken) changed or out of order")
                    taken += 1
                }
            }
            #expect(sender.nextSeq - 1 - sender.peerConsumed <= UInt64(capacity), "more than the capacity in flight")
            #expect(sender.untakenBytes < maxBytesInFlight + largest, "more than the byte limit in flight")
            #expect(receiver.inbox.count <= Int(capacity), "the receiver holds more than its capacity")
        }
        // Drain: everything sent arrives, and the credits let the sender go on.
        for _ in 0..<(sent.count + 4) where taken < sent.count || !sender.outbox.isEmpty || !receiver.outbox.isEmpty {
            try transfer(from: &sender, to: &receiver, through: toReceiver, limit: .max)
            try take()
            try transfer(from: &receiver, to: &sender, through: toSender, limit: .max)
        }
        #expect(taken == sent.count, "\(sent.count - taken) messages never arrived")
        #expect(sender.canSend() == .ready, "the sender stays blocked after everything was taken")
    }
}

enum ResumeEventKind: CaseIterable, Sendable {
    case send, deliverToListener, deliverToDialer, take, cut
}

@Suite("Resuming, between two ends, random events")
struct ResumePropertyTests {
    /// A dialer sending to a listener (both offering resume) over a simulated wire that delivers in random pieces
    /// and is cut at random: a cut drops whatever was on the wire, the dialer's hello continues the session on a
    /// new stream, and the listener answers. Every message arrives exactly once and in order however often the
    /// wire is cut, the sender's kept frames never exceed its window's bytes, and once the wire stays up
    /// everything sent is taken.
    @Test func everyMessageOnceThroughRandomCuts() async {
        let event = zip(Gen<ResumeEventKind>.case, Gen.int(in: 0...5000))
        await propertyCheck(count: 200, input: event.array(of: 1...150)) { events in
            try exchange(events)
        }
    }

    private func exchange(_ events: [(ResumeEventKind, Int)]) throws {
        let capacity: UInt32 = 8
        var dialerHello = Hello(capacity: capacity, maxFrame: 1 << 20, sendCodec: "raw", sendType: "bytes", receiveCodec: "raw", receiveType: "bytes")
        var listenerHello = dialerHello
        dialerHello.resume = Hello.Resume(session: Array(0..<16))
        listenerHello.resume = Hello.Resume(session: [UInt8](repeating: 0, count: 16))
        var dialer = ConnectionState(mode: .framed, local: dialerHello, hasSender: true, hasReceiver: true)
        var listener = ConnectionState(mode: .framed, local: listenerHello, hasSender: true, hasReceiver: true, answersHello: true)
        let toListener = FrameReader(mode: .framed, maxPayload: 1 << 20)
        let toDialer = FrameReader(mode: .framed, maxPayload: 1 << 20)
        var sent: [[UInt8]] = []
        var taken = 0
        var cuts = 0

        func take() throws {
            while case .message(let bytes, _) = listener.receive() {
                try #require(taken < sent.count, "a message nobody sent")
                #expect(bytes == sent[taken], "message \(taken) changed, repeated or out of order")
                taken += 1
            }
        }

        func cut() throws {
            // Both ends learn of the break (the handshake may not even be done: then there is nothing to resume).
            guard dialer.resumable && listener.resumable else { return }
            #expect(dialer.streamBroke() != .end)
            #expect(listener.streamBroke() != .end)
            cuts += 1
            toListener.restart(expectingHello: true)
            toDialer.restart(expectingHello: true)
            try dialer.continueOnNewStream(peerReceived: nil)
            #expect(dialer.canSend() == .wait || dialer.senderClosed, "the dialer sends before the listener answered")
            // The listener's accept reads the dialer's hello from the new stream, and the connection it names
            // answers with what it received and sends again the rest.
            let (segments, offset) = dialer.outbox.snapshot()
            var bytes: [UInt8] = []
            for (i, segment) in segments.enumerated() { bytes += segment[(i == 0 ? offset : 0)...] }
            let parsed = try bytes.withUnsafeBytes { raw throws(IPCError) in try Hello.parse(raw) }
            let (hello, size) = try #require(parsed)
            #expect(size == bytes.count, "the dialer sent more than its hello before the answer")
            let resume = try #require(hello.resume)
            #expect(resume.resuming && resume.session == Array(0..<16))
            dialer.outbox.consume(size)
            toListener.restart(expectingHello: false)
            try listener.continueOnNewStream(peerReceived: resume.received)
        }

        for (kind, amount) in events {
            switch kind {
            case .send:
                guard dialer.canSend() == .ready else { continue }
                let size = amount % 10 == 0 ? amount * 40 : amount % 300
                var payload = [UInt8](repeating: UInt8(truncatingIfNeeded: sent.count), count: size)
                withUnsafeBytes(of: UInt64(sent.count)) { tag in for (i, b) in tag.prefix(size).enumerated() { payload[i] = b } }
                _ = try dialer.appendData(bytes: payload)
                sent.append(payload)
            case .deliverToListener:
                try transfer(from: &dialer, to: &listener, through: toListener, limit: amount * 53)
            case .deliverToDialer:
                try transfer(from: &listener, to: &dialer, through: toDialer, limit: amount * 53)
            case .take:
                try take()
            case .cut:
                if amount % 3 == 0 { try cut() }
            }
            #expect(dialer.unacknowledged <= UInt64(capacity), "more than the capacity in flight")
            #expect(listener.inbox.count <= Int(capacity), "the listener holds more than its capacity")
        }
        for _ in 0..<(sent.count + 4) where taken < sent.count || !dialer.outbox.isEmpty || !listener.outbox.isEmpty {
            try transfer(from: &dialer, to: &listener, through: toListener, limit: .max)
            try take()
            try transfer(from: &listener, to: &dialer, through: toDialer, limit: .max)
        }
        #expect(taken == sent.count, "\(sent.count - taken) of \(sent.count) messages never arrived (\(cuts) cuts)")
        #expect(dialer.canSend() == .ready, "the dialer stays blocked after everything was taken")
        // The close arrives after everything, once, and the dialer hears that it did, across a cut too.
        try dialer.closeSender()
        if events.count % 2 == 0 { try cut() }
        for _ in 0..<4 {
            try transfer(from: &dialer, to: &listener, through: toListener, limit: .max)
            try transfer(from: &listener, to: &dialer, through: toDialer, limit: .max)
        }
        #expect(listener.receive() == .end)
        #expect(dialer.closeAcknowledged, "the dialer does not know that its close arrived")
    }
}

@Suite("Resuming: the hello and the state machine")
struct ResumeUnitTests {
    let terms = Hello(capacity: 4, maxFrame: 1 << 16, sendCodec: "raw", sendType: "bytes", receiveCodec: "raw", receiveType: "bytes")

    @Test("a version-3 hello carries the session, whether it continues it, and what was received")
    func helloRoundTrip() throws {
        var hello = terms
        hello.resume = Hello.Resume(session: Array(100..<116), resuming: true, received: 42)
        let bytes = hello.encoded()
        #expect(bytes[4] == 3 && bytes[6] == 1, "version 3, flag 1")
        let parsed = try bytes.withUnsafeBytes { raw throws(IPCError) in try Hello.parse(raw) }
        #expect(parsed?.0 == hello && parsed?.1 == bytes.count)
        // A version-2 hello (no resume) is unchanged: what peers without resume send and expect.
        let plain = terms.encoded()
        #expect(plain[4] == 2 && plain[6] == 0)
        #expect(try plain.withUnsafeBytes { raw throws(IPCError) in try Hello.parse(raw) }?.0.resume == nil)
        // A version-3 hello without its session, or with an undefined flag, is refused.
        var truncated = bytes
        truncated.removeLast(8)
        truncated.storeLE(UInt32(truncated.count - Wire.helloHeaderSize), at: 8)
        #expect(throws: IPCError.self) { try truncated.withUnsafeBytes { raw throws(IPCError) in try Hello.parse(raw) } }
        var flagged = bytes
        flagged[6] = 5  // bit 2: undefined (bit 0 resuming, bit 1 tracing)
        #expect(throws: IPCError.self) { try flagged.withUnsafeBytes { raw throws(IPCError) in try Hello.parse(raw) } }
    }

    /// The answering side answers a hello without resume with a version-2 hello (so a peer without resume is
    /// served as before), and one that starts a session with a version-3 hello echoing it.
    @Test("a listener that offers resume answers each client in its own version")
    func listenerAnswersInTheClientsVersion() throws {
        var offering = terms
        offering.resume = Hello.Resume(session: [UInt8](repeating: 0, count: 16))
        var listener = ConnectionState(mode: .framed, local: offering, hasSender: true, hasReceiver: true, answersHello: true)
        #expect(listener.outbox.isEmpty, "the listener spoke first")
        try listener.apply(hello: terms)
        #expect(!listener.resumable)
        let answer = listener.outbox.snapshot().segments.joined()
        #expect(Array(answer) == terms.encoded())

        var resumingClient = terms
        resumingClient.resume = Hello.Resume(session: Array(1...16))
        var second = ConnectionState(mode: .framed, local: offering, hasSender: true, hasReceiver: true, answersHello: true)
        try second.apply(hello: resumingClient)
        #expect(second.resumable && second.session == Array(1...16))
        let parsed = try Array(second.outbox.snapshot().segments.joined()).withUnsafeBytes { raw throws(IPCError) in try Hello.parse(raw) }
        #expect(parsed?.0.resume == Hello.Resume(session: Array(1...16)))
    }

    /// Every listener answers in the dialer's version; one without resume answers a version-3 hello with a zero
    /// session ("no resume"), which a dialer tells apart from a version-2 listener's hello (that listener is
    /// about to refuse its version: the dialer fails the handshake, and IPC.connect dials again with version 2).
    @Test("a listener without resume declines in version 3; a dialer tells that from a version-2 listener")
    func declinedResumeAndVersionTwoListener() throws {
        var listener = ConnectionState(mode: .framed, local: terms, hasSender: true, hasReceiver: true, answersHello: true)
        #expect(listener.outbox.isEmpty, "the listener spoke first")
        var asking = terms
        asking.resume = Hello.Resume(session: Array(1...16))
        try listener.apply(hello: asking)
        #expect(!listener.resumable)
        let answer = try Array(listener.outbox.snapshot().segments.joined()).withUnsafeBytes { raw throws(IPCError) in try Hello.parse(raw) }?.0
        #expect(answer?.resume == Hello.Resume(session: Wire.noSession))

        var dialer = ConnectionState(mode: .framed, local: asking, hasSender: true, hasReceiver: true)
        try dialer.apply(hello: answer!)
        #expect(!dialer.resumable, "declined")
        #expect(dialer.streamBroke() == .end)

        var second = ConnectionState(mode: .framed, local: asking, hasSender: true, hasReceiver: true)
        #expect { try second.apply(hello: terms) } throws: { ($0 as? IPCError)?.code == .handshakeMismatch }
    }

    /// A listener that refuses a peer before its hello arrived (its uid) still sends a hello first: the dialer
    /// reads a hello before anything else, and would otherwise report the error frame as foreign bytes.
    @Test("an answering side's error frame before its answer goes after a hello")
    func refusalBeforeTheHelloSendsAHelloFirst() throws {
        var listener = ConnectionState(mode: .framed, local: terms, hasSender: true, hasReceiver: true, answersHello: true)
        listener.appendErrorFrame(code: .permissionDenied, message: "no")
        let bytes = Array(listener.outbox.snapshot().segments.joined())
        let hello = try bytes.withUnsafeBytes { raw throws(IPCError) in try Hello.parse(raw) }
        #expect(hello?.0 == terms)
        #expect(errorFrameMessage(in: bytes) == "no")
        // Once it answered, an error frame is only that.
        var answered = ConnectionState(mode: .framed, local: terms, hasSender: true, hasReceiver: true, answersHello: true)
        try answered.apply(hello: terms)
        let before = answered.outbox.count
        answered.appendErrorFrame(code: .peerClosed, message: "bye")
        #expect(answered.outbox.count - before == Wire.frameHeaderSize + 2 + 3)
    }

    /// Frames are kept until the peer acknowledges them, no longer: a credit drops them, and a new stream sends
    /// exactly those the peer did not receive, after the cumulative credit, with the close last.
    @Test("a resumable sender keeps exactly the unacknowledged frames and sends again those not received")
    func keepsAndResendsUnacknowledgedFrames() throws {
        var dialerHello = terms
        dialerHello.resume = Hello.Resume(session: Array(1...16))
        var dialer = ConnectionState(mode: .framed, local: dialerHello, hasSender: true, hasReceiver: true)
        var answer = terms
        answer.resume = Hello.Resume(session: Array(1...16))
        try dialer.apply(hello: answer)
        #expect(dialer.resumable)
        for i in 0..<4 { _ = try dialer.appendData(bytes: [UInt8](repeating: UInt8(i), count: 10)) }
        #expect(dialer.canSend() == .wait, "capacity 4")
        var effects = ConnectionState.Effects()
        try dialer.apply(.credit(consumed: 2), effects: &effects)
        try dialer.closeSender()
        // The stream breaks; the listener had received 3 of the 4.
        #expect(dialer.streamBroke() == .resume)
        #expect(dialer.streamBroke() == .resuming)
        try dialer.continueOnNewStream(peerReceived: nil)
        // Its hello is written.
        _ = dialer.outbox.snapshot()
        dialer.outbox.consume(dialer.outbox.count)
        var listenerAnswer = answer
        listenerAnswer.resume = Hello.Resume(session: Array(1...16), resuming: true, received: 3)
        try dialer.apply(hello: listenerAnswer)
        let reader = FrameReader(mode: .framed, maxPayload: 1 << 16)
        reader.restart(expectingHello: false)
        let (segments, offset) = dialer.outbox.snapshot()
        let bytes = Array(Array(segments.joined())[offset...])
        _ = try reader.read { buffer throws(IPCError) -> Int in
            bytes.withUnsafeBytes { buffer.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
            return bytes.count
        }
        var resent: [UInt64] = []
        var frames: [Frame] = []
        while true {
            if let (seq, payload) = reader.nextData() {
                resent.append(seq)
                #expect(payload == [UInt8](repeating: UInt8(seq - 1), count: 10))
                continue
            }
            guard case .frame(let frame)? = try reader.next() else { break }
            frames.append(frame)
        }
        #expect(resent == [4], "only message 4 was not received")
        #expect(frames == [.close(lastSeq: 4)])
        // A peer claiming to have received more than was sent, or less than it took, is refused.
        var other = dialer
        _ = other.streamBroke()
        try other.continueOnNewStream(peerReceived: nil)
        listenerAnswer.resume?.received = 9
        #expect(throws: IPCError.self) { try other.apply(hello: listenerAnswer) }
    }

    /// The end of the stream after the peer said and took all it will is its goodbye, not a break.
    @Test("the end of the stream is a break only while the peer may still send or take")
    func endOfStreamAfterGoodbyeIsNotABreak() throws {
        var dialerHello = terms
        dialerHello.resume = Hello.Resume(session: Array(1...16))
        var answer = terms
        answer.resume = Hello.Resume(session: Array(1...16))
        var dialer = ConnectionState(mode: .framed, local: dialerHello, hasSender: true, hasReceiver: true)
        try dialer.apply(hello: answer)
        var effects = ConnectionState.Effects()
        #expect(dialer.streamBroke() == .resume, "the peer may still send")
        var done = ConnectionState(mode: .framed, local: dialerHello, hasSender: true, hasReceiver: true)
        try done.apply(hello: answer)
        try done.apply(.close(lastSeq: 0), effects: &effects)
        try done.closeSender()
        #expect(done.streamBroke() == .resume, "the peer may not have this side's close yet")
        var acknowledged = ConnectionState(mode: .framed, local: dialerHello, hasSender: true, hasReceiver: true)
        try acknowledged.apply(hello: answer)
        try acknowledged.apply(.close(lastSeq: 0), effects: &effects)
        try acknowledged.closeSender()
        try acknowledged.apply(.closeReceived(lastSeq: 0), effects: &effects)
        #expect(acknowledged.streamBroke() == .end, "both directions are done, and the peer has this side's close")
        var failed = ConnectionState(mode: .framed, local: dialerHello, hasSender: true, hasReceiver: true)
        try failed.apply(hello: answer)
        failed.fail(IPCError(.protocolViolation, "test"))
        #expect(failed.streamBroke() == .end, "a failed connection does not resume")
    }
}
