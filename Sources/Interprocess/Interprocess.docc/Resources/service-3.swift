import Interprocess
import Logging
import ServiceLifecycle
import UnixSignals

struct Job: Codable, Sendable { var id: Int }

var logger = Logger(label: "worker")
logger.logLevel = .info
var options = ChannelOptions()
options.logger = logger
options.drainTimeout = .seconds(30)
let listener = try IPC.listen(on: "unix:/tmp/worker.sock", receiving: .json(Job.self), options: options)
// ... the worker and the group as before.
