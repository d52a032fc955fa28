import Foundation

/// The C shared-memory ring of `../shared/baseline/shm_ring.c` (the physical limit for shared memory on this
/// machine), built with gcc and run in the same `ipc bench` invocation and placement as the Interprocess lines.
struct CRingBaseline {
    let executable: String
    let directory: String

    /// Builds the program when its source is found (in `sourceDirectory`, or `../shared/baseline` from the
    /// current directory) and gcc is installed; nil otherwise.
    static func build(sourceDirectory: String?) -> CRingBaseline? {
        let candidates = [sourceDirectory, "../shared/baseline", "shared/baseline"].compactMap { $0 }
        guard let source = candidates.map({ $0 + "/shm_ring.c" }).first(where: { FileManager.default.fileExists(atPath: $0) }) else {
            return nil
        }
        let directory = NSTemporaryDirectory() + "ipc-cring-\(getpid())"
        try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let executable = directory + "/shm_ring"
        let gcc = Process()
        gcc.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        gcc.arguments = ["gcc", "-O2", "-std=gnu11", "-pthread", "-o", executable, source, "-lrt"]
        guard (try? gcc.run()) != nil else { return nil }
        gcc.waitUntilExit()
        guard gcc.terminationStatus == 0 else { return nil }
        return CRingBaseline(executable: executable, directory: directory)
    }

    func remove() { try? FileManager.default.removeItem(atPath: directory) }

    /// Runs one workload; this process's CPU affinity is inherited, the child pins itself to `childCPU`.
    func run(_ workload: Workload, childCPU: Int?, counts: BenchCounts) throws -> BenchResult {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = ["copy", workload.rawValue]
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
        guard process.terminationStatus == 0 else { throw ChildError(message: "the C ring baseline failed") }
        var metrics: [String: Double] = [:]
        for line in String(decoding: data, as: UTF8.self).split(separator: "\n") {
            let fields = line.split(separator: " ")
            if fields.count >= 3, fields[0] == "RESULT", let value = Double(fields[2]) { metrics[String(fields[1])] = value }
        }
        let values: [Double]
        switch workload {
        case .w1: values = [metrics["W1_p50"], metrics["W1_p99"]].compactMap { $0 }
        case .w2: values = metrics["W2"].map { [$0] } ?? []
        case .w3: values = metrics["W3"].map { [$0] } ?? []
        case .w4: throw ChildError(message: "the C ring baseline has no W4")
        }
        guard !values.isEmpty else { throw ChildError(message: "the C ring baseline printed no result") }
        // The C program reports no memory figures.
        return BenchResult(values: values, parentRSSKiB: 0, childRSSKiB: 0)
    }
}
