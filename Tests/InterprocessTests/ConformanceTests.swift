#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Interprocess
import InterprocessCore
import Testing

/// The kinds of channel every rule of Go's channel semantics is checked against. Socket channels have both
/// ends in the test process, talking over a real socket; the cross-process suites run the same rules against a
/// second process. `inProcessLocked` is an in-process channel whose buffer stays under its lock, as it does above
/// `LocalChannel.ringCapacityLimit` (`inProcess` has the lock-free ring at these capacities).
enum ChannelKind: String, CaseIterable, CustomTestStringConvertible, Sendable {
    case inProcess, inProcessLocked, unix, tcp, sharedMemory
    var testDescription: String { rawValue }
}

/// One channel of `kind` with the given capacity, carrying values with `codec` (ignored in process).
func makeChannel<C: MessageCodec>(_ kind: ChannelKind, _ codec: C, capacity: Int, maxFrameSize: Int? = nil) async throws -> (sender: Sender<C.Value>, receiver: Receiver<C.Value>) {
    let endpoint: Endpoint
    switch kind {
    case .inProcess: return Channel<C.Value>.make(capacity: capacity)
    case .inProcessLocked:
        let channel = LocalChannel<C.Value>(capacity: capacity, ring: false)
        return (Sender(local: channel), Receiver(local: channel))
    case .unix: endpoint = .unix(path: temporaryDirectory() + "/c.sock")
    case .tcp: endpoint = .tcp(host: "127.0.0.1", port: 0)
    case .sharedMemory: endpoint = .sharedMemory(name: uniqueName())
    }
    var options = ChannelOptions()
    options.capacity = capacity
    if let maxFrameSize { options.maxFrameSize = maxFrameSize }
    let listener = try IPC.listen(on: endpoint, receiving: codec, options: options)
    defer { listener.close() }
    let accepted = Task { try await listener.accept().receiver }
    let sender = try await IPC.connect(to: listener.endpoint, sending: codec, options: options)
    let receiver = try await within(20) { try await accepted.value }
    return (sender, receiver)
}

/// Set by a task when something happened (a send returned), read by the test.
final class Flag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    func set() { lock.withLock { value = true } }
    var isSet: Bool { lock.withLock { value } }
}

/// Waits up to `milliseconds` for `flag` and reports whether it was set. Used only to check that something
/// does *not* happen (a send that must stay suspended); a correct implementation passes whatever the timing.
func staysUnset(_ flag: Flag, milliseconds: Int = 300) async -> Bool {
    let deadline = ContinuousClock.now + .milliseconds(milliseconds)
    while ContinuousClock.now < deadline {
        if flag.isSet { return false }
        try? await Task.sleep(for: .milliseconds(10))
    }
    return !flag.isSet
}

@Suite("Channel semantics on every transport", .timeLimit(.minutes(2)))
struct ConformanceTests {
    @Test("values arrive in order, exactly once", arguments: ChannelKind.allCases)
    func ordering(_ kind: ChannelKind) async throws {
        let (tx, rx) = try await makeChannel(kind, .raw, capacity: 16)
        let count = scaledCount(20_000)
        let producer = Task {
            for i in 0..<count { try await tx.send(numbered(UInt64(i))) }
            try await tx.close()
        }
        let next = try await within(60) {
            var next: UInt64 = 0
            while let m = try await rx.receive() {
                #expect(index(m) == next)
                if index(m) != next { break }
                next += 1
            }
            return next
        }
        try await producer.value
        #expect(next == UInt64(count))
    }

