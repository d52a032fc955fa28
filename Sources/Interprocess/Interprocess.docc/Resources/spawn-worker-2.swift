import Interprocess

struct Job: Codable, Sendable { var id: Int; var text: String }
struct Outcome: Codable, Sendable { var id: Int; var words: Int }

// In word-counter: the same types, the codecs the other way round.
let parent = try await IPC.connectToParent(sending: .binary(Outcome.self), receiving: .binary(Job.self))
for try await job in parent.receiver {
    let words = job.text.split(separator: " ").count
    try await parent.sender.send(Outcome(id: job.id, words: words))
}
try await parent.sender.closeAndWait()
