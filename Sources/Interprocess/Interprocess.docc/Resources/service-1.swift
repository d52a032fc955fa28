import Interprocess
import ServiceLifecycle

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