    @Test("capacity N: at most N values sent and not yet taken", arguments: ChannelKind.allCases)
    func capacityLimit(_ kind: ChannelKind) async throws {
        let capacity = 4
        let (tx, rx) = try await makeChannel(kind, .raw, capacity: capacity)
        for i in 0..<capacity { #expect(try tx.trySend(numbered(UInt64(i)))) }
        #expect(try !tx.trySend(numbered(99)), "a send beyond the capacity must not complete")
        let sent = Flag()
        let blocked = Task {
            try await tx.send(numbered(UInt64(capacity)))
            sent.set()
        }
        #expect(await staysUnset(sent), "send returned while the channel held \(capacity) untaken values")
        try await within(20) { () async throws in
            for i in 0...capacity { #expect(index(try await rx.receive()!) == UInt64(i)) }
        }
        try await within(20) { try await blocked.value }
        #expect(sent.isSet)
    }

    @Test("capacity 0: send returns only after the receiver took the value", arguments: ChannelKind.allCases)
    func rendezvous(_ kind: ChannelKind) async throws {
        let (tx, rx) = try await makeChannel(kind, .raw, capacity: 0)
        #expect(try !tx.trySend(numbered(7)), "trySend on a rendezvous with no waiting receiver must fail")
        for round in 0..<3 {
            let sent = Flag()
            let sending = Task {
                try await tx.send(numbered(UInt64(round)))
                sent.set()
            }
            #expect(await staysUnset(sent, milliseconds: 200), "a rendezvous send returned before anyone received")
            let value = try await within(20) { try await rx.receive() }
            #expect(value.map(index) == UInt64(round))
            try await within(20) { try await sending.value }
        }
    }

    @Test("close: every value sent before it is received, then the end, repeatedly", arguments: ChannelKind.allCases)
    func closeAndDrain(_ kind: ChannelKind) async throws {
        let (tx, rx) = try await makeChannel(kind, .raw, capacity: 64)
        for i in 0..<50 { try await tx.send(numbered(UInt64(i))) }
        try await tx.close()
        try await within(20) { () async throws in
            for i in 0..<50 { #expect(try await rx.receive().map(index) == UInt64(i)) }
            #expect(try await rx.receive() == nil)
            #expect(try await rx.receive() == nil)
            #expect(try rx.tryReceive() == .some(nil))
        }
    }

    @Test("send after close and a second close throw", arguments: ChannelKind.allCases)
    func sendAfterClose(_ kind: ChannelKind) async throws {
        let (tx, rx) = try await makeChannel(kind, .raw, capacity: 4)
        try await tx.send(numbered(1))
        try await tx.close()
        let error = await #expect(throws: IPCError.self) { try await tx.send(numbered(2)) }
        #expect(error?.code == .sendOnClosedChannel)
        #expect(throws: IPCError.self) { _ = try tx.trySend(numbered(3)) }
        let twice = await #expect(throws: IPCError.self) { try await tx.close() }
        #expect(twice?.code == .alreadyClosed)
        try await within(20) { () async throws in
            #expect(try await rx.receive().map(index) == 1)
            #expect(try await rx.receive() == nil)
        }
    }

    @Test("a receiver that goes away fails pending and later sends", arguments: ChannelKind.allCases)
    func receiverGone(_ kind: ChannelKind) async throws {
        var pair: (sender: Sender<[UInt8]>, receiver: Receiver<[UInt8]>)? = try await makeChannel(kind, .raw, capacity: 2)
        let tx = pair!.sender
        try await tx.send(numbered(0))
        try await tx.send(numbered(1))
        let pending = Task { try await tx.send(numbered(2)) }
        pair = nil  // drops the only reference to the receiver
        let error = try await within(20) { () async -> IPCError? in
            do { try await pending.value } catch { return error as? IPCError }
            return nil
        }
        #expect(error?.code == .receiverGone, "got \(String(describing: error))")
        let later = try await within(20) { () async -> IPCError? in
            do { try await tx.send(numbered(3)) } catch { return error as? IPCError }
            return nil
        }
        #expect(later?.code == .receiverGone)
    }

    @Test("select picks among ready cases uniformly and leaves the others untouched", arguments: ChannelKind.allCases)
    func selectFairness(_ kind: ChannelKind) async throws {
        let perChannel = 1000
        let (txA, rxA) = try await makeChannel(kind, .raw, capacity: perChannel)
        let (txB, rxB) = try await makeChannel(kind, .raw, capacity: perChannel)
        for i in 0..<perChannel {
            try await txA.send(numbered(UInt64(i)))
            try await txB.send(numbered(UInt64(i)))
        }
        try await txA.close()
        try await txB.close()
        let rounds = 1000
        var fromA = 0, fromB = 0
        var nextA: UInt64 = 0, nextB: UInt64 = 0
        for _ in 0..<rounds {
            let pickedA = try await within(20) {
                try await select {
                    rxA.onReceive { v in (true, v.map(index)) }
                    rxB.onReceive { v in (false, v.map(index)) }
                }
            }
            if pickedA.0 {
                #expect(pickedA.1 == nextA)
                nextA += 1
                fromA += 1
            } else {
                #expect(pickedA.1 == nextB)
                nextB += 1
                fromB += 1
            }
        }
        // Binomial(1000, 1/2): a share below 30% is more than 12 standard deviations out.
        #expect(fromA > 300 && fromB > 300, "A \(fromA), B \(fromB)")
        // Cases not chosen took nothing: what is left is exactly what select did not take.
        let (firstA, firstB) = (nextA, nextB)
        let (leftA, leftB) = try await within(20) {
            var leftA = 0, leftB = 0
            while let m = try await rxA.receive() {
                #expect(index(m) == firstA + UInt64(leftA))
                leftA += 1
            }
            while let m = try await rxB.receive() {
                #expect(index(m) == firstB + UInt64(leftB))
                leftB += 1
            }
            return (leftA, leftB)
        }
        #expect(Int(nextA) + leftA == perChannel)
        #expect(Int(nextB) + leftB == perChannel)
    }

    @Test("select with a timeout runs it when nothing is ready, and takes nothing", arguments: ChannelKind.allCases)
    func selectTimeout(_ kind: ChannelKind) async throws {
        let (tx, rx) = try await makeChannel(kind, .raw, capacity: 4)
        let start = ContinuousClock.now
        let outcome = try await within(20) {
            try await select {
                rx.onReceive { _ in "received" }
                SelectCase.timeout(.milliseconds(100)) { "timeout" }
            }
        }
        #expect(outcome == "timeout")
        #expect(ContinuousClock.now - start >= .milliseconds(100))
        try await tx.send(numbered(5))
        let value = try await within(20) { try await rx.receive(timeout: .seconds(10)) }
        #expect(value.map(index) == 5)
        let timedOut = await #expect(throws: IPCError.self) { _ = try await rx.receive(timeout: .milliseconds(50)) }
        #expect(timedOut?.code == .timeout)
        try await tx.send(numbered(6))
        #expect(try await within(20) { try await rx.receive() }.map(index) == 6)
    }

    @Test("select with a default never waits; a ready case wins over it", arguments: ChannelKind.allCases)
    func selectDefault(_ kind: ChannelKind) async throws {
        let (tx, rx) = try await makeChannel(kind, .raw, capacity: 4)
        let (fullTx, fullRx) = try await makeChannel(kind, .raw, capacity: 1)
        try await fullTx.send(numbered(100))
        let nothing = try await select {
            rx.onReceive { _ in "received" }
            fullTx.onSend(numbered(101)) { "sent" }
            SelectCase.default { "default" }
        }
        #expect(nothing == "default")
        try await tx.send(numbered(1))
        let picked = try await within(20) {
            var outcome = "default"
            // Over a socket the value may still be on its way: poll until it is here (bounded by `within`).
            while outcome == "default" {
                outcome = try await select {
                    rx.onReceive { v in "received \(v.map(index) ?? 999)" }
                    fullTx.onSend(numbered(101)) { "sent" }
                    SelectCase.default { "default" }
                }
                if outcome == "default" { await Task.yield() }
            }
            return outcome
        }
        #expect(picked == "received 1")
        // The send case was never chosen: the full channel holds only its first value.
        try await fullTx.close()
        try await within(20) { () async throws in
            #expect(try await fullRx.receive().map(index) == 100)
            #expect(try await fullRx.receive() == nil)
        }
    }

    @Test("select mixes sends and receives; only the chosen one happens", arguments: ChannelKind.allCases)
    func selectMixed(_ kind: ChannelKind) async throws {
        let (outTx, outRx) = try await makeChannel(kind, .raw, capacity: 1)
        let (inTx, inRx) = try await makeChannel(kind, .raw, capacity: 4)
        // outTx has room: the send case is ready, the receive case is not.
        let first = try await within(20) {
            try await select {
                outTx.onSend(numbered(1)) { "sent" }
                inRx.onReceive { _ in "received" }
            }
        }
        #expect(first == "sent")
        // Now outTx is full; a value on inTx makes the receive case the only ready one.
        try await inTx.send(numbered(2))
        let second = try await within(20) {
            try await select {
                outTx.onSend(numbered(3)) { "sent" }
                inRx.onReceive { v in "received \(v.map(index) ?? 999)" }
            }
        }
        #expect(second == "received 2")
        try await outTx.close()
        try await within(20) { () async throws in
            #expect(try await outRx.receive().map(index) == 1)
            #expect(try await outRx.receive() == nil, "the send case that was not chosen must not have sent")
        }
    }

    @Test("cancelling receives and selects loses no value", arguments: ChannelKind.allCases)
    func cancellationLosesNothing(_ kind: ChannelKind) async throws {
        let (tx, rx) = try await makeChannel(kind, .raw, capacity: 8)
        let count = scaledCount(2000)
        let producer = Task {
            for i in 0..<count { try await tx.send(numbered(UInt64(i))) }
            try await tx.close()
        }
        let received = try await within(60) {
            var received: [UInt64] = []
            var round = 0
            while true {
                round += 1
                // Every third attempt is cancelled almost at once, at whatever point it has reached.
                let attempt = Task { [round] () async throws -> [UInt8]?? in
                    if round % 2 == 0 {
                        return try await select {
                            rx.onReceive { Optional($0) }
                        }
                    }
                    return .some(try await rx.receive())
                }
                if round % 3 == 0 { attempt.cancel() }
                do {
                    guard let step = try await attempt.value else { continue }
                    guard let m = step else { break }
                    received.append(index(m))
                } catch let error as IPCError where error.code == .cancelled {
                    continue
                }
            }
            return received
        }
        try await producer.value
        #expect(received == (0..<UInt64(count)).map { $0 }, "received \(received.count) of \(count)")
    }

    @Test("many tasks sending on one channel", arguments: ChannelKind.allCases)
    func concurrentSenders(_ kind: ChannelKind) async throws {
        let (tx, rx) = try await makeChannel(kind, .raw, capacity: 16)
        let senders = 8, each = 1000
        let producers = Task {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for s in 0..<senders {
                    group.addTask {
                        for i in 0..<each { try await tx.send(numbered(UInt64(s << 32 | i))) }
                    }
                }
                try await group.waitForAll()
            }
            try await tx.close()
        }
        let total = try await within(60) {
            var next = [UInt64](repeating: 0, count: senders)
            var total = 0
            while let m = try await rx.receive() {
                let v = index(m)
                let s = Int(v >> 32)
                #expect(v & 0xFFFF_FFFF == next[s], "sender \(s) out of order")
                next[s] += 1
                total += 1
            }
            return total
        }
        try await producers.value
        #expect(total == senders * each)
    }

    struct Job: Codable, Equatable, Sendable {
        var id: Int
        var name: String
        var weights: [Double]
        var tag: String?
    }

    @Test("values of several codecs", arguments: ChannelKind.allCases)
    func codecs(_ kind: ChannelKind) async throws {
        let jobs = (0..<100).map { Job(id: $0, name: "job \($0) ✓", weights: [Double($0), 0.5], tag: $0 % 2 == 0 ? nil : "odd") }
        for codec in [JSONCodec(Job.self), BinaryCodec(Job.self)] as [any MessageCodec<Job>] {
            let (tx, rx) = try await makeChannel(kind, codec, capacity: 8)
            let producer = Task {
                for job in jobs { try await tx.send(job) }
                try await tx.close()
            }
            let got = try await within(20) {
                var got: [Job] = []
                while let job = try await rx.receive() { got.append(job) }
                return got
            }
            try await producer.value
            #expect(got == jobs, "\(codec.name)")
        }
        let (tx, rx) = try await makeChannel(kind, .utf8, capacity: 0)
        let producer = Task {
            try await tx.send("Hello from process 1!")
            try await tx.close()
        }
        #expect(try await within(20) { try await rx.receive() } == "Hello from process 1!")
        try await producer.value
    }
}

@Suite("Select across transports", .timeLimit(.minutes(2)))
struct SelectAcrossTransportsTests {
    @Test("one select over an in-process, a Unix socket, a TCP and a shared-memory channel")
    func mixedTransports() async throws {
        let channels = [
            try await makeChannel(.inProcess, .raw, capacity: 4),
            try await makeChannel(.unix, .raw, capacity: 4),
            try await makeChannel(.tcp, .raw, capacity: 4),
            try await makeChannel(.sharedMemory, .raw, capacity: 4),
        ]
        for (k, pair) in channels.enumerated() {
            let sending = Task { try await pair.sender.send(numbered(UInt64(k))) }
            let picked = try await within(20) {
                try await select {
                    channels[0].receiver.onReceive { v in (0, v.map(index)) }
                    channels[1].receiver.onReceive { v in (1, v.map(index)) }
                    channels[2].receiver.onReceive { v in (2, v.map(index)) }
                    channels[3].receiver.onReceive { v in (3, v.map(index)) }
                }
            }
            #expect(picked.0 == k && picked.1 == UInt64(k))
            try await sending.value
        }
    }

    @Test("a select send meets a select receive on an in-process rendezvous")
    func selectMeetsSelect() async throws {
        let (tx, rx) = Channel<Int>.make(capacity: 0)
        // Two channels nobody else uses, so each select has a case that never becomes ready.
        let (quietTx, quietRx) = Channel<Int>.make(capacity: 0)
        let (deafTx, deafRx) = Channel<Int>.make(capacity: 0)
        defer { _ = (quietTx, deafRx) }
        for round in 0..<200 {
            async let sent: String = select {
                tx.onSend(round) { "sent" }
                quietRx.onReceive { _ in "quiet" }
            }
            let got = try await within(20) {
                try await select {
                    rx.onReceive { $0 }
                    deafTx.onSend(-1) { nil }
                }
            }
            #expect(got == round)
            #expect(try await sent == "sent")
        }
    }
}

/// Go's channel rules that only a channel between two ends of a connection can get wrong: what one end learns
/// from the other (room, a waiting receiver) and when a capacity-0 send may happen. Every transport.
@Suite("Channel semantics across a connection", .timeLimit(.minutes(2)))
struct CrossConnectionSemanticsTests {
    @Test("a non-blocking send sees the slot the receiver freed", arguments: ChannelKind.allCases)
    func trySendSeesFreedSlot(_ kind: ChannelKind) async throws {
        let (tx, rx) = try await makeChannel(kind, .raw, capacity: 1)
        #expect(try tx.trySend(numbered(1)))
        #expect(try !tx.trySend(numbered(2)), "the channel holds one untaken value")
        #expect(try await within(20) { try await rx.receive() }.map(index) == 1)
        // The receiver's acknowledgement is on its way: trySend must see it once it arrives (it is never read
        // when nothing polls the connection).
        try await within(20) { () async throws in
            while try !tx.trySend(numbered(2)) {
                try Task.checkCancellation()
                await Task.yield()
            }
        }
        #expect(try await within(20) { try await rx.receive() }.map(index) == 2)
        let outcome = try await within(20) { () async throws -> String in
            while true {
                let picked = try await select {
                    tx.onSend(numbered(3)) { "sent" }
                    SelectCase.default { "default" }
                }
                if picked == "sent" { return picked }
                if try rx.tryReceive() != nil { return "took a value nobody sent" }
                try Task.checkCancellation()
                await Task.yield()
            }
        }
        #expect(outcome == "sent")
        #expect(try await within(20) { try await rx.receive() }.map(index) == 3)
    }

    @Test("trySend on a closed capacity-0 channel throws sendOnClosedChannel", arguments: ChannelKind.allCases)
    func trySendOnClosedRendezvous(_ kind: ChannelKind) async throws {
        let (tx, rx) = try await makeChannel(kind, .raw, capacity: 0)
        try await tx.close()
        let error = #expect(throws: IPCError.self) { _ = try tx.trySend(numbered(1)) }
        #expect(error?.code == .sendOnClosedChannel)
        #expect(try await within(20) { try await rx.receive() } == nil)
    }

    @Test("a capacity-0 send still waiting when its sender is closed fails, and its value is not delivered", arguments: ChannelKind.allCases)
    func rendezvousSendFailsOnClose(_ kind: ChannelKind) async throws {
        let (tx, rx) = try await makeChannel(kind, .raw, capacity: 0)
        let returned = Flag()
        let sending = Task { () async -> IPCError? in
            defer { returned.set() }
            do { try await tx.send(numbered(1)) } catch { return error as? IPCError }
            return nil
        }
        #expect(await staysUnset(returned, milliseconds: 200), "a rendezvous send returned with nobody receiving")
        try await tx.close()
        // Nobody received: whether the send was waiting (as it almost surely was by now) or not, it fails.
        let error = try await within(20) { await sending.value }
        #expect(error?.code == .sendOnClosedChannel, "got \(String(describing: error))")
        #expect(try await within(20) { try await rx.receive() } == nil, "the value of a failed send was delivered")
    }

    @Test("a select's send case on capacity 0 is ready only while a receiver waits", arguments: ChannelKind.allCases)
    func rendezvousSendCaseNeedsReceiver(_ kind: ChannelKind) async throws {
        let (tx, rx) = try await makeChannel(kind, .raw, capacity: 0)
        let idle = try await within(20) {
            try await select {
                tx.onSend(numbered(1)) { "sent" }
                SelectCase.timeout(.milliseconds(100)) { "timeout" }
            }
        }
        #expect(idle == "timeout", "a send case was chosen with nobody receiving")
        // A receive that timed out no longer waits: the send case is not ready again.
        let timedOut = await #expect(throws: IPCError.self) { _ = try await rx.receive(timeout: .milliseconds(50)) }
        #expect(timedOut?.code == .timeout)
        let afterTimeout = try await within(20) {
            try await select {
                tx.onSend(numbered(2)) { "sent" }
                SelectCase.timeout(.milliseconds(100)) { "timeout" }
            }
        }
        #expect(afterTimeout == "timeout", "a send case was chosen after the receive had given up")
        for round in 0..<3 {
            let receiving = Task { try await rx.receive() }
            let picked = try await within(20) {
                try await select {
                    tx.onSend(numbered(UInt64(10 + round))) { "sent" }
                    SelectCase.timeout(.seconds(15)) { "timeout" }
                }
            }
            #expect(picked == "sent")
            #expect(try await within(20) { try await receiving.value }.map(index) == UInt64(10 + round))
        }
        // A select's receive case waits as a receive does: a plain send meets it.
        let selecting = Task {
            try await select {
                rx.onReceive { $0.map(index) }
                SelectCase.timeout(.seconds(15)) { nil }
            }
        }
        try await within(20) { try await tx.send(numbered(20)) }
        #expect(try await within(20) { try await selecting.value } == 20)
    }
}

/// Several tasks on one end of a connection: the reader role passes between them and the I/O thread, and a task
/// that waits must never be left with nobody reading for it. Each round is bounded, so a lost wake-up fails the
/// test instead of hanging it.
@Suite("Several tasks on one end", .timeLimit(.minutes(3)))
struct SharedEndTests {
    /// 150 rounds in which two child tasks `wait` while two values are sent (`send(value)`): each task must get
    /// one of them. Child tasks, so that the time limit cancels one left waiting.
    func twoWaiterRounds(wait: @escaping @Sendable () async throws -> UInt64?, send: @escaping @Sendable (UInt64) async throws -> Void) async throws {
        for round in 0..<150 {
            let base = UInt64(round * 2)
            // 60 s under a sanitizer: there, beside every other suite, three rounds once went past 10 s at once.
            let got = try await within(sanitized ? 60 : 10) {
                try await withThrowingTaskGroup(of: UInt64?.self) { group in
                    group.addTask { try await wait() }
                    group.addTask { try await wait() }
                    try await send(base)
                    try await send(base + 1)
                    var got: Set<UInt64?> = []
                    for try await value in group { got.insert(value) }
                    return got
                }
            }
            #expect(got == [base, base + 1], "round \(round)")
        }
    }

    @Test("two tasks waiting in receive both get a value", arguments: ChannelKind.allCases)
    func twoReceivers(_ kind: ChannelKind) async throws {
        let (tx, rx) = try await makeChannel(kind, .raw, capacity: 4)
        try await twoWaiterRounds(wait: { try await rx.receive().map(index) }, send: { try await tx.send(numbered($0)) })
    }

    @Test("two tasks waiting in a select over two channels both get a value", arguments: ChannelKind.allCases)
    func twoSelects(_ kind: ChannelKind) async throws {
        let (txA, rxA) = try await makeChannel(kind, .raw, capacity: 4)
        let (txB, rxB) = try await makeChannel(kind, .raw, capacity: 4)
        try await twoWaiterRounds(
            wait: {
                try await select {
                    rxA.onReceive { $0.map(index) }
                    rxB.onReceive { $0.map(index) }
                }
            },
            // Even values on one channel, odd ones on the other.
            send: { value in try await (value % 2 == 0 ? txA : txB).send(numbered(value)) })
    }

    @Test("tasks selecting over two channels under load take every value once", arguments: ChannelKind.allCases)
    func selectUnderLoad(_ kind: ChannelKind) async throws {
        let (txA, rxA) = try await makeChannel(kind, .raw, capacity: 8)
        let (txB, rxB) = try await makeChannel(kind, .raw, capacity: 8)
        let perChannel: UInt64 = 3_000
        let received = try await within(90) { () async throws -> [UInt64] in
            try await withThrowingTaskGroup(of: [UInt64].self) { group in
                group.addTask {
                    for i in 0..<perChannel { try await txA.send(numbered(i)) }
                    try await txA.close()
                    return []
                }
                group.addTask {
                    for i in 0..<perChannel { try await txB.send(numbered(perChannel + i)) }
                    try await txB.close()
                    return []
                }
                for _ in 0..<3 {
                    group.addTask {
                        var taken: [UInt64] = []
                        var open = (a: true, b: true)
                        while open.a || open.b {
                            try Task.checkCancellation()
                            let picked: UInt64?? = try await select {
                                if open.a { rxA.onReceive { $0.map(index).map { .some($0) } ?? .some(nil) } }
                                if open.b { rxB.onReceive { $0.map(index).map { .some($0) } ?? .none } }
                            }
                            switch picked {
                            case .some(.some(let value)): taken.append(value)
                            case .some(.none): open.a = false
                            case .none: open.b = false
                            }
                        }
                        return taken
                    }
                }
                var all: [UInt64] = []
                for try await part in group { all += part }
                return all
            }
        }
        #expect(received.count == Int(2 * perChannel))
        #expect(Set(received).count == Int(2 * perChannel), "a value was taken twice")
    }

    @Test("select with a default never takes it while the channel holds a value", arguments: ChannelKind.allCases)
    func defaultWhileAnotherTaskReceives(_ kind: ChannelKind) async throws {
        let total: UInt64 = 2_000
        let (tx, rx) = try await makeChannel(kind, .raw, capacity: Int(total))
        // Everything is sent first and the channel closed: from then on the channel always holds a value or is
        // closed, so a select with a default must always take a value or the end.
        let sending = Task {
            for i in 0..<total { try await tx.send(numbered(i)) }
            try await tx.close()
        }
        let outcome = try await within(60) { () async throws -> (taken: Int, defaults: Int) in
            try await sending.value
            return try await withThrowingTaskGroup(of: (Int, Int).self) { group in
                group.addTask {
                    var taken = 0
                    while try await rx.receive() != nil { taken += 1 }
                    return (taken, 0)
                }
                group.addTask {
                    var taken = 0, defaults = 0
                    polling: while true {
                        try Task.checkCancellation()
                        let picked: Int = try await select {
                            rx.onReceive { $0 == nil ? 0 : 1 }
                            SelectCase.default { 2 }
                        }
                        switch picked {
                        case 0: break polling
                        case 1: taken += 1
                        default: defaults += 1
                        }
                    }
                    return (taken, defaults)
                }
                var taken = 0, defaults = 0
                for try await (t, d) in group {
                    taken += t
                    defaults += d
                }
                return (taken, defaults)
            }
        }
        #expect(outcome.taken == Int(total))
        #expect(outcome.defaults == 0, "default taken \(outcome.defaults) times while values were waiting")
    }
}
