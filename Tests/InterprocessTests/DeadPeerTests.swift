#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Interprocess
import Testing

/// Whether this machine lets the tests make a network namespace of their own (root, `unshare` from util-linux,
/// `ip` from iproute2): the only way to make a TCP peer vanish without a reset, short of another host.
let canMakeNetworkNamespace: Bool = {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = ["unshare", "-n", "ip", "link", "set", "lo", "up"]
    process.standardOutput = FileHandle.nullDevice
    process.standardError = FileHandle.nullDevice
    guard (try? process.run()) != nil else { return false }
    process.waitUntilExit()
    return process.terminationStatus == 0
}()

/// A TCP peer whose host vanishes (no FIN, no reset: here, the loopback interface of a private network namespace
/// taken down under an established connection) is declared gone after `ChannelOptions.deadPeerTimeout`.
@Suite("Dead TCP peers", .timeLimit(.minutes(2)), .enabled(if: canMakeNetworkNamespace, "needs a network namespace of its own (root, unshare, ip)"))
struct DeadPeerTests {
    /// Runs the helper's dead-peer drill in a fresh network namespace with deadPeerTimeout `seconds` (0: none).
    private func drill(deadPeerTimeout seconds: Int) async throws -> (status: Int32, output: String) {
        let child = try ChildProcess(path: "/usr/bin/env", ["unshare", "-n", buildDirectory + "/ipc-test-helper", "dead-peer", "tcp://127.0.0.1:0", String(seconds)])
        return await child.finish(within: 40)
    }

    /// The last line the drill printed: "CODE after N s: message".
    private func outcome(_ output: String) -> (code: String, seconds: Int)? {
        guard let line = output.split(separator: "\n").last(where: { $0.contains(" after ") }) else { return nil }
        let words = line.split(separator: " ")
        guard words.count >= 3, let seconds = Int(words[2]) else { return nil }
        return (String(words[0]), seconds)
    }

    @Test("with deadPeerTimeout 3 s, a receive waiting on a vanished peer fails with peerClosed in seconds")
    func vanishedPeerIsDeclaredGone() async throws {
        let (status, output) = try await drill(deadPeerTimeout: 3)
        #expect(status == 0, "\(output)")
        let result = outcome(output)
        #expect(result?.code == "peerClosed", "\(output)")
        #expect((2...10).contains(result?.seconds ?? -1), "\(output)")
        #expect(output.contains("stopped answering"), "\(output)")
    }

    /// The link between two ends goes down (without a reset: the peer just stops answering) for longer than the
    /// dead-peer timeout, twice, and comes back: a resumable connection is declared broken by its heartbeats,
    /// the dialer keeps trying, and once the link is back it resumes with nothing lost or repeated.
    @Test("with resume, a link that goes down and comes back loses and repeats nothing")
    func linkDownAndUpIsResumed() async throws {
        let child = try ChildProcess(path: "/usr/bin/env", ["unshare", "-n", buildDirectory + "/ipc-test-helper", "link-down-up", "tcp://127.0.0.1:0", "3000"])
        let (status, output) = await child.finish(within: 50)
        #expect(status == 0, "\(output)")
        #expect(output.contains("received 3000 in order"), "\(output)")
        // The stream stopped while the link was down (longer than the dead-peer timeout) and went on after.
        let gap = output.split(separator: "\n").first { $0.hasPrefix("longest gap ") }.flatMap { Int($0.split(separator: " ")[2]) }
        #expect((3...20).contains(gap ?? -1), "\(output)")
    }

    @Test("without deadPeerTimeout the same receive is still waiting when its own 12 s limit ends")
    func withoutTimeoutTheKernelWaits() async throws {
        let (status, output) = try await drill(deadPeerTimeout: 0)
        #expect(status == 0, "\(output)")
        #expect(outcome(output)?.code == "timeout", "\(output)")
    }
}

