import DequeModule
import InterprocessPlatform
import Synchronization

/// A buffered in-process channel whose buffer is its ``LocalRing`` (`usesRing`): a send that finds room and a receive that finds
/// a value touch only the ring. The lock guards the parked tasks and the selects; a parked task is only woken,
/// and takes its turn at the ring itself, so no value ever passes through the lock.
///
/// Wake-ups: a push that sees `wantValue` wakes the first parked receive and every select waiting for a value; a
/// pop that sees `wantRoom` wakes the first parked send and every select waiting for room. One task per value
/// (or slot) is enough, because a woken task always tries the ring before anything else (even when cancelled
/// meanwhile), so the value (or room) it was woken for is either used by it or was used by another task.
extension LocalChannel {
    // MARK: Sending

    @inlinable
    func ringTrySend(_ value: Value) throws(IPCError) -> Bool {
        switch ring.push(value) {
        case .pushed:
            if ring.wantValue.load(ordering: .sequentiallyConsistent) != 0 { wakeReceivers() }
            return true
        case .full: return false
        case .closed: throw Self.closedError
        case .receiverGone: throw Self.goneError
        }
    }

    func ringSend(_ value: Value) async throws(IPCError) {
        if try ringTrySend(value) { return }
        // A receiver is probably about to take a value: poll for room before parking (a wake-up costs far more).
        if ring.awaitRoom(budgetNanoseconds: Self.spinNanoseconds), try ringTrySend(value) { return }
        while true {
            let id = channelIDs.add(1, ordering: .relaxed).newValue
            let woken = await withTaskCancellationHandler {
                await withUnsafeContinuation { (c: UnsafeContinuation<Result<Void, IPCError>, Never>) in
                    let parked = state.withLock { s -> Bool in
                        if Task.isCancelled { return false }
                        return enlist(&s, forRoom: true, add: { $0.roomWaiters.append((id, c)) }, takeBack: { _ = $0.roomWaiters.removeLast() })
                    }
                    if !parked { c.resume(returning: .success(())) }
                }
            } onCancel: {
                let parked = state.withLock { s -> UnsafeContinuation<Result<Void, IPCError>, Never>? in
                    guard let i = s.roomWaiters.firstIndex(where: { $0.id == id }) else { return nil }
                    defer { publishCounts(s) }
                    return s.roomWaiters.remove(at: i).continuation
                }
                parked?.resume(returning: .failure(Self.cancelledSend))
            }
            try woken.get()
            do {
                if try ringTrySend(value) { return }
            } catch where error.code == .sendOnClosedChannel {
                throw Self.closedWhileWaiting
            }
            if Task.isCancelled { throw Self.cancelledSend }
        }
    }

    /// Wakes the first parked receive and every select waiting for a value.
    @usableFromInline
    func wakeReceivers() {
        let (task, selects) = state.withLock { s -> (UnsafeContinuation<Bool, Never>?, [SelectWaiter]) in
            var task: UnsafeContinuation<Bool, Never>?
            var selects: [SelectWaiter] = []
            s.ringReceivers.removeAll { receiver in
                switch receiver {
                case .task(_, let c):
                    guard task == nil else { return false }
                    task = c
                    return true
                case .select(_, let waiter):
                    selects.append(waiter)
                    return true
                }
            }
            publishCounts(s)
            return (task, selects)
        }
        task?.resume(returning: true)
        for waiter in selects { waiter.notify() }
    }

    // MARK: Receiving

    /// A value, `.some(nil)` at the end, nil when none is there.
    @inlinable
    func ringTryReceive() -> Value?? {
        if let value = ring.pop() {
            if ring.wantRoom.load(ordering: .sequentiallyConsistent) != 0 { wakeSenders() }
            return .some(value)
        }
        guard ring.hasEnded else { return nil }
        // Every push came before the end was set: look once more.
        if let value = ring.pop() { return .some(value) }
        return .some(nil)
    }

    @inlinable
    func ringReceiveSpinning() -> Value?? {
        if let ready = ringTryReceive() { return ready }
        guard ring.awaitValue(budgetNanoseconds: Self.spinNanoseconds) else { return nil }
        return ringTryReceive()
    }

    func ringReceive(spin: Bool) async throws(IPCError) -> Value? {
        if spin, let ready = ringReceiveSpinning() { return ready }
        while true {
            if let ready = ringTryReceive() { return ready }
            if Task.isCancelled { throw Self.cancelledReceive }
            let id = channelIDs.add(1, ordering: .relaxed).newValue
            // Woken or cancelled alike, the loop looks at the ring first.
            _ = await withTaskCancellationHandler {
                await withUnsafeContinuation { (c: UnsafeContinuation<Bool, Never>) in
                    let parked = state.withLock { s -> Bool in
                        if Task.isCancelled { return false }
                        return enlist(&s, forRoom: false, add: { $0.ringReceivers.append(.task(id, c)) }, takeBack: { _ = $0.ringReceivers.removeLast() })
                    }
                    if !parked { c.resume(returning: true) }
                }
            } onCancel: {
                let parked = state.withLock { s -> UnsafeContinuation<Bool, Never>? in
                    guard let i = s.ringReceivers.firstIndex(where: { if case .task(id, _) = $0 { true } else { false } }),
                          case .task(_, let c) = s.ringReceivers.remove(at: i) else { return nil }
                    publishCounts(s)
                    return c
                }
                parked?.resume(returning: false)
            }
        }
    }

