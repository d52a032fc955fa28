import Interprocess

struct Job: Codable, Sendable { var id: Int; var text: String }
struct Outcome: Codable, Sendable { var id: Int; var words: Int }

let (worker, child) = try await IPC.spawn(
    "/usr/local/bin/word-counter", sharedMemory: true,
    sending: .binary(Job.self), receiving: .binary(Outcome.self))
do {
    try await worker.sender.send(Job(id: 0, text: "one two three"))
    try await worker.sender.close()
    while let outcome = try await worker.receiver.receive() {
        print("job \(outcome.id): \(outcome.words) words")
    }
} catch {
    // The calls above throw only IPCError, so `error` is one.
    guard error.code == .peerClosed else { throw error }
    print("the worker died: \(error.message); \(error.messagesInDoubt ?? 0) jobs in doubt")
    print("it ended with \(await child.wait())")
}
