#if canImport(Glibc)
import Glibc
#endif
import CoreMetrics
import DequeModule
import InterprocessPlatform
import InterprocessSockets
import Logging
import ServiceLifecycle
import Synchronization

/// Accepts connections on an endpoint and hands out each one, handshake done, as a ``Connection``.
///
/// Handshakes run concurrently in the background, each bounded by the handshake timeout; at most 64 at once, and
/// a new client beyond that ends the oldest handshake in progress, so clients that connect and say nothing
/// cannot hold up a good one. A connection that fails its handshake (garbage,
/// wrong magic or version, a type or codec mismatch, a refused peer, a timeout) is told why in an error frame,
/// logged, and closed; the listener keeps serving. At most 16 ready connections wait for ``accept()``; beyond
/// that the listener stops accepting and the kernel's backlog holds new clients. When the process runs out of
/// file descriptors (or the system of buffers), the listener waits (10 ms, doubling up to 1 s) and accepts again
/// once connections have closed; it ends only when closed or on an error that concerns the listening socket.
///
/// `Listener` is also an `AsyncSequence` of connections, and a swift-service-lifecycle `Service`: ``run()``
/// serves until its task is cancelled or its service group shuts down gracefully, then stops accepting, lets
/// the connections it accepted finish (`ChannelOptions.drainTimeout`), closes those that did not, and returns
/// once its accept loop and every handshake have ended.
///
/// ```swift
/// let listener = try IPC.listen(on: .unix(path: "/run/worker.sock"), receiving: .json(Job.self))
/// let group = ServiceGroup(configuration: .init(
///     services: [Worker(listener: listener), listener],  // the listener stops first
///     gracefulShutdownSignals: [.sigterm], logger: logger))
/// try await group.run()
/// ```
///
/// The listener accepts from the moment it is made (a client may connect before anyone calls ``accept()`` or
/// ``run()``). ``close()`` only stops listening, as closing a listening socket does: the connections already
/// accepted belong to whoever took them. Only ``run()`` ends them.
public final class Listener<Out: MessageCodec, In: MessageCodec>: AsyncSequence, Sendable {
    /// An accepted connection, its handshake done.
    public typealias Element = Connection<Out.Value, In.Value>
    /// What accepting throws.
    public typealias Failure = IPCError

    /// The endpoint actually listened on (with the real port when port 0 was asked for).
    public let endpoint: Endpoint
    private let socket: SocketListener
    private let ready: ReadyQueue<Element>
    private let acceptTask: Lock<Task<Void, Never>?> = Lock(nil)
    private let handshakes: HandshakeSlots
    /// Every connection accepted and not yet closed (handshakes in progress too), for ``run()``'s shutdown.
    private let registry = ConnectionRegistry()
    private let open: ConnectionCount
    private let options: ChannelOptions
    private let lifecycle = Lock(Lifecycle())

    private struct Lifecycle {
        /// Accepting ended: a shutdown began, or ``close()`` was called.
        var stopped = false
        /// The task running ``run()`` was cancelled: no draining.
        var cancelled = false
        var waiters: [CheckedContinuation<Void, Never>] = []
    }

