#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Interprocess
import Testing

/// `IPC.spawn` and `IPC.connectToParent`: a channel to a child process over an inherited socket pair, or shared
/// memory handed over it.
@Suite("Spawned children", .timeLimit(.minutes(2)))
struct SpawnTests {
    @Test("a spawned child echoes everything back, then exits cleanly", arguments: [false, true])
    func echo(_ sharedMemory: Bool) async throws {
        let (connection, child) = try await within(20) {
            try await IPC.spawn(buildDirectory + "/ipc-test-helper", arguments: ["child-echo", "shm:unused"], sharedMemory: sharedMemory, sending: .raw, receiving: .raw)
        }
        #expect(connection.peer.contains("child pid \(child.pid)"))
        let count = 5000
        let producer = Task {
            for i in 0..<count { try await connection.sender.send(numbered(UInt64(i))) }
            try await connection.sender.close()
        }
        let received = try await within(30) {
            var n: UInt64 = 0
            while let m = try await connection.receiver.receive() {
                #expect(index(m) == n)
                n += 1
            }
            return n
        }
        try await producer.value
        #expect(received == UInt64(count))
        #expect(await child.wait() == .exited(0))
    }

    @Test("a spawned child that is killed gives the parent peerClosed", arguments: [false, true])
    func childKilled(_ sharedMemory: Bool) async throws {
        let (connection, child) = try await within(20) {
            try await IPC.spawn(buildDirectory + "/ipc-test-helper", arguments: ["child-echo", "shm:unused"], sharedMemory: sharedMemory, sending: .raw, receiving: .raw)
        }
        try await connection.sender.send(numbered(0))
        #expect(try await within(20) { try await connection.receiver.receive() }.map(index) == 0)
        child.kill(signal: SIGKILL)
        #expect(await child.wait() == .signalled(SIGKILL))
        let error = await #expect(throws: IPCError.self) {
            try await within(20) { _ = try await connection.receiver.receive() }
        }
        #expect(error?.code == .peerClosed)
    }

    @Test("connectToParent in a process nobody spawned says so")
    func notSpawned() async throws {
        unsetenv(IPC.parentVariable)
        let error = await #expect(throws: IPCError.self) {
            _ = try await IPC.connectToParent(sending: .raw, receiving: .raw)
        }
        #expect(error?.code == .invalidEndpoint)
    }
}
