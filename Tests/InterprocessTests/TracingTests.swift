import BenchmarkSupport
import Foundation
import Instrumentation
import Interprocess
@testable import InterprocessCore
import Testing

/// `ChannelOptions.tracing`: a message carries its sender's `ServiceContext` to the other process, through the
/// process's instrument (here ``TraceInstrument``, which writes W3C `traceparent` and `tracestate` fields).
@Suite("Trace context across processes", .serialized, .timeLimit(.minutes(2)))
struct TracingTests {
    init() { TraceInstrument.bootstrapOnce() }

    /// A W3C traceparent for message `i`: version 00, a trace id and a span id of its own, sampled.
    static func traceParent(_ i: Int) -> String {
        "00-" + String(format: "%032lx", 0x4bf9_2f35_77b3_4da6 &+ i) + "-" + String(format: "%016lx", 0x00f0_67aa_0ba9_02b7 &+ i) + "-01"
    }

    static func tracing(_ on: Bool) -> ChannelOptions {
        var options = ChannelOptions()
        options.tracing = on
        return options
    }

    @Test("a message's context reaches the other process, and its answer brings it back", arguments: TransportKind.allCases)
    func contextCrosses(_ kind: TransportKind) async throws {
        let listener = try IPC.listen(on: kind.endpoint(in: temporaryDirectory()), sending: .utf8, receiving: .utf8, options: Self.tracing(true))
        defer { listener.close() }
        let helper = try ChildProcess.helper("trace-echo", listener.endpoint, 1)
        let connection = try await within(20) { try await listener.accept() }
        let count = 300
        for i in 0..<count {
            // Every third message is sent outside any context: it arrives with none.
            let parent = i % 3 == 2 ? nil : Self.traceParent(i)
            var context = ServiceContext.topLevel
            context.traceParent = parent
            context.traceState = parent == nil ? nil : "ipc=\(i),vendor=t61rcWkgMzE"
            try await ServiceContext.withValue(parent == nil ? nil : context) { try await connection.sender.send("message \(i)") }
            let expected = "message \(i)|\(parent ?? "-")|\(parent == nil ? "-" : "ipc=\(i),vendor=t61rcWkgMzE")"
            if i % 5 == 4 {
                // A plain receive of a traced message gets the value alone.
                let reply = try await within(10) { try await connection.receiver.receive() }
                #expect(reply == expected)
            } else {
                let (reply, back) = try #require(try await within(10) { try await connection.receiver.receiveWithContext() })
                #expect(reply == expected)
                #expect(back.traceParent == parent, "message \(i) came back in another context")
                #expect(back.traceState == context.traceState)
            }
        }
        try await connection.sender.closeAndWait()
        #expect(try await within(10) { try await connection.receiver.receiveWithContext() } == nil)
        let (status, output) = await helper.finish()
        #expect(status == 0, "helper said: \(output)")
        #expect(output.contains("echoed \(count)"), "helper said: \(output)")
    }

    @Test("with tracing on one side only, messages carry nothing extra and arrive without a context", arguments: TransportKind.sockets)
    func oneSideOnly(_ kind: TransportKind) async throws {
        let listener = try IPC.listen(on: kind.endpoint(in: temporaryDirectory()), sending: .utf8, receiving: .utf8, options: Self.tracing(true))
        defer { listener.close() }
        let helper = try ChildProcess.helper("trace-echo", listener.endpoint, 0)
        let connection = try await within(20) { try await listener.accept() }
        var context = ServiceContext.topLevel
        context.traceParent = Self.traceParent(1)
        for i in 0..<50 {
            try await ServiceContext.withValue(context) { try await connection.sender.send("message \(i)") }
            let (reply, back) = try #require(try await within(10) { try await connection.receiver.receiveWithContext() })
            // The helper got the string exactly as sent (a context block would have been read as part of it).
            #expect(reply == "message \(i)|-|-")
            #expect(back.traceParent == nil)
        }
        try await connection.sender.closeAndWait()
        #expect(try await within(10) { try await connection.receiver.receive() } == nil)
        let (status, output) = await helper.finish()
        #expect(status == 0, "helper said: \(output)")
    }

