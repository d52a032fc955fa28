#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import BenchmarkSupport
import Foundation
import Histogram
import Interprocess

/// The typed message of the typed W2 lines: 64 bytes of data (seven scalar fields and a 24-character string), as a
/// service's small messages are. Encoded it is larger: the binary codec writes each field's name and length.
struct BenchSample: Codable, Sendable, Equatable {
    var seq: UInt64
    var timestamp: UInt64
    var worker: UInt32
    var kind: UInt16
    var flags: UInt16
    var value: Double
    var ratio: Double
    var label: String

    static func make(_ seq: Int) -> BenchSample {
        BenchSample(seq: UInt64(seq), timestamp: 1_764_000_000_000 + UInt64(seq), worker: 7, kind: 3, flags: 0x11, value: 2.5, ratio: 0.75, label: "sample-label-0123456789x")
    }
}

enum Workload: String, CaseIterable, ExpressibleByArgument {
    case w1, w2, w3, w4
}

/// W4's payload sizes, and how many timed round trips each gets (after a tenth as many warm-up ones).
let w4Sizes = [64, 1 << 10, 16 << 10, 256 << 10, 1 << 20, 4 << 20]
func w4Iterations(_ size: Int, quick: Bool) -> Int { (size >= 1 << 20 ? 100 : 1000) / (quick ? 10 : 1) }

/// What one bench line runs over.
enum BenchTransport: String, CaseIterable, ExpressibleByArgument {
    /// Plain blocking syscalls on a socketpair: the limit.
    case baseline
    case unixRaw = "unix-raw"
    case tcpRaw = "tcp-raw"
    /// The C shared-memory ring of ../shared/baseline (built with gcc, when that folder is found): the limit.
    case cRing = "c-shm-ring"
    case shmRaw = "shm-raw"
    /// Shared memory through the zero-copy calls: loans (`send(byteCount:)`) and in-place reads (`receive { }`).
    case shmZeroCopy = "shm-zero-copy"
    /// A Unix socket through the same calls: large messages use recycled buffers on both sides.
    case unixZeroCopy = "unix-zero-copy"
    case unixBinary = "unix-binary"
    case unixJSON = "unix-json"
    /// W2 with `send(contentsOf:)` and `receive(upTo:)`, 64 messages per call (reported apart: not the per-message API).
    case unixBatch = "unix-batch"
    case shmBatch = "shm-batch"
    /// boost::interprocess message_queue (Benchmarks/peers/boost_mq.cpp; needs libboost-dev).
    case boostQueue = "boost-mq"
    /// ZeroMQ PAIR sockets over ipc:// and tcp:// (Benchmarks/peers/zmq_pair.cpp; needs libzmq3-dev).
    case zmqIPC = "zmq-ipc"
    case zmqTCP = "zmq-tcp"

    var label: String {
        switch self {
        case .baseline: "raw socketpair (syscalls)"
        case .unixRaw: "Interprocess unix, raw bytes"
        case .tcpRaw: "Interprocess tcp, raw bytes"
        case .cRing: "C shm ring (baseline/shm_ring.c)"
        case .shmRaw: "Interprocess shm, raw bytes"
        case .shmZeroCopy: "Interprocess shm, zero-copy calls"
        case .unixZeroCopy: "Interprocess unix, zero-copy calls"
        case .unixBinary: "Interprocess unix, binary Codable"
        case .unixJSON: "Interprocess unix, JSON Codable"
        case .unixBatch: "Interprocess unix, raw, 64 per call"
        case .shmBatch: "Interprocess shm, raw, 64 per call"
        case .boostQueue: "boost::interprocess message_queue"
        case .zmqIPC: "ZeroMQ ipc:// (PAIR)"
        case .zmqTCP: "ZeroMQ tcp:// (PAIR)"
        }
    }

    /// The physical limits: every line's ratio is taken against their best run.
    var isLimit: Bool { self == .baseline || self == .cRing }
    /// A library a user would otherwise pick, run by its own program.
    var isPeer: Bool { self == .boostQueue || self == .zmqIPC || self == .zmqTCP }

    /// The limit a line is compared with: the C ring for shared memory, the raw socketpair otherwise.
    var limit: BenchTransport? {
        if isLimit { return nil }
        return isSharedMemory || self == .boostQueue ? .cRing : .baseline
    }

    /// The peer library a line is compared with: what a user would pick for the same job.
    var peer: BenchTransport? {
        switch self {
        case .shmRaw, .shmZeroCopy, .shmBatch: .boostQueue
        case .unixRaw, .unixZeroCopy, .unixBinary, .unixJSON, .unixBatch: .zmqIPC
        case .tcpRaw: .zmqTCP
        default: nil
        }
    }

    /// Whether the line sends with `send(byteCount:)` and receives with `receive { }`.
    var usesZeroCopyCalls: Bool { self == .shmZeroCopy || self == .unixZeroCopy }
    /// Whether the line sends with `send(contentsOf:)` and receives with `receive(upTo:)`.
    var usesBatchCalls: Bool { self == .unixBatch || self == .shmBatch }
    /// The Interprocess lines over shared memory (compared with the C ring).
    var isSharedMemory: Bool { self == .shmRaw || self == .shmZeroCopy || self == .shmBatch }

