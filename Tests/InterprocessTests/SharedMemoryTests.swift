#if canImport(Glibc)
import Glibc
#endif
import CInterprocessShim
import Foundation
import Interprocess
import InterprocessCore
import Testing

/// What only shared memory needs: crashes at any point, a peer that scribbles over the rings, messages larger
/// than the rings in both directions at once, an idle channel's CPU, and nothing left behind. The conformance
/// and cross-process suites run the channel rules on shared memory too.
@Suite("Shared-memory transport", .serialized, .timeLimit(.minutes(3)))
struct SharedMemoryTests {
    /// The names in /dev/shm, to show that nothing is ever left there.
    func devShm() throws -> Set<String> {
        Set(try FileManager.default.contentsOfDirectory(atPath: "/dev/shm"))
    }

    @Test("a peer killed with SIGKILL at a random point gives the survivor peerClosed at once, every time, with or without the zero-copy calls")
    func killedAtRandomPoints() async throws {
        let before = try devShm()
        var generator = SystemRandomNumberGenerator()
        var delays: [Duration] = []
        // Six iterations under a sanitizer, with more time each: there, with every suite running beside it, one
        // iteration once took over 20 seconds.
        let iterations = scaledCount(60)
        let bound = sanitized ? 60 : 20
        for iteration in 0..<iterations {
            let endpoint = Endpoint.sharedMemory(name: uniqueName())
            let helperSends = iteration % 2 == 0
            // Every other pair of iterations, this side reads in place or sends through loans.
            let zeroCopy = (iteration / 2) % 2 == 1
            // The helper sends (this side receives), or the other way round.
            let receiving = try IPC.listen(on: endpoint, receiving: .raw)
            defer { receiving.close() }
            let sendingEndpoint = Endpoint.sharedMemory(name: uniqueName())
            let sending = try IPC.listen(on: sendingEndpoint, sending: .raw)
            defer { sending.close() }
            let helper = try ChildProcess.helper(helperSends ? "send" : "count", helperSends ? endpoint : sendingEndpoint, 10_000_000)
            var tx: Sender<[UInt8]>?
            var rx: Receiver<[UInt8]>?
            if helperSends {
                rx = try await within(bound) { try await receiving.accept().receiver }
            } else {
                tx = try await within(bound) { try await sending.accept().sender }
            }
            let (sender, receiver) = (tx, rx)
            let killAfter = Int.random(in: 0..<3000, using: &generator)
            let (error, killedAt) = try await within(bound) { () async -> (IPCError?, ContinuousClock.Instant?) in
                var killedAt: ContinuousClock.Instant?
                do {
                    var i = 0
                    while true {
                        if i == killAfter {
                            helper.kill()
                            killedAt = .now
                        }
                        if let receiver {
                            let got = zeroCopy ? try await receiver.receive({ $0.count }) : try await receiver.receive()?.count
                            guard got != nil else { return (nil, killedAt) }
                        } else if let sender {
                            let message = numbered(UInt64(i))
                            if zeroCopy {
                                try await sender.send(byteCount: message.count) { $0.copyBytes(from: message) }
                            } else {
                                try await sender.send(message)
                            }
                        }
                        i += 1
                    }
                } catch {
                    return (error as? IPCError, killedAt)
                }
            }
            let noticed = killedAt.map { ContinuousClock.now - $0 }
            #expect(error?.code == .peerClosed, "iteration \(iteration): \(String(describing: error))")
            // Every death is noticed (a missed one fails `within` above); how fast is checked over all iterations
            // below, so one iteration slowed by a busy machine does not fail the test.
            if let noticed { delays.append(noticed) }
            _ = await helper.finish()
        }
        delays.sort()
        #expect(delays.count == iterations)
        if let slowest = delays.last {
            let median = delays[delays.count / 2]
            #expect(median < .seconds(1), "median time to notice a death: \(median), slowest \(slowest)")
            #expect(slowest < .seconds(10), "slowest: \(slowest)")
        }
        #expect(try devShm() == before, "something was left in /dev/shm")
    }

