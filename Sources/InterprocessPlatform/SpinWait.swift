/// Bounded waiting by polling, the one policy every waiter in the package uses before it sleeps: the CPU's
/// spin hint for the first microseconds (a peer on another CPU answers within them), then yielding the CPU
/// between polls (a peer that shares this CPU must get to run), until the budget is spent.
package struct SpinWait {
    private let start: UInt64
    private let deadline: UInt64
    private let yieldAfter: UInt64
    private var yielding = false
    private var pauses = 0

    /// How long pure spinning lasts before yielding starts.
    package static let defaultYieldAfterNanoseconds: UInt64 = 5_000

    package init(budgetNanoseconds: UInt64, yieldAfterNanoseconds: UInt64 = defaultYieldAfterNanoseconds) {
        start = Platform.monotonicNanoseconds()
        deadline = start &+ budgetNanoseconds
        yieldAfter = yieldAfterNanoseconds
    }

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
    package mutating func poll<E: Error>(clockEvery: Int = 1, until ready: () throws(E) -> Bool) throws(E) -> Bool {
        while pause(clockEvery: clockEvery) {
            if try ready() { return true }
        }
        return false
    }
}