    init(socket: SocketListener, sending: Out, receiving: In, options: ChannelOptions) {
        self.endpoint = socket.endpoint
        self.socket = socket
        self.options = options
        self.handshakes = HandshakeSlots(capacity: Self.handshakesAtOnce)
        let ready = ReadyQueue<Element>(capacity: 16)
        self.ready = ready
        let endpoint = socket.endpoint
        let metricsFactory = options.metricsFactory ?? MetricsSystem.factory
        let open = ConnectionCount(gauge: Gauge(label: "interprocess_connections_open", dimensions: [("endpoint", "\(endpoint)")], factory: metricsFactory))
        self.open = open
        let handshakes = self.handshakes
        let registry = self.registry
        let task = Task {
            await withDiscardingTaskGroup { group in
                var evicting = false
                let limit = options.maxConnections ?? Self.defaultMaxConnections()
                let sessions = options.resume == nil ? nil : SessionTable()
                /// Counts a refused connection by the code of its refusal.
                let refused: @Sendable (IPCError.Code) -> Void = { code in
                    Counter(label: "interprocess_connections_refused_total", dimensions: [("endpoint", "\(endpoint)"), ("reason", "\(code)")], factory: metricsFactory).increment()
                }
                var refusing = false
                var backoff = Self.firstBackoff
                while true {
                    let accepted: ConnectedSocket
                    do throws(IPCError) {
                        accepted = try await socket.accept()
                        backoff = Self.firstBackoff
                    } catch where SocketListener.isExhaustion(error) {
                        // Out of descriptors or memory: the client waits in the kernel's backlog; try again later,
                        // when connections have closed (the listener must outlive whoever used them up).
                        if backoff == Self.firstBackoff {
                            options.logger.warning("listener on \(endpoint) cannot accept for now, retrying: \(error)")
                        }
                        try? await Task.sleep(for: backoff)
                        backoff = Swift.min(backoff * 2, Self.lastBackoff)
                        continue
                    } catch {
                        if error.code != .alreadyClosed {
                            options.logger.error("listener on \(endpoint) stopped: \(error)")
                        }
                        // Connections ready and not yet taken are still handed out.
                        ready.finish(error)
                        return
                    }
                    // At the limit a client is still accepted, to be told why it is refused; refusals in progress
                    // are bounded too, and beyond them a client is closed at once without a word.
                    let served = open.take(below: limit)
                    let slot = served ?? open.take(below: limit + Self.refusalBudget)
                    if served == nil, !refusing {
                        options.logger.warning("listener on \(endpoint) refuses new connections: \(limit) are open, its limit (ChannelOptions.maxConnections)")
                    }
                    refusing = served == nil
                    guard let slot else {
                        accepted.stream.close()
                        refused(.connectionRefused)
                        continue
                    }
                    let refusal = served == nil
                        ? IPCError(.connectionRefused, "the listener on \(endpoint) has \(limit) connections open, its limit (ChannelOptions.maxConnections); try again later")
                        : nil
                    let onClose: @Sendable () -> Void = { slot.release() }
                    let (handshake, evicted) = handshakes.begin(accepted.stream)
                    if let evicted {
                        // The oldest handshake in progress ends, so that clients that connect and say nothing
                        // cannot hold up a good one.
                        evicted.close()
                        if !evicting {
                            options.logger.warning("listener on \(endpoint) has \(Self.handshakesAtOnce) handshakes in progress; ending the oldest for each new client")
                        }
                    }
                    evicting = evicted != nil
                    group.addTask {
                        do {
                            let connection = try await IPC.establish(
                                accepted, endpoint: endpoint, listening: true, sending: sending, receiving: receiving,
                                options: options, role: "accepting on \(endpoint)", refusal: refusal, onClose: onClose,
                                resumable: sessions != nil, sessions: sessions, registry: registry)
                            // Ended to make room just as it completed: its stream is closed, nothing to hand out.
                            // (No connection: the client continued one it had, on this stream.) One that completes
                            // once the listener stopped handing out connections is dropped, which closes it.
                            if handshakes.end(handshake), let connection { _ = await ready.put(connection) }
                        } catch {
                            if handshakes.end(handshake) {
                                options.logger.warning("refused a connection on \(endpoint) from \(accepted.stream.peerDescription): \(error)")
                                refused((error as? IPCError)?.code ?? .protocolViolation)
                            } else {
                                options.logger.debug("ended the handshake of \(accepted.stream.peerDescription) on \(endpoint) (to make room for a newer client, or the listener stopped): \(error)")
                            }
                        }
                    }
                }
            }
        }
        acceptTask.withLock { $0 = task }
    }

    /// How long the accept loop waits before it tries again when the process is out of descriptors (doubling
    /// up to `lastBackoff` while it stays so): the pending clients wait in the backlog meanwhile.
    private static var firstBackoff: Duration { .milliseconds(10) }
    private static var lastBackoff: Duration { .seconds(1) }

    /// How many handshakes run at once; a client beyond that ends the oldest one.
    private static var handshakesAtOnce: Int { 64 }

    /// How many refusals may be in progress at once beyond the connection limit (each holds its descriptor
    /// while the client is told why).
    private static var refusalBudget: Int { 16 }

    /// A third of the descriptors the process may open beyond 128 and the refusal budget, at least 16 (see
    /// ``ChannelOptions/maxConnections``).
    private static func defaultMaxConnections() -> Int {
        var limit = rlimit()
        guard getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur != rlim_t.max else { return 1 << 20 }
        return Swift.max(16, (Int(clamping: limit.rlim_cur) - 128 - refusalBudget) / 3)
    }