    @Test("a listener killed with SIGKILL leaves nothing behind: its name can be listened on again at once")
    func killedListenerLeavesNothing() async throws {
        let before = try devShm()
        let endpoint = Endpoint.sharedMemory(name: uniqueName())
        let helper = try ChildProcess.helper("listen-send", endpoint, 1_000_000)
        #expect(await helper.waitForOutput("listening"))
        let rx = try await within(20) { try await IPC.connect(to: endpoint, receiving: .raw) }
        for _ in 0..<100 { _ = try await within(20) { try await rx.receive() } }
        helper.kill()
        _ = await helper.finish()
        let error = await #expect(throws: IPCError.self) {
            try await within(20) { while try await rx.receive() != nil {} }
        }
        #expect(error?.code == .peerClosed)
        let again = try IPC.listen(on: endpoint, receiving: .raw)
        again.close()
        #expect(try devShm() == before)
    }

    @Test("messages larger than the ring, both ways at once, arrive whole and in order", arguments: [1 << 20, 4096])
    func largeMessagesBothWays(_ ringSize: Int) async throws {
        let size = ringSize == 4096 ? 100_003 : 3 << 20  // many times the ring; an odd size wraps at every offset
        try await echoThroughHelper(ringSize: ringSize, count: ringSize == 4096 ? 64 : 24) { i in
            var m = [UInt8](repeating: UInt8(truncatingIfNeeded: i), count: size)
            m[size / 2] = 0xEE
            m[size - 1] = UInt8(truncatingIfNeeded: i &* 7)
            return m
        }
    }

    @Test("messages nearly as large as the ring after small ones, both ways at once, keep flowing: a reader publishes what it consumed before it waits")
    func nearlyRingSizedMessagesAfterSmallOnes() async throws {
        // In a 4 KiB ring, two 100-byte messages (less than the eighth of the ring a reader consumes before it
        // publishes its position unasked), then one of 3,900 bytes, which a reader takes whole, in place: the
        // writer can put it whole into the ring only once the reader published the two small ones.
        try await echoThroughHelper(ringSize: 4096, count: 6_000) { i in
            var m = [UInt8](repeating: UInt8(truncatingIfNeeded: i), count: i % 3 == 2 ? 3_900 : 100)
            m.withUnsafeMutableBytes { $0.storeBytes(of: UInt32(i).littleEndian, as: UInt32.self) }
            return m
        }
    }

    @Test("small messages written straight into the ring and large ones written from the outbox, mixed in bursts both ways, arrive in order")
    func directAndOutboxWritesInterleave() async throws {
        // Up to 32 KiB a raw message is written into the ring by the send itself and published with its burst;
        // larger ones (and the receivers' credit frames) go through the outbox, whose write must publish the
        // frames written before it first. In a 64 KiB ring the large ones also find it full of small ones.
        let sizes = [0, 64, 40_000, 1, 32 << 10 - 16, 64, 100_000, 7, 3_000]
        try await echoThroughHelper(ringSize: 64 << 10, count: 4_000) { i in
            var m = [UInt8](repeating: UInt8(truncatingIfNeeded: i), count: sizes[i % sizes.count])
            if m.count >= 4 { m.withUnsafeMutableBytes { $0.storeBytes(of: UInt32(i).littleEndian, as: UInt32.self) } }
            return m
        }
    }

    /// Sends `count` messages to the helper's echo over a ring of `ringSize` bytes while receiving the echoes
    /// (both directions at once), and checks that every echo is the message sent, in order, and that the helper
    /// ended cleanly.
    private func echoThroughHelper(ringSize: Int, count: Int, _ message: @escaping @Sendable (Int) -> [UInt8]) async throws {
        let endpoint = Endpoint.sharedMemory(name: uniqueName())
        var options = ChannelOptions()
        options.sharedMemoryRingSize = ringSize
        let listener = try IPC.listen(on: endpoint, sending: .raw, receiving: .raw, options: options)
        defer { listener.close() }
        let helper = try ChildProcess.helper("echo", endpoint)
        let connection = try await within(20) { try await listener.accept() }
        try await within(60) {
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    for i in 0..<count { try await connection.sender.send(message(i)) }
                    try await connection.sender.close()
                }
                group.addTask {
                    var i = 0
                    while let m = try await connection.receiver.receive() {
                        guard m == message(i) else {
                            Issue.record("echo \(i) differs")
                            return
                        }
                        i += 1
                    }
                    #expect(i == count)
                }
                try await group.waitForAll()
            }
        }
        let (status, output) = await helper.finish()
        #expect(status == 0, "helper said: \(output)")
    }

    @Test("an idle shared-memory channel costs no CPU")
    func idleCostsNothing() async throws {
        let endpoint = Endpoint.sharedMemory(name: uniqueName())
        let listener = try IPC.listen(on: endpoint, sending: .raw)
        defer { listener.close() }
        let helper = try ChildProcess.helper("count", endpoint, 1)
        let tx = try await within(20) { try await listener.accept() }.sender
        try await tx.send(numbered(0))
        // The helper now waits in receive() for a second message that does not come.
        let start = try #require(cpuTicks(helper.pid), "cannot read the helper's CPU time")
        try await Task.sleep(for: .seconds(1))
        let used = try #require(cpuTicks(helper.pid)) - start
        #expect(used <= 5, "an idle receiver used \(used * 10) ms of CPU in one second")
        try await tx.close()
        let (status, output) = await helper.finish()
        #expect(status == 0, "helper said: \(output)")
    }

    @Test("a peer that scribbles over the shared memory gets a clear error, whether the receiver copies or reads in place; the listener keeps serving", arguments: Scribble.allCases, [false, true])
    func hostilePeer(_ scribble: Scribble, inPlace: Bool) async throws {
        let endpoint = Endpoint.sharedMemory(name: uniqueName())
        let listener = try IPC.listen(on: endpoint, receiving: .raw)
        defer { listener.close() }
        // Made on a thread of its own: it waits in a blocking read for the hand-over, which the listener's
        // task makes, and the test process has as few task threads as cores.
        let hostile = try await offTaskThreads { try HostileSharedMemoryPeer(endpoint) }
        // A well-formed start: a hello and one message, so the listener accepts the connection.
        var bytes = Hello(capacity: 16, maxFrame: 1 << 20, sendCodec: "raw", sendType: "bytes", receiveCodec: "none", receiveType: "none").encoded()
        bytes.appendControlFrame(.data(seq: 1, payload: [1, 2, 3]))
        hostile.publish(bytes)
        let rx = try await within(20) { try await listener.accept() }.receiver
        #expect(try await within(20) { try await rx.receive() } == [1, 2, 3])
        switch scribble {
        case .headBeyondTheRing: hostile.setHead(hostile.head + UInt64(hostile.ringCapacity) + 4096)
        case .headBackwards: hostile.setHead(0)
        case .garbageFrames: hostile.publish([UInt8](repeating: 0xFF, count: 64))
        case .hugeLength:
            var frame: [UInt8] = []
            frame.appendFrameHeader(.data, length: Int(UInt32.max))
            hostile.publish(frame)
        case .wholeMemoryRandom: hostile.scribbleEverything()
        case .goodFrameThenWrongSequence:
            // Published together, so that a receive finds both at once: the good one is delivered, then the error.
            var frames: [UInt8] = []
            frames.appendControlFrame(.data(seq: 2, payload: [4, 5, 6]))
            frames.appendControlFrame(.data(seq: 9, payload: [7]))
            hostile.publish(frames)
        }
        hostile.wake()
        if scribble == .goodFrameThenWrongSequence {
            let first = try await within(20) { inPlace ? try await rx.receive({ [UInt8]($0) }) : try await rx.receive() }
            #expect(first == [4, 5, 6])
        }
        let error = await #expect(throws: IPCError.self) {
            try await within(20) {
                if inPlace {
                    while try await rx.receive({ $0.count }) != nil {}
                } else {
                    while try await rx.receive() != nil {}
                }
            }
        }
        #expect(error?.code == .protocolViolation || error?.code == .frameTooLarge || error?.code == .peerClosed, "got \(String(describing: error))")
        #expect(error?.message.isEmpty == false)
        // A good client on the same listener is served.
        let helper = try ChildProcess.helper("send", endpoint, 100)
        let good = try await within(20) { try await listener.accept() }.receiver
        var n = 0
        while let m = try await within(20, { try await good.receive() }) {
            #expect(index(m) == UInt64(n))
            n += 1
        }
        #expect(n == 100)
        _ = await helper.finish()
    }

    enum Scribble: String, CaseIterable, CustomTestStringConvertible, Sendable {
        case headBeyondTheRing, headBackwards, garbageFrames, hugeLength, wholeMemoryRandom, goodFrameThenWrongSequence
        var testDescription: String { rawValue }
    }
}

