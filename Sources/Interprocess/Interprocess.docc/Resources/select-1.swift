import Interprocess

struct Job: Codable, Sendable { var id: Int }

enum Event {
    case local(Job?)
    case remote(Job?)
    case reported
}

let (queue, localJobs) = Channel<Job>.make(capacity: 16)
let remoteJobs = try await IPC.connect(to: "unix:/tmp/jobs.sock", receiving: .json(Job.self))
let reports = try await IPC.connect(to: "tcp://127.0.0.1:7000", sending: .utf8)
try await queue.send(Job(id: 1))
try await queue.close()

var summary = "nothing yet"
var open = 2
while open > 0 {
    let event = try await select {
        localJobs.onReceive { Event.local($0) }
        remoteJobs.onReceive { Event.remote($0) }
        reports.onSend(summary) { Event.reported }
    }
    switch event {
    case .local(let job?), .remote(let job?): summary = "last job \(job.id)"
    case .local(nil), .remote(nil): open -= 1
    case .reported: break
    }
}
