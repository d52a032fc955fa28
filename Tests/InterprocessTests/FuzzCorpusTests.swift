import Foundation
import InterprocessCore
import Testing

/// The committed fuzz corpus (`Tests/FuzzCorpus/TARGET/`: the seeds, and every input that once made a target fail)
/// replayed through `ipc-fuzz`, built without libFuzzer. A target that crashes or traps on an input fails here.
@Suite("Fuzz corpus", .timeLimit(.minutes(2)))
struct FuzzCorpusTests {
    static let corpus = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("FuzzCorpus")

    @Test("every committed input is handled", arguments: ["stream", "hello", "binary", "json", "ring"])
    func replay(_ target: String) async throws {
        let directory = Self.corpus.appendingPathComponent(target)
        let files = try FileManager.default.contentsOfDirectory(atPath: directory.path).sorted()
        #expect(!files.isEmpty, "no corpus for \(target)")
        let child = try ChildProcess("ipc-fuzz", [target] + files.map { directory.appendingPathComponent($0).path })
        let (status, output) = await child.finish(within: 60)
        #expect(status == 0, "ipc-fuzz \(target) said: \(output)")
        #expect(output.contains("\(target): \(files.count) inputs handled"))
    }

    /// Found by the `hello` target: names were decoded with replacement characters, so two different invalid
    /// names compared equal although the protocol compares them byte for byte.
    @Test("a hello whose type name is not UTF-8 is refused")
    func helloNamesMustBeUTF8() throws {
        var bytes = Hello(capacity: 1, maxFrame: 1024, sendCodec: "raw", sendType: "bytes", receiveCodec: "raw", receiveType: "bytes").encoded()
        let at = bytes.lastIndex(of: UInt8(ascii: "y"))!
        bytes[at] = 0xF9
        #expect { try bytes.withUnsafeBytes { try Hello.parse($0) } } throws: { ($0 as! IPCError).code == .protocolViolation }
    }
}
