import ArgumentParser
import Foundation
import Interprocess

/// The codecs alone, in one process: what encoding and decoding the typed benchmark message costs, beside
/// Foundation's `JSONEncoder`/`JSONDecoder` on the same value.
struct BenchCodec: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-codec",
        abstract: "Encode and decode the typed benchmark message in one process, beside Foundation's JSON coders.",
        discussion: "The message is W2's typed value (a struct of 64 data bytes: seven scalar fields and a 24-character string). Each line times --count encodes into one reused buffer, then as many decodes of the encoded bytes, and reports nanoseconds per message (median of --runs runs). The Foundation line uses one JSONEncoder and one JSONDecoder for all messages. Build with -c release.")

    @Option(help: "Runs per line; the median is reported.") var runs = 5
    @Option(help: "Messages per run.") var count = 200_000
    @Option(parsing: .upToNextOption, help: "Lines to run: binary, json, foundation-json.") var codecs = ["binary", "json", "foundation-json"]

    func run() async throws {
        say("Interprocess bench-codec: \(count) messages per run, \(runs) runs per line (median), ns per message")
        say("machine: \(machineDescription())")
        say("codec".padding(toLength: 28, withPad: " ", startingAt: 0) + "bytes   encode   decode")
        if codecs.contains("binary") { try line("binary", BinaryCodec(BenchSample.self)) }
        if codecs.contains("json") { try line("json", JSONCodec(BenchSample.self)) }
        if codecs.contains("foundation-json") { try line("foundation-json", FoundationJSON()) }
    }

    private func line(_ name: String, _ codec: some MessageCodec<BenchSample>) throws {
        var encodeTimes: [Double] = [], decodeTimes: [Double] = []
        var size = 0
        for _ in 0..<runs {
            var buffer: [UInt8] = []
            buffer.reserveCapacity(1024)
            var start = monotonicNanos()
            for i in 0..<count {
                buffer.removeAll(keepingCapacity: true)
                try codec.encode(.make(i), into: &buffer)
            }
            encodeTimes.append(Double(monotonicNanos() - start) / Double(count))
            size = buffer.count
            let expected = BenchSample.make(count - 1)
            start = monotonicNanos()
            for _ in 0..<count {
                guard try codec.decode(buffer) == expected else { throw ChildError(message: "\(name) decoded another value") }
            }
            decodeTimes.append(Double(monotonicNanos() - start) / Double(count))
        }
        encodeTimes.sort()
        decodeTimes.sort()
        let encode = encodeTimes[runs / 2], decode = decodeTimes[runs / 2]
        say(name.padding(toLength: 28, withPad: " ", startingAt: 0) + String(size).padding(toLength: 8, withPad: " ", startingAt: 0)
            + format(encode, 0).padding(toLength: 9, withPad: " ", startingAt: 0) + format(decode, 0))
        say("RESULT codec \(name) \(size) \(format(encode, 0)) \(format(decode, 0))")
    }
}

/// Foundation's JSON coders, one of each for all messages: the reference the JSON codec is measured against.
private struct FoundationJSON: MessageCodec {
    let encoder = JSONEncoder()
    let decoder = JSONDecoder()
    var name: String { "json" }
    func encode(_ value: BenchSample, into buffer: inout [UInt8]) throws(IPCError) {
        do { buffer.append(contentsOf: try encoder.encode(value)) } catch { throw IPCError(.encodingFailed, "\(error)") }
    }
    func decode(_ bytes: [UInt8]) throws(IPCError) -> BenchSample {
        do { return try decoder.decode(BenchSample.self, from: Data(bytes)) } catch { throw IPCError(.decodingFailed, "\(error)") }
    }
}
