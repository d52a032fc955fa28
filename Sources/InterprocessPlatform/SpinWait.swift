import Synchronization

/// Bounded waiting by polling, the one policy every waiter in the package uses before it sleeps: the CPU's
/// spin hint for the first microseconds (a peer on another CPU answers within them), then yielding the CPU
/// between polls (a peer that shares this CPU must get to run), until the budget is spent.
@usableFromInline
package struct SpinWait {
    private let start: UInt64
    private let deadline: UInt64
    private let yieldAfter: UInt64
    private var yielding = false
    private var pauses = 0

    /// How long pure spinning lasts before yielding starts.
    @usableFromInline
    package static let defaultYieldAfterNanoseconds: UInt64 = 5_000

    @usableFromInline
    package init(budgetNanoseconds: UInt64, yieldAfterNanoseconds: UInt64 = defaultYieldAfterNanoseconds) {
        start = Platform.monotonicNanoseconds()
        deadline = start &+ budgetNanoseconds
        yieldAfter = yieldAfterNanoseconds
        yielding = yieldAfterNanoseconds == 0
    }

    /// Whether the spin hint phase is over (the waiter yields the CPU between polls now).
    package var isYielding: Bool { yielding }

    /// Pauses once. Returns false once the budget is spent. The clock is read every `clockEvery` pauses while
    /// spinning on the CPU hint, and on every pause once yielding: a caller whose polls may be system calls (a
    /// socket read) passes 1, since a pause count then says nothing about the time spent; one whose polls are a
    /// few loads from memory passes more, as reading the clock (tens of nanoseconds on a VM) would otherwise be
    /// most of each poll and delay the moment the peer's write is seen.
    package mutating func pause(clockEvery: Int = 1) -> Bool {
        if yielding { Platform.yieldCPU() } else { Platform.relaxCPU() }
        pauses &+= 1
        if !yielding && pauses % clockEvery != 0 { return true }
        let now = Platform.monotonicNanoseconds()
        if now >= deadline { return false }
        yielding = now &- start >= yieldAfter
        return true
    }

    /// Pauses until `ready` holds (true) or the budget is spent (false). `clockEvery`: see ``pause(clockEvery:)``.
    @usableFromInline
    package mutating func poll<E: Error>(clockEvery: Int = 1, until ready: () throws(E) -> Bool) throws(E) -> Bool {
        while pause(clockEvery: clockEvery) {
            if try ready() { return true }
        }
        return false
    }
}

/// Whether spinning on the CPU hint pays off for one waiter's waits: it does when the peer runs on another CPU and
/// answers within microseconds; it never does when the peer shares this CPU, where spinning only delays it (the
/// peer runs once this thread yields or sleeps). After ``fruitlessLimit`` spin phases in a row that ended without
/// the awaited input, waits start yielding at once; every ``probeEvery``-th wait spins again, so a peer that
/// moved to another CPU is noticed. Shared by the tasks waiting on one connection; a race between them costs at
/// most one spin phase.
package final class SpinAdvisor: Sendable {
    private let fruitless = Atomic<Int>(0)
    private let waits = Atomic<Int>(0)

    package static let fruitlessLimit = 4
    package static let probeEvery = 32

    package init() {}

    /// How long the next wait spins on the CPU hint before it yields.
    @inline(__always)
    package func spinNanoseconds() -> UInt64 {
        guard fruitless.load(ordering: .relaxed) >= Self.fruitlessLimit else { return SpinWait.defaultYieldAfterNanoseconds }
        let n = waits.wrappingAdd(1, ordering: .relaxed).newValue
        return n % Self.probeEvery == 0 ? SpinWait.defaultYieldAfterNanoseconds : 0
    }

    /// A wait that spun on the CPU hint ended: `paidOff` when the input came while it was still spinning.
    @inline(__always)
    package func record(paidOff: Bool) {
        let old = fruitless.load(ordering: .relaxed)
        let new = paidOff ? 0 : min(old + 1, Self.fruitlessLimit)
        if new != old { fruitless.store(new, ordering: .relaxed) }
    }
}