/// Heartbeats (`ChannelOptions.deadPeerTimeout`, `heartbeatInterval`) over every transport: a peer process that
/// stops is declared gone after the timeout, never before it; a quiet connection whose sides read nothing stays
/// up; a client that completes the handshake and then never answers is cut off by the listener.
@Suite("Heartbeats", .timeLimit(.minutes(2)))
struct HeartbeatTests {
    private static func options(deadPeerTimeout: Duration) -> ChannelOptions {
        var options = ChannelOptions()
        options.deadPeerTimeout = deadPeerTimeout
        return options
    }

    @Test("a stopped peer process is declared gone after deadPeerTimeout, not before", arguments: TransportKind.allCases)
    func stoppedPeerIsDeclaredGone(_ kind: TransportKind) async throws {
        let dir = temporaryDirectory()
        let timeout = Duration.seconds(2)
        let listener = try IPC.listen(on: kind.endpoint(in: dir), sending: .raw, receiving: .raw, options: Self.options(deadPeerTimeout: timeout))
        defer { listener.close() }
        let helper = try ChildProcess.helper("echo", listener.endpoint)
        defer {
            kill(helper.pid, SIGCONT)
            helper.kill()
        }
        let connection = try await within(20) { try await listener.accept() }
        try await connection.sender.send(numbered(7))
        #expect(try await within(20) { try await connection.receiver.receive() }.map(index) == 7)
        kill(helper.pid, SIGSTOP)
        let start = ContinuousClock.now
        await #expect {
            _ = try await within(30) { try await connection.receiver.receive() }
        } throws: { error in
            let e = error as! IPCError
            return e.code == .peerClosed && e.message.contains("heartbeat")
        }
        let elapsed = ContinuousClock.now - start
        #expect(elapsed >= timeout, "declared gone after \(elapsed), before the timeout")
    }

    @Test("a quiet connection stays up across many heartbeat intervals while neither side reads", arguments: TransportKind.allCases)
    func quietConnectionStaysUp(_ kind: TransportKind) async throws {
        let dir = temporaryDirectory()
        // Both sides declare the other gone after 1 s of silence (3 s under a sanitizer), so each must answer the
        // other's pings while its application reads nothing: the helper sends one message and then only sleeps,
        // and this side does not receive for three timeouts after taking it.
        let timeout = Duration.seconds(sanitized ? 3 : 1)
        let listener = try IPC.listen(on: kind.endpoint(in: dir), receiving: .raw, options: Self.options(deadPeerTimeout: timeout))
        defer { listener.close() }
        let milliseconds = timeout.components.seconds * 1000
        let helper = try ChildProcess.helper("send-then-hang", listener.endpoint, 1, environment: ["IPC_HELPER_DEAD_PEER_MS": String(milliseconds)])
        defer { helper.kill() }
        let receiver = try await within(20) { try await listener.accept() }.receiver
        #expect(try await within(20) { try await receiver.receive() }.map(index) == 0)
        #expect(await helper.waitForOutput("sent 1"))
        // The quiet time itself is what is tested: twelve heartbeat intervals of this side.
        try await Task.sleep(for: timeout * 3)
        // Still open on both sides: nothing arrived, neither an end nor the error frame of a helper that gave up
        // on this side (which tryReceive would throw).
        #expect(try receiver.tryReceive() == nil)
    }

    @Test("a client that completes the handshake and then never answers is cut off after deadPeerTimeout", arguments: TransportKind.sockets)
    func silentClientIsCutOff(_ kind: TransportKind) async throws {
        let dir = temporaryDirectory()
        let listener = try IPC.listen(on: kind.endpoint(in: dir), sending: .raw, receiving: .raw, options: Self.options(deadPeerTimeout: .seconds(1)))
        defer { listener.close() }
        let silent = try RawClient(listener.endpoint)
        silent.send(HostileInputTests.validHello)
        let connection = try await within(20) { try await listener.accept() }
        await #expect {
            _ = try await within(30) { try await connection.receiver.receive() }
        } throws: { error in
            (error as! IPCError).code == .peerClosed
        }
        // The client was pinged, then told why, then the connection was closed.
        let received = silent.readAll()
        let message = errorFrameMessage(in: received)
        #expect(message?.contains("heartbeat") == true, "the client was told: \(message ?? "nothing")")
    }
}
