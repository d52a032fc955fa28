import Interprocess

struct Job: Codable, Sendable { var id: Int }

let jobs = try await IPC.connect(to: "unix:/tmp/jobs.sock", receiving: .json(Job.self))

// Nothing for a second: do something else.
let next = try await select {
    jobs.onReceive { job in job.map { "job \($0.id)" } ?? "closed" }
    SelectCase.timeout(.seconds(1)) { "idle" }
}
print(next)

// Never wait: take a job only if one is there.
let now = try await select {
    jobs.onReceive { job in job.map { "job \($0.id)" } ?? "closed" }
    SelectCase.default { "nothing yet" }
}
print(now)

// The same for one channel.
do {
    let job = try await jobs.receive(timeout: .seconds(1))
    print(job.map { "job \($0.id)" } ?? "closed")
} catch {
    guard error.code == .timeout else { throw error }
    print("idle")
}
switch try jobs.tryReceive() {
case let job??: print("job \(job.id)")
case .some(nil): print("closed")
case nil: print("nothing yet")
}
