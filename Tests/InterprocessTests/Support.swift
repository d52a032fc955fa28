#if canImport(Glibc)
import Glibc
#endif
import BenchmarkSupport
import Foundation
import Interprocess
import Testing

/// Where the test bundle's sibling executables live (`ipc-test-helper`, `ipc`).
let buildDirectory: String = {
    var buffer = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
    let exe = String(decoding: buffer[0..<max(n, 0)].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    var dir = URL(fileURLWithPath: exe).deletingLastPathComponent()
    // The test binary sits in a bundle directory on some layouts.
    while !FileManager.default.fileExists(atPath: dir.appendingPathComponent("ipc-test-helper").path) && dir.path != "/" {
        dir = dir.deletingLastPathComponent()
    }
    return dir.path
}()

/// Whether this is a sanitizer build (`.ci/run` builds its AddressSanitizer and ThreadSanitizer test runs with
/// `-DSANITIZED`). Everything runs several times slower there (task creation and atomics most), so the tests that
/// move many messages move fewer (``scaledCount(_:)``), and the resident-memory checks are skipped: the address
/// sanitizer keeps freed memory in quarantine and maps shadow memory, so resident memory says nothing there.
#if SANITIZED
let sanitized = true
#else
let sanitized = false
#endif

/// `count` in a normal build, a tenth of it in a sanitizer build (see ``sanitized``).
func scaledCount(_ count: Int) -> Int { sanitized ? max(count / 10, 1) : count }

/// A child process with its stdin and stdout piped to the test.
/// A write to a child that exited must fail the test that made it, not end the whole test process.
private let ignoreSIGPIPE: Void = { signal(SIGPIPE, SIG_IGN) }()

final class ChildProcess: @unchecked Sendable {
    let process = Process()
    private let output = Pipe()
    private let input = Pipe()
    private let stdinQueue = DispatchQueue(label: "child stdin")
    private let exited = AsyncSemaphore()
    private let outputDone = AsyncSemaphore()
    private let collected = NSLock()
    private var collectedBytes: [UInt8] = []

    convenience init(_ executable: String, _ arguments: [String], environment: [String: String] = [:]) throws {
        try self.init(path: buildDirectory + "/" + executable, arguments, environment: environment)
    }

    /// Runs the program at `path` (not one of the build's executables), with `environment` added to this process's.
    init(path: String, _ arguments: [String], environment: [String: String] = [:]) throws {
        _ = ignoreSIGPIPE
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments
        if !environment.isEmpty {
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        process.standardOutput = output
        process.standardError = output
        process.standardInput = input
        let exited = self.exited
        process.terminationHandler = { _ in exited.signal() }
        try process.run()
        startCollecting()
    }

    /// Collects everything the child prints from now on, so a chatty child never blocks on a full pipe.
    private func startCollecting() {
        let handle = output.fileHandleForReading
        let thread = Thread { [self] in
            while true {
                let data = handle.availableData
                if data.isEmpty { break }
                collected.withLock { collectedBytes += data }
            }
            outputDone.signal()
        }
        thread.start()
    }

    static func helper(_ role: String, _ endpoint: Endpoint, _ number: Int = 0, environment: [String: String] = [:]) throws -> ChildProcess {
        try ChildProcess("ipc-test-helper", [role, endpoint.description, String(number)], environment: environment)
    }

    /// Waits for a helper that listens (roles `serve-limited`, `listen-flood`) to say where, and returns that
    /// endpoint: the one actually listened on (TCP: the port the kernel chose).
    func listeningEndpoint(sourceLocation: SourceLocation = #_sourceLocation) async throws -> Endpoint {
        #expect(await waitForOutput("listening on "), sourceLocation: sourceLocation)
        let line = try #require(outputSoFar.split(separator: "\n").first { $0.hasPrefix("listening on ") }, sourceLocation: sourceLocation)
        return try Endpoint(parsing: String(line.dropFirst("listening on ".count)))
    }

    var pid: Int32 { process.processIdentifier }
    /// What the process wrote so far.
    var outputSoFar: String { collected.withLock { String(decoding: collectedBytes, as: UTF8.self) } }

    func writeLine(_ text: String) {
        write(Array((text + "\n").utf8))
    }

    /// Closes the child's stdin after everything written before.
    func closeInput() {
        let handle = input.fileHandleForWriting
        stdinQueue.async { try? handle.close() }
    }

    /// Writes to the child's stdin, in order, from a queue of its own: a write blocks until the child reads, and
    /// on one of the test process's few task threads it would hold up unrelated tests meanwhile. A child that
    /// exited early makes the write fail (EPIPE: this process ignores SIGPIPE, see `init`), and the test then
    /// fails on what the child printed, not on a signal.
    func write(_ bytes: [UInt8]) {
        let handle = input.fileHandleForWriting
        stdinQueue.async { try? handle.write(contentsOf: Data(bytes)) }
    }

    /// Waits for the exit (killing the child after `seconds`); returns the status and everything it printed.
    func finish(within seconds: Int = 30) async -> (status: Int32, output: String) {
        let ok = await exited.wait(seconds: seconds)
        if !ok {
            kill()
            _ = await exited.wait(seconds: 10)
        }
        // Closing our copy of the write end lets the reader see end of file once the child is gone.
        try? output.fileHandleForWriting.close()
        _ = await outputDone.wait(seconds: 10)
        let text = collected.withLock { String(decoding: collectedBytes, as: UTF8.self) }
        return (ok ? process.terminationStatus : -1, text)
    }

    /// Like ``finish(within:)``, with the output as bytes.
    func finishBytes(within seconds: Int = 30) async -> (status: Int32, output: [UInt8]) {
        let (status, _) = await finish(within: seconds)
        return (status, collected.withLock { collectedBytes })
    }

    func kill() { Glibc.kill(process.processIdentifier, SIGKILL) }

    /// Whether the child printed `text` within `seconds` (checked every 10 ms).
    func waitForOutput(_ text: String, seconds: Int = 20) async -> Bool {
        let deadline = ContinuousClock.now + .seconds(seconds)
        while ContinuousClock.now < deadline {
            if collected.withLock({ String(decoding: collectedBytes, as: UTF8.self).contains(text) }) { return true }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return false
    }
}

/// A one-shot event with a bounded wait.
final class AsyncSemaphore: @unchecked Sendable {
    private let lock = NSLock()
    private var signalled = false
    private var waiters: [CheckedContinuation<Void, Never>] = []

    func signal() {
        lock.lock()
        signalled = true
        let w = waiters
        waiters = []
        lock.unlock()
        for c in w { c.resume() }
    }

    /// True when signalled within `seconds`.
    func wait(seconds: Int) async -> Bool {
        await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                await withCheckedContinuation { c in
                    self.lock.lock()
                    if self.signalled {
                        self.lock.unlock()
                        c.resume()
                    } else {
                        self.waiters.append(c)
                        self.lock.unlock()
                    }
                }
                return true
            }
            group.addTask {
                try? await Task.sleep(for: .seconds(seconds))
                return false
            }
            let first = await group.next()!
            if !first {
                // Unblock the waiting child task so the group can finish.
                signal()
            }
            group.cancelAll()
            return first
        }
    }
}

/// A short private directory for socket files.
func temporaryDirectory() -> String {
    var template = Array("/tmp/ipct-XXXXXX".utf8CString)
    let p = mkdtemp(&template)!
    return String(cString: p)
}

/// The transports every cross-process test runs over.
enum TransportKind: String, CaseIterable, CustomTestStringConvertible, Sendable {
    case unix, tcp, sharedMemory
    var testDescription: String { rawValue }

    /// The socket transports, for tests that speak to the socket itself.
    static let sockets: [TransportKind] = [.unix, .tcp]

    /// A fresh endpoint to listen on (TCP: an ephemeral loopback port).
    func endpoint(in directory: String) -> Endpoint {
        switch self {
        case .unix: .unix(path: directory + "/t.sock")
        case .tcp: .tcp(host: "127.0.0.1", port: 0)
        case .sharedMemory: .sharedMemory(name: uniqueName())
        }
    }
}

/// A shared-memory name no other test (or test run) uses.
func uniqueName() -> String {
    let n = nameCounter.withLock { n -> Int in
        n += 1
        return n
    }
    return "test-\(getpid())-\(n)"
}

private let nameCounter = NSLockedCounter()

final class NSLockedCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var value = 0
    func withLock<R>(_ body: (inout Int) -> R) -> R {
        lock.lock()
        defer { lock.unlock() }
        return body(&value)
    }
}

