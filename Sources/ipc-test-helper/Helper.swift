// The other process of the cross-process tests. Each role is a small program; its last line on stdout says
// what it saw, and its exit status says whether it saw what it expected.
#if canImport(Glibc)
import Glibc
#endif
import BenchmarkSupport
import Instrumentation
import Interprocess
import Logging
import ServiceLifecycle
import UnixSignals

/// Receives numbered messages on every connection its listener hands out, checking their order, until the
/// listener stops handing out connections and every connection ended; then waits for its own turn to shut down
/// (a service group fails a service that returns before it is told to).
struct CountingWorker: Service {
    let listener: Listener<NoMessages, RawBytesCodec>

    func run() async throws {
        try await withThrowingDiscardingTaskGroup { group in
            for try await connection in listener {
                group.addTask {
                    Helper.report("serving a connection")
                    var count: UInt64 = 0
                    do {
                        while let m = try await connection.receiver.receive() {
                            guard m.count >= 8, Helper.index(m) == count else {
                                Helper.report("out of order at \(count)")
                                exit(1)
                            }
                            count += 1
                        }
                        Helper.report("a connection ended after \(count)")
                    } catch {
                        Helper.report("a connection failed after \(count): \((error as? IPCError)?.code.description ?? "\(error)")")
                    }
                }
            }
        }
        try await gracefulShutdown()
    }
}

