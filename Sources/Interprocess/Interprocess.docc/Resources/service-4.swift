import Interprocess
import Logging
import Metrics
import Prometheus
import ServiceLifecycle
import UnixSignals

struct Job: Codable, Sendable { var id: Int }

let registry = PrometheusCollectorRegistry()
MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))

var options = ChannelOptions()
options.logger = Logger(label: "worker")
let listener = try IPC.listen(on: "unix:/tmp/worker.sock", receiving: .json(Job.self), options: options)
// ... the worker and the group as before; serve `registry` to your scraper.
