import Foundation

/// The programs `ipc bench` compiles and runs beside the Interprocess lines, in the same invocation and placement:
/// the C shared-memory ring of `../shared/baseline/shm_ring.c` (the physical limit for shared memory on this
/// machine), and the peer libraries a user would otherwise pick (`Benchmarks/peers`): boost::interprocess
/// `message_queue`, and ZeroMQ PAIR sockets over `ipc://` and `tcp://`. Each prints `RESULT <metric> <value>`
/// lines; W1 and W2 only.
struct NativeProgram {
    enum Kind: CaseIterable {
        case cRing, boostQueue, zeroMQ

        var source: String {
            switch self {
            case .cRing: "shm_ring.c"
            case .boostQueue: "boost_mq.cpp"
            case .zeroMQ: "zmq_pair.cpp"
            }
        }

        /// What the program needs, said when it cannot be built.
        var requirement: String {
            switch self {
            case .cRing: "gcc and ../shared/baseline/shm_ring.c"
            case .boostQueue: "g++ and Debian's libboost-dev (apt-get install libboost-dev)"
            case .zeroMQ: "g++ and Debian's libzmq3-dev (apt-get install libzmq3-dev)"
            }
        }
    }

    let kind: Kind
    let executable: String

    /// Where the sources are: `../shared/baseline` for the C ring (or `cBaseline`), this package's
    /// `Benchmarks/peers` for the peer libraries (found from the current directory or from this source file).
    static func sourceDirectories(for kind: Kind, cBaseline: String?) -> [String] {
        switch kind {
        case .cRing:
            return [cBaseline, "../shared/baseline", "shared/baseline"].compactMap { $0 }
        case .boostQueue, .zeroMQ:
            let package = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            return ["Benchmarks/peers", package.appendingPathComponent("Benchmarks/peers").path]
        }
    }

    /// Builds the program into `directory`; nil when its source, its compiler or its library is missing.
    static func build(_ kind: Kind, into directory: String, cBaseline: String?) -> NativeProgram? {
        guard let folder = sourceDirectories(for: kind, cBaseline: cBaseline).first(where: { FileManager.default.fileExists(atPath: $0 + "/" + kind.source) }) else {
            return nil
        }
        let source = folder + "/" + kind.source
        let executable = directory + "/" + (kind.source as NSString).deletingPathExtension
        let arguments: [String] = switch kind {
        case .cRing: ["gcc", "-O2", "-std=gnu11", "-pthread", "-o", executable, source, "-lrt"]
        case .boostQueue: ["g++", "-O2", "-std=c++17", "-pthread", "-o", executable, source, "-lrt"]
        case .zeroMQ: ["g++", "-O2", "-std=c++17", "-o", executable, source, "-lzmq"]
        }
        let compiler = Process()
        compiler.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        compiler.arguments = arguments
        compiler.standardError = FileHandle.nullDevice
        guard (try? compiler.run()) != nil else { return nil }
        compiler.waitUntilExit()
        guard compiler.terminationStatus == 0 else { return nil }
        return NativeProgram(kind: kind, executable: executable)
    }

    /// Runs one workload with `arguments` before it (the ZeroMQ transport); this process's CPU affinity is
    /// inherited, the child pins itself to `childCPU`.
    func run(_ workload: Workload, arguments: [String] = [], childCPU: Int?, counts: BenchCounts) throws -> BenchResult {
        guard workload == .w1 || workload == .w2 || (kind == .cRing && workload == .w3) else {
            throw ChildError(message: "\(kind.source) runs W1 and W2 only")
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = (kind == .cRing ? ["copy"] : []) + arguments + [workload.rawValue]
        var environment = ProcessInfo.processInfo.environment
        if let childCPU { environment["BASELINE_CHILD_CPU"] = String(childCPU) }
        environment["BASELINE_W1_WARMUP"] = String(counts.w1Warmup)
        environment["BASELINE_W1_ITERS"] = String(counts.w1Iterations)
        environment["BASELINE_W2_COUNT"] = String(counts.w2Count)
        environment["BASELINE_W3_COUNT"] = String(counts.w3Count)
        process.environment = environment
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { throw ChildError(message: "\(kind.source) failed") }
        var metrics: [String: Double] = [:]
        for line in String(decoding: data, as: UTF8.self).split(separator: "\n") {
            let fields = line.split(separator: " ")
            if fields.count >= 3, fields[0] == "RESULT", let value = Double(fields[2]) { metrics[String(fields[1])] = value }
        }
        let values: [Double] = switch workload {
        case .w1: [metrics["W1_p50"], metrics["W1_p99"], metrics["W1_max"]].compactMap { $0 }
        case .w2: metrics["W2"].map { [$0] } ?? []
        case .w3, .w4: metrics["W3"].map { [$0] } ?? []
        }
        guard !values.isEmpty else { throw ChildError(message: "\(kind.source) printed no result") }
        // These programs report no memory figures.
        return BenchResult(values: values, parentRSSKiB: 0, childRSSKiB: 0)
    }
}
