import Interprocess
import InterprocessCore
import Synchronization
import Testing

/// Counts the instances alive, so that a test sees whether a channel released every value it held.
final class Tracked: Sendable {
    static let alive = Atomic<Int>(0)
    let id: Int
    init(_ id: Int) {
        self.id = id
        Self.alive.add(1, ordering: .relaxed)
    }
    deinit { Self.alive.subtract(1, ordering: .relaxed) }
}

/// The in-process channel's two buffers (the lock-free ring up to `LocalChannel.ringCapacityLimit`, the locked deque
/// above it, and either when asked), beyond the rules the conformance suite checks on every transport.
@Suite("In-process channel buffers", .serialized, .timeLimit(.minutes(1)))
struct LocalChannelTests {
    static func make<Value: Sendable>(_: Value.Type, capacity: Int, ring: Bool) -> (Sender<Value>, Receiver<Value>) {
        let channel = LocalChannel<Value>(capacity: capacity, ring: ring)
        return (Sender(local: channel), Receiver(local: channel))
    }

    @Test("the buffer is a ring up to the limit and a deque above it")
    func bufferChoice() {
        #expect(LocalChannel<Int>(capacity: 1).usesRing)
        #expect(LocalChannel<Int>(capacity: LocalChannel<Int>.ringCapacityLimit).usesRing)
        #expect(!LocalChannel<Int>(capacity: LocalChannel<Int>.ringCapacityLimit + 1).usesRing)
        #expect(!LocalChannel<Int>(capacity: 0).usesRing)
        #expect(!LocalChannel<Int>(capacity: 8, ring: false).usesRing)
    }

    /// Every send copies the same array: its reference count is raised by the sending task and lowered by the
    /// receiving one, so a copy published before its retain would free the array under the sender. Whether the
    /// optimizer makes that move depends on the code around the send: without the ring's fence, `ipc bench-local`
    /// built with `-c release` aborted in most runs, while this test (debug, or release with testing enabled)
    /// passed; it checks the values and the count, and would catch the abort wherever the move happens. Under a
    /// sanitizer it moves 2,000 values: with the other suites' process floods beside it, 10,000 took over 50 s there.
    @Test("one array sent many times arrives intact", arguments: [true, false])
    func sharedValue(ring: Bool) async throws {
        let (tx, rx) = Self.make([UInt8].self, capacity: 8, ring: ring)
        let payload = [UInt8](repeating: 7, count: 64)
        let count = sanitized ? 2_000 : 100_000
        let producer = Task {
            for _ in 0..<count { try await tx.send(payload) }
            try await tx.close()
        }
        let progress = Atomic<Int>(0)
        let received: Int
        do {
            received = try await within(50) {
                var n = 0
                while let value = try await rx.receive() {
                    #expect(value == payload)
                    n += 1
                    progress.store(n, ordering: .relaxed)
                }
                return n
            }
        } catch {
            // Slow or stuck: the count a second apart tells which.
            let before = progress.load(ordering: .relaxed)
            try await Task.sleep(for: .seconds(1))
            Issue.record("\(error): received \(before) of \(count), then \(progress.load(ordering: .relaxed)) a second later")
            producer.cancel()
            return
        }
        try await producer.value
        #expect(received == count)
    }

    @Test("values still buffered are released when both ends go", arguments: [true, false])
    func bufferedValuesAreReleased(ring: Bool) async throws {
        let before = Tracked.alive.load(ordering: .relaxed)
        do {
            let (tx, rx) = Self.make(Tracked.self, capacity: 16, ring: ring)
            for i in 0..<10 { try await tx.send(Tracked(i)) }
            #expect(try await rx.receive()?.id == 0)
            #expect(Tracked.alive.load(ordering: .relaxed) - before == 9)
        }
        #expect(Tracked.alive.load(ordering: .relaxed) == before)
    }

    @Test("dropping the receiver releases the buffered values and fails later sends", arguments: [true, false])
    func receiverDropReleases(ring: Bool) async throws {
        let before = Tracked.alive.load(ordering: .relaxed)
        let tx: Sender<Tracked>
        do {
            let (sender, receiver) = Self.make(Tracked.self, capacity: 16, ring: ring)
            tx = sender
            for i in 0..<5 { try await tx.send(Tracked(i)) }
            withExtendedLifetime(receiver) {}
        }
        #expect(Tracked.alive.load(ordering: .relaxed) == before)
        await #expect(throws: IPCError.self) { try await tx.send(Tracked(99)) }
        #expect(Tracked.alive.load(ordering: .relaxed) == before)
    }

    /// Several tasks on each end, every value taken once: the ring's turns (one pushing task and one popping task
    /// at a time) and the wake-ups of parked tasks.
    @Test("four senders and four receivers on a ring of 4 take every value once")
    func manyOnEachEnd() async throws {
        let (tx, rx) = Self.make(Int.self, capacity: 4, ring: true)
        let perSender = scaledCount(5_000)
        let seen = try await within(50) {
            try await withThrowingTaskGroup(of: [Int].self) { group in
                for s in 0..<4 {
                    group.addTask {
                        for i in 0..<perSender { try await tx.send(s * perSender + i) }
                        return []
                    }
                }
                for _ in 0..<4 {
                    group.addTask {
                        var got: [Int] = []
                        while let value = try await rx.receive() { got.append(value) }
                        return got
                    }
                }
                // Close once the four senders are done: the receivers then drain and end.
                var all: [Int] = []
                var finishedSenders = 0
                while let part = try await group.next() {
                    if part.isEmpty {
                        finishedSenders += 1
                        if finishedSenders == 4 { try await tx.close() }
                    } else {
                        all += part
                    }
                }
                return all
            }
        }
        #expect(seen.count == 4 * perSender)
        #expect(Set(seen).count == 4 * perSender)
    }
}
