import Interprocess
import Logging
import ServiceLifecycle
import UnixSignals

struct Job: Codable, Sendable { var id: Int }

struct Worker: Service {
    let listener: Listener<NoMessages, JSONCodec<Job>>

    func run() async throws {
        try await withThrowingDiscardingTaskGroup { group in
            for try await connection in listener {
                group.addTask {
                    do {
                        for try await job in connection.receiver { print("job \(job.id)") }
                    } catch {
                        print("a client's connection failed: \(error)")
                    }
                }
            }
        }
        try await gracefulShutdown()
    }
}

let listener = try IPC.listen(on: "unix:/tmp/worker.sock", receiving: .json(Job.self))
let group = ServiceGroup(configuration: .init(
    services: [Worker(listener: listener), listener],
    gracefulShutdownSignals: [.sigterm],
    logger: Logger(label: "worker")))
try await group.run()
