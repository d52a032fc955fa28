import ArgumentParser
import AsyncAlgorithms
import Foundation
import Interprocess

/// In-process channels between two tasks, beside the standard library's `AsyncStream` and swift-async-algorithms'
/// `AsyncChannel`, on W1 (ping-pong) and W2 (one-way throughput) with 64-byte `[UInt8]` values.
struct BenchLocal: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-local",
        abstract: "In-process channels between two tasks, beside AsyncChannel and AsyncStream.",
        discussion: "W1: 64-byte ping-pong between two tasks (1,000 warm-up, 20,000 timed round trips). W2: 1,000,000 64-byte values one way, then a reply. Each line is the median of --runs runs; ratios are to AsyncChannel measured in the same invocation. Build with -c release.")

    @Option(help: "Runs per line; the median is reported.") var runs = 5
    @Option(help: "Capacity of the buffered Interprocess line.") var capacity = 128
    @Flag(help: "Lower counts for a quick look (do not quote these numbers).") var quick = false

    @Option(parsing: .upToNextOption, help: "Lines to run: async-channel, async-stream, rendezvous, buffered.") var kinds: [Kind] = Kind.allCases
    @Option(parsing: .upToNextOption, help: "Workloads to run: w1, w2.") var workloads: [String] = ["w1", "w2"]

    enum Kind: String, CaseIterable, ExpressibleByArgument {
        case asyncChannel = "async-channel", asyncStream = "async-stream", rendezvous, buffered

        func label(_ capacity: Int) -> String {
            switch self {
            case .asyncChannel: "AsyncChannel (rendezvous)"
            case .asyncStream: "AsyncStream (unbounded)"
            case .rendezvous: "Interprocess Channel, capacity 0"
            case .buffered: "Interprocess Channel, capacity \(capacity)"
            }
        }
    }

    func run() async throws {
        let (warmup, iterations, count) = quick ? (200, 2000, 100_000) : (1000, 20_000, 1_000_000)
        say("Interprocess bench-local: two tasks in one process, \(runs) runs per line (median), \(quick ? "QUICK counts" : "full counts")")
        say("machine: \(machineDescription())")
        var reference: Double?
        if workloads.contains("w1") { say("\nW1 ping-pong 64 B between two tasks, round trip us: p50 / p99 / max") }
        for kind in kinds where workloads.contains("w1") {
            var results: [[Double]] = []
            for _ in 0..<runs { results.append(try await pingPong(kind, warmup: warmup, iterations: iterations)) }
            results.sort { $0[0] < $1[0] }
            let median = results[results.count / 2]
            if kind == .asyncChannel { reference = median[0] }
            var line = kind.label(capacity).padding(toLength: 36, withPad: " ", startingAt: 0) + median.map { format($0, 2) }.joined(separator: " / ")
            if let reference, kind != .asyncChannel { line += "   ratio \(format(median[0] / reference, 2))x" }
            say(line)
            say("RESULT local-w1 \(kind.rawValue) \(median.map { format($0, 2) }.joined(separator: " "))")
        }
        if workloads.contains("w2") { say("\nW2 \(count) x 64 B one way between two tasks, M msg/s") }
        reference = nil
        for kind in kinds where workloads.contains("w2") {
            var rates: [Double] = []
            for _ in 0..<runs { rates.append(try await throughput(kind, count: count)) }
            rates.sort()
            let median = rates[rates.count / 2]
            if kind == .asyncChannel { reference = median }
            var line = kind.label(capacity).padding(toLength: 36, withPad: " ", startingAt: 0) + format(median, 2)
            if let reference, kind != .asyncChannel { line += "   ratio \(format(median / reference, 2))x" }
            say(line)
            say("RESULT local-w2 \(kind.rawValue) \(format(median, 2))")
        }
    }

    /// Makes a pipe of the kind and runs `body` with it, specialized for the pipe's type, so that every line
    /// calls its channel directly, as a program would (no closure or existential in between).
    func withPipes<R>(_ kind: Kind, _ body: (any LocalPipe.Type) async throws -> R) async rethrows -> R {
        switch kind {
        case .asyncChannel: try await body(AsyncChannelPipe.self)
        case .asyncStream: try await body(AsyncStreamPipe.self)
        case .rendezvous, .buffered: try await body(ChannelPipe.self)
        }
    }

    func pingPong(_ kind: Kind, warmup: Int, iterations: Int) async throws -> [Double] {
        try await withPipes(kind) { try await pingPong($0, capacity: kind == .rendezvous ? 0 : capacity, warmup: warmup, iterations: iterations) }
    }

    func pingPong<P: LocalPipe>(_: P.Type, capacity: Int, warmup: Int, iterations: Int) async throws -> [Double] {
        let there = P(capacity: capacity), back = P(capacity: capacity)
        let echo = Task.detached {
            while let m = try await there.receive() { try await back.send(m) }
            try await back.finish()
        }
        let payload = [UInt8](repeating: 1, count: 64)
        var latencies = Latencies()
        for i in 0..<(warmup + iterations) {
            let start = monotonicNanos()
            try await there.send(payload)
            guard try await back.receive() != nil else { throw ChildError(message: "echo ended early") }
            if i >= warmup { latencies.record(monotonicNanos() - start) }
        }
        try await there.finish()
        try await echo.value
        return latencies.summary
    }

    func throughput(_ kind: Kind, count: Int) async throws -> Double {
        try await withPipes(kind) { try await throughput($0, capacity: kind == .rendezvous ? 0 : capacity, count: count) }
    }

    func throughput<P: LocalPipe>(_: P.Type, capacity: Int, count: Int) async throws -> Double {
        let pipe = P(capacity: capacity), done = P(capacity: capacity)
        let consumer = Task.detached {
            var n = 0
            while let m = try await pipe.receive() {
                guard m.count == 64 else { throw ChildError(message: "wrong value") }
                n += 1
                if n == count { break }
            }
            try await done.send([UInt8](repeating: 0, count: n == count ? 1 : 0))
        }
        let payload = [UInt8](repeating: 1, count: 64)
        let start = monotonicNanos()
        for _ in 0..<count { try await pipe.send(payload) }
        guard let reply = try await done.receive(), reply.count == 1 else { throw ChildError(message: "consumer lost values") }
        let seconds = Double(monotonicNanos() - start) / 1e9
        try await consumer.value
        return Double(count) / seconds / 1e6
    }
}