    func applies(to workload: Workload) -> Bool {
        switch self {
        case .baseline, .unixRaw, .shmRaw, .shmZeroCopy, .unixZeroCopy: true
        case .tcpRaw, .cRing: workload != .w4
        case .boostQueue, .zmqIPC, .zmqTCP: workload == .w1 || workload == .w2
        case .unixBinary, .unixJSON, .unixBatch, .shmBatch: workload == .w2
        }
    }
}

/// What `ipc bench --json` writes: every line of one invocation.
struct BenchReport: Codable {
    var machine: String
    var date: String
    var placement: Bench.Placement
    var runs: Int
    var counts: BenchCounts
    var capacity: Int
    var lines: [BenchLine]
}

/// One line: its median (W1: p50, p99, max; W4: p50 per size; W2, W3: the rate), every run, the best run's main
/// figure, and its ratios to the limit's best run and the peer library's median (main figure over main figure).
struct BenchLine: Codable {
    var workload: String
    var transport: String
    var label: String
    var unit: String
    var median: [Double]
    var runs: [[Double]]
    var best: Double
    var limit: String?
    var ratioToLimit: Double?
    var peer: String?
    var ratioToPeer: Double?
    var peakRSSKiB: [Int]?
    /// W1: the median run's latency distribution, (percentile, us) pairs at HdrHistogram's usual steps; the
    /// peer libraries and the C ring report only p50 and p99.
    var distribution: [[Double]]?
}

extension Workload {
    var unit: String {
        switch self {
        case .w1, .w4: "us"
        case .w2: "M msg/s"
        case .w3: "GB/s"
        }
    }
}

struct BenchCounts: Codable {
    var w1Warmup = 1000
    var w1Iterations = 20000
    var w2Count = 1_000_000
    var w3Count = 1000
    var quick = false
}

/// One run's measurements.
struct BenchResult {
    var values: [Double]  // W1: p50, p99, max (us); W2: M msg/s; W3: GB/s; W4: p50 (us) per size
    var parentRSSKiB: Int
    var childRSSKiB: Int
    var distribution: [[Double]]? = nil

    /// A W1 result from its round-trip times.
    static func latency(_ latencies: Latencies) -> BenchResult {
        BenchResult(values: latencies.summary, parentRSSKiB: 0, childRSSKiB: 0, distribution: latencies.distribution)
    }

    /// A W2 (M msg/s) or W3 (GB/s of 1 MiB messages) result; `done` is the peer's "done RSS-KiB" reply.
    static func throughput(_ workload: Workload, count: Int, since start: UInt64, done: String) -> BenchResult {
        let seconds = Double(monotonicNanos() - start) / 1e9
        let rate = workload == .w3 ? Double(count) * Double(1 << 20) / seconds / 1e9 : Double(count) / seconds / 1e6
        return BenchResult(values: [rate], parentRSSKiB: ProcessControl.peakResidentKiB(), childRSSKiB: Int(done.split(separator: " ").last ?? "0") ?? 0)
    }
}

struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the standard workloads W1-W4 over each transport, beside raw-syscall and C shared-memory baselines.",
        discussion: "W1: 64-byte ping-pong (1,000 warm-up, 20,000 timed round trips). W2: 1,000,000 64-byte messages one way. W3: 1,000 1 MiB messages one way. W4: ping-pong at 64 B, 1 KiB, 16 KiB, 256 KiB, 1 MiB and 4 MiB (1,000 timed round trips each, 100 from 1 MiB). Unless --ring-size is given, shared-memory lines use a 4 MiB ring in W3 (as the C ring) and an 8 MiB ring in W4 (a 4 MiB message fits whole), the library's default otherwise. Two real processes; each line is the median of --runs runs. The limits (the raw socketpair for sockets, the C ring of ../shared/baseline for shared memory) show their best run beside their median, and every line's ratio is taken against the best run of its limit, so that a slow phase of the limit never flatters a line. The peer libraries a user would otherwise pick run in the same invocation from Benchmarks/peers (boost::interprocess message_queue beside shared memory, ZeroMQ PAIR over ipc:// beside Unix sockets and over tcp:// beside TCP; W1 and W2; built with g++ when libboost-dev and libzmq3-dev are installed, skipped with a note otherwise), and each line shows its ratio to that library's median. The typed lines (unix-binary, unix-json) send a struct of 64 data bytes: seven scalar fields and a 24-character string. --json FILE writes every line (median, every run, best run, ratios, peak memory) with the machine, date, placement and counts. The shm-zero-copy and unix-zero-copy lines use Sender.send(byteCount:) and Receiver.receive { } (over a socket these reuse one buffer per direction for large messages); in W4 they write only an 8-byte tag at each end of the payload, while the raw lines send whole arrays; every W4 echo is checked by its size and those two tags. The unix-batch and shm-batch lines (W2 only) send with Sender.send(contentsOf:) and receive with Receiver.receive(upTo:), 64 messages per call. While it runs, a line on standard error says which workload, transport and run it is on and about how long is left, when standard error is a terminal (nothing otherwise). Build with -c release.")

    @Option(help: "CPU placement: split (this process on CPU 0, the peer on CPU 1), same (both on CPU 0) or free.") var placement: Placement = .split
    @Option(help: "Runs per line; the median is reported.") var runs = 3
    @Option(help: "Channel capacity (messages) for the Interprocess lines; default: the library's default.") var capacity: Int?
    @Option(help: "Spin budget in microseconds before a waiting task sleeps; default: the library's default.") var spin: Int?
    @Option(help: "Payload bytes a sender keeps in flight (ChannelOptions.maxBytesInFlight); default: the library's default.") var bytesInFlight: Int?
    @Option(help: "Shared-memory ring size in bytes (a power of two); default: the library's default.") var ringSize: Int?
    @Flag(help: "Run the socket lines with resumable connections (ChannelOptions.resume), to measure what keeping every unacknowledged frame costs.") var resume = false
    @Flag(help: "After the other lines, run W2 over unix-raw, tcp-raw and shm-raw (those selected) with and without a metrics backend in both processes (one that adds up every report), interleaved, and show both.") var metricsCost = false
    @Option(parsing: .upToNextOption, help: "Workloads to run.") var workloads: [Workload] = Workload.allCases
    @Option(parsing: .upToNextOption, help: "Transports to run (the limits and peer libraries always run first).") var transports: [BenchTransport] = BenchTransport.allCases
    @Flag(help: "Lower counts for a quick look (do not quote these numbers).") var quick = false
    @Option(help: "Folder with the C reference programs (shm_ring.c); default: ../shared/baseline if it exists.") var cBaseline: String?
    @Option(help: "Also write every line as JSON to this file.") var json: String?
    @Option(help: "Also write a self-contained HTML page to this file: W4 latency against size (log-log), the W1 latency distributions, W2 and W3 bars beside the limits and peer libraries, every line, and a verdict computed from the numbers.") var report: String?

    enum Placement: String, ExpressibleByArgument, Codable {
        case split, same, free
    }

    func run() async throws {
        var counts = BenchCounts()
        if quick { counts = BenchCounts(w1Warmup: 200, w1Iterations: 2000, w2Count: 100_000, w3Count: 100, quick: true) }
        let childCPU: Int? = switch placement {
        case .split: 1
        case .same: 0
        case .free: nil
        }
        if childCPU != nil { ProcessControl.pinToCPU(0) }
        var options = ChannelOptions()
        if let capacity { options.capacity = capacity }
        if let spin { options.spinMicroseconds = spin }
        if let bytesInFlight { options.maxBytesInFlight = bytesInFlight }
        if let ringSize { options.sharedMemoryRingSize = ringSize }
        if resume { options.resume = ResumePolicy() }
        let directory = try makeTemporaryDirectory()
        defer { removeDirectory(directory) }
        // The limits and the peer libraries first, so that every Interprocess line has its ratios.
        var transports = self.transports.filter { $0.isLimit || $0.isPeer } + self.transports.filter { !$0.isLimit && !$0.isPeer }
        var programs: [NativeProgram.Kind: NativeProgram] = [:]
        for kind in NativeProgram.Kind.allCases {
            let users: [BenchTransport] = switch kind {
            case .cRing: [.cRing]
            case .boostQueue: [.boostQueue]
            case .zeroMQ: [.zmqIPC, .zmqTCP]
            }
            guard transports.contains(where: users.contains) else { continue }
            if let program = NativeProgram.build(kind, into: directory, cBaseline: cBaseline) {
                programs[kind] = program
            } else {
                say("note: \(kind.source) was not found or did not build (it needs \(kind.requirement)); its lines are skipped")
                transports.removeAll(where: users.contains)
            }
        }

        let machine = machineDescription()
        say("Interprocess bench: placement \(placement.rawValue), \(runs) runs per line (median), capacity \(options.capacity), \(options.maxBytesInFlight >> 10) KiB in flight, \(quick ? "QUICK counts" : "full counts")")
        say("machine: \(machine)")
        say("Ratios are taken against the best run of the limit (the raw socketpair for sockets, the C ring for shared memory) and against the median of the peer library a user would otherwise pick.")
        var report = BenchReport(machine: machine, date: ISO8601DateFormatter().string(from: Date()), placement: placement, runs: runs, counts: counts, capacity: options.capacity, lines: [])
        let costLines = metricsCost ? [BenchTransport.unixRaw, .tcpRaw, .shmRaw].filter(transports.contains).count * 2 * runs : 0
        let progress = BenchProgress(totalRuns: workloads.reduce(0) { sum, w in sum + transports.filter { $0.applies(to: w) }.count * runs } + costLines)
        defer { progress.clear() }
        for workload in workloads {
            var header: String
            switch workload {
            case .w1: header = "W1 ping-pong 64 B, round trip us: p50 / p99 / max"
            case .w2: header = "W2 \(counts.w2Count) x 64 B one way, M msg/s"
            case .w3: header = "W3 \(counts.w3Count) x 1 MiB one way, GB/s"
            case .w4: header = "W4 ping-pong by size, round trip p50 us: " + w4Sizes.map(sizeLabel).joined(separator: " / ")
            }
            header += " (shm ring \(sizeLabel(ringSize ?? Self.ringSize(for: workload) ?? options.sharedMemoryRingSize)))"
            if workload == .w2 && (transports.contains(.unixBinary) || transports.contains(.unixJSON)) {
                var binary: [UInt8] = [], json: [UInt8] = []
                try BinaryCodec(BenchSample.self).encode(.make(0), into: &binary)
                try JSONCodec(BenchSample.self).encode(.make(0), into: &json)
                header += "; typed lines: a struct of 64 data bytes (7 scalar fields, a 24-character string), \(binary.count) B binary, \(json.count) B JSON"
            }
            say("\n" + header)
            // Lower is better for latencies (W1, W4), higher for rates.
            let lowerIsBetter = workload == .w1 || workload == .w4
            var bestOf: [BenchTransport: Double] = [:]
            var medianOf: [BenchTransport: Double] = [:]
            for transport in transports where transport.applies(to: workload) {
                var results: [BenchResult] = []
                for _ in 0..<runs {
                    progress.starting("\(workload.rawValue.uppercased()) \(transport.rawValue)")
                    results.append(try await runOne(workload, transport, counts: counts, options: options, childCPU: childCPU, directory: directory, programs: programs))
                    progress.finished()
                }
                progress.clear()
                results.sort { $0.values[0] < $1.values[0] }
                var median = results[results.count / 2]
                if workload == .w4 {
                    // Each size's median over the runs.
                    median.values = median.values.indices.map { i in results.map { $0.values[i] }.sorted()[results.count / 2] }
                }
                let main = median.values[0]
                let best = lowerIsBetter ? results[0].values[0] : results[results.count - 1].values[0]
                bestOf[transport] = best
                medianOf[transport] = main
                var line = transport.label.padding(toLength: 36, withPad: " ", startingAt: 0)
                switch workload {
                case .w1, .w4: line += median.values.map { format($0) }.joined(separator: " / ")
                case .w2, .w3: line += format(main, 2)
                }
                // A ratio above 1 is better than the reference for rates, worse for latencies (time over time).
                var record = BenchLine(workload: workload.rawValue, transport: transport.rawValue, label: transport.label, unit: workload.unit, median: median.values, runs: results.map(\.values), best: best)
                if workload == .w1 { record.distribution = median.distribution ?? [[50, median.values[0]], [99, median.values[1]]] }
                if transport.isLimit {
                    line += "   best run \(format(best, 2))"
                } else if workload == .w4 {
                    line += "   4 MiB / 64 B: \(format(median.values[median.values.count - 1] / main, 1))x"
                } else {
                    if let limit = transport.limit, let limitBest = bestOf[limit] {
                        record.limit = limit.rawValue
                        record.ratioToLimit = main / limitBest
                        line += "   \(format(main / limitBest, 2))x \(limit == .cRing ? "the C ring" : "the socketpair")\(lowerIsBetter ? "'s time" : "'s rate")"
                    }
                    if let peer = transport.peer, let peerMedian = medianOf[peer] {
                        record.peer = peer.rawValue
                        record.ratioToPeer = main / peerMedian
                        line += "   \(format(main / peerMedian, 2))x \(peer.label)\(lowerIsBetter ? "'s time" : "'s rate")"
                    }
                }
                if (workload == .w2 || workload == .w3) && !transport.isLimit && !transport.isPeer {
                    line += "   peak RSS \(median.parentRSSKiB / 1024) / \(median.childRSSKiB / 1024) MiB"
                    record.peakRSSKiB = [median.parentRSSKiB, median.childRSSKiB]
                }
                say(line)
                say("RESULT \(workload.rawValue) \(transport.rawValue) \(median.values.map { format($0, 2) }.joined(separator: " ")) rss=\(median.parentRSSKiB),\(median.childRSSKiB)")
                report.lines.append(record)
            }
        }
        if metricsCost {
            try await measureMetricsCost(counts: counts, options: options, childCPU: childCPU, directory: directory, report: &report, progress: progress)
        }
        if let json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            try encoder.encode(report).write(to: URL(fileURLWithPath: json))
            say("\nwrote \(json)")
        }
        if let file = self.report {
            try Data(HTMLReport(reports: [report]).render().utf8).write(to: URL(fileURLWithPath: file))
            say("\nwrote \(file)")
        }
    }

    /// The shared-memory ring of the W3 and W4 lines unless --ring-size says otherwise: in W3 the C ring's
    /// (its byte ring is 4 MiB), in W4 the smallest that holds a 4 MiB message whole, so the zero-copy calls work
    /// in place. W1 and W2 use the library's default.
    static func ringSize(for workload: Workload) -> Int? {
        switch workload {
        case .w1, .w2: nil
        case .w3: 4 << 20
        case .w4: 8 << 20
        }
    }

    /// W2 with and without a metrics backend (``CountingMetrics``, in both processes), the two runs of each pair
    /// one after the other, so that the machine's drift touches both alike.
    private func measureMetricsCost(counts: BenchCounts, options: ChannelOptions, childCPU: Int?, directory: String, report: inout BenchReport, progress: BenchProgress) async throws {
        say("\nW2 \(counts.w2Count) x 64 B one way with and without a metrics backend (every report added up in-process), M msg/s; \(runs) interleaved pairs, medians")
        for transport in [BenchTransport.unixRaw, .tcpRaw, .shmRaw] where transports.contains(transport) {
            var without: [Double] = [], with: [Double] = []
            var reports = 0
            for _ in 0..<runs {
                progress.starting("W2 \(transport.rawValue) without metrics")
                without.append(try await runOne(.w2, transport, counts: counts, options: options, childCPU: childCPU, directory: directory, programs: [:]).values[0])
                progress.finished()
                let metrics = CountingMetrics()
                var measured = options
                measured.metricsFactory = metrics
                progress.starting("W2 \(transport.rawValue) with metrics")
                with.append(try await runOne(.w2, transport, counts: counts, options: measured, childCPU: childCPU, directory: directory, programs: [:]).values[0])
                progress.finished()
                reports = metrics.reportCount
            }
            progress.clear()
            let off = without.sorted()[without.count / 2], on = with.sorted()[with.count / 2]
            var line = transport.label.padding(toLength: 36, withPad: " ", startingAt: 0)
            line += "without \(format(off, 2))   with \(format(on, 2))   \(format(on / off, 2))x   (\(reports) reports in this process for \(counts.w2Count) messages)"
            say(line)
            for (suffix, values) in [("", without), ("+metrics", with)] {
                let record = BenchLine(workload: "w2-metrics-cost", transport: transport.rawValue + suffix, label: transport.label + (suffix.isEmpty ? "" : ", metrics backend"), unit: Workload.w2.unit, median: [values.sorted()[values.count / 2]], runs: values.map { [$0] }, best: values.max() ?? 0)
                report.lines.append(record)
            }
        }
    }

    private func runOne(_ workload: Workload, _ transport: BenchTransport, counts: BenchCounts, options: ChannelOptions, childCPU: Int?, directory: String, programs: [NativeProgram.Kind: NativeProgram]) async throws -> BenchResult {
        let args = ["bench-peer", workload.rawValue, transport.rawValue, "--capacity", String(options.capacity), "--spin", String(options.spinMicroseconds), "--bytes-in-flight", String(options.maxBytesInFlight)] + (options.resume == nil ? [] : ["--resume"]) + (options.metricsFactory == nil ? [] : ["--metrics"]) + ["--w1", String(counts.w1Warmup + counts.w1Iterations), "--w2", String(counts.w2Count), "--w3", String(counts.w3Count)]
        var options = options
        if ringSize == nil, let size = Self.ringSize(for: workload) { options.sharedMemoryRingSize = size }
        if transport == .baseline {
            guard let pair = ProcessControl.socketPair() else { throw ChildError(message: "socketpair failed") }
            let fds = [pair.0, pair.1]
            let child = try ChildProcess.spawnSelf(args, inheritFD: fds[1], pinCPU: childCPU)
            close(fds[1])
            let stream = RawStream(fd: fds[0])
            // Like the Interprocess lines, whose timing starts after the handshake: wait until the peer runs.
            _ = stream.receive()
            let result = try await runBaseline(workload, stream, counts: counts)
            close(fds[0])
            guard await child.wait() == 0 else { throw ChildError(message: "bench peer failed") }
            return result
        }
        switch transport {
        case .cRing, .boostQueue, .zmqIPC, .zmqTCP:
            let kind: NativeProgram.Kind = transport == .cRing ? .cRing : transport == .boostQueue ? .boostQueue : .zeroMQ
            guard let program = programs[kind] else { throw ChildError(message: "\(kind.source) was not built") }
            let arguments = transport == .zmqIPC ? ["ipc"] : transport == .zmqTCP ? ["tcp"] : []
            return try program.run(workload, arguments: arguments, childCPU: childCPU, counts: counts)
        default:
            break
        }
        let endpoint: Endpoint = if transport == .tcpRaw {
            .tcp(host: "127.0.0.1", port: 0)
        } else if transport.isSharedMemory {
            .sharedMemory(name: "bench-\(getpid())")
        } else {
            .unix(path: directory + "/bench.sock")
        }
        if transport == .unixBinary || transport == .unixJSON {
            let codec: any MessageCodec<BenchSample> = transport == .unixBinary ? BinaryCodec(BenchSample.self) : JSONCodec(BenchSample.self)
            return try await runTyped(codec, endpoint, args: args, counts: counts, options: options, childCPU: childCPU)
        }
        let listener = try IPC.listen(on: endpoint, sending: .raw, receiving: .raw, options: options)
        defer { listener.close() }
        let child = try ChildProcess.spawnSelf(args + ["--endpoint", listener.endpoint.description], pinCPU: childCPU)
        let connection = try await listener.accept()
        let result: BenchResult
        if transport.usesBatchCalls {
            result = try await runBatches(connection, counts: counts)
        } else {
            result = try await runChannel(workload, connection, counts: counts, zeroCopy: transport.usesZeroCopyCalls)
        }
        try await finish(connection, child)
        return result
    }

    /// W2 through `send(contentsOf:)`, 64 messages per call. Each slot of the batch is its own 64-byte array,
    /// tagged in place each round as the one-per-call lines tag their one array.
    private func runBatches(_ connection: Connection<[UInt8], [UInt8]>, counts: BenchCounts) async throws -> BenchResult {
        // The library copies small payloads, so each array is unique again once the call returns and is tagged
        // in place: the line measures the calls, not an allocation per message.
        var batch = [[UInt8]](repeating: [UInt8](repeating: 1, count: 64), count: BenchPeer.batchSize)
        let start = monotonicNanos()
        var i = 0
        while i < counts.w2Count {
            let n = min(BenchPeer.batchSize, counts.w2Count - i)
            for k in 0..<n {
                batch[k][0] = UInt8(truncatingIfNeeded: i + k)
                batch[k][63] = UInt8(truncatingIfNeeded: i + k)
            }
            try await connection.sender.send(contentsOf: batch[..<n])
            i += n
        }
        guard let done = try await connection.receiver.receive() else { throw ChildError(message: "no done") }
        return .throughput(.w2, count: counts.w2Count, since: start, done: String(decoding: done, as: UTF8.self))
    }

    private func runTyped(_ codec: some MessageCodec<BenchSample>, _ endpoint: Endpoint, args: [String], counts: BenchCounts, options: ChannelOptions, childCPU: Int?) async throws -> BenchResult {
        let listener = try IPC.listen(on: endpoint, sending: codec, receiving: .utf8, options: options)
        defer { listener.close() }
        let child = try ChildProcess.spawnSelf(args + ["--endpoint", listener.endpoint.description], pinCPU: childCPU)
        let connection = try await listener.accept()
        var sample = BenchSample.make(0)
        let start = monotonicNanos()
        for i in 0..<counts.w2Count {
            sample.seq = UInt64(i)
            try await connection.sender.send(sample)
        }
        guard let done = try await connection.receiver.receive() else { throw ChildError(message: "no done") }
        let result = BenchResult.throughput(.w2, count: counts.w2Count, since: start, done: done)
        try await finish(connection, child)
        return result
    }

    /// Closes this side, reads the peer's end too (so both directions are done and the peer's closeAndWait
    /// returns at once), and checks the peer's exit status.
    private func finish<Out, In>(_ connection: Connection<Out, In>, _ child: ChildProcess) async throws {
        try await connection.sender.close()
        while try await connection.receiver.receive() != nil {}
        guard await child.wait() == 0 else { throw ChildError(message: "bench peer failed") }
    }

    /// The Interprocess lines. With `zeroCopy`, messages are written into loans (`send(byteCount:)`, the whole
    /// payload copied in from the sender's array, except in W4) and read in place (`receive { }`, the checked
    /// bytes only, as the raw lines' receivers check them).
    private func runChannel(_ workload: Workload, _ connection: Connection<[UInt8], [UInt8]>, counts: BenchCounts, zeroCopy: Bool) async throws -> BenchResult {
        /// Sends `payload`, through a loan when `zeroCopy`.
        func send(_ payload: [UInt8]) async throws {
            if zeroCopy {
                try await connection.sender.send(byteCount: payload.count) { $0.copyBytes(from: payload) }
            } else {
                try await connection.sender.send(payload)
            }
        }
        /// Receives a message: its size, first and last byte (read in place when `zeroCopy`).
        func receive() async throws -> (count: Int, first: UInt8, last: UInt8)? {
            if zeroCopy {
                return try await connection.receiver.receive { bytes in (bytes.count, bytes.first ?? 0, bytes.last ?? 0) }
            }
            return try await connection.receiver.receive().map { ($0.count, $0.first ?? 0, $0.last ?? 0) }
        }
        switch workload {
        case .w1:
            var payload = [UInt8](repeating: 1, count: 64)
            var latencies = Latencies()
            for i in 0..<(counts.w1Warmup + counts.w1Iterations) {
                payload[0] = UInt8(truncatingIfNeeded: i)
                let t0 = monotonicNanos()
                try await send(payload)
                guard let echo = try await receive(), echo.count == 64, echo.first == payload[0] else {
                    throw ChildError(message: "W1: bad echo at \(i)")
                }
                if i >= counts.w1Warmup { latencies.record(monotonicNanos() - t0) }
            }
            try await connection.sender.send(Array("end".utf8))
            _ = try await connection.receiver.receive()
            return .latency(latencies)
        case .w4:
            var payload: [UInt8] = []
            let medians = try await measureW4(quick: counts.quick) { size, i in
                    let tag = UInt64(i) &* 0x9E37_79B9_7F4A_7C15
                    if payload.count != size { payload = [UInt8](repeating: 1, count: size) }
                    if zeroCopy {
                        // Built in place: only the two tags are written (the payload's other bytes are whatever the
                        // ring holds); the receiver checks them in place.
                        try await connection.sender.send(byteCount: size) { buffer in
                            buffer.storeBytes(of: tag, as: UInt64.self)
                            buffer.storeBytes(of: tag, toByteOffset: size - 8, as: UInt64.self)
                        }
                        let ok = try await connection.receiver.receive { bytes in
                            bytes.count == size && bytes.loadUnaligned(as: UInt64.self) == tag
                                && bytes.loadUnaligned(fromByteOffset: size - 8, as: UInt64.self) == tag
                        }
                        guard ok == true else { throw ChildError(message: "W4: bad echo of \(size) bytes at \(i)") }
                    } else {
                        payload.withUnsafeMutableBytes { buffer in
                            buffer.storeBytes(of: tag, as: UInt64.self)
                            buffer.storeBytes(of: tag, toByteOffset: size - 8, as: UInt64.self)
                        }
                        try await connection.sender.send(payload)
                        // The echo is checked as the zero-copy lines check theirs, by its size and two tags: an
                        // element-by-element comparison of the whole array took longer than the round trip itself
                        // (the socketpair baseline checks one byte).
                        guard let echo = try await connection.receiver.receive(), echo.count == size, echo.withUnsafeBytes({
                            $0.loadUnaligned(as: UInt64.self) == tag && $0.loadUnaligned(fromByteOffset: size - 8, as: UInt64.self) == tag
                        }) else {
                            throw ChildError(message: "W4: bad echo of \(size) bytes at \(i)")
                        }
                    }
            }
            try await connection.sender.send(Array("end".utf8))
            _ = try await connection.receiver.receive()
            return BenchResult(values: medians, parentRSSKiB: 0, childRSSKiB: 0)
        case .w2, .w3:
            let count = workload == .w2 ? counts.w2Count : counts.w3Count
            var payload = [UInt8](repeating: 1, count: workload == .w2 ? 64 : 1 << 20)
            let sender = connection.sender
            let start = monotonicNanos()
            for i in 0..<count {
                payload[0] = UInt8(truncatingIfNeeded: i)
                payload[payload.count - 1] = UInt8(truncatingIfNeeded: i)
                // The library's call itself, not through the helper above (one async call less per message).
                if zeroCopy { try await send(payload) } else { try await sender.send(payload) }
            }
            guard let done = try await connection.receiver.receive() else { throw ChildError(message: "no done") }
            return .throughput(workload, count: count, since: start, done: String(decoding: done, as: UTF8.self))
        }
    }

    private func runBaseline(_ workload: Workload, _ stream: RawStream, counts: BenchCounts) async throws -> BenchResult {
        switch workload {
        case .w1:
            var payload = [UInt8](repeating: 1, count: 64)
            var latencies = Latencies()
            for i in 0..<(counts.w1Warmup + counts.w1Iterations) {
                payload[0] = UInt8(truncatingIfNeeded: i)
                let t0 = monotonicNanos()
                payload.withUnsafeBytes { stream.send($0) }
                let echo = stream.receive()
                precondition(echo.count == 64 && echo[0] == payload[0], "baseline W1: bad echo")
                if i >= counts.w1Warmup { latencies.record(monotonicNanos() - t0) }
            }
            return .latency(latencies)
        case .w4:
            var payload: [UInt8] = []
            let medians = try await measureW4(quick: counts.quick) { size, i in
                if payload.count != size { payload = [UInt8](repeating: 1, count: size) }
                payload[0] = UInt8(truncatingIfNeeded: i)
                payload.withUnsafeBytes { stream.send($0) }
                let echo = stream.receive()
                precondition(echo.count == size && echo[0] == payload[0], "baseline W4: bad echo")
            }
            Array("end".utf8).withUnsafeBytes { stream.send($0) }
            return BenchResult(values: medians, parentRSSKiB: 0, childRSSKiB: 0)
        case .w2, .w3:
            let count = workload == .w2 ? counts.w2Count : counts.w3Count
            var payload = [UInt8](repeating: 1, count: workload == .w2 ? 64 : 1 << 20)
            let start = monotonicNanos()
            for i in 0..<count {
                payload[0] = UInt8(truncatingIfNeeded: i)
                payload[payload.count - 1] = UInt8(truncatingIfNeeded: i)
                payload.withUnsafeBytes { stream.send($0) }
            }
            return .throughput(workload, count: count, since: start, done: String(decoding: stream.receive(), as: UTF8.self))
        }
    }
}

