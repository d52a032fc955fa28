import DequeModule
import InterprocessPlatform
import Synchronization

/// Identifies parked tasks and select registrations (unique per process).
let channelIDs = Atomic<UInt64>(0)

/// An in-process channel: Go's `hchan`. A bounded buffer, the tasks parked on either side, and the selects
/// watching it, behind one lock (except a ring buffer's values, below).
///
/// Capacity 0 is a rendezvous: a value passes only from a parked sender to a receiver, or from a sender to a
/// parked receiver, so `send` returns once a receiver has taken the value. With capacity N, senders park once N
/// values are buffered. Up to ``ringCapacityLimit`` the buffer is a ``LocalRing`` that sends and receives reach
/// without the lock (the lock is taken only to park, to wake a parked task and for select; see
/// `LocalChannel+Ring.swift`); above it, a deque under the lock, where a receiver that takes a value moves the
/// first parked sender's value into the buffer.
@usableFromInline
package final class LocalChannel<Value: Sendable>: Sendable {
    @usableFromInline
    enum ParkedReceiver: Sendable {
        case task(UInt64, UnsafeContinuation<Result<Value?, IPCError>, Never>)
        /// A select waiting on this channel among others: a sender hands its value over by claiming the
        /// waiter, which fails if the select already completed another way.
        case offer(UInt64, SelectWaiter, Int)
    }

    /// A send waiting for room or a receiver. Its task polls `handoff` for a while, then installs
    /// `continuation` and sleeps; whoever completes the send does so under the channel's lock.
    @usableFromInline
    struct ParkedSender: Sendable {
        @usableFromInline var id: UInt64
        @usableFromInline var value: Value
        @usableFromInline var handoff: Handoff
        @usableFromInline var continuation: UnsafeContinuation<Result<Void, IPCError>, Never>?

        @usableFromInline
        init(id: UInt64, value: Value, handoff: Handoff, continuation: UnsafeContinuation<Result<Void, IPCError>, Never>? = nil) {
            self.id = id
            self.value = value
            self.handoff = handoff
            self.continuation = continuation
        }

        /// Completes the send (lock held); returns the continuation to resume outside the lock, if it sleeps.
        @inlinable
        func complete(_ error: IPCError?) -> UnsafeContinuation<Result<Void, IPCError>, Never>? {
            handoff.complete(error)
            return continuation
        }
    }

    @usableFromInline
    struct State: Sendable {
        @usableFromInline var buffer = Deque<Value>()
        @usableFromInline var receivers = Deque<ParkedReceiver>()
        @usableFromInline var senders = Deque<ParkedSender>()
        /// Selects with a send case on this channel, told about any change that may let a send proceed.
        @usableFromInline var watchers: [(id: UInt64, waiter: SelectWaiter)] = []
        @usableFromInline var closed = false
        @usableFromInline var receiverGone = false
        /// With a ring: receives and selects waiting for a value (their count is the ring's `wantValue`).
        @usableFromInline var ringReceivers = Deque<RingReceiver>()
        /// With a ring: sends waiting for room (with `watchers`, the ring's `wantRoom`).
        @usableFromInline var roomWaiters = Deque<(id: UInt64, continuation: UnsafeContinuation<Result<Void, IPCError>, Never>)>()

        @usableFromInline
        init() {}

        @inlinable
        mutating func takeWatchers() -> [(id: UInt64, waiter: SelectWaiter)] {
            if watchers.isEmpty { return [] }
            defer { watchers = [] }
            return watchers
        }

        /// The watchers of other selects than `waiter` (a select never completes against itself).
        mutating func takeWatchers(except waiter: SelectWaiter) -> [(id: UInt64, waiter: SelectWaiter)] {
            if watchers.isEmpty { return [] }
            let others = watchers.filter { $0.waiter !== waiter }
            watchers.removeAll { $0.waiter !== waiter }
            return others
        }
    }

    /// What waits for a value in a ring channel: woken, it looks at the ring again.
    @usableFromInline
    enum RingReceiver: Sendable {
        case task(UInt64, UnsafeContinuation<Bool, Never>)
        case select(UInt64, SelectWaiter)
    }

    @usableFromInline package let capacity: Int
    @usableFromInline let state: Lock<State>
    /// The buffer when `usesRing` (the capacity is 1...``ringCapacityLimit`` and the ring was not declined).
    @usableFromInline let ring: LocalRing<Value>
    @usableFromInline package let usesRing: Bool

    /// The largest capacity whose buffer is a ``LocalRing``: its slots are allocated up front, so a larger buffer
    /// grows as values come instead (under the lock).
    package static var ringCapacityLimit: Int { 4096 }
    /// Bumped (under the lock) whenever a value, a parked sender or room appears, so that polling tasks look at
    /// the state without taking the lock.
    @usableFromInline let version = Atomic<UInt64>(0)
    /// How long a task polls before it parks (a wake-up costs 60-80 us on the machines this was measured on).
    @usableFromInline
    static var spinNanoseconds: UInt64 { 20_000 }

    /// `ring`: false keeps the buffer under the lock whatever the capacity (the tests cover both buffers).
    package init(capacity: Int, ring: Bool = true) {
        precondition(capacity >= 0, "a channel's capacity cannot be negative")
        self.capacity = capacity
        self.state = Lock(State())
        usesRing = ring && capacity > 0 && capacity <= Self.ringCapacityLimit
        self.ring = LocalRing(capacity: usesRing ? capacity : 0)
    }

    @usableFromInline
    static var closedError: IPCError {
        IPCError(.sendOnClosedChannel, "send was called after close() on this sender; make a new channel to send more")
    }

    static var closedWhileWaiting: IPCError {
        IPCError(.sendOnClosedChannel, "the sender was closed while this send waited; the value was not sent")
    }

    @usableFromInline
    static var goneError: IPCError {
        IPCError(.receiverGone, "the receiver was dropped: nobody takes values from this channel any more; values it had not taken were discarded")
    }

    static var cancelledSend: IPCError {
        IPCError(.cancelled, "the send was cancelled before a receiver took the value; nothing was sent")
    }

    static var cancelledReceive: IPCError {
        IPCError(.cancelled, "the receive was cancelled; no value was taken")
    }

    // MARK: Sending

    @usableFromInline
    enum SendStep {
        case done
        case handed(UnsafeContinuation<Result<Value?, IPCError>, Never>)
        case buffered([(id: UInt64, waiter: SelectWaiter)])
        case wait
    }

    /// Delivers `value` now if a receiver waits or the buffer has room (lock held).
    @inlinable
    static func offer(_ value: Value, _ s: inout State, capacity: Int) throws(IPCError) -> SendStep {
        if s.closed { throw closedError }
        if s.receiverGone { throw goneError }
        while let receiver = s.receivers.popFirst() {
            switch receiver {
            case .task(_, let continuation):
                return .handed(continuation)
            case .offer(_, let waiter, let index):
                if waiter.claim(index: index, value: Optional(value)) { return .done }
            }
        }
        if s.buffer.count < capacity {
            s.buffer.append(value)
            return .buffered(s.takeWatchers())
        }
        return .wait
    }

    @inlinable
    func bump() { version.add(1, ordering: .releasing) }

    /// Sends without waiting: true when a receiver took the value or it was buffered. Inlinable, like
    /// ``tryReceive()``: specialized for the caller's `Value`, it makes none of the runtime's generic-metadata
    /// lookups that unspecialized code makes on every call.
    @inlinable
    package func trySend(_ value: Value) throws(IPCError) -> Bool {
        if usesRing { return try ringTrySend(value) }
        let step = try state.withLock { s throws(IPCError) in
            let step = try Self.offer(value, &s, capacity: capacity)
            if case .buffered = step { bump() }
            return step
        }
        return Self.finish(step, value)
    }

    @inlinable
    static func finish(_ step: SendStep, _ value: Value) -> Bool {
        switch step {
        case .done: return true
        case .handed(let continuation):
            continuation.resume(returning: .success(value))
            return true
        case .buffered(let watchers):
            for w in watchers { w.waiter.notify() }
            return true
        case .wait: return false
        }
    }

    package func send(_ value: Value) async throws(IPCError) {
        if usesRing { return try await ringSend(value) }
        if try trySend(value) { return }
        // Park as a sender (receivers can take the value from here), then poll for a while before sleeping: a
        // wake-up costs far more than a short wait for a receiver that is about to come.
        let handoff = Handoff()
        let id = channelIDs.add(1, ordering: .relaxed).newValue
        let step = try state.withLock { s throws(IPCError) in
            let step = try Self.offer(value, &s, capacity: capacity)
            switch step {
            case .wait:
                s.senders.append(ParkedSender(id: id, value: value, handoff: handoff))
                bump()
            case .buffered: bump()
            default: break
            }
            return step
        }
        if Self.finish(step, value) { return }
        if let done = handoff.result { return try done.get() }
        var waiter = SpinWait(budgetNanoseconds: Self.spinNanoseconds, yieldAfterNanoseconds: .max)
        if waiter.poll(clockEvery: 16, until: { handoff.result != nil }), let done = handoff.result { return try done.get() }
        let result = await withTaskCancellationHandler {
            await withUnsafeContinuation { (c: UnsafeContinuation<Result<Void, IPCError>, Never>) in
                let sleeping = state.withLock { s -> Bool in
                    guard let i = s.senders.firstIndex(where: { $0.id == id }) else { return false }
                    s.senders[i].continuation = c
                    return true
                }
                // Completed (taken, failed or cancelled) between the last poll and now.
                if !sleeping { c.resume(returning: handoff.result!) }
            }
        } onCancel: {
            let parked = state.withLock { s -> UnsafeContinuation<Result<Void, IPCError>, Never>?? in
                guard let i = s.senders.firstIndex(where: { $0.id == id }) else { return nil }
                return .some(s.senders.remove(at: i).complete(Self.cancelledSend))
            }
            if case .some(let c?) = parked { c.resume(returning: .failure(Self.cancelledSend)) }
        }
        try result.get()
    }

    // MARK: Receiving

    @usableFromInline
    enum ReceiveStep {
        case value(Value, resume: UnsafeContinuation<Result<Void, IPCError>, Never>?, watchers: [(id: UInt64, waiter: SelectWaiter)])
        case end
        case wait
    }

    private enum Park { case parked, ready(ReceiveStep), cancelled }

    @inlinable
    static func take(_ s: inout State) -> ReceiveStep {
        if let value = s.buffer.popFirst() {
            var resume: UnsafeContinuation<Result<Void, IPCError>, Never>?
            if let parked = s.senders.popFirst() {
                s.buffer.append(parked.value)
                resume = parked.complete(nil)
            }
            return .value(value, resume: resume, watchers: s.takeWatchers())
        }
        if let parked = s.senders.popFirst() {
            return .value(parked.value, resume: parked.complete(nil), watchers: [])
        }
        if s.closed || s.receiverGone { return .end }
        return .wait
    }

    @inlinable
    static func complete(_ step: ReceiveStep) -> Value?? {
        switch step {
        case .value(let value, let resume, let watchers):
            resume?.resume(returning: .success(()))
            for w in watchers { w.waiter.notify() }
            return .some(value)
        case .end: return .some(nil)
        case .wait: return nil
        }
    }

    /// A value if one can be taken now: `.some(nil)` at the end of the channel, `nil` when none is there.
    @inlinable
    package func tryReceive() -> Value?? {
        if usesRing { return ringTryReceive() }
        return Self.complete(state.withLock { s in Self.take(&s) })
    }

    /// ``tryReceive()``, and when nothing is there, polls for a value for a while (bounded, so an idle channel
    /// costs no CPU): a sender is probably about to deliver, and a wake-up costs far more. Inlinable, so that a
    /// receive specialized for the caller's `Value` makes no generic-metadata lookups while it polls.
    @inlinable
    package func receiveSpinning() -> Value?? {
        if usesRing { return ringReceiveSpinning() }
        var seen = version.load(ordering: .acquiring)
        if let ready = tryReceive() { return ready }
        var waiter = SpinWait(budgetNanoseconds: Self.spinNanoseconds, yieldAfterNanoseconds: .max)
        var spun: Value?? = nil
        _ = waiter.poll(clockEvery: 16) {
            let now = version.load(ordering: .acquiring)
            guard now != seen else { return false }
            seen = now
            spun = tryReceive()
            return spun != nil
        }
        return spun
    }

    /// Waits for a value; `spin`: poll first (``receiveSpinning()``), unless the caller just did.
    package func receive(spin: Bool = true) async throws(IPCError) -> Value? {
        if usesRing { return try await ringReceive(spin: spin) }
        if spin, let ready = receiveSpinning() { return ready }
        let id = channelIDs.add(1, ordering: .relaxed).newValue
        let result = await withTaskCancellationHandler {
            await withUnsafeContinuation { (c: UnsafeContinuation<Result<Value?, IPCError>, Never>) in
                let (park, watchers) = state.withLock { s -> (Park, [(id: UInt64, waiter: SelectWaiter)]) in
                    let step = Self.take(&s)
                    guard case .wait = step else { return (.ready(step), []) }
                    if Task.isCancelled { return (.cancelled, []) }
                    s.receivers.append(.task(id, c))
                    // A waiting receiver lets a rendezvous send proceed: tell selects with a send case.
                    return (.parked, s.takeWatchers())
                }
                for w in watchers { w.waiter.notify() }
                switch park {
                case .parked: break
                case .cancelled: c.resume(returning: .failure(Self.cancelledReceive))
                case .ready(let step): c.resume(returning: .success(Self.complete(step)!))
                }
            }
        } onCancel: {
            let parked = state.withLock { s -> UnsafeContinuation<Result<Value?, IPCError>, Never>? in
                guard let i = s.receivers.firstIndex(where: { if case .task(id, _) = $0 { true } else { false } }) else { return nil }
                guard case .task(_, let c) = s.receivers.remove(at: i) else { return nil }
                return c
            }
            parked?.resume(returning: .failure(Self.cancelledReceive))
        }
        return try result.get()
    }

    // MARK: Closing

    /// Go's `close(ch)`: receivers get the buffered values, then the end; parked sends fail.
    package func close() throws(IPCError) {
        if usesRing { return try ringShutDown(.closed) }
        try shutDown(senderError: Self.closedWhileWaiting) { s throws(IPCError) in
            if s.closed { throw IPCError(.alreadyClosed, "close() was called twice on the same sender") }
            s.closed = true
        }
    }

    /// The sender was dropped without `close()`: close it.
    package func senderDropped() {
        try? close()
    }

    /// The receiver was dropped: buffered values are discarded, and every send from now on fails.
    package func receiverDropped() {
        if usesRing { try? ringShutDown(.receiverGone); return }
        try? shutDown(senderError: Self.goneError) { s in
            s.receiverGone = true
            s.buffer.removeAll()
        }
    }

    /// Applies `change` under the lock, then fails every parked send with `senderError`, ends every parked
    /// receive, and tells the watching selects.
    private func shutDown(senderError: IPCError, _ change: (inout State) throws(IPCError) -> Void) throws(IPCError) {
        let (receivers, senders, watchers) = try state.withLock { s throws(IPCError) in
            try change(&s)
            for sender in s.senders { _ = sender.complete(senderError) }
            bump()
            defer {
                s.receivers.removeAll()
                s.senders.removeAll()
            }
            return (s.receivers, s.senders, s.takeWatchers())
        }
        Self.release(receivers: receivers, senders: senders, watchers: watchers, senderError: senderError)
    }

    private static func release(receivers: Deque<ParkedReceiver>, senders: Deque<ParkedSender>, watchers: [(id: UInt64, waiter: SelectWaiter)], senderError: IPCError) {
        for receiver in receivers {
            switch receiver {
            case .task(_, let c): c.resume(returning: .success(nil))
            case .offer(_, let waiter, let index): _ = waiter.claim(index: index, value: Optional<Value>.none)
            }
        }
        for sender in senders { sender.continuation?.resume(returning: .failure(senderError)) }
        for w in watchers { w.waiter.notify() }
    }

    // MARK: Select

    /// Registers a select's receive case: a sender (or the close) completes it by claiming `waiter`.
    /// Returns nil when a value can be taken now (the select polls again instead).
    package func registerReceive(_ waiter: SelectWaiter, index: Int) -> UInt64? {
        if usesRing { return ringRegisterReceive(waiter) }
        let (id, watchers) = state.withLock { s -> (UInt64?, [(id: UInt64, waiter: SelectWaiter)]) in
            if !s.buffer.isEmpty || !s.senders.isEmpty || s.closed || s.receiverGone { return (nil, []) }
            let id = channelIDs.add(1, ordering: .relaxed).newValue
            s.receivers.append(.offer(id, waiter, index))
            return (id, s.takeWatchers(except: waiter))
        }
        for w in watchers { w.waiter.notify() }
        return id
    }

    /// Registers a select's send case: `waiter` is notified when a send may proceed. Returns nil when it may
    /// proceed now.
    package func registerSend(_ waiter: SelectWaiter) -> UInt64? {
        if usesRing { return ringRegisterSend(waiter) }
        return state.withLock { s -> UInt64? in
            if s.closed || s.receiverGone || s.buffer.count < capacity { return nil }
            let receiverWaits = s.receivers.contains { receiver in
                switch receiver {
                case .task: true
                case .offer(_, let other, _): other !== waiter && !other.isCompleted
                }
            }
            if receiverWaits { return nil }
            let id = channelIDs.add(1, ordering: .relaxed).newValue
            s.watchers.append((id, waiter))
            return id
        }
    }

    package func unregister(_ id: UInt64) {
        if usesRing { return ringUnregister(id) }
        state.withLock { s in
            if let i = s.receivers.firstIndex(where: { if case .offer(id, _, _) = $0 { true } else { false } }) {
                s.receivers.remove(at: i)
            }
            s.watchers.removeAll { $0.id == id }
        }
    }
}

/// How a parked send learns that it completed while it is still polling (before it sleeps). Written once,
/// under the channel's lock; read by the polling task without it.
@usableFromInline
final class Handoff: @unchecked Sendable {
    @usableFromInline let state = Atomic<Int>(0)  // 0 waiting, 1 taken, 2 failed
    @usableFromInline var error: IPCError?

    init() {}

    @inlinable
    func complete(_ error: IPCError?) {
        self.error = error
        state.store(error == nil ? 1 : 2, ordering: .releasing)
    }

    var result: Result<Void, IPCError>? {
        switch state.load(ordering: .acquiring) {
        case 0: nil
        case 1: .success(())
        default: .failure(error!)
        }
    }
}