@main
struct Helper {
    static func main() async {
        let args = Array(CommandLine.arguments.dropFirst())
        guard args.count >= 2, let endpoint = try? Endpoint(parsing: args[1]) else {
            report("usage: ipc-test-helper ROLE ENDPOINT [ARGS]")
            exit(2)
        }
        let number = args.count > 2 ? Int(args[2]) ?? 0 : 0
        var options = ChannelOptions()
        options.capacity = 64
        // Warnings on standard error (what a listener refuses, and why), for the tests to read: the library is
        // silent by default.
        options.logger = Logger(label: "ipc-test-helper")
        // IPC_HELPER_DEAD_PEER_MS: the helper's deadPeerTimeout in milliseconds (heartbeats every quarter of it).
        if let text = getenv("IPC_HELPER_DEAD_PEER_MS"), let ms = Int(String(cString: text)) {
            options.deadPeerTimeout = .milliseconds(ms)
        }
        // IPC_HELPER_RESUME: resume broken connections (ChannelOptions.resume), giving up after this many seconds.
        if let text = getenv("IPC_HELPER_RESUME"), let seconds = Int(String(cString: text)) {
            options.resume = ResumePolicy(deadline: .seconds(seconds))
        }
        do {
            switch args[0] {
            case "echo":
                // Echoes every raw message back until the end, then closes.
                try await echo(try await IPC.connect(to: endpoint, sending: .raw, receiving: .raw, options: options))
            case "count":
                // Receives numbered messages (8-byte little-endian index) until the end; checks order and count.
                // With a fourth argument K, says "got N" each time N, a multiple of K, arrived (before the end).
                let every = args.count > 3 ? Int(args[3]) ?? 0 : 0
                let rx = try await IPC.connect(to: endpoint, receiving: .raw, options: options)
                var count = 0
                while let m = try await rx.receive() {
                    guard m.count >= 8, index(m) == UInt64(count) else {
                        report("out of order at \(count)")
                        exit(1)
                    }
                    count += 1
                    if every > 0 && count % every == 0 { report("got \(count)") }
                }
                report("received \(count)")
                exit(count == number ? 0 : 1)
            case "send":
                // Sends `number` numbered messages, then closes.
                let tx = try await IPC.connect(to: endpoint, sending: .raw, options: options)
                for i in 0..<number { try await tx.send(numbered(UInt64(i))) }
                try await tx.closeAndWait()
                report("sent \(number)")
            case "send-batched":
                // Sends `number` numbered messages, 512 per call, then closes.
                let tx = try await IPC.connect(to: endpoint, sending: .raw, options: options)
                var next = 0
                while next < number {
                    let end = min(next + 512, number)
                    try await tx.send(contentsOf: (next..<end).map { numbered(UInt64($0)) })
                    next = end
                }
                try await tx.closeAndWait()
                report("sent \(number)")
            case "send-then-exit":
                // Sends `number` messages and exits at once, without closing: what was sent must still arrive.
                let tx = try await IPC.connect(to: endpoint, sending: .raw, options: options)
                for i in 0..<number { try await tx.send(numbered(UInt64(i))) }
                exit(0)
            case "send-then-drop":
                // Sends `number` messages and drops the sender without closing it, then stays until killed: the
                // drop closes the channel, so everything sent arrives, then the end.
                do {
                    let tx = try await IPC.connect(to: endpoint, sending: .raw, options: options)
                    for i in 0..<number { try await tx.send(numbered(UInt64(i))) }
                }
                report("dropped")
                while true { pause() }
            case "send-until-cut":
                // Sends up to `number` numbered messages; when the connection breaks, reports how many sends
                // returned and how many of those the error says are in doubt.
                let tx = try await IPC.connect(to: endpoint, sending: .raw, options: options)
                var sent = 0
                do {
                    while sent < number {
                        try await tx.send(numbered(UInt64(sent)))
                        sent += 1
                    }
                    try await tx.closeAndWait()
                    report("sent all \(sent)")
                } catch {
                    report("sent \(sent) in doubt \(error.messagesInDoubt ?? 0) \(error.code)")
                }
            case "send-then-hang":
                // Sends `number` messages, says so, and waits to be killed.
                let tx = try await IPC.connect(to: endpoint, sending: .raw, options: options)
                for i in 0..<number { try await tx.send(numbered(UInt64(i))) }
                report("sent \(number)")
                while true { pause() }
            case "receive-then-hang":
                // Receives `number` messages, says so, and waits to be killed (without reading more).
                options.capacity = 4
                let rx = try await IPC.connect(to: endpoint, receiving: .raw, options: options)
                for _ in 0..<number { _ = try await rx.receive() }
                report("received \(number)")
                while true { pause() }
            case "stall":
                // Connects with capacity `number` and reads nothing until a line arrives on stdin; then drains.
                options.capacity = number
                let rx = try await IPC.connect(to: endpoint, receiving: .raw, options: options)
                report("connected")
                _ = readLine()
                var count = 0
                while let m = try await rx.receive() {
                    guard index(m) == UInt64(count) else {
                        report("out of order at \(count)")
                        exit(1)
                    }
                    count += 1
                }
                report("received \(count)")
            case "in-place-echo":
                // Like echo, through the zero-copy calls: reads each message in place, sends it back through a loan.
                try await echo(try await IPC.connect(to: endpoint, sending: .raw, receiving: .raw, options: options), zeroCopy: true)
            case "child-echo":
                // Started by IPC.spawn: echoes every raw message back to the parent until the end.
                try await echo(try await IPC.connectToParent(sending: .raw, receiving: .raw, options: options))
            case "listen-send":
                // Listens, says so, accepts one receiver and sends `number` numbered messages.
                let listener = try IPC.listen(on: endpoint, sending: .raw, options: options)
                report("listening")
                let tx = try await listener.accept().sender
                for i in 0..<number { try await tx.send(numbered(UInt64(i))) }
                try await tx.closeAndWait()
                report("sent \(number)")
            case "listen-flood":
                // Listens, says where, accepts one receiver and sends `number`-byte messages as fast as it may until
                // a line arrives on stdin: `trySend` first, then a `send` given 20 ms before it is cancelled, so a
                // held sender keeps trying all the time. Then closes and says how many were sent and tried.
                let listener = try IPC.listen(on: endpoint, sending: .raw, options: options)
                report("listening on \(listener.endpoint)")
                let tx = try await listener.accept().sender
                var message = [UInt8](repeating: 7, count: max(number, 8))
                var sent = 0
                var attempts = 0
                while attempts % 64 != 0 || !stdinReady() {
                    attempts += 1
                    message.withUnsafeMutableBytes { $0.storeBytes(of: UInt64(sent).littleEndian, as: UInt64.self) }
                    if try tx.trySend(message) {
                        sent += 1
                        continue
                    }
                    let attempt = Task { [message] in try await tx.send(message) }
                    try? await Task.sleep(for: .milliseconds(20))
                    attempt.cancel()
                    if (try? await attempt.value) != nil { sent += 1 }
                }
                try await tx.closeAndWait()
                report("sent \(sent) attempts \(attempts)")
            case "hold-clients":
                // Opens `number` plain socket connections to a Unix or TCP endpoint, sends the bytes given in hex as
                // the fourth argument on every other one (a hello, say) and nothing on the rest, says so, and holds
                // them until a line arrives on stdin. The connections are this process's, so the test process keeps
                // its own descriptors few.
                let greeting = stride(from: 0, to: args.count > 3 ? args[3].count : 0, by: 2).compactMap { i -> UInt8? in
                    let hex = args[3].dropFirst(i).prefix(2)
                    return UInt8(hex, radix: 16)
                }
                var held: [Int32] = []
                for i in 0..<number {
                    let fd = rawConnect(endpoint)
                    guard fd >= 0 else {
                        report("connection \(i) failed: errno \(errno)")
                        exit(1)
                    }
                    if i % 2 == 0 { _ = greeting.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) } }
                    held.append(fd)
                }
                report("holding \(held.count)")
                _ = readLine()
                for fd in held { close(fd) }
            case "take-on-line":
                // Receives with capacity `number` (0: rendezvous), taking one message per stdin line.
                options.capacity = number
                let rx = try await IPC.connect(to: endpoint, receiving: .raw, options: options)
                report("connected")
                while readLine() != nil {
                    guard let m = try await rx.receive() else { break }
                    report("took \(index(m))")
                }
                report("done")
            case "drop-receiver":
                // Two-way: takes one message, drops its receiver but keeps the connection (and its sender)
                // open until stdin ends.
                var rx: Receiver<[UInt8]>?
                let tx: Sender<[UInt8]>
                do {
                    let c = try await IPC.connect(to: endpoint, sending: .raw, receiving: .raw, options: options)
                    (tx, rx) = (c.sender, c.receiver)
                }
                _ = try await rx?.receive()
                rx = nil
                report("dropped receiver")
                while readLine() != nil {}
                try await tx.closeAndWait()
                _ = rx
            case "wrong-type":
                // Connects expecting JSON-encoded Ints where the listener sends strings: must be refused.
                do {
                    _ = try await IPC.connect(to: endpoint, receiving: JSONCodec(Int.self), options: options)
                    report("connected (unexpected)")
                    exit(1)
                } catch {
                    report("\(error.code): \(error.message)")
                }
            case "as-nobody":
                // Drops to uid 65534 and tries to connect: the socket file's mode must keep it out.
                guard setgid(65534) == 0, setuid(65534) == 0 else {
                    report("cannot drop privileges")
                    exit(3)
                }
                do {
                    _ = try await IPC.connect(to: endpoint, receiving: .raw, options: options)
                    report("connected (unexpected)")
                    exit(1)
                } catch {
                    report("\(error.code): \(error.message)")
                }
            case "connect-expect-error":
                // Connects and waits for the first message; prints the error it gets.
                do {
                    let rx = try await IPC.connect(to: endpoint, receiving: .raw, options: options)
                    _ = try await rx.receive()
                    report("received (unexpected)")
                    exit(1)
                } catch {
                    report("\(error.code): \(error.message)")
                }
            case "dead-peer":
                // Run in a network namespace of its own (`unshare -n`): connects to itself over TCP with
                // deadPeerTimeout `number` seconds (0: nil, the kernel's defaults), then takes the namespace's
                // loopback interface down, so that neither end hears from the other again, as when a peer's host
                // vanishes without a reset. Reports what a waiting receive (limited to 12 seconds) got, and when.
                try command(["ip", "link", "set", "lo", "up"])
                options.deadPeerTimeout = number > 0 ? .seconds(number) : nil
                let listener = try IPC.listen(on: endpoint, sending: .raw, receiving: .raw, options: options)
                // The listener accepts and shakes hands in the background.
                let client = try await IPC.connect(to: listener.endpoint, sending: .raw, receiving: .raw, options: options)
                let server = try await listener.accept()
                try await server.sender.send([1])
                _ = try await client.receiver.receive()
                try command(["ip", "link", "set", "lo", "down"])
                let start = ContinuousClock.now
                do {
                    _ = try await client.receiver.receive(timeout: .seconds(12))
                    report("received (unexpected)")
                    exit(1)
                } catch {
                    let elapsed = ContinuousClock.now - start
                    report("\(error.code) after \(elapsed.components.seconds) s: \(error.message)")
                }
                withExtendedLifetime(server) {}
            case "link-down-up":
                // Run in a network namespace of its own (`unshare -n`): a resumable TCP connection to itself
                // (deadPeerTimeout 2 s) carries `number` numbered messages while the namespace's loopback interface
                // goes down for 5 s and comes back, twice. Reports how many arrived, in order, and how many resumes.
                try command(["ip", "link", "set", "lo", "up"])
                options.deadPeerTimeout = .seconds(2)
                options.resume = ResumePolicy(deadline: .seconds(30))
                let listener = try IPC.listen(on: endpoint, receiving: .raw, options: options)
                let tx = try await IPC.connect(to: listener.endpoint, sending: .raw, options: options)
                let rx = try await listener.accept().receiver
                let sending = Task {
                    for i in 0..<number { try await tx.send(numbered(UInt64(i))) }
                    try await tx.closeAndWait()
                }
                let outages = Task {
                    for _ in 0..<2 {
                        try await Task.sleep(for: .seconds(1))
                        try command(["ip", "link", "set", "lo", "down"])
                        try await Task.sleep(for: .seconds(5))
                        try command(["ip", "link", "set", "lo", "up"])
                    }
                }
                var count = 0
                var last = ContinuousClock.now
                var longestGap = Duration.zero
                while let m = try await rx.receive() {
                    guard index(m) == UInt64(count) else {
                        report("out of order: message \(index(m)) arrived as number \(count)")
                        exit(1)
                    }
                    count += 1
                    longestGap = max(longestGap, ContinuousClock.now - last)
                    // Paced (about 12 s in all), so that the stream flows across both outages.
                    if count % 10 == 0 { try? await Task.sleep(for: .milliseconds(40)) }
                    last = ContinuousClock.now
                }
                do {
                    try await sending.value
                    try await outages.value
                } catch {
                    report("failed: \(error)")
                    exit(1)
                }
                report("longest gap \(longestGap.components.seconds) s")
                report("received \(count) in order")
                exit(count == number ? 0 : 1)
            case "trace-echo":
                // Answers each string with "string|traceparent|tracestate" of the context it arrived with ("-" for
                // none), sent in that context; `number` 1 turns ChannelOptions.tracing on.
                TraceInstrument.bootstrapOnce()
                options.tracing = number == 1
                let connection = try await IPC.connect(to: endpoint, sending: .utf8, receiving: .utf8, options: options)
                var count = 0
                while let (text, context) = try await connection.receiver.receiveWithContext() {
                    let reply = "\(text)|\(context.traceParent ?? "-")|\(context.traceState ?? "-")"
                    let failure = await ServiceContext.withValue(context) { () async -> IPCError? in
                        do throws(IPCError) {
                            try await connection.sender.send(reply)
                            return nil
                        } catch {
                            return error
                        }
                    }
                    if let failure {
                        report("error \(failure.code): \(failure.message)")
                        exit(1)
                    }
                    count += 1
                }
                try await connection.sender.closeAndWait()
                report("echoed \(count)")
            case "service":
                // A worker service as the README shows one: a listener and a worker that receives numbered
                // messages on every connection, run by a ServiceGroup that shuts down gracefully on SIGTERM.
                // `number`: the listener's drainTimeout in milliseconds. Says how each connection ended, then
                // "shut down" once the group returned.
                options.drainTimeout = .milliseconds(number)
                let listener = try IPC.listen(on: endpoint, receiving: .raw, options: options)
                report("listening on \(listener.endpoint)")
                let group = ServiceGroup(configuration: .init(
                    services: [CountingWorker(listener: listener), listener],
                    gracefulShutdownSignals: [.sigterm], logger: Logger(label: "ipc-test-helper")))
                do {
                    try await group.run()
                } catch {
                    report("the service group failed: \(error)")
                    exit(1)
                }
                report("shut down")
            case "serve-limited":
                // Lowers its descriptor limit to `number` above the descriptors open now (0: leaves it), listens,
                // says so, and echoes on every connection until its peer closes it, saying how each one ended
                // when it ended with an error.
                var open = 0
                if let directory = opendir("/proc/self/fd") {
                    while let entry = readdir(directory) { if entry.pointee.d_name.0 != UInt8(ascii: ".") { open += 1 } }
                    closedir(directory)
                }
                var limit = rlimit()
                getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit)
                limit.rlim_cur = number > 0 ? rlim_t(open + number) : limit.rlim_cur
                guard setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0 else {
                    report("setrlimit failed: errno \(errno)")
                    exit(1)
                }
                let listener = try IPC.listen(on: endpoint, sending: .raw, receiving: .raw, options: options)
                report("listening on \(listener.endpoint)")
                await withDiscardingTaskGroup { group in
                    while let connection = try? await listener.accept() {
                        group.addTask {
                            do throws(IPCError) {
                                try await echo(connection)
                            } catch {
                                report("a connection ended: \(error.code): \(error.message)")
                            }
                        }
                    }
                }
                report("listener ended")
            case "release-check":
                // Opens `number` connections on the endpoint one after another (both ends in this process),
                // sends small and large messages both ways, closes them, and checks that every descriptor and
                // every shared-memory mapping they took is released: counted after a first round (which creates
                // the I/O thread's own descriptors once) and again, within 20 seconds (the teardown finishes in
                // the background), after the rest.
                var before = (fds: 0, mappings: 0)
                var open = (fds: 0, mappings: 0)
                for round in 0..<number {
                    let listener = try IPC.listen(on: endpoint, sending: .raw, receiving: .raw, options: options)
                    let client = try await IPC.connect(to: listener.endpoint, sending: .raw, receiving: .raw, options: options)
                    let server = try await listener.accept()
                    open = resources()
                    for size in [64, 100_000, 1, 3 << 20] {
                        let m = [UInt8](repeating: UInt8(truncatingIfNeeded: size), count: size)
                        try await client.sender.send(m)
                        let received = try await server.receiver.receive()
                        try await server.sender.send(m)
                        guard received == m, try await client.receiver.receive() == m else {
                            report("the message or its echo of \(size) bytes differs")
                            exit(1)
                        }
                    }
                    try await client.sender.closeAndWait()
                    try await server.sender.closeAndWait()
                    guard try await server.receiver.receive() == nil, try await client.receiver.receive() == nil else {
                        report("a message after the close")
                        exit(1)
                    }
                    listener.close()
                    if round == 0 { before = await settled(at: nil, resources) }
                }
                let after = await settled(at: before, resources)
                report("descriptors \(before.fds) -> \(after.fds) (\(open.fds) while open), mappings \(before.mappings) -> \(after.mappings) (\(open.mappings) while open)")
                exit(after.fds <= before.fds && after.mappings <= before.mappings ? 0 : 1)
            default:
                report("unknown role \(args[0])")
                exit(2)
            }
        } catch {
            report("error \(error.code): \(error.message)")
            exit(1)
        }
    }

    /// Echoes every message back until the end, then closes and reports the count. With `zeroCopy`, each
    /// message is read in place and sent back through a loan.
    static func echo(_ c: Connection<[UInt8], [UInt8]>, zeroCopy: Bool = false) async throws(IPCError) {
        var count = 0
        do {
            while let m = try await (zeroCopy ? c.receiver.receive({ [UInt8]($0) }) : c.receiver.receive()) {
                if zeroCopy {
                    try await c.sender.send(byteCount: m.count) { $0.copyBytes(from: m) }
                } else {
                    try await c.sender.send(m)
                }
                count += 1
            }
        } catch let error as IPCError {
            throw error
        } catch {
            throw IPCError(.protocolViolation, "unexpected error \(error)")
        }
        try await c.sender.closeAndWait()
        report("echoed \(count)")
    }

    /// This process's open descriptors and its mappings of the library's shared memory.
    static func resources() -> (fds: Int, mappings: Int) {
        let fds = (try? directoryEntries("/proc/self/fd")) ?? -1
        let maps = String(decoding: readFile("/proc/self/maps"), as: UTF8.self)
        return (fds, maps.split(separator: "\n").filter { $0.contains("memfd:interprocess") }.count)
    }

    /// A file's bytes (empty if it cannot be read).
    static func readFile(_ path: String) -> [UInt8] {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { return [] }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            guard n > 0 else { return bytes }
            bytes += chunk[0..<n]
        }
    }

    /// What `count` reads once it is down to `target` or below (within 20 seconds; nil: once it stopped changing
    /// for a tenth of a second, for a baseline), or what it read last. (A baseline taken while a teardown was still
    /// under way is too high, never too low: a leak of a connection's worth still shows against it.)
    static func settled(at target: (fds: Int, mappings: Int)?, _ count: () -> (fds: Int, mappings: Int)) async -> (fds: Int, mappings: Int) {
        let deadline = ContinuousClock.now + .seconds(20)
        var last = count()
        var steadySince = ContinuousClock.now
        while ContinuousClock.now < deadline {
            if let target, last.fds <= target.fds, last.mappings <= target.mappings { return last }
            if target == nil, ContinuousClock.now - steadySince >= .milliseconds(100) { return last }
            try? await Task.sleep(for: .milliseconds(10))
            let now = count()
            if now != last { steadySince = ContinuousClock.now }
            last = now
        }
        return last
    }

    /// The number of entries in a directory (without `.` and `..`).
    static func directoryEntries(_ path: String) throws(IPCError) -> Int {
        guard let dir = opendir(path) else { throw IPCError(.systemCallFailed, "cannot list \(path)") }
        defer { closedir(dir) }
        var count = 0
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name != "." && name != ".." { count += 1 }
        }
        // The directory's own descriptor, open while it was listed.
        return count - 1
    }

    /// Runs a command found on the PATH and waits for it; throws unless it succeeds. (Not Foundation's `Process`:
    /// it needs a loopback socket of its own, which the dead-peer drill takes away.)
    static func command(_ arguments: [String]) throws(IPCError) {
        let pid = ProcessControl.spawn("/usr/bin/env", arguments: ["env"] + arguments)
        let code = pid.flatMap(ProcessControl.wait)
        guard code == 0 else {
            throw IPCError(.systemCallFailed, "\(arguments.joined(separator: " ")) failed (status \(code.map(String.init) ?? "unknown"))")
        }
    }

    static func numbered(_ i: UInt64) -> [UInt8] {
        var bytes = [UInt8](repeating: 0xAB, count: 32)
        withUnsafeBytes(of: i.littleEndian) { for (k, b) in $0.enumerated() { bytes[k] = b } }
        return bytes
    }

    static func index(_ m: [UInt8]) -> UInt64 {
        m.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
    }

    /// A connected plain socket to a Unix or TCP endpoint, or -1.
    static func rawConnect(_ endpoint: Endpoint) -> Int32 {
        switch endpoint {
        case .unix(let path): RawSocket.connect(unixPath: path)
        case .tcp(let host, let port): RawSocket.connect(tcpHost: host, port: port)
        default: -1
        }
    }

    /// Whether stdin has input (or reached its end), without waiting.
    static func stdinReady() -> Bool {
        var fds = pollfd(fd: 0, events: Int16(POLLIN), revents: 0)
        return poll(&fds, 1, 0) > 0
    }

    static func report(_ line: String) {
        var bytes = Array((line + "\n").utf8)
        _ = bytes.withUnsafeMutableBytes { write(1, $0.baseAddress, $0.count) }
    }
}