/// W4: `roundTrip(size, i)` for each size, timed after a tenth as many warm-up ones (the first of which
/// allocates the size's buffers); the p50 of each size, in microseconds.
func measureW4(quick: Bool, _ roundTrip: (Int, Int) async throws -> Void) async throws -> [Double] {
    var medians: [Double] = []
    for size in w4Sizes {
        let timed = w4Iterations(size, quick: quick)
        var latencies = Latencies()
        for i in 0..<(timed + timed / 10) {
            let t0 = monotonicNanos()
            try await roundTrip(size, i)
            if i >= timed / 10 { latencies.record(monotonicNanos() - t0) }
        }
        medians.append(latencies.summary[0])
    }
    return medians
}

/// Round-trip times, kept in an HdrHistogram: 1 ns to 60 s at three significant digits (a percentile is exact to
/// 0.1%), in a fixed footprint whatever the number of samples.
struct Latencies {
    private var histogram = Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)

    mutating func record(_ nanoseconds: UInt64) {
        _ = histogram.record(min(max(nanoseconds, 1), histogram.highestTrackableValue))
    }

    /// p50, p99 and the largest, in microseconds.
    var summary: [Double] {
        [histogram.valueAtPercentile(50), histogram.valueAtPercentile(99), histogram.max].map { Double($0) / 1000 }
    }

    /// (percentile, microseconds) pairs at HdrHistogram's usual steps (five per halving of the distance to 100%),
    /// up to the largest.
    var distribution: [[Double]] {
        histogram.percentiles(ticksPerHalfDistance: 5).map { [$0.percentileLevelIteratedTo, Double($0.value) / 1000] }
    }
}

