#if canImport(Glibc)
import Glibc
#endif
import BenchmarkSupport
import Foundation
import Interprocess

enum FileHandleLite {
    case standardOutput, standardError
    func write(_ text: String) {
        var bytes = Array(text.utf8)
        writeAll(self == .standardOutput ? 1 : 2, &bytes)
    }
    func write(bytes: [UInt8]) {
        var copy = bytes
        writeAll(self == .standardOutput ? 1 : 2, &copy)
    }
    private func writeAll(_ fd: Int32, _ bytes: inout [UInt8]) {
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + offset, $0.count - offset) }
            if n < 0 {
                if errno == EINTR { continue }
                return
            }
            offset += n
        }
    }
}

func exitProcess(_ code: Int32) -> Never { exit(code) }

/// The path of this executable, to start a second process of it.
func selfExecutablePath() -> String {
    var buffer = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
    if n > 0 { return String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) }
    return CommandLine.arguments[0]
}

/// A child process of this executable, spawned with posix_spawn. `inheritFD` becomes fd 3 in the child.
struct ChildProcess: Sendable {
    let pid: pid_t

    static func spawnSelf(_ arguments: [String], inheritFD: Int32 = -1, pinCPU: Int? = nil) throws -> ChildProcess {
        var argv = [selfExecutablePath()] + arguments
        if let pinCPU {
            argv = ["/usr/bin/taskset", "-c", String(pinCPU)] + argv
        }
        guard let pid = ProcessControl.spawn(argv[0], arguments: argv, inheritFD: inheritFD) else { throw ChildError(message: "cannot start \(argv[0]): \(String(cString: strerror(errno)))") }
        return ChildProcess(pid: pid)
    }

    /// Waits for the child; returns its exit code (or 128 + signal).
    func wait() async -> Int32 {
        switch await SpawnedProcess(pid: pid).wait() {
        case .exited(let code): code
        case .signalled(let signal): 128 + signal
        }
    }

    func kill() { _ = Glibc.kill(pid, SIGKILL) }
}

struct ChildError: Error, CustomStringConvertible {
    let message: String
    var description: String { message }
}

/// A short private directory for socket files (sun_path is limited to 108 bytes).
func makeTemporaryDirectory() throws -> String {
    var template = Array("/tmp/ipc-XXXXXX".utf8CString)
    guard let p = mkdtemp(&template) else { throw ChildError(message: "mkdtemp failed: \(String(cString: strerror(errno)))") }
    return String(cString: p)
}

func removeDirectory(_ path: String) {
    try? FileManager.default.removeItem(atPath: path)
}

func monotonicNanos() -> UInt64 { ProcessControl.monotonicNanoseconds() }

/// What `ipc bench` is doing, on one line of standard error that it rewrites (which workload and transport, run
/// k of n, time left at the pace so far), when standard error is a terminal; nothing otherwise, so that logs and
/// pipes get only the results.
final class BenchProgress {
    private let enabled = isatty(2) == 1
    private let total: Int
    private var done = 0
    private let start = monotonicNanos()

    init(totalRuns: Int) { total = max(totalRuns, 1) }

    /// A run of `what` starts.
    func starting(_ what: String) {
        guard enabled else { return }
        var line = "\r\u{1B}[K\(what): run \(done + 1) of \(total)"
        if done > 0 {
            let perRun = Double(monotonicNanos() - start) / Double(done)
            line += ", about \(Int((perRun * Double(total - done) / 1e9).rounded(.up))) s left"
        }
        FileHandleLite.standardError.write(line)
    }

    /// A run ended.
    func finished() { done += 1 }

    /// Clears the line before a result is printed, and at the end.
    func clear() {
        if enabled { FileHandleLite.standardError.write("\r\u{1B}[K") }
    }
}
