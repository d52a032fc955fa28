import Interprocess

struct Job: Codable, Sendable {
    var id: Int
    var path: String
}

var options = ChannelOptions()
options.capacity = 64
let listener = try IPC.listen(on: "unix:/tmp/jobs.sock", sending: .json(Job.self), options: options)
let jobs = try await listener.accept().sender
for id in 0..<1_000 {
    try await jobs.send(Job(id: id, path: "/data/\(id).csv"))
}
try await jobs.closeAndWait()
