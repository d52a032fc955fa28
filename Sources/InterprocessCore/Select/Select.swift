import InterprocessPlatform
import Synchronization

/// Waits on several channel operations at once and performs exactly one of them: Go's `select`.
///
/// ```swift
/// let event = try await select {
///     jobs.onReceive { job in Event.job(job) }          // job is nil once `jobs` is closed and drained
///     results.onSend(summary) { Event.reported }
///     SelectCase.timeout(.seconds(1)) { Event.idle }
/// }
/// ```
///
/// Cases may mix channels of any transport (in-process, Unix socket, TCP). When several are ready, one is
/// chosen uniformly at random, so a busy channel cannot starve another. A case not chosen has no effect: no
/// value is taken from its channel and nothing is sent on it. With a ``SelectCase/default(_:)`` case, `select`
/// never waits: it runs that case when no other is ready. With a ``SelectCase/timeout(_:_:)`` case, it runs
/// that case when nothing was ready in time. The chosen case's closure runs before `select` returns, and its
/// result is what `select` returns.
///
/// Throws the chosen operation's error (for example ``IPCError/Code/peerClosed`` from a receive, or
/// ``IPCError/Code/receiverGone`` from a send), whatever the chosen closure throws, or
/// ``IPCError/Code/cancelled`` when the task is cancelled while waiting (no value is taken then).
nonisolated(nonsending)
public func select<Result>(@SelectBuilder<Result> _ cases: () -> [SelectCase<Result>]) async throws -> Result {
    var operations: [SelectOperation<Result>] = []
    var timeout: (Duration, () throws -> Result)?
    var fallback: (() throws -> Result)?
    for c in cases() {
        switch c.kind {
        case .operation(let op): operations.append(op)
        case .timeout(let duration, let body):
            precondition(timeout == nil, "a select can have at most one timeout case")
            timeout = (duration, body)
        case .fallback(let body):
            precondition(fallback == nil, "a select can have at most one default case")
            fallback = body
        }
    }
    precondition(!operations.isEmpty || fallback != nil || timeout != nil, "a select needs at least one case")
    let deadline = timeout.map { ContinuousClock.now + $0.0 }
    let waiter = SelectWaiter()
    var timer: Task<Void, Never>?
    defer { timer?.cancel() }
    var order = Array(operations.indices)
    while true {
        order.shuffle()
        for i in order {
            if let completion = try operations[i].poll() { return try await completion() }
        }
        if let fallback { return try fallback() }
        if let deadline, let timeout, ContinuousClock.now >= deadline { return try timeout.1() }
        if Task.isCancelled { throw IPCError(.cancelled, "the select was cancelled; no case was performed") }

        // Nothing is ready: register with every channel, then sleep until one of them changes. A registration
        // that finds its channel ready already stops the round, and the loop polls again.
        waiter.reset()
        var registrations: [() -> Void] = []
        var readyNow = false
        for i in order {
            guard let undo = operations[i].register(waiter, i) else {
                readyNow = true
                break
            }
            registrations.append(undo)
        }
        // The timer may have fired between the deadline check above and the reset: look at the clock again.
        let expired = deadline.map { ContinuousClock.now >= $0 } ?? false
        if !readyNow && !expired {
            if timer == nil, let deadline {
                timer = Task {
                    try? await Task.sleep(until: deadline, clock: .continuous)
                    waiter.notify()
                }
            }
            await waiter.wait()
        }
        for undo in registrations { undo() }
        // Once unregistered nobody can hand this select a value any more; one that did is the chosen case.
        if let (index, value) = waiter.claimed { return try operations[index].claimed(value) }
    }
}

/// One case of a ``select(_:)``: made by ``Receiver/onReceive(_:)``, ``Sender/onSend(_:_:)``,
/// ``SelectCase/timeout(_:_:)`` or ``SelectCase/default(_:)``.
public struct SelectCase<Result> {
    enum Kind {
        case operation(SelectOperation<Result>)
        case timeout(Duration, () throws -> Result)
        case fallback(() throws -> Result)
    }

    let kind: Kind