/// A one-way pipe of `[UInt8]` values between two tasks.
/// Its calls run on the caller's executor (`nonisolated(nonsending)`), as the channels' own calls do, so that
/// the harness adds no executor hop per value to any line.
protocol LocalPipe: Sendable {
    init(capacity: Int)
    nonisolated(nonsending) func send(_ value: [UInt8]) async throws
    nonisolated(nonsending) func finish() async throws
    nonisolated(nonsending) func receive() async throws -> [UInt8]?
}

struct ChannelPipe: LocalPipe {
    let tx: Sender<[UInt8]>, rx: Receiver<[UInt8]>
    init(capacity: Int) { (tx, rx) = Channel<[UInt8]>.make(capacity: capacity) }
    nonisolated(nonsending) func send(_ value: [UInt8]) async throws { try await tx.send(value) }
    nonisolated(nonsending) func finish() async throws { try await tx.close() }
    nonisolated(nonsending) func receive() async throws -> [UInt8]? { try await rx.receive() }
}

/// swift-async-algorithms' channel: always a rendezvous.
struct AsyncChannelPipe: LocalPipe {
    let channel = AsyncChannel<[UInt8]>()
    let iterator: SharedIterator<AsyncChannel<[UInt8]>.Iterator>
    init(capacity: Int) { iterator = SharedIterator(channel.makeAsyncIterator()) }
    nonisolated(nonsending) func send(_ value: [UInt8]) async throws { await channel.send(value) }
    nonisolated(nonsending) func finish() async throws { channel.finish() }
    nonisolated(nonsending) func receive() async throws -> [UInt8]? { await iterator.next() }
}

/// The standard library's stream: unbounded.
struct AsyncStreamPipe: LocalPipe {
    let continuation: AsyncStream<[UInt8]>.Continuation
    let iterator: SharedIterator<AsyncStream<[UInt8]>.Iterator>
    init(capacity: Int) {
        let (stream, continuation) = AsyncStream<[UInt8]>.makeStream(bufferingPolicy: .unbounded)
        self.continuation = continuation
        iterator = SharedIterator(stream.makeAsyncIterator())
    }
    nonisolated(nonsending) func send(_ value: [UInt8]) async throws { continuation.yield(value) }
    nonisolated(nonsending) func finish() async throws { continuation.finish() }
    nonisolated(nonsending) func receive() async throws -> [UInt8]? { await iterator.next() }
}

/// An async iterator used by one task at a time, behind a reference so a `Sendable` closure can drive it.
final class SharedIterator<Base: AsyncIteratorProtocol>: @unchecked Sendable where Base.Element: Sendable {
    private var base: Base
    init(_ base: Base) { self.base = base }
    nonisolated(nonsending) func next() async -> Base.Element? { try? await base.next() }
}
