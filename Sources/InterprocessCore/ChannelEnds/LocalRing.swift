import InterprocessPlatform
import Synchronization

/// The buffer of an in-process channel with a capacity: a ring of slots that a send and a receive reach without
/// the channel's lock.
///
/// One task pushes at a time and one pops at a time: each side owns its position while it holds its own flag
/// (`sending`, `receiving`), so one sending task and one receiving task never wait for each other, and several
/// tasks on one side take turns (a turn is a few loads and stores and never suspends, so a task that finds the
/// flag taken spins briefly, then yields the CPU). The two sides' positions lie on different cache lines, and each
/// side keeps a copy of the other's position that it refreshes only when the ring looks full (or empty), so in
/// steady flow neither side reads the line the other writes.
///
/// Waiting and select stay with the channel's lock: a task that parks (or a select that registers) records
/// itself in `wantValue` or `wantRoom` under the lock, then looks at the ring again; a push (a pop) stores its
/// position, then looks at `wantValue` (`wantRoom`). Both are sequentially consistent, so at least one of the two
/// sees the other: a value never waits in the ring while a receiver sleeps, nor room while a sender sleeps.
///
/// Closing and dropping the receiver take the sending flag, so a push either completes before the channel ends
/// or sees that it ended; a receiver that finds the ring empty and the channel ended looks once more and is then
/// sure that nothing more comes.
///
/// A non-copyable struct stored in its channel, so that a send or a receive reaches it without retaining a
/// second object (whose reference count both sides would otherwise write on every call). Every field is a `let`
/// (atomics for what changes), so both sides use it at once without an exclusive access.
@usableFromInline
package struct LocalRing<Value: Sendable>: ~Copyable, @unchecked Sendable {
    /// 120 bytes that keep the fields around them on cache lines of their own (x86 prefetches lines in pairs).
    @usableFromInline
    typealias Padding = (Int, Int, Int, Int, Int, Int, Int, Int, Int, Int, Int, Int, Int, Int, Int)

    @usableFromInline let slots: UnsafeMutablePointer<Value>
    @usableFromInline let mask: Int
    /// 0: no ring (the channel keeps its buffer under its lock).
    @usableFromInline let capacity: Int
    private let padding0: Padding = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)

    // The receiving side's line.
    /// The position of the next value to take.
    @usableFromInline let head = Atomic<Int>(0)
    /// `tail` as the receiving side last read it (used only while holding `receiving`).
    @usableFromInline let knownTail = Atomic<Int>(0)
    @usableFromInline let receiving = Atomic<Bool>(false)
    private let padding1: Padding = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)

    // The sending side's line.
    /// The position of the next free slot.
    @usableFromInline let tail = Atomic<Int>(0)
    /// `head` as the sending side last read it (used only while holding `sending`).
    @usableFromInline let knownHead = Atomic<Int>(0)
    @usableFromInline let sending = Atomic<Bool>(false)
    private let padding2: Padding = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)

    // Read on every push or pop, written rarely (under the channel's lock).
    /// ``Ended`` as a raw value: set while holding `sending`.
    @usableFromInline let ended = Atomic<Int>(0)
    /// How many parked receives and registered selects wait for a value.
    @usableFromInline let wantValue = Atomic<Int>(0)
    /// How many parked sends and registered selects wait for room.
    @usableFromInline let wantRoom = Atomic<Int>(0)
    private let padding3: Padding = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)

    @usableFromInline
    enum Ended: Int {
        case open = 0, closed, receiverGone
    }

    @usableFromInline
    enum Push {
        case pushed, full, closed, receiverGone
    }

    /// `capacity` 0: no ring.
    package init(capacity: Int) {
        precondition(capacity >= 0 && capacity <= 1 << 30)
        var size = 1
        while size < capacity { size <<= 1 }
        self.capacity = capacity
        mask = size - 1
        slots = .allocate(capacity: size)
    }

    deinit {
        var h = head.load(ordering: .relaxed)
        let t = tail.load(ordering: .relaxed)
        while h != t {
            (slots + (h & mask)).deinitialize(count: 1)
            h &+= 1
        }
        slots.deallocate()
    }

    /// Takes `flag`, waiting for another task's turn to end: a few spin hints, then yielding the CPU (the holder
    /// may have been descheduled).
    @inlinable
    func take(_ flag: borrowing Atomic<Bool>) {
        if !flag.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged { waitForTurn(flag) }
    }

    @usableFromInline
    func waitForTurn(_ flag: borrowing Atomic<Bool>) {
        var spins = 0
        repeat {
            spins += 1
            if spins < 64 { Platform.relaxCPU() } else { Platform.yieldCPU() }
        } while !flag.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged
    }

    /// Puts `value` in the ring unless it is full or the channel ended. The caller then reads `wantValue`.
    @inlinable
    func push(_ value: Value) -> Push {
        take(sending)
        defer { sending.store(false, ordering: .releasing) }
        // Ordered after the flag: `ended` is written only while holding it.
        switch ended.load(ordering: .relaxed) {
        case Ended.closed.rawValue: return .closed
        case Ended.receiverGone.rawValue: return .receiverGone
        default: break
        }
        let t = tail.load(ordering: .relaxed)
        if t &- knownHead.load(ordering: .relaxed) == capacity {
            let h = head.load(ordering: .acquiring)
            knownHead.store(h, ordering: .relaxed)
            if t &- h == capacity { return .full }
        }
        (slots + (t & mask)).initialize(to: value)
        // Keeps the retain of the copy before the store of `tail` that publishes it. Without the fence the
        // optimizer may move the retain of a value that the caller keeps alive after that store (an atomic store
        // releases nothing, as far as it can tell; it does so for an array shared by every send), and the
        // receiving task may then release its copy first and free the value under the sender. A fence costs no
        // instruction here (x86) and, unlike a call the optimizer cannot see into, does not make it retain the
        // channel around every push.
        atomicMemoryFence(ordering: .releasing)
        tail.store(t &+ 1, ordering: .sequentiallyConsistent)
        return .pushed
    }

    /// Takes the oldest value, if any. The caller then reads `wantRoom`.
    @inlinable
    func pop() -> Value? {
        take(receiving)
        defer { receiving.store(false, ordering: .releasing) }
        return popTaken()
    }

    /// ``pop()`` with `receiving` held.
    @inlinable
    func popTaken() -> Value? {
        let h = head.load(ordering: .relaxed)
        if h == knownTail.load(ordering: .relaxed) {
            let t = tail.load(ordering: .acquiring)
            knownTail.store(t, ordering: .relaxed)
            if h == t { return nil }
        }
        let value = (slots + (h & mask)).move()
        head.store(h &+ 1, ordering: .sequentiallyConsistent)
        return value
    }

    /// Whether a value is there (a hint, without taking a turn; sequentially consistent, for the park check).
    @inlinable
    var holdsValue: Bool {
        tail.load(ordering: .sequentiallyConsistent) != head.load(ordering: .sequentiallyConsistent)
    }

    /// Whether a slot is free (a hint, like ``holdsValue``).
    @inlinable
    var hasRoom: Bool {
        tail.load(ordering: .sequentiallyConsistent) &- head.load(ordering: .sequentiallyConsistent) < capacity
    }

    /// Polls until a value is there or the channel ended (true), or `budgetNanoseconds` passed (false). The
    /// pauses between looks grow (up to about a microsecond): each look takes the cache line that the sending
    /// side writes, and a look per value would make both sides move it on every value, where a later look finds
    /// several values waiting.
    @usableFromInline
    func awaitValue(budgetNanoseconds: UInt64) -> Bool {
        poll(budgetNanoseconds: budgetNanoseconds) {
            tail.load(ordering: .relaxed) != head.load(ordering: .relaxed) || ended.load(ordering: .relaxed) != Ended.open.rawValue
        }
    }

    /// Polls until a slot is free or the channel ended (true), or `budgetNanoseconds` passed (false); like
    /// ``awaitValue(budgetNanoseconds:)``.
    @usableFromInline
    func awaitRoom(budgetNanoseconds: UInt64) -> Bool {
        poll(budgetNanoseconds: budgetNanoseconds) {
            tail.load(ordering: .relaxed) &- head.load(ordering: .relaxed) < capacity || ended.load(ordering: .relaxed) != Ended.open.rawValue
        }
    }

    private func poll(budgetNanoseconds: UInt64, _ ready: () -> Bool) -> Bool {
        let deadline = Platform.monotonicNanoseconds() &+ budgetNanoseconds
        var pauses = 1
        while true {
            for _ in 0..<pauses { Platform.relaxCPU() }
            if ready() { return true }
            if pauses < 32 {
                pauses &*= 2
            } else if Platform.monotonicNanoseconds() >= deadline {
                return false
            }
        }
    }

    @inlinable
    var hasEnded: Bool { ended.load(ordering: .acquiring) != Ended.open.rawValue }

    /// Marks the channel ended (lock held by the caller); waits for a push in progress to finish. A close
    /// overrides a receiver gone: a send after its own sender's close reports the close.
    func end(_ how: Ended) {
        take(sending)
        if how == .closed || ended.load(ordering: .relaxed) == Ended.open.rawValue {
            ended.store(how.rawValue, ordering: .sequentiallyConsistent)
        }
        sending.store(false, ordering: .releasing)
    }

    /// Discards every value in the ring (the receiver is gone).
    func discardAll() {
        take(receiving)
        while popTaken() != nil {}
        receiving.store(false, ordering: .releasing)
    }
}