    init(_ kind: Kind) { self.kind = kind }

    /// Runs `body` when no other case became ready within `duration`.
    public static func timeout(_ duration: Duration, _ body: @escaping () throws -> Result) -> SelectCase {
        SelectCase(.timeout(duration, body))
    }

    /// Go's `default:`: runs `body` at once when no other case is ready, so the select never waits.
    public static func `default`(_ body: @escaping () throws -> Result) -> SelectCase {
        SelectCase(.fallback(body))
    }
}

/// What a channel end provides to ``select(_:)``.
struct SelectOperation<Result> {
    /// Performs the operation if it can complete without waiting, returning what finishes the case.
    var poll: () throws -> (() async throws -> Result)?
    /// Registers `waiter` with the channel so that it is notified (or handed a value) when the operation may
    /// proceed. Returns what unregisters it, or nil when the operation may proceed now.
    var register: (SelectWaiter, Int) -> (() -> Void)?
    /// Finishes the case with a value a sender handed over while the select waited (in-process receives).
    var claimed: (any Sendable) throws -> Result
}

/// Collects a ``select(_:)``'s cases: one case per line, and `if`, `if`-`else`, `switch` and `for` to add cases
/// conditionally or from a collection.
@resultBuilder
public enum SelectBuilder<Result> {
    /// One case.
    public static func buildExpression(_ expression: SelectCase<Result>) -> [SelectCase<Result>] { [expression] }
    /// The cases of a block, in order.
    public static func buildBlock(_ components: [SelectCase<Result>]...) -> [SelectCase<Result>] { components.flatMap { $0 } }
    /// The cases of an `if` without `else`: none when its condition is false.
    public static func buildOptional(_ component: [SelectCase<Result>]?) -> [SelectCase<Result>] { component ?? [] }
    /// The cases of the first branch of an `if`-`else` or `switch`.
    public static func buildEither(first component: [SelectCase<Result>]) -> [SelectCase<Result>] { component }
    /// The cases of the second branch of an `if`-`else` or `switch`.
    public static func buildEither(second component: [SelectCase<Result>]) -> [SelectCase<Result>] { component }
    /// The cases of a `for` loop: one set per element.
    public static func buildArray(_ components: [[SelectCase<Result>]]) -> [SelectCase<Result>] { components.flatMap { $0 } }
}

/// The waiting half of one ``select(_:)``: notified by any channel it is registered with, and claimable
/// once by an in-process sender handing it a value directly.
@usableFromInline
package final class SelectWaiter: Sendable {
    private struct State {
        var notified = false
        var claimed: (index: Int, value: any Sendable)?
        var continuation: CheckedContinuation<Void, Never>?
    }

    private let state = Lock(State())

    package init() {}

    /// Something changed on a channel this select waits on.
    @usableFromInline
    package func notify() {
        let c = state.withLock { s -> CheckedContinuation<Void, Never>? in
            s.notified = true
            defer { s.continuation = nil }
            return s.continuation
        }
        c?.resume()
    }

    /// Hands `value` to this select as the result of case `index`. Fails when it was already handed one.
    @usableFromInline
    package func claim(index: Int, value: any Sendable) -> Bool {
        let (ok, c) = state.withLock { s -> (Bool, CheckedContinuation<Void, Never>?) in
            guard s.claimed == nil else { return (false, nil) }
            s.claimed = (index, value)
            s.notified = true
            defer { s.continuation = nil }
            return (true, s.continuation)
        }
        c?.resume()
        return ok
    }

    /// Whether a value was handed over (the select is done).
    package var isCompleted: Bool { state.withLock { $0.claimed != nil } }

    var claimed: (index: Int, value: any Sendable)? { state.withLock { $0.claimed } }

    func reset() { state.withLock { $0.notified = false } }

    /// Sleeps until notified (returns at once if notified since the last reset) or cancelled.
    func wait() async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                let now = state.withLock { s -> Bool in
                    if s.notified || Task.isCancelled { return true }
                    s.continuation = c
                    return false
                }
                if now { c.resume() }
            }
        } onCancel: {
            notify()
        }
    }
}