    /// Wakes the first parked send and every select waiting for room.
    @usableFromInline
    func wakeSenders() {
        let (task, selects) = state.withLock { s -> (UnsafeContinuation<Result<Void, IPCError>, Never>?, [(id: UInt64, waiter: SelectWaiter)]) in
            let task = s.roomWaiters.popFirst()?.continuation
            let selects = s.takeWatchers()
            publishCounts(s)
            return (task, selects)
        }
        task?.resume(returning: .success(()))
        for w in selects { w.waiter.notify() }
    }

    // MARK: Ending

    /// Closes the channel (`.closed`) or drops its receiver (`.receiverGone`, which discards the buffered
    /// values): parked sends fail, parked receives and every select are woken.
    func ringShutDown(_ how: LocalRing<Value>.Ended) throws(IPCError) {
        let (receivers, senders, watchers) = try state.withLock { s throws(IPCError) in
            switch how {
            case .closed:
                if s.closed { throw IPCError(.alreadyClosed, "close() was called twice on the same sender") }
                s.closed = true
            case .receiverGone:
                s.receiverGone = true
            case .open:
                break
            }
            ring.end(how)
            let taken = (s.ringReceivers, s.roomWaiters, s.takeWatchers())
            s.ringReceivers.removeAll()
            s.roomWaiters.removeAll()
            publishCounts(s)
            return taken
        }
        if how == .receiverGone { ring.discardAll() }
        let senderError = how == .closed ? Self.closedWhileWaiting : Self.goneError
        for receiver in receivers {
            switch receiver {
            case .task(_, let c): c.resume(returning: true)
            case .select(_, let waiter): waiter.notify()
            }
        }
        for sender in senders { sender.continuation.resume(returning: .failure(senderError)) }
        for w in watchers { w.waiter.notify() }
    }

    // MARK: Select

    /// A select's receive case: notified when a value (or the end) comes; nil when one is there now.
    func ringRegisterReceive(_ waiter: SelectWaiter) -> UInt64? {
        state.withLock { s -> UInt64? in
            if ring.holdsValue || ring.hasEnded { return nil }
            let id = channelIDs.add(1, ordering: .relaxed).newValue
            return enlist(&s, forRoom: false, add: { $0.ringReceivers.append(.select(id, waiter)) }, takeBack: { _ = $0.ringReceivers.removeLast() }) ? id : nil
        }
    }

    /// A select's send case: notified when room is made (or the channel ends); nil when there is room now.
    func ringRegisterSend(_ waiter: SelectWaiter) -> UInt64? {
        state.withLock { s -> UInt64? in
            if ring.hasRoom || ring.hasEnded { return nil }
            let id = channelIDs.add(1, ordering: .relaxed).newValue
            return enlist(&s, forRoom: true, add: { $0.watchers.append((id, waiter)) }, takeBack: { _ = $0.watchers.removeLast() }) ? id : nil
        }
    }

    func ringUnregister(_ id: UInt64) {
        state.withLock { s in
            if let i = s.ringReceivers.firstIndex(where: { if case .select(id, _) = $0 { true } else { false } }) {
                s.ringReceivers.remove(at: i)
            }
            if let i = s.watchers.firstIndex(where: { $0.id == id }) {
                s.watchers.remove(at: i)
            }
            publishCounts(s)
        }
    }

    // MARK: Waiting counts

    /// Publishes how many wait for a value (`wantValue`) and for room (`wantRoom`). Lock held.
    func publishCounts(_ s: borrowing State) {
        ring.wantValue.store(s.ringReceivers.count, ordering: .sequentiallyConsistent)
        ring.wantRoom.store(s.roomWaiters.count + s.watchers.count, ordering: .sequentiallyConsistent)
    }

    /// Adds a waiter for room (`forRoom`) or for a value, publishes the counts, then looks at the ring again: if
    /// what it waits for is there already (made before the other side could see the count), takes it back and
    /// returns false. Lock held.
    func enlist(_ s: inout State, forRoom: Bool, add: (inout State) -> Void, takeBack: (inout State) -> Void) -> Bool {
        add(&s)
        publishCounts(s)
        let ready = ring.hasEnded || (forRoom ? ring.hasRoom : ring.holdsValue)
        guard ready else { return true }
        takeBack(&s)
        publishCounts(s)
        return false
    }
}
