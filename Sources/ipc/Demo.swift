#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Foundation
import Interprocess

/// Prints one line at once (stdout may be a pipe; both processes write to it).
func say(_ text: String) { FileHandleLite.standardOutput.write(text + "\n") }

struct Demo: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Two processes say hello over a Unix socket, TCP and shared memory, and measure the round trip.",
        discussion: "Starts a second process of this program. Process 1 listens and sends \"Hello from process 1!\"; process 2 dials, receives it and answers. Then 1,000 64-byte round trips measure the latency. Exit code 0 only if everything arrived.")

    @Option(help: "Timed round trips per transport.") var roundTrips = 1000

    func run() async throws {
        let directory = try makeTemporaryDirectory()
        defer { removeDirectory(directory) }
        var ok = true
        let endpoints: [Endpoint] = [.unix(path: directory + "/demo.sock"), .tcp(host: "127.0.0.1", port: 0), .sharedMemory(name: "demo-\(getpid())")]
        for endpoint in endpoints {
            do {
                try await runOne(endpoint)
            } catch {
                FileHandleLite.standardError.write("ipc demo: \(endpoint): \(error)\n")
                ok = false
            }
        }
        say(ok ? "demo: everything arrived." : "demo: FAILED")
        if !ok { throw ExitCode(1) }
    }

    private func runOne(_ endpoint: Endpoint) async throws {
        let listener = try IPC.listen(on: endpoint, sending: .utf8, receiving: .utf8)
        defer { listener.close() }
        let me = "[process 1, pid \(getpid())]"
        say("\(listener.endpoint):")
        let child = try ChildProcess.spawnSelf(["demo-peer", listener.endpoint.description])
        do {
            let connection = try await listener.accept(timeout: .seconds(20))
            let hello = "Hello from process 1!"
            say("  \(me) sends:    \(hello)")
            try await connection.sender.send(hello)
            guard let reply = try await connection.receiver.receive() else {
                throw IPCError(.peerClosed, "process 2 closed without answering")
            }
            say("  \(me) received: \(reply)")
            let payload = String(repeating: "x", count: 64)
            var latencies = Latencies()
            for i in 0..<(roundTrips + 100) {
                let start = monotonicNanos()
                try await connection.sender.send(payload)
                guard let echo = try await connection.receiver.receive(), echo == payload else {
                    throw IPCError(.peerClosed, "the echo of round trip \(i) did not arrive intact")
                }
                if i >= 100 { latencies.record(monotonicNanos() - start) }
            }
            try await connection.sender.close()
            guard try await connection.receiver.receive() == nil else {
                throw IPCError(.protocolViolation, "process 2 sent more than expected")
            }
            let (median, p99) = (latencies.summary[0], latencies.summary[1])
            say("  round trip, 64-byte message: median \(format(median)) us, p99 \(format(p99)) us (\(roundTrips) timed)")
        } catch {
            child.kill()
            _ = await child.wait()
            throw error
        }
        let code = await child.wait()
        guard code == 0 else { throw IPCError(.peerClosed, "process 2 exited with status \(code)") }
    }
}

func format(_ value: Double, _ digits: Int = 1) -> String {
    String(format: "%.\(digits)f", value)
}

/// The second process of the demo: dials, receives the hello, answers, then echoes until the end.
struct DemoPeer: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "demo-peer", shouldDisplay: false)
    @Argument(transform: parseEndpoint) var endpoint: Endpoint

    func run() async throws {
        let me = "[process 2, pid \(getpid())]"
        do {
            let connection = try await IPC.connect(to: endpoint, sending: .utf8, receiving: .utf8)
            guard let hello = try await connection.receiver.receive() else { throw IPCError(.peerClosed, "no hello arrived") }
            say("  \(me) received: \(hello)")
            let reply = "Hello from process 2!"
            say("  \(me) sends:    \(reply)")
            try await connection.sender.send(reply)
            while let message = try await connection.receiver.receive() {
                try await connection.sender.send(message)
            }
            try await connection.sender.closeAndWait()
        } catch let error as IPCError {
            fail(error)
        }
    }
}