    /// The raw codec's paths that bypass the codec (loans, in-place reads, batches) carry and skip the block too.
    @Test("raw messages: loans, in-place reads and batches on a traced connection", arguments: TransportKind.allCases)
    func rawPaths(_ kind: TransportKind) async throws {
        let listener = try IPC.listen(on: kind.endpoint(in: temporaryDirectory()), sending: .raw, receiving: .raw, options: Self.tracing(true))
        defer { listener.close() }
        let endpoint = listener.endpoint
        async let dialed = IPC.connect(to: endpoint, sending: .raw, receiving: .raw, options: Self.tracing(true))
        let accepted = try await within(20) { try await listener.accept() }
        let client = try await dialed
        var context = ServiceContext.topLevel
        context.traceParent = Self.traceParent(7)
        let payload = (0..<100).map { UInt8($0) }
        try await ServiceContext.withValue(context) {
            try await client.sender.send(payload)
            try await client.sender.send(byteCount: payload.count) { $0.copyBytes(from: payload) }
            try await client.sender.send(contentsOf: [payload, payload])
            try await client.sender.send(bytesOf: UInt64(42))
            try await client.sender.send(payload)
        }
        let inPlace = try await within(10) { try await accepted.receiver.receive { Array($0) } }
        #expect(inPlace == payload)
        let (loaned, loanContext) = try #require(try await within(10) { try await accepted.receiver.receiveWithContext() })
        #expect(loaned == payload && loanContext.traceParent == Self.traceParent(7))
        var batch: [[UInt8]] = []
        while batch.count < 2, let more = try await within(10, { try await accepted.receiver.receive(upTo: 2) }) { batch += more }
        #expect(batch == [payload, payload])
        #expect(try await within(10) { try await accepted.receiver.receive(as: UInt64.self) } == 42)
        // Outside any context: an empty block.
        try await client.sender.send(payload)
        let (last, lastContext) = try #require(try await within(10) { try await accepted.receiver.receiveWithContext() })
        #expect(last == payload && lastContext.traceParent == Self.traceParent(7))
        let (plain, none) = try #require(try await within(10) { try await accepted.receiver.receiveWithContext() })
        #expect(plain == payload && none.traceParent == nil)
        try await client.sender.closeAndWait()
        try await accepted.sender.closeAndWait()
    }
}

/// The context block and the handshake flag, without I/O.
@Suite("Context block")
struct ContextBlockTests {
    @Test("fields round-trip, and the codec's bytes follow the block")
    func roundTrip() throws {
        var bytes: [UInt8] = []
        ContextBlock.append([("traceparent", TracingTests.traceParent(3)), ("tracestate", "a=b")], to: &bytes)
        bytes += [1, 2, 3]
        let (fields, body) = try ContextBlock.split(bytes)
        #expect(fields.map(\.key) == ["traceparent", "tracestate"])
        #expect(fields.map(\.value) == [TracingTests.traceParent(3), "a=b"])
        #expect(body == [1, 2, 3])
        var empty: [UInt8] = []
        ContextBlock.append([], to: &empty)
        #expect(empty == [0, 0])
        #expect(try ContextBlock.split(empty + [9]).body == [9])
    }

    @Test("fields beyond the block's limits are left out")
    func limits() throws {
        var bytes: [UInt8] = []
        let long = String(repeating: "x", count: Wire.maxContextBlock)
        ContextBlock.append([("", "empty key"), (String(repeating: "k", count: 256), "long key"), ("big", long), ("kept", "yes")], to: &bytes)
        let (fields, body) = try ContextBlock.split(bytes)
        #expect(fields.map(\.key) == ["kept"])
        #expect(body.isEmpty)
    }

    @Test("a malformed block is a decoding error that says what is wrong")
    func malformed() {
        let cases: [([UInt8], String)] = [
            ([], "fewer than its length field"),
            ([0x01], "fewer than its length field"),
            ([0xFF, 0xFF], "more than the 2048 allowed"),
            ([10, 0, 1], "the message has 1 after the length"),
            ([3, 0, 0, 0, 0], "empty key"),
            ([5, 0, 1, 0x61, 5, 0, 0x62], "runs past"),
            ([5, 0, 1, 0x61, 1, 0, 0xFF], "not UTF-8"),
        ]
        for (bytes, expected) in cases {
            #expect(throws: IPCError.self) { try ContextBlock.split(bytes) }
            do {
                _ = try ContextBlock.split(bytes)
            } catch {
                #expect(error.code == .decodingFailed)
                #expect(error.message.contains(expected), "\(bytes): \(error.message)")
            }
        }
    }

    @Test("the handshake's tracing flag, in both versions")
    func helloFlag() throws {
        for resume in [nil, Hello.Resume(session: [UInt8](repeating: 7, count: Wire.sessionIDSize))] {
            for tracing in [false, true] {
                let hello = Hello(capacity: 4, maxFrame: 1024, sendCodec: "raw", sendType: "bytes", receiveCodec: "raw", receiveType: "bytes", resume: resume, tracing: tracing)
                let bytes = hello.encoded()
                #expect(bytes.withUnsafeBytes { $0.loadLE(UInt16.self, at: 6) } & Wire.tracingFlag == (tracing ? Wire.tracingFlag : 0))
                let parsed = try #require(try bytes.withUnsafeBytes { try Hello.parse($0) })
                #expect(parsed.0 == hello)
            }
        }
        var unknown = Hello(capacity: 4, maxFrame: 1024, sendCodec: "raw", sendType: "bytes", receiveCodec: "raw", receiveType: "bytes").encoded()
        unknown[6] = 4
        #expect(throws: IPCError.self) { try unknown.withUnsafeBytes { try Hello.parse($0) } }
    }
}
