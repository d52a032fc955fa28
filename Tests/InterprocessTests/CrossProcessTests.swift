#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Interprocess
import Testing

/// Behaviour across real processes, over every transport.
@Suite("Cross-process channels", .serialized, .timeLimit(.minutes(2)))
struct CrossProcessTests {
    @Test("100,000 messages each way arrive in order", arguments: TransportKind.allCases)
    func hundredThousandEachWay(_ kind: TransportKind) async throws {
        let dir = temporaryDirectory()
        let listener = try IPC.listen(on: kind.endpoint(in: dir), sending: .raw, receiving: .raw)
        defer { listener.close() }
        let helper = try ChildProcess.helper("echo", listener.endpoint)
        let connection = try await within(20) { try await listener.accept() }
        let count = 100_000
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                for i in 0..<count { try await connection.sender.send(numbered(UInt64(i))) }
                try await connection.sender.close()
            }
            group.addTask {
                var received = 0
                while let m = try await connection.receiver.receive() {
                    #expect(index(m) == UInt64(received))
                    if index(m) != UInt64(received) { break }
                    received += 1
                }
                #expect(received == count)
            }
            try await group.waitForAll()
        }
        let (status, output) = await helper.finish()
        #expect(status == 0)
        #expect(output.contains("echoed \(count)"))
    }

    @Test("close drains everything, then the receiver ends", arguments: TransportKind.allCases)
    func closeAndDrain(_ kind: TransportKind) async throws {
        let dir = temporaryDirectory()
        let listener = try IPC.listen(on: kind.endpoint(in: dir), sending: .raw)
        defer { listener.close() }
        let helper = try ChildProcess.helper("count", listener.endpoint, 5000)
        let tx = try await within(20) { try await listener.accept() }.sender
        for i in 0..<5000 { try await tx.send(numbered(UInt64(i))) }
        try await tx.close()
        await #expect(throws: IPCError.self) { try await tx.send(numbered(0)) }
        let (status, output) = await helper.finish()
        #expect(status == 0, "helper said: \(output)")
        #expect(output.contains("received 5000"))
    }

    /// A burst's last frames are left to the deferred flush (the sender writes a batch inline every quarter
    /// window), which the sender withdraws whenever it wrote everything itself. Nothing touches the connection
    /// after the burst here, so the tail arrives only if the deferred flush still runs when it is needed.
    @Test("the tail of a burst arrives without further calls", arguments: TransportKind.allCases)
    func burstTailIsFlushed(_ kind: TransportKind) async throws {
        let dir = temporaryDirectory()
        let listener = try IPC.listen(on: kind.endpoint(in: dir), sending: .raw)
        defer { listener.close() }
        // The helper's capacity is 64: the sender writes inline every 16 frames, so each burst of 40 leaves a tail.
        let helper = try ChildProcess("ipc-test-helper", ["count", listener.endpoint.description, "120", "40"])
        let tx = try await within(20) { try await listener.accept() }.sender
        for round in 1...3 {
            // trySend: no suspension point between the sends, so they come fast enough to count as a burst even
            // in a debug build. It fails only when this side has not read the peer's latest credit yet: then
            // `send` waits for it (reading it).
            let messages = (0..<40).map { numbered(UInt64((round - 1) * 40 + $0)) }
            for message in messages where try !tx.trySend(message) { try await within(10) { try await tx.send(message) } }
            #expect(await helper.waitForOutput("got \(round * 40)", seconds: 20), "burst \(round) did not arrive whole")
        }
        try await tx.close()
        let (status, output) = await helper.finish()
        #expect(status == 0, "helper said: \(output)")
        #expect(output.contains("received 120"))
    }

    @Test("a receiver that stops reading holds the sender at its capacity", arguments: TransportKind.allCases)
    func backpressure(_ kind: TransportKind) async throws {
        let capacity = 16
        let (listener, helper, tx) = try await senderToStalledHelper(kind, capacity: capacity)
        defer { listener.close() }
        // The first `capacity` sends complete without the receiver reading anything.
        for i in 0..<capacity { try await within(10) { try await tx.send(numbered(UInt64(i))) } }
        // The next one cannot: it is held until the receiver takes something.
        await expectHeld { try await tx.send(numbered(UInt64(capacity))) }
        // Once the receiver drains, everything (including the held message, sent again) arrives in order.
        helper.writeLine("go")
        for i in capacity..<(capacity + 500) { try await within(10) { try await tx.send(numbered(UInt64(i))) } }
        try await tx.close()
        let (status, output) = await helper.finish()
        #expect(status == 0, "helper said: \(output)")
        #expect(output.contains("received \(capacity + 500)"))
    }

    /// Both ends in helpers, so that the sender's memory is its own: the receiving process is stopped (SIGSTOP)
    /// while the sender keeps trying (`trySend`, then a `send` cancelled after 20 ms, over and over), and the
    /// sender's resident memory stays flat; once the receiver continues, every message sent arrives.
    @Test("a stopped receiver holds a sender that keeps trying, with its memory flat", arguments: TransportKind.allCases)
    func stoppedReceiver(_ kind: TransportKind) async throws {
        let sender = try ChildProcess.helper("listen-flood", kind.endpoint(in: temporaryDirectory()), 4096)
        defer { sender.kill() }
        let endpoint = try await sender.listeningEndpoint()
        let receiver = try ChildProcess("ipc-test-helper", ["count", endpoint.description, "0", "1000"])
        defer { receiver.kill() }
        #expect(await receiver.waitForOutput("got 1000", seconds: 30), "the messages did not flow")
        kill(receiver.pid, SIGSTOP)
        // What was in flight settles within the first second; after that the sender only retries.
        try await Task.sleep(for: .seconds(1))
        let settled = residentKiB(of: sender.pid)
        var highest = settled
        for _ in 0..<15 {
            try await Task.sleep(for: .milliseconds(200))
            highest = max(highest, residentKiB(of: sender.pid))
        }
        kill(receiver.pid, SIGCONT)
        if !sanitized { #expect(highest - settled < 8 * 1024, "the held sender's memory grew by \(highest - settled) KiB") }
        sender.writeLine("end")
        let (status, output) = await sender.finish()
        #expect(status == 0, "sender said: \(output)")
        let sent = output.split(separator: "\n").last { $0.hasPrefix("sent ") }?.split(separator: " ")
        let count = try #require(sent.flatMap { Int($0[1]) }, "sender said: \(output)")
        let attempts = try #require(sent.flatMap { Int($0[3]) })
        // The sender kept trying while held: at least one attempt per 20 ms for three seconds.
        #expect(attempts - count >= 100, "only \(attempts - count) failed attempts")
        let (_, received) = await receiver.finish()
        #expect(received.contains("received \(count)"), "sent \(count), the receiver said: \(received)")
    }

    /// Large messages: the sender stops at its byte limit long before the capacity (64 here), and the
    /// receiver's credits (every 256 KiB taken, not only every quarter window) keep the stream moving: without
    /// them the sender would wait forever for a credit after its third message.
    @Test("a receiver that stops reading holds a sender of large messages at its byte limit", arguments: TransportKind.allCases)
    func byteLimit(_ kind: TransportKind) async throws {
        var options = ChannelOptions()
        options.maxBytesInFlight = 512 << 10
        let (listener, helper, tx) = try await senderToStalledHelper(kind, capacity: 64, options: options)
        defer { listener.close() }
        @Sendable func message(_ i: Int) -> [UInt8] { numbered(UInt64(i)) + [UInt8](repeating: UInt8(truncatingIfNeeded: i), count: 200 << 10) }
        // 0, 200 and 400 KiB outstanding are under the limit: three sends complete with nothing read.
        for i in 0..<3 { try await within(10) { try await tx.send(message(i)) } }
        await expectHeld { try await tx.send(message(3)) }
        helper.writeLine("go")
        // 40 MiB more, through a 512 KiB limit.
        for i in 3..<200 { try await within(10) { try await tx.send(message(i)) } }
        try await tx.close()
        let (status, output) = await helper.finish()
        #expect(status == 0, "helper said: \(output)")
        #expect(output.contains("received 200"))
    }

    /// A sender dropped without `close()` or `closeAndWait()` in a process that lives on: the drop closes the
    /// channel, so everything it sent is delivered, then the end (not an error).
    @Test("a sender dropped without closing delivers everything it sent, then the end", arguments: TransportKind.allCases)
    func droppedSender(_ kind: TransportKind) async throws {
        let dir = temporaryDirectory()
        let listener = try IPC.listen(on: kind.endpoint(in: dir), receiving: .raw)
        defer { listener.close() }
        let helper = try ChildProcess.helper("send-then-drop", listener.endpoint, 1000)
        defer { helper.kill() }
        let rx = try await within(20) { try await listener.accept() }.receiver
        var received = 0
        while let m = try await within(20, { try await rx.receive() }) {
            #expect(index(m) == UInt64(received))
            received += 1
        }
        #expect(received == 1000)
        #expect(await helper.waitForOutput("dropped"))
    }

    /// A process that exits right after its last `send`, without closing: every message `send` accepted is
    /// still delivered (then the end of the stream, reported as the peer closing without a close).
    @Test("a process that exits right after its last send loses nothing it sent", arguments: TransportKind.allCases)
    func exitAfterSend(_ kind: TransportKind) async throws {
        for round in 0..<5 {
            let dir = temporaryDirectory()
            let listener = try IPC.listen(on: kind.endpoint(in: dir), receiving: .raw)
            defer { listener.close() }
            let helper = try ChildProcess.helper("send-then-exit", listener.endpoint, 1000)
            let rx = try await within(20) { try await listener.accept() }.receiver
            var received = 0
            do {
                while let m = try await within(20, { try await rx.receive() }) {
                    #expect(index(m) == UInt64(received))
                    received += 1
                }
            } catch let error as IPCError where error.code == .peerClosed {
                // The end: the helper exited without a close frame.
            }
            #expect(received == 1000, "round \(round): \(received) of 1000 arrived")
            let (status, _) = await helper.finish()
            #expect(status == 0)
        }
    }

    @Test("a sender killed mid-stream gives the receiver a clear error, not a hang", arguments: TransportKind.allCases)
    func senderKilled(_ kind: TransportKind) async throws {
        let dir = temporaryDirectory()
        let listener = try IPC.listen(on: kind.endpoint(in: dir), receiving: .raw)
        defer { listener.close() }
        let helper = try ChildProcess.helper("send-then-hang", listener.endpoint, 10)
        let rx = try await within(20) { try await listener.accept() }.receiver
        for i in 0..<10 {
            let m = try await within(10) { try await rx.receive() }
            #expect(m.map(index) == UInt64(i))
        }
        helper.kill()
        await #expect {
            _ = try await within(10) { try await rx.receive() }
        } throws: { error in
            let e = error as! IPCError
            return e.code == .peerClosed && e.message.contains("10 messages")
        }
        _ = await helper.finish()
    }

    @Test("a receiver killed mid-stream makes sends fail, not hang", arguments: TransportKind.allCases)
    func receiverKilled(_ kind: TransportKind) async throws {
        let dir = temporaryDirectory()
        let listener = try IPC.listen(on: kind.endpoint(in: dir), sending: .raw)
        defer { listener.close() }
        let helper = try ChildProcess.helper("receive-then-hang", listener.endpoint, 3)
        let tx = try await within(20) { try await listener.accept() }.sender
        for i in 0..<3 { try await within(10) { try await tx.send(numbered(UInt64(i))) } }
        helper.kill()
        _ = await helper.finish()
        // The receiver's window is 4: at most a few more sends are buffered, then the failure shows, with the
        // messages in doubt: at least those sends (the helper took nothing after the first 3), at most every
        // message sent (its acknowledgements of the first 3 may be lost with the connection: a reset discards
        // them).
        let sent = NSLockedCounter()
        await #expect {
            try await within(10) {
                for i in 3..<10_000 {
                    try await tx.send(numbered(UInt64(i)))
                    sent.withLock { $0 += 1 }
                }
            }
        } throws: { error in
            let e = error as! IPCError
            let count = sent.withLock { $0 }
            return e.code == .peerClosed && count <= 4 && (count...(3 + count)).contains(e.messagesInDoubt ?? 0)
        }
    }

    @Test("capacity 0: a send returns only once the other process took the value", arguments: TransportKind.allCases)
    func rendezvousAcrossProcesses(_ kind: TransportKind) async throws {
        let dir = temporaryDirectory()
        let listener = try IPC.listen(on: kind.endpoint(in: dir), sending: .raw)
        defer { listener.close() }
        let helper = try ChildProcess.helper("take-on-line", listener.endpoint, 0)
        let tx = try await within(20) { try await listener.accept() }.sender
        #expect(await helper.waitForOutput("connected"))
        for round in 0..<3 {
            let sent = Flag()
            let sending = Task {
                try await tx.send(numbered(UInt64(round)))
                sent.set()
            }
            #expect(await staysUnset(sent), "send \(round) returned before the other process took it")
            helper.writeLine("take")
            try await within(20) { try await sending.value }
            #expect(await helper.waitForOutput("took \(round)"))
        }
        helper.closeInput()
        try await tx.close()
        let (status, output) = await helper.finish()
        #expect(status == 0, "helper said: \(output)")
    }

    @Test("a receiver dropped in another process fails sends with receiverGone", arguments: TransportKind.allCases)
    func receiverDroppedAcrossProcesses(_ kind: TransportKind) async throws {
        let dir = temporaryDirectory()
        let listener = try IPC.listen(on: kind.endpoint(in: dir), sending: .raw, receiving: .raw)
        defer { listener.close() }
        let helper = try ChildProcess.helper("drop-receiver", listener.endpoint)
        let connection = try await within(20) { try await listener.accept() }
        try await connection.sender.send(numbered(0))
        #expect(await helper.waitForOutput("dropped receiver"))
        // The helper's process and connection are alive; only its receiver is gone. Sends fail promptly (its
        // window is 64), not after the connection closes.
        let error = try await within(10) { () async -> IPCError? in
            do {
                for i in 1..<10_000 { try await connection.sender.send(numbered(UInt64(i))) }
            } catch {
                return error as? IPCError
            }
            return nil
        }
        #expect(error?.code == .receiverGone, "got \(String(describing: error))")
        // Its sending direction still works: it closes cleanly once told to.
        try await connection.sender.close()
        helper.closeInput()
        #expect(try await within(20) { try await connection.receiver.receive() } == nil)
        let (status, output) = await helper.finish()
        #expect(status == 0, "helper said: \(output)")
    }

    @Test("a type mismatch is refused on both sides, naming both choices", arguments: TransportKind.allCases)
    func handshakeMismatch(_ kind: TransportKind) async throws {
        let dir = temporaryDirectory()
        let listener = try IPC.listen(on: kind.endpoint(in: dir), sending: .utf8)
        defer { listener.close() }
        let helper = try ChildProcess.helper("wrong-type", listener.endpoint)
        let (status, output) = await helper.finish()
        #expect(status == 0)
        #expect(output.contains("handshakeMismatch"))
        #expect(output.contains("Swift.Int") && output.contains("string"))
    }

    @Test("a message over the receiver's limit is refused and the channel stays usable")
    func frameTooLarge() async throws {
        let dir = temporaryDirectory()
        var small = ChannelOptions()
        small.maxFrameSize = 1000
        let listener = try IPC.listen(on: .unix(path: dir + "/s.sock"), receiving: .raw, options: small)
        defer { listener.close() }
        async let accepted = within(20) { try await listener.accept() }
        let tx = try await IPC.connect(to: .unix(path: dir + "/s.sock"), sending: .raw)
        let rx = try await accepted.receiver
        await #expect { try await tx.send([UInt8](repeating: 1, count: 1001)) } throws: { ($0 as! IPCError).code == .frameTooLarge }
        try await tx.send([UInt8](repeating: 2, count: 1000))
        try await tx.close()
        #expect(try await rx.receive()?.count == 1000)
        #expect(try await rx.receive() == nil)
    }

    @Test("a message that does not decode is reported with its content, and the next one still arrives")
    func decodingFailure() async throws {
        struct Point: Codable, Equatable { var x: Int }
        let dir = temporaryDirectory()
        let listener = try IPC.listen(on: .unix(path: dir + "/d.sock"), receiving: JSONCodec(Point.self))
        defer { listener.close() }
        async let accepted = within(20) { try await listener.accept() }
        // A sender that claims the same codec and type but sends raw text.
        struct Liar: MessageCodec {
            var name: String { "json" }
            var typeName: String { String(reflecting: Point.self) }
            func encode(_ value: String, into buffer: inout [UInt8]) throws(IPCError) { buffer += value.utf8 }
            func decode(_ bytes: [UInt8]) throws(IPCError) -> String { "" }
        }
        let tx = try await IPC.connect(to: .unix(path: dir + "/d.sock"), sending: Liar())
        let rx = try await accepted.receiver
        try await tx.send("{not json")
        try await tx.send("{\"x\": 5}")
        try await tx.close()
        await #expect { _ = try await rx.receive() } throws: { e in
            let error = e as! IPCError
            return error.code == .decodingFailed && error.message.contains("7b 6e 6f 74")
        }
        #expect(try await rx.receive() == Point(x: 5))
        #expect(try await rx.receive() == nil)
    }

    /// In a process of its own (whose descriptors no other test opens meanwhile), 20 connections one after
    /// another, each with messages both ways (one larger than the shared-memory ring) and closed: the helper
    /// counts its descriptors and the mappings of the library's shared memory after the first and after the last,
    /// and exits 1 if there are more after the last.
    @Test("closed connections give back every descriptor and shared-memory mapping they took", arguments: TransportKind.allCases)
    func closedConnectionsReleaseEverything(_ kind: TransportKind) async throws {
        let helper = try ChildProcess.helper("release-check", kind.endpoint(in: temporaryDirectory()), 20)
        let (status, output) = await helper.finish(within: 90)
        #expect(status == 0, "helper said: \(output)")
        // "descriptors A -> B (C while open), mappings D -> E (F while open)": what was counted must have been
        // taken while a connection was open, or the counts say nothing.
        let numbers = output.split(whereSeparator: { !$0.isNumber }).compactMap { Int($0) }
        #expect(numbers.count == 6, "helper said: \(output)")
        guard numbers.count == 6 else { return }
        #expect(numbers[2] > numbers[0])
        #expect(kind == .sharedMemory ? numbers[5] > 0 : numbers[5] == 0)
    }
}

