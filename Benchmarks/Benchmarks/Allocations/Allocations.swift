// What the per-message paths allocate: messages sent and received with both ends in this process (so the
// counts hold both sides), per transport with raw bytes, and per codec over a Unix socket. Each benchmark's
// iteration is 1,000 messages (scalingFactor .kilo: the counts shown are per message); the malloc counts are
// the budget that `swift package benchmark thresholds check` holds them to (Thresholds/). Names have no spaces:
// the threshold files are named after them, and the check reads a name with spaces under another file name.
import Benchmark
import Foundation
import Interprocess

struct Small: Codable, Sendable, Equatable {
    var id: Int
    var name: String
    var ok: Bool
}

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.mallocCountTotal],
        timeUnits: .microseconds,
        warmupIterations: 3,
        scalingFactor: .kilo,
        maxDuration: .seconds(2),
        maxIterations: 50,
        // The budget is the p90 of allocations per 1,000 messages (Thresholds/), give or take a tenth of an
        // allocation per message: one allocation more per message is a regression, one fewer an improvement
        // (then the budget is lowered with `thresholds update`). Speed is `ipc bench`'s business.
        thresholds: [.mallocCountTotal: .init(absolute: [.p90: 100])]
    )

    let message = [UInt8](repeating: 7, count: 32)
    for kind in Kind.allCases {
        messages("raw-stream-\(kind)", kind, .raw, message, roundTrips: false)
        messages("raw-round-trip-\(kind)", kind, .raw, message, roundTrips: true)
    }
    for kind in Kind.allCases where kind != .inProcess {
        inPlace("raw-in-place-stream-\(kind)", kind)
    }
    let small = Small(id: 42, name: "job-42", ok: true)
    messages("json-stream-unix", .unix, .json(Small.self), small, roundTrips: false)
    messages("binary-stream-unix", .unix, .binary(Small.self), small, roundTrips: false)
    messages("utf8-stream-unix", .unix, .utf8, "a line of text", roundTrips: false)
}

/// A benchmark of `value` sent and received over a channel made by `Pair.make` (in its setup), 1,000 messages
/// an iteration. A stream sends the 1,000 (within the capacity, so no send waits), then receives them (most are
/// there already: the path without waiting); round trips send one and receive it, 1,000 times (every receive
/// waits for its message: the path through suspension and wake-up).
func messages<Codec: MessageCodec>(_ name: String, _ kind: Kind, _ codec: Codec, _ value: Codec.Value, roundTrips: Bool) {
    let pair = Holder<Pair<Codec>>()
    var configuration = Benchmark.defaultConfiguration
    // A round trip wakes a task that waits, which allocates or not depending on who got there first (a wait that
    // parks allocates, one that finds its message while spinning does not): 7 to 9 per message over a socket
    // from run to run on the same build. The budget there only catches a gross regression.
    if roundTrips { configuration.thresholds = [.mallocCountTotal: .init(absolute: [.p90: 2000])] }
    Benchmark(name, configuration: configuration) { benchmark in
        guard let pair = pair.value else { return }
        if roundTrips {
            for _ in benchmark.scaledIterations {
                try await pair.tx.send(value)
                blackHole(try await pair.rx.receive())
            }
        } else {
            for _ in benchmark.scaledIterations { try await pair.tx.send(value) }
            for _ in benchmark.scaledIterations { blackHole(try await pair.rx.receive()) }
        }
    } setup: {
        pair.value = try await Pair.make(kind, codec: codec)
    } teardown: {
        await pair.value?.close()
        pair.value = nil
    }
}

/// A stream of 32-byte messages written into a loan (`send(byteCount:)`) and read where they lie (`receive { }`).
func inPlace(_ name: String, _ kind: Kind) {
    let pair = Holder<Pair<RawBytesCodec>>()
    Benchmark(name) { benchmark in
        guard let pair = pair.value else { return }
        for _ in benchmark.scaledIterations {
            try await pair.tx.send(byteCount: 32) { buffer in buffer.initializeMemory(as: UInt8.self, repeating: 7) }
        }
        for _ in benchmark.scaledIterations { blackHole(try await pair.rx.receive { bytes in bytes.count }) }
    } setup: {
        pair.value = try await Pair.make(kind, codec: .raw)
    } teardown: {
        await pair.value?.close()
        pair.value = nil
    }
}

/// What a benchmark's setup made, for its closure and teardown (the three run one after another).
final class Holder<T>: @unchecked Sendable {
    var value: T?
}

enum Kind: String, CaseIterable, CustomStringConvertible {
    case inProcess = "in-process", unix, tcp, sharedMemory = "shm"
    var description: String { rawValue }
}

/// A sender and a receiver of one channel, both in this process.
struct Pair<Codec: MessageCodec>: Sendable {
    let tx: Sender<Codec.Value>
    let rx: Receiver<Codec.Value>
    let listener: Listener<Codec, NoMessages>?

    /// Room for a stream's 1,000 messages beside those taken and not yet acknowledged (a receiver credits its
    /// sender every quarter of its capacity).
    static var capacity: Int { 2048 }

    static var options: ChannelOptions {
        var options = ChannelOptions()
        options.capacity = capacity
        return options
    }

    static func make(_ kind: Kind, codec: Codec) async throws -> Pair {
        let endpoint: Endpoint
        switch kind {
        case .inProcess:
            let (tx, rx) = Channel<Codec.Value>.make(capacity: capacity)
            return Pair(tx: tx, rx: rx, listener: nil)
        case .unix: endpoint = .unix(path: NSTemporaryDirectory() + "/ipc-alloc-\(getpid()).sock")
        case .tcp: endpoint = .tcp(host: "127.0.0.1", port: 0)
        case .sharedMemory: endpoint = .sharedMemory(name: "ipc-alloc-\(getpid())")
        }
        let listener = try IPC.listen(on: endpoint, sending: codec)
        async let accepted = listener.accept()
        let rx = try await IPC.connect(to: listener.endpoint, receiving: codec, options: options)
        return Pair(tx: try await accepted.sender, rx: rx, listener: listener)
    }

    func close() async {
        try? await tx.closeAndWait()
        listener?.close()
    }
}