    deinit { close() }

    /// The next connection whose handshake succeeded. Throws `alreadyClosed` after ``close()``.
    public func accept() async throws(IPCError) -> Element {
        try await ready.take()
    }

    /// ``accept()``, waiting at most `timeout`: throws `timeout` when no connection completed its handshake by then.
    public func accept(timeout: Duration) async throws(IPCError) -> Element {
        try await withDeadline(.now + timeout) { () async throws(IPCError) in try await self.accept() }
    }

    func acceptOrEnd() async throws(IPCError) -> Element? {
        do {
            return try await accept()
        } catch where error.code == .alreadyClosed {
            return nil
        }
    }

    /// Stops listening and removes the Unix socket file; handshakes in progress end. Connections already
    /// accepted stay open (their owners close them); a ``run()`` in progress then lets them finish and returns,
    /// as on a graceful shutdown.
    public func close() {
        stopAccepting(cancelled: false, shutdown: false)
    }

    /// Stops accepting: the listening socket closes, handshakes in progress end, and the connections ready
    /// and not yet taken are still handed out, after which ``accept()`` throws `alreadyClosed`.
    /// `shutdown`: a service shutdown (logged at info; a plain close at debug).
    private func stopAccepting(cancelled: Bool, shutdown: Bool) {
        let (first, waiters) = lifecycle.withLock { state in
            if cancelled { state.cancelled = true }
            defer { state.waiters.removeAll() }
            let first = !state.stopped
            state.stopped = true
            return (first, state.waiters)
        }
        if first {
            if shutdown {
                options.logger.info("listener on \(endpoint) stops accepting: shutting down")
            } else {
                options.logger.debug("listener on \(endpoint) closed")
            }
            socket.close()
            handshakes.endAll()
            ready.finish(IPCError(.alreadyClosed, shutdown ? "the listener was shut down" : "the listener is closed"))
        }
        for waiter in waiters { waiter.resume() }
    }

    private func waitUntilStopped() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let now = lifecycle.withLock { state in
                if state.stopped { return true }
                state.waiters.append(c)
                return false
            }
            if now { c.resume() }
        }
    }

    /// Iterates a listener: each step is an ``accept()``, and the sequence ends when the listener is closed or
    /// shut down (after the connections it had ready).
    public struct AsyncIterator: AsyncIteratorProtocol {
        let listener: Listener
        /// The next connection, or `nil` once the listener stopped.
        public mutating func next() async throws(IPCError) -> Element? { try await listener.acceptOrEnd() }
        /// The next connection, or `nil` once the listener stopped.
        public mutating func next(isolation actor: isolated (any Actor)?) async throws(IPCError) -> Element? {
            try await listener.acceptOrEnd()
        }
    }

    /// An iterator that accepts until the listener stops.
    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(listener: self) }
}

extension Listener: Service {
    /// Serves until the calling task is cancelled, its service group shuts down gracefully, or ``close()`` is
    /// called. Then it stops accepting (handshakes in progress end; connections ready and not yet taken are
    /// still handed out), waits until every connection it accepted has closed, at most
    /// `ChannelOptions.drainTimeout` (not at all when cancelled), closes the rest (their pending and later
    /// calls fail with `cancelled`, and each peer is told that the listener shut down), and returns once its
    /// accept loop and every handshake have ended. Nothing a connection's receiver took is lost; what a closed
    /// connection's peer sent and was not taken is reported to that peer in its error's `messagesInDoubt`.
    public func run() async {
        await withGracefulShutdownHandler {
            await withTaskCancellationHandler {
                await waitUntilStopped()
            } onCancel: {
                stopAccepting(cancelled: true, shutdown: true)
            }
        } onGracefulShutdown: {
            self.stopAccepting(cancelled: false, shutdown: true)
        }
        // Connections close on their own as their peers and owners finish: wait for the last one (or the drain
        // time, or a cancellation, which ends both waits).
        if !lifecycle.withLock({ $0.cancelled }) {
            let deadline = ContinuousClock.now + options.drainTimeout
            await withTaskGroup(of: Void.self) { group in
                group.addTask { await self.open.emptied() }
                group.addTask { try? await Task.sleep(until: deadline, clock: .continuous) }
                await group.next()
                group.cancelAll()
            }
        }
        let closing = registry.failAll(IPCError(.cancelled, "the listener on \(endpoint) shut down and closed this connection (it did not finish within ChannelOptions.drainTimeout, \(options.drainTimeout))"))
        ready.finish(IPCError(.alreadyClosed, "the listener was shut down"), dropping: true)
        await acceptTask.withLock { $0 }?.value
        options.logger.info("listener on \(endpoint) shut down", metadata: ["closed": "\(closing)"])
    }
}

