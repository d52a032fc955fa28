#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Interprocess
import Testing

/// A listener run as a swift-service-lifecycle service in another process (the helper's `service` role: a
/// ServiceGroup with a worker and the listener, shut down gracefully by SIGTERM).
@Suite("Lifecycle: a listener as a service", .timeLimit(.minutes(2)))
struct LifecycleTests {
    /// SIGTERM in the middle of a stream: the listener stops accepting at once, the open connection goes on
    /// until its sender closes, every message is taken, and the process exits cleanly.
    @Test("SIGTERM mid-stream: no new connections, the open one finishes, nothing lost", arguments: TransportKind.allCases)
    func gracefulShutdownLosesNothing(_ kind: TransportKind) async throws {
        let helper = try ChildProcess.helper("service", kind.endpoint(in: temporaryDirectory()), 30_000)
        defer { helper.kill() }
        let endpoint = try await helper.listeningEndpoint()
        let tx = try await within(20) { try await IPC.connect(to: endpoint, sending: .raw) }
        let half = scaledCount(5_000)
        try await within(30) { for i in 0..<half { try await tx.send(numbered(UInt64(i))) } }
        // A client whose handshake is still in progress when the shutdown begins is closed (it sees peerClosed):
        // this one is served already.
        #expect(await helper.waitForOutput("serving a connection"), "\(helper.outputSoFar)")
        kill(helper.pid, SIGTERM)
        #expect(await helper.waitForOutput("stops accepting"), "\(helper.outputSoFar)")
        // A new client is refused (there is no listener any more) rather than left waiting.
        await #expect(throws: IPCError.self) {
            try await within(20) { _ = try await IPC.connect(to: endpoint, sending: .raw, options: Self.quickHandshake) }
        }
        // The open connection is still served, to its end.
        try await within(30) {
            for i in half..<(2 * half) { try await tx.send(numbered(UInt64(i))) }
            try await tx.closeAndWait()
        }
        let (status, output) = await helper.finish()
        #expect(output.contains("a connection ended after \(2 * half)"), "\(output)")
        #expect(output.contains("shut down"), "\(output)")
        #expect(status == 0, "\(output)")
    }

    /// A connection still open when the drain time runs out is closed, and its peer is told why.
    @Test("a connection open past the drain time is closed, and its peer is told", arguments: TransportKind.sockets)
    func drainTimeoutClosesTheRest(_ kind: TransportKind) async throws {
        let helper = try ChildProcess.helper("service", kind.endpoint(in: temporaryDirectory()), 1_000)
        defer { helper.kill() }
        let endpoint = try await helper.listeningEndpoint()
        let tx = try await within(20) { try await IPC.connect(to: endpoint, sending: .raw) }
        for i in 0..<10 { try await within(20) { try await tx.send(numbered(UInt64(i))) } }
        // A client whose handshake is still in progress when the shutdown begins is closed (it sees peerClosed):
        // this one is served already.
        #expect(await helper.waitForOutput("serving a connection"), "\(helper.outputSoFar)")
        kill(helper.pid, SIGTERM)
        #expect(await helper.waitForOutput("stops accepting"), "\(helper.outputSoFar)")
        // The sender keeps the connection open (it never closes): after the drain time its sends fail.
        let error = try await within(30) { () async -> IPCError? in
            do {
                var i: UInt64 = 10
                while true {
                    try await tx.send(numbered(i))
                    i += 1
                    if i % 64 == 0 { try await Task.sleep(for: .milliseconds(5)) }
                }
            } catch {
                return error as? IPCError
            }
        }
        #expect(error?.message.contains("shut down") == true, "\(String(describing: error))")
        let (status, output) = await helper.finish()
        #expect(output.contains("a connection failed after"), "\(output)")
        #expect(output.contains("cancelled"), "\(output)")
        #expect(output.contains("shut down"), "\(output)")
        #expect(status == 0, "\(output)")
    }

    static var quickHandshake: ChannelOptions {
        var options = ChannelOptions()
        options.handshakeTimeout = .seconds(5)
        return options
    }
}