func machineDescription() -> String {
    var cpu = "unknown CPU"
    if let text = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
        let line = text.split(separator: "\n").first(where: { $0.hasPrefix("model name") }),
        let name = line.split(separator: ":").last
    {
        cpu = name.trimmingCharacters(in: .whitespaces)
    }
    var uts = utsname()
    uname(&uts)
    let release = withUnsafeBytes(of: &uts.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    return "\(cpu), \(sysconf(Int32(_SC_NPROCESSORS_ONLN))) CPUs, Linux \(release)"
}

/// The other process of `ipc bench`.
struct BenchPeer: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "bench-peer", shouldDisplay: false)
    /// Messages per call in the batched W2 lines.
    static let batchSize = 64
    @Argument var workload: Workload
    @Argument var transport: BenchTransport
    @Option var w1 = 0
    @Option var w2 = 0
    @Option var w3 = 0
    @Option(transform: parseEndpoint) var endpoint: Endpoint?
    @Option var capacity = ChannelOptions().capacity
    @Option var spin = ChannelOptions().spinMicroseconds
    @Option var bytesInFlight = ChannelOptions().maxBytesInFlight
    @Flag var resume = false
    @Flag var metrics = false

    private var options: ChannelOptions {
        var options = ChannelOptions()
        options.capacity = capacity
        options.spinMicroseconds = spin
        options.maxBytesInFlight = bytesInFlight
        if resume { options.resume = ResumePolicy() }
        if metrics { options.metricsFactory = CountingMetrics() }
        return options
    }

    func run() async throws {
        if transport == .baseline {
            runBaselinePeer(RawStream(fd: 3))
            return
        }
        guard let endpoint else { throw ValidationError("the peer needs --endpoint") }
        if transport == .unixBinary || transport == .unixJSON {
            let codec: any MessageCodec<BenchSample> = transport == .unixBinary ? BinaryCodec(BenchSample.self) : JSONCodec(BenchSample.self)
            try await typedPeer(codec, endpoint)
            return
        }
        let connection = try await IPC.connect(to: endpoint, sending: .raw, receiving: .raw, options: options)
        // Parsed arguments are read once: a property wrapper's getter in the loops below costs a generic-metadata
        // lookup per message, which the peer's figures must not include.
        let workload = workload
        let zeroCopy = transport.usesZeroCopyCalls
        let batches = transport.usesBatchCalls
        switch workload {
        case .w1 where zeroCopy, .w4 where zeroCopy:
            // Echo through the zero-copy calls: in W1 the whole message is copied from its place in one ring into
            // a loan in the other; in W4 only its two tags are.
            while true {
                var copy: [UInt8] = []
                let echo = try await connection.receiver.receive { bytes -> (Int, UInt64, UInt64) in
                    if workload == .w1 || bytes.count < 16 {
                        copy = [UInt8](bytes)
                        return (bytes.count, 0, 0)
                    }
                    return (bytes.count, bytes.loadUnaligned(as: UInt64.self), bytes.loadUnaligned(fromByteOffset: bytes.count - 8, as: UInt64.self))
                }
                guard let (count, head, tail) = echo else { break }
                try await connection.sender.send(byteCount: count) { buffer in
                    if copy.count == count {
                        buffer.copyBytes(from: copy)
                    } else {
                        buffer.storeBytes(of: head, as: UInt64.self)
                        buffer.storeBytes(of: tail, toByteOffset: count - 8, as: UInt64.self)
                    }
                }
                if count == 3 { break }
            }
        case .w1, .w4:
            while let message = try await connection.receiver.receive() {
                try await connection.sender.send(message)
                if message.count == 3 { break }
            }
        case .w2, .w3:
            let count = workload == .w2 ? w2 : w3
            var i = 0
            while batches && i < count {
                guard let batch = try await connection.receiver.receive(upTo: Self.batchSize) else { throw ChildError(message: "stream ended at \(i)") }
                for message in batch {
                    let tag = UInt8(truncatingIfNeeded: i)
                    guard message.first == tag && message.last == tag else { throw ChildError(message: "message \(i) corrupt or out of order") }
                    i += 1
                }
            }
            for i in i..<count {
                let tag = UInt8(truncatingIfNeeded: i)
                let ok: Bool?
                if zeroCopy {
                    ok = try await connection.receiver.receive { $0.first == tag && $0.last == tag }
                } else {
                    ok = try await connection.receiver.receive().map { $0.first == tag && $0.last == tag }
                }
                guard let ok else { throw ChildError(message: "stream ended at \(i)") }
                guard ok else { throw ChildError(message: "message \(i) corrupt or out of order") }
            }
            try await connection.sender.send(Array("done \(ProcessControl.peakResidentKiB())".utf8))
        }
        guard try await connection.receiver.receive() == nil else { throw ChildError(message: "unexpected message") }
        try await connection.sender.closeAndWait()
    }

    private func typedPeer(_ codec: some MessageCodec<BenchSample>, _ endpoint: Endpoint) async throws {
        let connection = try await IPC.connect(to: endpoint, sending: .utf8, receiving: codec, options: options)
        for i in 0..<w2 {
            guard let sample = try await connection.receiver.receive() else { throw ChildError(message: "stream ended at \(i)") }
            var expected = BenchSample.make(0)
            expected.seq = UInt64(i)
            guard sample == expected else { throw ChildError(message: "sample \(i) wrong") }
        }
        try await connection.sender.send("done \(ProcessControl.peakResidentKiB())")
        guard try await connection.receiver.receive() == nil else { throw ChildError(message: "unexpected message") }
        try await connection.sender.closeAndWait()
    }

    private func runBaselinePeer(_ stream: RawStream) {
        Array("ready".utf8).withUnsafeBytes { stream.send($0) }
        switch workload {
        case .w1:
            for _ in 0..<w1 {
                let message = stream.receive()
                stream.send(message)
            }
        case .w4:
            while true {
                let message = stream.receive()
                if message.count == 3 { break }
                stream.send(message)
            }
        case .w2, .w3:
            let count = workload == .w2 ? w2 : w3
            for i in 0..<count {
                let message = stream.receive()
                let tag = UInt8(truncatingIfNeeded: i)
                precondition(message[0] == tag && message[message.count - 1] == tag, "baseline: message \(i) corrupt")
            }
            Array("done \(ProcessControl.peakResidentKiB())".utf8).withUnsafeBytes { stream.send($0) }
        }
    }
}

/// `64 B`, `16 KiB`, `4 MiB`.
func sizeLabel(_ bytes: Int) -> String {
    if bytes >= 1 << 20 && bytes % (1 << 20) == 0 { return "\(bytes >> 20) MiB" }
    if bytes >= 1 << 10 && bytes % (1 << 10) == 0 { return "\(bytes >> 10) KiB" }
    return "\(bytes) B"
}
