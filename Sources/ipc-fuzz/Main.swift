#if canImport(Glibc)
import Glibc
#endif
import InterprocessCore

#if FUZZING
/// The target libFuzzer drives, named by `IPC_FUZZ_TARGET` (built with `-sanitize=fuzzer -DFUZZING`).
let fuzzTarget: FuzzTarget = {
    guard let name = getenv("IPC_FUZZ_TARGET").map({ String(cString: $0) }), let target = FuzzTarget(rawValue: name) else {
        fatalError("set IPC_FUZZ_TARGET to one of: \(FuzzTarget.allCases.map(\.rawValue).joined(separator: ", "))")
    }
    return target
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    fuzzTarget.run(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}

@_silgen_name("LLVMFuzzerRunDriver")
func runFuzzerDriver(
    _ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt
) -> CInt

/// The package manager links an executable's `main` to this symbol, so libFuzzer's own `main` is not used: this one
/// hands the command line to libFuzzer's driver.
@_cdecl("ipc_fuzz_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var count = argc
    var arguments = argv
    return runFuzzerDriver(&count, &arguments, fuzzOneInput)
}
#else
/// Without libFuzzer: `ipc-fuzz TARGET FILE...` runs each file through the target once (the tests replay the
/// committed corpus and every input that once failed this way), and `ipc-fuzz seed DIR` writes the seed inputs.
@main
struct FuzzReplay {
    static func main() {
        let arguments = Array(CommandLine.arguments.dropFirst())
        if arguments.first == "seed", arguments.count == 2 {
            writeSeeds(to: arguments[1])
            return
        }
        guard let name = arguments.first, let target = FuzzTarget(rawValue: name) else {
            print("usage: ipc-fuzz \(FuzzTarget.allCases.map(\.rawValue).joined(separator: "|")) FILE... | ipc-fuzz seed DIR")
            exit(2)
        }
        for path in arguments.dropFirst() {
            guard let bytes = readFile(path) else {
                print("cannot read \(path)")
                exit(2)
            }
            bytes.withUnsafeBytes { target.run($0) }
        }
        print("\(target.rawValue): \(arguments.count - 1) inputs handled")
    }

    static func readFile(_ path: String) -> [UInt8]? {
        guard let file = fopen(path, "rb") else { return nil }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = fread(&chunk, 1, chunk.count, file)
            if n == 0 { break }
            bytes += chunk[..<n]
        }
        return bytes
    }

    static func writeFile(_ path: String, _ bytes: [UInt8]) {
        guard let file = fopen(path, "wb") else { fatalError("cannot write \(path)") }
        _ = bytes.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, file) }
        fclose(file)
    }

    /// Valid inputs for each target, made with the library's own encoders: the fuzzer mutates from there.
    static func writeSeeds(to directory: String) {
        for target in FuzzTarget.allCases { mkdir("\(directory)/\(target.rawValue)", 0o755) }
        let peer = FuzzTarget.local.encoded()
        writeFile("\(directory)/hello/valid", peer)
        var frames: [UInt8] = []
        for seq in 1...3 { frames.appendControlFrame(.data(seq: UInt64(seq), payload: Array("message \(seq)".utf8))) }
        frames.appendControlFrame(.ping(7))
        frames.appendControlFrame(.credit(consumed: 0))
        frames.appendControlFrame(.close(lastSeq: 3))
        writeFile("\(directory)/stream/whole", [255] + peer + frames)
        writeFile("\(directory)/stream/pieces", [2] + peer + frames)
        var failing = peer
        failing.appendControlFrame(.error(code: 3, message: "the peer gave up"))
        writeFile("\(directory)/stream/error", [16] + failing)
        // The peer publishes 32 bytes, this side reads, the peer ends; and a position moved far ahead.
        writeFile("\(directory)/ring/publish-read-close", [0, 32] + Array("IPCH-not-really-a-hello-at-all!!".utf8) + [3, 16, 2, 3, 16])
        writeFile("\(directory)/ring/position-jump", [0, 8] + Array("abcdefgh".utf8) + [1, 0, 0, 0, 0, 0, 0, 1, 0, 3, 1])
        let record = FuzzRecord(id: 42, delta: -7, value: 2.5, name: "seed é", inner: .init(flag: true, ratio: 0.5, data: [1, 2, 3]),
                                list: [1, -2, 300], table: ["a": 1, "b": 2], kind: .named("x", tags: ["t"]))
        for (target, encode) in [(FuzzTarget.binary, { (r: FuzzRecord) in try BinaryCodec(FuzzRecord.self).encoded(r) }),
                                 (.json, { (r: FuzzRecord) in try JSONCodec(FuzzRecord.self).encoded(r) })] {
            var plain = record
            plain.inner = nil
            plain.kind = .count(3)
            writeFile("\(directory)/\(target.rawValue)/full", try! encode(record))
            writeFile("\(directory)/\(target.rawValue)/plain", try! encode(plain))
        }
    }
}

extension MessageCodec {
    func encoded(_ value: Value) throws -> [UInt8] {
        var bytes: [UInt8] = []
        try encode(value, into: &bytes)
        return bytes
    }
}
#endif