/// The connections a listener accepted and that are not closed yet, held weakly.
final class ConnectionRegistry: Sendable {
    private final class Entry: Sendable {
        weak let core: ConnectionCore?
        init(_ core: ConnectionCore) { self.core = core }
    }
    private let entries = Lock<(next: UInt64, cores: [UInt64: Entry])>((0, [:]))

    /// A number for a connection about to be made (its close callback needs it before the connection exists).
    func reserve() -> UInt64 {
        entries.withLock { e in
            e.next += 1
            return e.next
        }
    }

    func add(_ core: ConnectionCore, as id: UInt64) {
        entries.withLock { $0.cores[id] = Entry(core) }
    }

    func remove(_ id: UInt64) {
        _ = entries.withLock { $0.cores.removeValue(forKey: id) }
    }

    /// Fails every connection still open with `error`, telling each peer; returns how many.
    func failAll(_ error: IPCError) -> Int {
        let cores = entries.withLock { e in
            defer { e.cores.removeAll() }
            return e.cores.values.compactMap(\.core)
        }
        for core in cores { core.fail(error, tellPeer: true) }
        return cores.count
    }
}

/// The handshakes in progress, oldest first. A new one beyond the capacity ends the oldest (its stream is
/// closed, so its handshake fails at once): a handshake waits at most for the handshake timeout, and clients that
/// connect and say nothing would otherwise keep every slot for that long, however many good clients wait.
final class HandshakeSlots: Sendable {
    private let running = Lock<(next: UInt64, list: Deque<(id: UInt64, stream: SocketStream)>)>((0, []))
    private let capacity: Int

    init(capacity: Int) { self.capacity = capacity }

    /// Registers a handshake; returns its id and the stream of the oldest one, to close, when there was no room.
    func begin(_ stream: SocketStream) -> (id: UInt64, evicted: SocketStream?) {
        running.withLock { r in
            r.next += 1
            let evicted = r.list.count >= capacity ? r.list.removeFirst().stream : nil
            r.list.append((r.next, stream))
            return (r.next, evicted)
        }
    }

    /// Ends every handshake in progress (their streams close, so they fail at once).
    func endAll() {
        let streams = running.withLock { r in
            defer { r.list.removeAll() }
            return r.list.map(\.stream)
        }
        for stream in streams { stream.close() }
    }

    /// The handshake ended; false when it had been evicted.
    @discardableResult
    func end(_ id: UInt64) -> Bool {
        running.withLock { r in
            guard let i = r.list.firstIndex(where: { $0.id == id }) else { return false }
            r.list.remove(at: i)
            return true
        }
    }
}

/// How many connections a listener has open (handshakes in progress included), reported to `gauge` as it changes.
final class ConnectionCount: Sendable {
    private let open = Atomic<Int>(0)
    private let gauge: Gauge
    /// Tasks in ``emptied()``, resumed when the count reaches 0.
    private let waiters = Lock<(next: UInt64, waiting: [UInt64: CheckedContinuation<Void, Never>])>((0, [:]))

    init(gauge: Gauge) { self.gauge = gauge }

    var count: Int { open.load(ordering: .relaxed) }