/// CPU time (user + system, in clock ticks of 10 ms) a process has used; nil when it cannot be read.
func cpuTicks(_ pid: Int32) -> Int? {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
          let close = text.lastIndex(of: ")") else { return nil }
    let fields = text[text.index(after: close)...].split(separator: " ")
    // After the command: state is field 0, utime field 11, stime field 12.
    guard fields.count > 12, let user = Int(fields[11]), let system = Int(fields[12]) else { return nil }
    return user + system
}

/// Plays a dialer that takes the shared memory and then writes whatever it likes into it.
final class HostileSharedMemoryPeer: @unchecked Sendable {
    let client: RawClient
    let base: UnsafeMutableRawPointer
    let size: Int
    let ringCapacity: Int
    let wakeListener: Int32
    let control: UnsafeMutableRawPointer
    let data: UnsafeMutableRawPointer
    private(set) var head: UInt64 = 0

    init(_ endpoint: Endpoint) throws {
        let client = try RawClient(endpoint)
        self.client = client
        var fds = [Int32](repeating: -1, count: 4)
        var count: Int32 = 0
        var message = [UInt8](repeating: 0, count: 16)
        let n = fds.withUnsafeMutableBufferPointer { f in
            message.withUnsafeMutableBytes { cipc_recv_fds(client.fd, f.baseAddress, 4, &count, $0.baseAddress, $0.count) }
        }
        guard n == 16, count == 3 else { throw IPCError(.protocolViolation, "no hand-over (\(n) bytes, \(count) fds)") }
        ringCapacity = Int(message.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: 8, as: UInt32.self)) })
        size = 4096 + 2 * ringCapacity
        guard let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fds[0], 0), p != MAP_FAILED else {
            throw IPCError(.systemCallFailed, "mmap failed")
        }
        base = p
        Glibc.close(fds[0])
        Glibc.close(fds[1])
        wakeListener = fds[2]
        // Ring 1 carries dialer -> listener: its control block at 768, its data after ring 0.
        control = base + 768
        data = base + 4096 + ringCapacity
    }

    deinit {
        munmap(base, size)
        Glibc.close(wakeListener)
    }

    func publish(_ bytes: [UInt8]) {
        for b in bytes {
            data.storeBytes(of: b, toByteOffset: Int(head) & (ringCapacity - 1), as: UInt8.self)
            head += 1
        }
        setHead(head)
    }

    func setHead(_ value: UInt64) {
        cipc_store_release_u64(control, value)
        wake()
    }

    func scribbleEverything() {
        var generator = SystemRandomNumberGenerator()
        for offset in stride(from: 0, to: size, by: 8) {
            base.storeBytes(of: generator.next() as UInt64, toByteOffset: offset, as: UInt64.self)
        }
        wake()
    }

    func wake() {
        var one: UInt64 = 1
        _ = Glibc.write(wakeListener, &one, 8)
    }
}