/// The numbered messages the helper's `send` and `count` roles use.
func numbered(_ i: UInt64) -> [UInt8] {
    var bytes = [UInt8](repeating: 0xAB, count: 32)
    withUnsafeBytes(of: i.littleEndian) { for (k, b) in $0.enumerated() { bytes[k] = b } }
    return bytes
}

func index(_ m: [UInt8]) -> UInt64 {
    m.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
}

/// Runs `body` with a deadline; a timeout fails the test instead of hanging it.
func within<T: Sendable>(_ seconds: Int, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try? await Task.sleep(for: .seconds(seconds))
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next(), let value = first else {
            throw IPCError(.timeout, "did not complete within \(seconds) s")
        }
        return value
    }
}

/// A sender to the helper's "stall" role over `kind`: the helper connects with capacity `capacity`, reads nothing
/// until a line arrives on its standard input ("go"), then drains and reports "received N". The caller closes
/// the listener.
func senderToStalledHelper(_ kind: TransportKind, capacity: Int, options: ChannelOptions = ChannelOptions()) async throws
    -> (listener: Listener<RawBytesCodec, NoMessages>, helper: ChildProcess, sender: Sender<[UInt8]>) {
    let listener = try IPC.listen(on: kind.endpoint(in: temporaryDirectory()), sending: .raw, options: options)
    do {
        let helper = try ChildProcess.helper("stall", listener.endpoint, capacity)
        let sender = try await within(20) { try await listener.accept() }.sender
        return (listener, helper, sender)
    } catch {
        listener.close()
        throw error
    }
}

