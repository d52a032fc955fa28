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
@Suite("Dead TCP peers", .timeLimit(.minutes(1)), .enabled(if: canMakeNetworkNamespace, "needs a network namespace of its own (root, unshare, ip)"))
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

    @Test("without deadPeerTimeout the same receive is still waiting when its own 12 s limit ends")
    func withoutTimeoutTheKernelWaits() async throws {
        let (status, output) = try await drill(deadPeerTimeout: 0)
        #expect(status == 0, "\(output)")
        #expect(outcome(output)?.code == "timeout", "\(output)")
    }
}