    /// Returns once no connection is open (at once if none is), or when the calling task is cancelled.
    func emptied() async {
        let id = waiters.withLock { state in
            state.next += 1
            return state.next
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                // Checked under the lock that `released()` takes after its decrement: a count that reaches 0
                // after this look finds the continuation registered.
                let now = waiters.withLock { state -> Bool in
                    if open.load(ordering: .relaxed) == 0 || Task.isCancelled { return true }
                    state.waiting[id] = continuation
                    return false
                }
                if now { continuation.resume() }
            }
        } onCancel: {
            waiters.withLock { $0.waiting.removeValue(forKey: id) }?.resume()
        }
    }

    /// One connection closed.
    private func released() {
        let now = open.subtract(1, ordering: .relaxed).newValue
        gauge.record(now)
        guard now == 0 else { return }
        let waiting = waiters.withLock { state in
            defer { state.waiting.removeAll() }
            return Array(state.waiting.values)
        }
        for continuation in waiting { continuation.resume() }
    }

    /// A slot for one more connection, or nil when `bound` are open. Only the accept loop takes slots, so the
    /// check and the increment need not be one step.
    func take(below bound: Int) -> Slot? {
        guard open.load(ordering: .relaxed) < bound else { return nil }
        gauge.record(open.add(1, ordering: .relaxed).newValue)
        return Slot(self)
    }

    /// One connection's place in the count, given back once: when its stream closes, or when the connection is
    /// let go without having been set up.
    final class Slot: Sendable {
        private let count: ConnectionCount
        private let released = Atomic(false)
        init(_ count: ConnectionCount) { self.count = count }
        func release() {
            if !released.exchange(true, ordering: .relaxed) { count.released() }
        }
        deinit { release() }
    }
}

private enum PutStep<T: Sendable> { case done(CheckedContinuation<Result<T, IPCError>, Never>?), full, refused }

/// A small bounded queue: `put` suspends while full, `take` while empty.
final class ReadyQueue<T: Sendable>: Sendable {
    private struct State {
        var items = Deque<T>()
        var takers = Deque<(id: UInt64, continuation: CheckedContinuation<Result<T, IPCError>, Never>)>()
        var nextID: UInt64 = 0
        var putters = Deque<CheckedContinuation<Void, Never>>()
        var finished: IPCError?
    }
    private let state = Lock(State())
    private let capacity: Int

    init(capacity: Int) { self.capacity = capacity }

    /// Adds an item, waiting while the queue is full; false (the item dropped) once the queue is finished.
    func put(_ item: T) async -> Bool {
        while true {
            let step = state.withLock { s -> PutStep<T> in
                if s.finished != nil { return .refused }
                if let taker = s.takers.popFirst() { return .done(taker.continuation) }
                if s.items.count < capacity {
                    s.items.append(item)
                    return .done(nil)
                }
                return .full
            }
            switch step {
            case .done(let taker):
                taker?.resume(returning: .success(item))
                return true
            case .refused:
                return false
            case .full:
                await withCheckedContinuation { c in
                    let resume = state.withLock { s -> Bool in
                        if s.items.count < capacity || s.finished != nil { return true }
                        s.putters.append(c)
                        return false
                    }
                    if resume { c.resume() }
                }
            }
        }
    }

    /// Waits for an item. Cancellation ends the wait with a `cancelled` error and takes nothing.
    func take() async throws(IPCError) -> T {
        let id = state.withLock { s -> UInt64 in
            s.nextID += 1
            return s.nextID
        }
        let result = await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<Result<T, IPCError>, Never>) in
                let (now, putter) = state.withLock { s -> (Result<T, IPCError>?, CheckedContinuation<Void, Never>?) in
                    if let item = s.items.popFirst() { return (.success(item), s.putters.popFirst()) }
                    if let error = s.finished { return (.failure(error), nil) }
                    if Task.isCancelled { return (.failure(IPCError(.cancelled, "accept was cancelled")), nil) }
                    s.takers.append((id, c))
                    return (nil, nil)
                }
                putter?.resume()
                if let now { c.resume(returning: now) }
            }
        } onCancel: {
            let taker = state.withLock { s -> CheckedContinuation<Result<T, IPCError>, Never>? in
                guard let i = s.takers.firstIndex(where: { $0.id == id }) else { return nil }
                return s.takers.remove(at: i).continuation
            }
            taker?.resume(returning: .failure(IPCError(.cancelled, "accept was cancelled")))
        }
        return try result.get()
    }

    /// Takes no more items: `put` refuses them from now on, and `take` fails with `error` once those it holds
    /// were taken (or at once, `dropping` them).
    func finish(_ error: IPCError, dropping: Bool = false) {
        let (takers, putters, dropped) = state.withLock { s in
            if s.finished == nil { s.finished = error }
            // Takers wait only while the queue is empty, so each of them fails.
            defer {
                s.takers.removeAll()
                s.putters.removeAll()
                if dropping { s.items.removeAll() }
            }
            return (s.takers, s.putters, dropping ? Array(s.items) : [])
        }
        for t in takers { t.continuation.resume(returning: .failure(error)) }
        for p in putters { p.resume() }
        _ = dropped  // released here, outside the lock
    }
}
