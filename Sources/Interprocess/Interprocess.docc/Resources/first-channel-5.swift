import Interprocess

struct Job: Codable, Sendable {
    var id: Int
    var path: String
}

let jobs = try await IPC.connect(to: "unix:/tmp/jobs.sock", receiving: .json(Job.self))
for try await job in jobs {
    print("job \(job.id): \(job.path)")
}
