import Interprocess

struct Job: Codable, Sendable { var id: Int; var text: String }
struct Outcome: Codable, Sendable { var id: Int; var words: Int }

let (worker, child) = try await IPC.spawn(
    "/usr/local/bin/word-counter", sharedMemory: true,
    sending: .binary(Job.self), receiving: .binary(Outcome.self))

let texts = ["one two three", "four five", "six"]
async let results: [Outcome] = worker.receiver.reduce(into: []) { $0.append($1) }
for (id, text) in texts.enumerated() {
    try await worker.sender.send(Job(id: id, text: text))
}
try await worker.sender.close()
for outcome in try await results {
    print("job \(outcome.id): \(outcome.words) words")
}
