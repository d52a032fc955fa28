import CInterprocessShim

/// Bounded waiting by polling, the one policy every waiter in the package uses before it sleeps: the CPU's
/// spin hint for the first microseconds (a peer on another CPU answers within them), then yielding the CPU
/// between polls (a peer that shares this CPU must get to run), until the budget is spent.
package struct SpinWait {
    private let start: UInt64
    private let deadline: UInt64
    private let yieldAfter: UInt64
    private var yielding = false

    /// How long pure spinning lasts before yielding starts.
    package static let defaultYieldAfterNanoseconds: UInt64 = 5_000

    package init(budgetNanoseconds: UInt64, yieldAfterNanoseconds: UInt64 = defaultYieldAfterNanoseconds) {
        start = cipc_monotonic_ns()
        deadline = start &+ budgetNanoseconds
        yieldAfter = yieldAfterNanoseconds
    }

    /// Pauses once. Returns false once the budget is spent. The clock is read on every pause: some polls are
    /// system calls (a socket read), so a pause count says nothing about the time spent.
    package mutating func pause() -> Bool {
        if yielding { cipc_yield() } else { cipc_cpu_relax() }
        let now = cipc_monotonic_ns()
        if now >= deadline { return false }
        yielding = now &- start >= yieldAfter
        return true
    }

    /// Pauses until `ready` holds (true) or the budget is spent (false).
    package mutating func poll<E: Error>(until ready: () throws(E) -> Bool) throws(E) -> Bool {
        while pause() {
            if try ready() { return true }
        }
        return false
    }
}