/// Expects `send` to be held: three tries of a second each time out. What a held sender keeps is bounded by the
/// capacity and the byte limit, which the simulated-wire property test of `ConnectionState` checks; this process's
/// resident memory is no measure of it, since every other suite allocates in it meanwhile (it grew by 8-46 MiB
/// over these three seconds).
func expectHeld(_ send: @escaping @Sendable () async throws -> Void, sourceLocation: SourceLocation = #_sourceLocation) async {
    for _ in 0..<3 {
        await #expect(sourceLocation: sourceLocation) { try await within(1) { try await send() } } throws: { ($0 as! IPCError).code == .timeout }
    }
}

/// A plain blocking socket for playing a hostile or foreign peer. Reads time out after 15 seconds (a bound for a
/// hang, not a timing: under the thread sanitizer with every suite running, a refusal once took over 5 seconds).
final class RawClient {
    let fd: Int32

    init(_ endpoint: Endpoint) throws {
        switch endpoint {
        case .sharedMemory(let name):
            // The rendezvous socket in the abstract namespace (see SocketAddress).
            fd = RawSocket.connect(unixPath: "interprocess-shm-\(getuid())-\(name)", abstract: true)
        case .unix(let path):
            fd = RawSocket.connect(unixPath: path)
        case .tcp(let host, let port):
            fd = RawSocket.connect(tcpHost: host, port: port)
        }
        guard fd >= 0 else { throw IPCError(.connectionRefused, "raw connect failed: errno \(errno)") }
        var timeout = timeval(tv_sec: 15, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { close(fd) }

    func send(_ bytes: [UInt8]) {
        _ = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }

    /// Reads until the peer closes (or a read waits 15 seconds, or 1 MiB arrived).
    func readAll() -> [UInt8] {
        var all: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while all.count < 1 << 20 {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            all += buffer[0..<n]
        }
        return all
    }

    func shutdownWrite() { shutdown(fd, Int32(SHUT_WR)) }
}

/// Finds the error frame in what a listener sent back (after its hello) and returns its message.
func errorFrameMessage(in bytes: [UInt8]) -> String? {
    var offset = 0
    if bytes.count >= 12 && Array(bytes[0..<4]) == Wire.helloMagic {
        let body = Int(bytes.withUnsafeBytes { $0.loadLE(UInt32.self, at: 8) })
        offset = 12 + body
    }
    while offset + 8 <= bytes.count {
        let length = Int(bytes.withUnsafeBytes { $0.loadLE(UInt32.self, at: offset) })
        let type = bytes[offset + 4]
        guard offset + 8 + length <= bytes.count else { return nil }
        if type == FrameType.error.rawValue {
            return String(decoding: bytes[(offset + 10)..<(offset + 8 + length)], as: UTF8.self)
        }
        offset += 8 + length
    }
    return nil
}

/// Runs `body`, which blocks (a blocking system call), on a thread of its own rather than one of the few task
/// threads that every test of this process shares.
func offTaskThreads<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread { continuation.resume(with: Result { try body() }) }.start()
    }
}