/// This process's resident memory, in KiB.
func residentKiB(of pid: Int32? = nil) -> Int {
    guard let text = try? String(contentsOfFile: "/proc/\(pid.map(String.init) ?? "self")/status", encoding: .utf8),
        let line = text.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") })
    else { return 0 }
    return Int(line.split(separator: " ").dropFirst().first ?? "0") ?? 0
}

/// The API exactly as the README shows it, with typed values in each codec over a real socket.
@Suite("Typed channels", .timeLimit(.minutes(1)))
struct TypedChannelTests {
    struct Job: Codable, Equatable, Sendable {
        var id: Int
        var name: String
        var tags: [String]
        var weight: Double?
    }

    @Test func jsonAndBinaryRoundTripBothWays() async throws {
        let dir = temporaryDirectory()
        let jobs = (0..<50).map { Job(id: $0, name: "job \($0)", tags: ["a", "b"], weight: $0 % 2 == 0 ? nil : 1.5) }
        let listener = try IPC.listen(on: .unix(path: dir + "/j.sock"), sending: .json(Job.self), receiving: .binary(Job.self))
        defer { listener.close() }
        async let accepted = within(10) { try await listener.accept() }
        let client = try await IPC.connect(to: .unix(path: dir + "/j.sock"), sending: .binary(Job.self), receiving: .json(Job.self))
        let server = try await accepted
        for job in jobs { try await client.sender.send(job) }
        try await client.sender.close()
        var echoed: [Job] = []
        for try await job in server.receiver {
            echoed.append(job)
            try await server.sender.send(job)
        }
        // Returns at once on a two-way connection: the client has not read anything yet.
        try await within(2) { try await server.sender.close() }
        var back: [Job] = []
        for try await job in client.receiver { back.append(job) }
        #expect(echoed == jobs)
        #expect(back == jobs)
    }

    @Test func endArrivesPromptlyWhileThePeerKeepsItsSideOpen() async throws {
        let dir = temporaryDirectory()
        let listener = try IPC.listen(on: .unix(path: dir + "/e.sock"), sending: .utf8, receiving: .utf8)
        defer { listener.close() }
        async let accepted = within(10) { try await listener.accept() }
        let client = try await IPC.connect(to: .unix(path: dir + "/e.sock"), sending: .utf8, receiving: .utf8)
        let server = try await accepted
        try await client.sender.close()
        try await server.sender.send("last")
        try await server.sender.close()
        // The server never reads the client's end, so its side stays open; the client's teardown waits for it
        // in the background, and the caller gets its values and the end at once.
        #expect(try await within(2) { try await client.receiver.receive() } == "last")
        #expect(try await within(2) { try await client.receiver.receive() } == nil)
        _ = server
    }
}
